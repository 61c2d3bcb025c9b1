"""The report's figures: headline metrics per model (comparison.png), per-finding AUROC with a reliability diagram of
P(yes) (confidence.png), and where questions asked for findings the reports' label F1s, BLEU-4 and ROUGE-L
(findings.png). Files only (matplotlib's Agg backend): no display on servers."""

from __future__ import annotations

import math
from pathlib import Path

from cxr_vqa.reports import split_variant, with_image

PLOTTED = {"closed_accuracy": "closed accuracy", "unparseable_rate": "unparseable", "open_recall": "open recall",
           "open_f1": "open F1", "macro_auroc": "macro AUROC"}  # fmt: skip


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _bars(ax, groups: list[str], series: dict[str, list[dict | None]]) -> None:
    """Grouped bars, one group per x label and one bar per series, 95% intervals as error bars."""
    width = 0.8 / max(len(series), 1)
    for i, (name, ests) in enumerate(series.items()):
        values = [0.0 if not e or math.isnan(e["value"]) else e["value"] for e in ests]
        pairs = list(zip(values, ests, strict=True))
        low = [max(0.0, v - e["ci"][0]) if e and not math.isnan(e["ci"][0]) else 0.0 for v, e in pairs]
        high = [max(0.0, e["ci"][1] - v) if e and not math.isnan(e["ci"][1]) else 0.0 for v, e in pairs]
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(groups))]
        ax.bar(
            xs, values, width, yerr=[low, high], capsize=3, label=name, hatch="//" if split_variant(name)[1] else None
        )
    ax.set_xticks(range(len(groups)), groups, fontsize=8, rotation=20 if len(groups) > 5 else 0)
    ax.set_ylim(0, 1.05)
    if series:  # none: no model has a P(yes) (remote models without logprobs)
        ax.legend(fontsize=7)


def plot_comparison(m: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    _bars(ax, list(PLOTTED.values()), {n: [s[k] for k in PLOTTED] for n, s in m["models"].items()})
    chance = m["chance"]["closed_accuracy"]
    if not math.isnan(chance):
        ax.hlines(chance, -0.45, 0.45, colors="k", linestyles="dashed", label="chance (majority)")
    ax.set_title(f"{m['studies']} studies, {m['questions']['total']} questions (95% bootstrap CI over studies)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confidence(m: dict, path: Path) -> None:
    plt = _pyplot()
    models = {n: m["models"][n]["confidence"] for n in with_image(m["models"])
              if not m["models"][n]["confidence"].get("unavailable")}  # fmt: skip
    findings = sorted({f for c in models.values() for f in c["per_finding"]})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    _bars(left, findings, {n: [c["per_finding"].get(f) for f in findings] for n, c in models.items()})
    left.axhline(0.5, color="k", linestyle="dashed", linewidth=0.8)
    left.set_title("AUROC of P(yes) per finding (95% CI; dashed: chance)")
    right.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    for name, c in models.items():
        bins = c["reliability"]
        right.plot([b["confidence"] for b in bins], [b["frequency"] for b in bins], "o-", label=name)
    right.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean P(yes) in bin", ylabel="share of yes labels")
    right.set_title("reliability (dashed: perfect calibration)")
    if models:
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


FINDINGS_PLOTTED = {"micro_f1_14": "micro F1-14", "macro_f1_14": "macro F1-14", "micro_f1_5": "micro F1-5",
                    "macro_f1_5": "macro F1-5", "micro_f1_14_plus": "micro F1-14+", "micro_f1_5_plus": "micro F1-5+",
                    "bleu4": "BLEU-4", "rouge_l": "ROUGE-L"}  # fmt: skip


def plot_findings(m: dict, path: Path) -> None:
    """The findings reports' F1s, BLEU-4 and ROUGE-L per model, blank-film runs hatched, 95% intervals."""
    plt = _pyplot()
    f = m["findings"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    _bars(ax, list(FINDINGS_PLOTTED.values()), {n: [s[k] for k in FINDINGS_PLOTTED] for n, s in f["models"].items()})
    ax.set_title(f"findings: {f['reports']} reports, labeler {f['labeler']} (95% bootstrap CI over reports)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

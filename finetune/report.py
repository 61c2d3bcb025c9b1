"""Turn an evaluation's metrics (the content of metrics.json) into report.md, comparison.png and a console summary.

    from finetune.report import write_report
    write_report(Path("reports/test"), json.loads(Path("reports/test/metrics.json").read_text()))

`python -m finetune.evaluate` calls it; rerunning that on a finished report directory rewrites these files.
"""

from __future__ import annotations

import math
from pathlib import Path

NAMES = {
    "closed_accuracy": "closed accuracy",
    "unparseable_rate": "unparseable closed answers",
    "open_f1": "open token F1",
    "open_recall": "open token recall",
    "open_rouge_l": "open ROUGE-L",
    "answer_length": "answer length (words)",
}
PLOTTED = ("closed_accuracy", "unparseable_rate", "open_f1", "open_rouge_l")
DISCLAIMER = "Research evaluation of a demo model: not validated for clinical use, not for diagnosis."


def _num(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _est(e: dict) -> str:
    return f"{_num(e['value'])} [{_num(e['ci'][0])}, {_num(e['ci'][1])}]"


def _diff(d: dict) -> str:
    return f"{d['value']:+.3f} [{_num(d['ci'][0])}, {_num(d['ci'][1])}], p={_num(d['p_value'], 4)}"


def summary_lines(m: dict) -> list[str]:
    """The one-screen console summary."""
    q = m["questions"]
    lines = [f"{m['split']}: {m['studies']} studies, {m['patients']} patients, {q['closed']} closed + {q['open']} open"
             f" questions; chance (majority answer) {_num(m['chance']['closed_accuracy'])}"]  # fmt: skip
    for name, s in m["models"].items():
        lines.append(
            f"  {name:<12} closed acc {_est(s['closed_accuracy'])}  unparseable {_num(s['unparseable_rate']['value'])}"
            f"  open F1 {_num(s['open_f1']['value'])}  ROUGE-L {_num(s['open_rouge_l']['value'])}"
        )
    if "tuned_minus_base" in m["difference"]:
        lines.append(f"  tuned - base closed acc {_diff(m['difference']['tuned_minus_base']['closed_accuracy'])}")
    for name, d in m["ablation"].items():
        lines.append(f"  blank-image drop ({name}) closed acc {_diff(d['closed_accuracy'])}")
    return lines


def _markdown(m: dict) -> str:
    models = list(m["models"])
    with_image = [n for n in models if not n.endswith("_blank")]
    q, boot = m["questions"], m["bootstrap"]
    out = [
        "# Evaluation: base vs fine-tuned",
        "",
        f"> {DISCLAIMER}",
        "",
        f"- dataset `{m['dataset']}`, split `{m['split']}` (patients held out from training): {m['studies']} studies,"
        f" {m['patients']} patients, {q['total']} questions ({q['closed']} closed, {q['open']} open)",
        f"- base `{m['base']}`" + (f", adapter `{m['adapter']}`" if m["adapter"] else ", no adapter"),
        "- every question is asked **single-turn** with its study's image (multi-turn history would leak earlier "
        f"answers); greedy decoding, at most {m['protocol']['max_new_tokens']} new tokens; "
        + ("4-bit nf4 weights" if m["protocol"]["4bit"] else "full-precision weights"),
        '- closed answers are parsed **strictly**: the first word must be yes or no ("normal" is not "no"); an '
        "unparseable answer counts as wrong",
        f"- 95% intervals: percentile bootstrap over **studies** ({boot['resamples']} resamples, seed "
        f"{boot['seed']}), since questions of one study share an image. Differences: McNemar's exact test for "
        "closed accuracy, paired bootstrap (over studies) for the rest",
        f"- chance: always answering the majority label gives closed accuracy {_num(m['chance']['closed_accuracy'])}",
        "",
        "## Headline metrics",
        "",
        "| metric | " + " | ".join(with_image) + (" | tuned − base (95% CI, p) |" if m["difference"] else " |"),
        "|---" * (len(with_image) + 1 + bool(m["difference"])) + "|",
    ]
    for key, label in NAMES.items():
        cells = [_est(m["models"][n][key]) for n in with_image]
        if m["difference"]:
            cells.append(_diff(m["difference"]["tuned_minus_base"][key]))
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    if m["ablation"]:
        out += ["", "## Image ablation (the same questions with a blank image)", "",
                "A model that reads the film must lose closed accuracy without it.", "",
                "| model | with image | blank image | drop (95% CI, p) |", "|---|---|---|---|"]  # fmt: skip
        for name, d in m["ablation"].items():
            real, blank = m["models"][name], m["models"][f"{name}_blank"]
            out.append(f"| {name} | {_est(real['closed_accuracy'])} | {_est(blank['closed_accuracy'])} | "
                       f"{_diff(d['closed_accuracy'])} |")  # fmt: skip
    findings = sorted({f for n in with_image for f in m["models"][n]["per_finding"]})
    if findings:
        out += ["", "## Closed accuracy per finding", "", "| finding | n | " + " | ".join(with_image) + " |",
                "|---" * (len(with_image) + 2) + "|"]  # fmt: skip
        for f in findings:
            per = [m["models"][n]["per_finding"][f] for n in with_image]
            out.append(f"| {f} | {per[0]['n']} | " + " | ".join(_est(p) for p in per) + " |")
    if m.get("extra"):
        out += ["", "## Model-based metrics (open questions)", "", "```", str(m["extra"]), "```"]
    out += ["", "![headline metrics with 95% intervals](comparison.png)", ""]
    return "\n".join(out)


def plot_comparison(m: dict, path: Path) -> None:
    """Grouped bars: one group per headline metric, one bar per model/condition, 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    models = list(m["models"])
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, name in enumerate(models):
        ests = [m["models"][name][k] for k in PLOTTED]
        values = [0.0 if math.isnan(e["value"]) else e["value"] for e in ests]
        errors = [
            [
                max(0.0, v - e["ci"][0]) if not math.isnan(e["ci"][0]) else 0.0
                for v, e in zip(values, ests, strict=True)
            ],
            [
                max(0.0, e["ci"][1] - v) if not math.isnan(e["ci"][1]) else 0.0
                for v, e in zip(values, ests, strict=True)
            ],
        ]
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(PLOTTED))]
        ax.bar(xs, values, width, yerr=errors, capsize=3, label=name, hatch="//" if name.endswith("_blank") else None)
    chance = m["chance"]["closed_accuracy"]
    if not math.isnan(chance):
        ax.hlines(chance, -0.45, 0.45, colors="k", linestyles="dashed", label="chance (majority)")
    ax.set_xticks(range(len(PLOTTED)), [NAMES[k] for k in PLOTTED], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{m['split']}: {m['studies']} studies, {m['questions']['total']} questions (95% bootstrap CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, m: dict) -> None:
    (out / "report.md").write_text(_markdown(m))
    plot_comparison(m, out / "comparison.png")

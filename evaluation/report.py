"""Turn an evaluation's metrics (the content of metrics.json) into report.md, comparison.png, confidence.png (and
findings.png where questions asked for findings: `evaluation.findings_report`) and a console summary.

    from evaluation.report import write_report
    write_report(Path("reports/test"), json.loads(Path("reports/test/metrics.json").read_text()))

`python -m evaluation` calls it; rerunning that on a finished report directory rewrites these files.
"""

from __future__ import annotations

from pathlib import Path

from cxr_vqa.reports import COMPARISON_PNG, CONFIDENCE_PNG, FINDINGS_PNG, REPORT_MD, variant_name, with_image
from evaluation.findings_report import findings_markdown, findings_summary
from evaluation.formats import diff as _diff
from evaluation.formats import est as _est
from evaluation.formats import num as _num
from evaluation.formats import table as _table
from evaluation.plots import plot_comparison, plot_confidence, plot_findings

NAMES = {
    "closed_accuracy": "closed accuracy",
    "unparseable_rate": "unparseable closed answers",
    "open_f1": "open token F1",
    "open_recall": "open token recall",
    "open_rouge_l": "open ROUGE-L",
    "answer_length": "answer length (words)",
    "macro_auroc": "macro AUROC of P(yes)",
    "brier": "Brier score of P(yes)",
}
EXPLAIN = {
    "closed accuracy": "share of closed questions answered right; yes/no by the answer's first word only, other "
    "closed answers by exact match after normalising case and punctuation",
    "unparseable closed answers": "share of yes/no questions whose answer does not start with yes or no (counted "
    "wrong, never dropped)",
    "open token recall": "share of the reference's words found in the answer, as medical VQA papers report",
    "open token F1": "harmonic mean of word precision and recall against the reference",
    "open ROUGE-L": "longest common word subsequence, F-measure",
    "P(yes)": "probability of the answer's first token spelling yes rather than no, from the same forward pass (a "
    "remote model: from the log-probabilities its endpoint returned for the first answer token's top candidates)",
    "AUROC": "how well P(yes) ranks positive studies above negative ones, per finding (0.5 = chance, undefined "
    "when a finding has only one class); macro = the mean over findings",
    "Brier score": "mean squared error of P(yes) against the label (0 = perfect, 0.25 = always 0.5)",
    "ECE": "expected calibration error: |share of yes - mean P(yes)| over 10 equal-width bins, weighted by size",
}
DISCLAIMER = "Research evaluation of a demo model: not validated for clinical use, not for diagnosis."


def source(m: dict) -> str:
    return f"benchmark {m['benchmark']}" if m.get("benchmark") else f"split {m['split']}"


def summary_lines(m: dict) -> list[str]:
    """The one-screen console summary."""
    q = m["questions"]
    findings = f" + {q['findings']} findings" if q.get("findings") else ""
    lines = [f"{source(m)}: {m['studies']} studies, {m['patients']} patients, {q['closed']} closed + {q['open']} open"
             f"{findings} questions; chance (majority answer) {_num(m['chance']['closed_accuracy'])}"]  # fmt: skip
    for name, s in m["models"].items():
        lines.append(
            f"  {name:<12} closed acc {_est(s['closed_accuracy'])}  unparseable {_num(s['unparseable_rate']['value'])}"
            f"  macro AUROC {_est(s['macro_auroc'])}  open recall {_num(s['open_recall']['value'])}"
            f"  F1 {_num(s['open_f1']['value'])}"
        )
    for name, d in m["difference"].items():
        lines.append(f"  {name.replace('_minus_', ' - ')} closed acc {_diff(d['closed_accuracy'])}; "
                     f"macro AUROC {_diff(d['macro_auroc'])}")  # fmt: skip
    for name, d in m["ablation"].items():
        lines.append(f"  blank-image drop ({name}) closed acc {_diff(d['closed_accuracy'])}; "
                     f"macro AUROC {_diff(d['macro_auroc'])}")  # fmt: skip
    lines += findings_summary(m)
    for name, r in m.get("remote", {}).items():
        if r.get("refused"):
            lines.append(f"  {name}: {r['refused']} answers refused by its endpoint, scored as wrong (report.md)")
    return lines


def _markdown(m: dict) -> str:
    models = with_image(m["models"])
    diffs = list(m["difference"])
    q, boot = m["questions"], m["bootstrap"]
    adapter = ", ".join(m["adapter"]) if m["adapter"] else "no adapter"
    remote = m.get("remote", {})
    no_p_yes = [n for n in models if m["models"][n]["confidence"].get("unavailable")]
    out = [
        "# Evaluation: base vs fine-tuned", "", f"> {DISCLAIMER}", "",
        f"- dataset `{m['dataset']}`, {source(m)}: {m['studies']} studies, {m['patients']} patients, "
        f"{q['total']} questions ({q['closed']} closed, {q['open']} open"
        + (f", {q['findings']} findings reports)" if q.get("findings") else ")"),
        f"- base `{m['base']}`, adapters: {adapter}",
        *[f"- remote model `{n}` = `{r['source']}`: the same conversation and film (a PNG of the letterboxed "
          f"picture), greedy; {r['answers']} answers, {r['prompt_tokens']:,} + {r['completion_tokens']:,} tokens, "
          f"{r['cost_usd']:.2f} USD at {r['price_per_mtok'][0]:g}/{r['price_per_mtok'][1]:g} USD per million"
          + (f"; **{r['refused']} refused** by its endpoint (an HTTP 4xx, e.g. a content refusal), scored as "
             "empty answers: wrong, and unparseable where yes or no is asked" if r.get("refused") else "")
          for n, r in remote.items()],
        *([f"- P(yes) unavailable for {', '.join(no_p_yes)} (its endpoint returned no logprobs): AUROC and "
           "calibration are not reported for it"] if no_p_yes else []),
        "- every question is asked **single-turn** with its film; greedy decoding, at most "
        f"{m['protocol']['max_new_tokens']} new tokens; {'4-bit nf4' if m['protocol']['4bit'] else 'full precision'}",
        f"- 95% intervals: percentile bootstrap over **studies** ({boot['resamples']} resamples, seed "
        f"{boot['seed']}), since questions of one study share a film. Differences: McNemar's exact test for closed "
        "accuracy, paired bootstrap (the same resamples for both models) for the rest",
        f"- chance: always answering the majority label gives closed accuracy {_num(m['chance']['closed_accuracy'])}",
        *([f"- multiplicity: {m['multiplicity']}"] if m.get("multiplicity") else []),
        "", "## What each metric means", "", *[f"- **{k}**: {v}" for k, v in EXPLAIN.items()],
        "", "## Headline metrics", "",
    ]  # fmt: skip
    rows = [[label, *[_est(m["models"][n][key]) for n in models], *[_diff(m["difference"][d][key]) for d in diffs]]
            for key, label in NAMES.items()]  # fmt: skip
    out += _table(["metric", *models, *[d.replace("_minus_", " − ") for d in diffs]], rows)
    if m["ablation"]:
        out += ["", "## Image ablation (the same questions with a blank image)", "",
                "A model that reads the film must lose accuracy and AUROC without it.", ""]  # fmt: skip
        rows = []
        for name, d in m["ablation"].items():
            film, blank = m["models"][name], m["models"][variant_name(name, blank=True)]
            acc = [_est(film["closed_accuracy"]), _est(blank["closed_accuracy"]), _diff(d["closed_accuracy"])]
            auroc = [_est(film["macro_auroc"]), _est(blank["macro_auroc"]), _diff(d["macro_auroc"])]
            rows.append([name, *acc, *auroc])
        out += _table(["model", "acc, film", "acc, blank", "drop", "AUROC, film", "AUROC, blank", "drop"], rows)
    findings = sorted({f for n in models for f in m["models"][n]["confidence"]["per_finding"]})
    if findings:
        out += ["", "## Per finding: closed accuracy and AUROC of P(yes)", ""]
        rows = []
        for f in findings:
            conf = [m["models"][n]["confidence"]["per_finding"].get(f) for n in models]
            acc = [m["models"][n]["per_finding"].get(f) for n in models]
            n_pos = next((c for c in conf if c), {"n": 0, "positives": 0})
            rows.append([f, f"{n_pos['n']} ({n_pos['positives']} yes)", *[_est(a) if a else "n/a" for a in acc],
                         *[_est(c) if c else "unavailable" if n in no_p_yes else "n/a"
                           for n, c in zip(models, conf, strict=True)]])  # fmt: skip
        out += _table(["finding", "n", *[f"acc {n}" for n in models], *[f"AUROC {n}" for n in models]], rows)
    out += ["", "## Calibration of P(yes)", ""]
    out += _table(
        ["model", "Brier", "ECE"],
        [[n, _est(m["models"][n]["brier"]), _est_ece(m["models"][n]["confidence"]["ece"])] for n in models],
    )
    out += findings_markdown(m)
    if m.get("extra"):
        out += ["", "## Model-based metrics (open questions)", "", "```", str(m["extra"]), "```"]
    out += ["", "![headline metrics with 95% intervals](comparison.png)", "",
            "![per-finding AUROC and reliability diagram](confidence.png)", ""]  # fmt: skip
    return "\n".join(out)


def _est_ece(ece: dict) -> str:
    return "unavailable" if ece.get("unavailable") else _num(ece["value"])


def write_report(out: Path, m: dict) -> None:
    (out / REPORT_MD).write_text(_markdown(m))
    plot_comparison(m, out / COMPARISON_PNG)
    plot_confidence(m, out / CONFIDENCE_PNG)
    if m.get("findings"):
        plot_findings(m, out / FINDINGS_PNG)
    else:  # a rerun without findings questions must not show an older run's figure
        (out / FINDINGS_PNG).unlink(missing_ok=True)

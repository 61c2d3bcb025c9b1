"""The findings part of report.md and of the console summary, from metrics.json's "findings" block
(`evaluation.findings`): label F1s with intervals, the paired tests against the base, the blank-film drop, BLEU-4 and
ROUGE-L beside them, and the per-observation table.

    lines = findings_markdown(metrics)     # [] when the evaluation had no findings question
    lines = findings_summary(metrics)      # the console's findings lines
"""

from __future__ import annotations

from cxr_vqa.reports import FINDINGS_PNG, with_image
from evaluation.findings import PRIMARY
from evaluation.formats import diff as _diff
from evaluation.formats import est as _est
from evaluation.formats import num as _num
from evaluation.formats import table as _table

LABELS = {
    "micro_f1_14": "micro F1-14", "macro_f1_14": "macro F1-14", "micro_f1_5": "micro F1-5", "macro_f1_5": "macro F1-5",
    "micro_f1_14_plus": "micro F1-14+", "macro_f1_14_plus": "macro F1-14+", "micro_f1_5_plus": "micro F1-5+",
    "macro_f1_5_plus": "macro F1-5+", "bleu4": "BLEU-4", "rouge_l": "ROUGE-L", "length": "length (words)",
}  # fmt: skip
LABELER = {"rules": "the project's rule-based labeler (`cxr_vqa.labeler`)", "chexbert": "CheXbert (via RadEval)"}
PUBLISHED = ("LLaVA-Rad on MIMIC-CXR findings, F1-CheXbert: micro-F1-14 57.3, micro-F1-5 57.4, macro-F1-14 39.5, "
             "macro-F1-5 47.7; CheXagent 39.3 / 41.2 / 24.7 / 34.5 (x100)")  # fmt: skip


def findings_summary(m: dict) -> list[str]:
    f = m.get("findings")
    if not f:
        return []
    label = LABELS[PRIMARY]
    models = "; ".join(f"{n} {_est(s[PRIMARY])}" for n, s in f["models"].items())
    lines = [f"  findings ({f['reports']} reports, labeler {f['labeler']}): {label} {models}"]
    lines += [f"  {name.replace('_minus_', ' - ')} {label} {_diff(d[PRIMARY])}" for name, d in f["difference"].items()]
    lines += [f"  blank-image drop ({name}) {label} {_diff(d[PRIMARY])}" for name, d in f["ablation"].items()]
    return lines


def findings_markdown(m: dict) -> list[str]:
    f = m.get("findings")
    if not f:
        return []
    variants, diffs = list(f["models"]), list(f["difference"])
    boot = f["bootstrap"]
    scale = (
        ""
        if f["labeler"] == "chexbert"
        else (
            " Its figures are **not on CheXbert's scale**: a rule-based labeler reads reports differently (its own "
            "errors, on other sentences), so compare models within this report, not with papers; `--labeler chexbert` "
            "gives the papers' scale where RadEval and its weights are installed."
        )
    )
    out = [
        "", f"## Findings reports ({f['reports']} reports)", "",
        f"Each findings question asks a model to write the film's findings; the report and its reference are labelled "
        f"by {LABELER.get(f['labeler'], f['labeler'])} on the 14 CheXpert observations and compared as F1-CheXbert "
        f"is (LLaVA-Rad's evaluation code).{scale} Published, for orientation only: {PUBLISHED}.", "",
        "- an observation counts only when labelled **positive**; the **+** variants count *uncertain* as positive",
        "- **micro**: true/false positives and negatives pooled over observations and reports, 2TP / (2TP + FP + FN); "
        "**macro**: the mean of the observations' F1s, an observation nobody asserts scoring 0 (as scikit-learn's "
        "zero_division in LLaVA-Rad's figures)",
        "- **14**: all 14 observations, No Finding included; **5**: " + ", ".join(f["five"]),
        f"- 95% intervals: percentile bootstrap over reports ({boot['resamples']} resamples, seed {boot['seed']}), "
        "the same draws for every model: differences are paired (two-sided bootstrap p); micro F1-14 joins the "
        "primary tests' Holm family (p_holm), the other rows are secondary",
        "- BLEU-4: corpus BLEU over lower-cased words, no smoothing; ROUGE-L: mean per-report LCS F-measure", "",
    ]  # fmt: skip
    rows = [[LABELS[k], *[_est(f["models"][v][k]) for v in variants], *[_diff(f["difference"][d][k]) for d in diffs]]
            for k in LABELS]  # fmt: skip
    out += _table(["metric", *variants, *[d.replace("_minus_", " − ") for d in diffs]], rows)
    if f["ablation"]:
        out += ["", "### Findings without the film (the same question with a blank image)", "",
                "A model that reads the film must lose F1 when it writes for a black one.", ""]  # fmt: skip
        rows = [[name, LABELS[k], _est(f["models"][name][k]), _est(f["models"][f"{name}_blank"][k]), _diff(d[k])]
                for name, d in f["ablation"].items() for k in (PRIMARY, "micro_f1_5", "macro_f1_14")]  # fmt: skip
        out += _table(["model", "metric", "film", "blank", "drop (film − blank)"], rows)
    models = with_image(variants)
    out += ["", "### Per observation (uncertain as negative)", ""]
    rows = []
    for o in f["observations"]:
        cells = [f["models"][v]["per_observation"][o] for v in models]
        rows.append(
            [
                o,
                str(cells[0]["support"]) if cells else "0",
                *[f"{_num(c['precision'], 2)} / {_num(c['recall'], 2)} / {_num(c['f1'], 2)}" for c in cells],
            ]
        )
    out += _table(["observation", "support", *[f"P / R / F1 {v}" for v in models]], rows)
    out += ["", f"![findings F1s with 95% intervals]({FINDINGS_PNG})"]
    return out

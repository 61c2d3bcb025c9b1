"""The metrics builder: metrics.json from prediction records. Every model's headline metrics (from the per-question
scores of `evaluation.scoring`) and P(yes) confidence with 95% intervals over studies, each other model's paired
difference from the base (Holm-adjusted when several are compared), and the blank-image drop of each model.

    result = build_metrics(records, models=["base", "tuned"], ablation=True, info={...}, n_resamples=1000, seed=0)
    summarize(records, "tuned"), compare(records, "base", "tuned")          # one model's metrics, a paired test
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxr_vqa.answers import parse_yes_no
from cxr_vqa.errors import UserError
from cxr_vqa.reports import variant_name
from cxr_vqa.vqa import BASE
from evaluation import stats as S
from evaluation.confidence import compare_confidence, summarize_confidence
from evaluation.scoring import majority_rate
from evaluation.stats import bootstrap_ci, mcnemar_exact, paired_bootstrap

# Summaries over prediction records: {"study_id", "kind", "finding", "scores": {variant: score_answer(...)}}.
# `variant` names one model and image condition ("base", "tuned", "tuned_blank" ...).
HEADLINE = {  # metric → (question kind it covers, None = all; per-question score key)
    "closed_accuracy": ("closed", "correct"),
    "unparseable_rate": ("closed", "parsed"),
    "open_f1": ("open", "f1"),
    "open_recall": ("open", "recall"),
    "open_rouge_l": ("open", "rouge_l"),
    "answer_length": (None, "length"),
}


def metric_values(records: Sequence[dict], variant: str, metric: str) -> tuple[list[float], list[str]]:
    """Per-question values of one headline metric for one variant, with each question's study id."""
    kind, key = HEADLINE[metric]
    rows = [r for r in records if kind is None or r["kind"] == kind]
    if metric == "unparseable_rate":  # only questions that want a yes or a no can be unparseable
        rows = [r for r in rows if r["scores"][variant].get("yes_no", True)]
        values = [float(r["scores"][variant][key] is None) for r in rows]
    else:
        values = [float(r["scores"][variant][key]) for r in rows]
    return values, [r["study_id"] for r in rows]


def _estimate(values: list[float], groups: list[str], **boot) -> dict:
    value = float(np.mean(values)) if values else float("nan")
    return {"value": value, "ci": list(bootstrap_ci(values, groups, **boot)), "n": len(values)}


def summarize(records: Sequence[dict], variant: str, **boot) -> dict:
    """Every headline metric of one variant with its bootstrap interval, plus closed accuracy per finding."""
    summary = {metric: _estimate(*metric_values(records, variant, metric), **boot) for metric in HEADLINE}
    findings = sorted({r["finding"] for r in records if r["kind"] == "closed" and r.get("finding")})
    summary["per_finding"] = {}
    for finding in findings:
        rows = [r for r in records if r["kind"] == "closed" and r.get("finding") == finding]
        values = [float(r["scores"][variant]["correct"]) for r in rows]
        summary["per_finding"][finding] = _estimate(values, [r["study_id"] for r in rows], **boot)
    return summary


def compare(records: Sequence[dict], a: str, b: str, **boot) -> dict:
    """b minus a on every headline metric over the same questions: paired bootstrap interval and p-value; closed
    accuracy also gets McNemar's exact test (reported as its p_value, the paired bootstrap's as bootstrap_p)."""
    out = {}
    for metric in HEADLINE:
        values_a, groups = metric_values(records, a, metric)
        values_b, _ = metric_values(records, b, metric)
        out[metric] = {**paired_bootstrap(values_a, values_b, groups, **boot), "test": "paired_bootstrap"}
        if metric == "closed_accuracy" and values_a:
            out[metric]["bootstrap_p"] = out[metric]["p_value"]
            out[metric]["p_value"] = mcnemar_exact([bool(v) for v in values_a], [bool(v) for v in values_b])
            out[metric]["test"] = "mcnemar_exact"
    return out


def build_metrics(
    records: list[dict], *, models: Sequence[str], ablation: bool, info: dict, n_resamples: int, seed: int
) -> dict:
    boot = {"n_resamples": n_resamples, "seed": seed}
    names = list(models) + ([variant_name(m, blank=True) for m in models] if ablation else [])
    closed = [r.get("label") or parse_yes_no(r["reference"]) for r in records if r["kind"] == "closed"]
    result = {
        **info,
        "studies": len({r["study_id"] for r in records}), "patients": len({r["patient_id"] for r in records}),
        "questions": {"total": len(records), "closed": len(closed), "open": len(records) - len(closed)},
        "chance": {"closed_accuracy": majority_rate(closed), "rule": "always the majority answer"},
        "bootstrap": {"unit": "study", "resamples": n_resamples, "confidence": S.CONFIDENCE, "seed": seed},
        "models": {n: {**summarize(records, n, **boot), **confidence(records, n, boot)} for n in names},
        "difference": {},
        "ablation": {},
    }  # fmt: skip
    adapters = [m for m in models if m != BASE]
    for name in adapters:
        diff = {**compare(records, BASE, name, **boot), **compare_confidence(records, BASE, name, **boot)}
        result["difference"][f"{name}_minus_base"] = diff
    if len(adapters) > 1:  # several adapters against one base: correct the closed-accuracy tests for multiplicity
        diffs = [result["difference"][f"{name}_minus_base"] for name in adapters]
        for diff, adjusted in zip(diffs, S.holm([d["closed_accuracy"]["p_value"] for d in diffs]), strict=True):
            diff["closed_accuracy"]["p_holm"] = adjusted
        result["multiplicity"] = f"Holm-adjusted over {len(adapters)} adapters compared with the base (p_holm)"
    for name in models if ablation else []:  # the drop: with the image minus with a blank one
        blank = variant_name(name, blank=True)
        result["ablation"][name] = {
            **compare(records, blank, name, **boot),
            **compare_confidence(records, blank, name, **boot),
        }
    return result


def confidence(records: list[dict], name: str, boot: dict) -> dict:
    summary = summarize_confidence(records, name, **boot)
    return {"confidence": summary, "macro_auroc": summary["macro_auroc"], "brier": summary["brier"]}


def radeval_scores(records: list[dict], names: list[str]) -> dict:
    """BERTScore, CheXbert and RadGraph F1 of the open answers via RadEval; needs its downloaded weights."""
    try:
        from RadEval import RadEval
    except ImportError:
        raise UserError("--extra-metrics radeval needs the RadEval package: `pip install RadEval`") from None
    opened = [r for r in records if r["kind"] == "open"]
    if not opened:
        return {}
    try:
        evaluator = RadEval(do_bertscore=True, do_chexbert=True, do_radgraph=True)
        refs = [r["reference"] for r in opened]
        return {name: evaluator(refs=refs, hyps=[r["answers"][name] for r in opened]) for name in names}
    except Exception as err:  # noqa: BLE001 - any failure here is missing weights or network, for the user one line
        raise UserError(f"RadEval could not run (its model weights must be downloadable or cached): {err}") from None

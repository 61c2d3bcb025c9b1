"""The metrics builder: metrics.json from prediction records. Every model's headline metrics (from the per-question
scores of `evaluation.scoring`) and P(yes) confidence with 95% intervals over studies, paired differences (each
adapter against the base, each remote model against every model before it; Holm-adjusted when there are several),
and the blank-image drop of each model. A model without P(yes) (an endpoint that returned no logprobs) has its AUROC
and calibration marked unavailable, never guessed. Findings questions (kind "findings": a written report) are scored
apart, by the labels their sentences assert (`evaluation.findings`, metrics.json's "findings" block); their micro
F1-14 test against the base joins the closed-accuracy tests in one Holm family: the report's primary claims.

    result = build_metrics(records, models=["base", "tuned"], ablation=True, info={...}, n_resamples=1000, seed=0)
    summarize(records, "tuned"), compare(records, "base", "tuned")          # one model's metrics, a paired test
    comparisons(["base", "tuned", "gpt4o"], remotes=["gpt4o"])   # [("base", "tuned"), ("base", "gpt4o"), ...]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from cxr_vqa.answers import parse_yes_no
from cxr_vqa.errors import UserError
from cxr_vqa.findings import FINDINGS_KIND
from cxr_vqa.reports import variant_name
from cxr_vqa.vqa import BASE
from evaluation import stats as S
from evaluation.confidence import compare_confidence, summarize_confidence
from evaluation.findings import PRIMARY, findings_metrics, rule_labeler
from evaluation.scoring import majority_rate
from evaluation.stats import bootstrap_ci, mcnemar_exact, paired_bootstrap

# Summaries over prediction records: {"study_id", "kind", "finding", "scores": {variant: score_answer(...)}}.
# `variant` names one model and image condition ("base", "tuned", "tuned_blank" ...).
QUESTIONS = ("closed", "open")  # the kinds answered in a few words; findings reports are scored apart
HEADLINE = {  # metric → (question kinds it covers; per-question score key)
    "closed_accuracy": (("closed",), "correct"),
    "unparseable_rate": (("closed",), "parsed"),
    "open_f1": (("open",), "f1"),
    "open_recall": (("open",), "recall"),
    "open_rouge_l": (("open",), "rouge_l"),
    "answer_length": (QUESTIONS, "length"),
}


def metric_values(records: Sequence[dict], variant: str, metric: str) -> tuple[list[float], list[str]]:
    """Per-question values of one headline metric for one variant, with each question's study id."""
    kinds, key = HEADLINE[metric]
    rows = [r for r in records if r["kind"] in kinds]
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
    records: list[dict],
    *,
    models: Sequence[str],
    ablation: bool,
    info: dict,
    n_resamples: int,
    seed: int,
    remotes: Sequence[str] = (),
    labeler=rule_labeler,
    labeler_name: str = "rules",
    findings_resamples: int | None = None,
) -> dict:
    """metrics.json: see the module's docstring; `labeler` labels the findings reports (`evaluation.findings`),
    whose intervals take `findings_resamples` (default `n_resamples`)."""
    boot = {"n_resamples": n_resamples, "seed": seed}
    names = list(models) + ([variant_name(m, blank=True) for m in models] if ablation else [])
    closed = [r.get("label") or parse_yes_no(r["reference"]) for r in records if r["kind"] == "closed"]
    kinds = Counter(r["kind"] for r in records)
    result = {
        **info,
        "studies": len({r["study_id"] for r in records}), "patients": len({r["patient_id"] for r in records}),
        "questions": {"total": len(records), "closed": len(closed), "open": kinds["open"],
                      **({"findings": kinds[FINDINGS_KIND]} if kinds[FINDINGS_KIND] else {})},
        "chance": {"closed_accuracy": majority_rate(closed), "rule": "always the majority answer"},
        "bootstrap": {"unit": "study", "resamples": n_resamples, "confidence": S.CONFIDENCE, "seed": seed},
        "models": {n: {**summarize(records, n, **boot), **confidence(records, n, boot)} for n in names},
        "difference": {},
        "ablation": {},
    }  # fmt: skip
    pairs = comparisons(models, remotes)
    for a, b in pairs:
        result["difference"][f"{b}_minus_{a}"] = _paired(records, a, b, result["models"], boot)
    for name in models if ablation else []:  # the drop: with the image minus with a blank one
        result["ablation"][name] = _paired(records, variant_name(name, blank=True), name, result["models"], boot)
    findings = findings_metrics(
        records, variants=names, pairs=pairs, ablated=list(models) if ablation else [], labeler=labeler,
        labeler_name=labeler_name, n_resamples=findings_resamples or n_resamples, seed=seed,
    )
    if findings:
        result["findings"] = findings
    _holm(result)
    return result


def _holm(result: dict) -> None:
    """Holm-adjust the primary tests of every comparison together (p_holm beside each p_value): closed accuracy, and
    the findings' micro F1-14 where there are findings questions. One family: whichever a reader takes as the
    evidence that a model beats another, the chance of one false claim among them all stays at 5%."""
    family = [d["closed_accuracy"] for d in result["difference"].values()]
    family += [d[PRIMARY] for d in result.get("findings", {}).get("difference", {}).values()]
    family = [test for test in family if not np.isnan(test["p_value"])]  # no closed question: no test
    if len(family) < 2:
        return
    for test, adjusted in zip(family, S.holm([test["p_value"] for test in family]), strict=True):
        test["p_holm"] = adjusted
    tests = "closed-accuracy and findings micro-F1-14 tests" if "findings" in result else "closed-accuracy tests"
    result["multiplicity"] = f"Holm-adjusted over the {len(result['difference'])} comparisons' {tests} (p_holm)"


def comparisons(models: Sequence[str], remotes: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(a, b) pairs whose difference b - a is tested: every adapter against the base; every remote model against
    every model before it (the base, each adapter, earlier remote models)."""
    pairs = []
    for i, b in enumerate(models):
        if b in remotes:
            pairs += [(a, b) for a in models[:i]]
        elif b != BASE and BASE in models:
            pairs.append((BASE, b))
    return pairs


def _paired(records: list[dict], a: str, b: str, summaries: dict, boot: dict) -> dict:
    """b minus a: the headline metrics, and P(yes)'s AUROC and Brier score where both models have it."""
    missing = [summaries[n]["confidence"].get("unavailable") for n in (a, b)]
    if any(missing):
        why = next(m for m in missing if m)
        return {**compare(records, a, b, **boot), "macro_auroc": unavailable(why), "brier": unavailable(why)}
    return {**compare(records, a, b, **boot), **compare_confidence(records, a, b, **boot)}


NO_P_YES = "no P(yes): the endpoint returned no logprobs for the answer's first token"


def unavailable(why: str) -> dict:
    return {"value": float("nan"), "ci": [float("nan"), float("nan")], "p_value": float("nan"), "unavailable": why}


def confidence(records: list[dict], name: str, boot: dict) -> dict:
    """P(yes)'s AUROC and calibration; unavailable when no yes/no question of `name` has a P(yes)."""
    yes_no = [r for r in records if r["kind"] == "closed" and (r.get("label") or parse_yes_no(r["reference"]))]
    scored = [r for r in yes_no if r.get("p_yes", {}).get(name) is not None]
    if yes_no and not scored:
        summary = {"n": 0, "unavailable": NO_P_YES, "per_finding": {}, "macro_auroc": unavailable(NO_P_YES),
                   "auroc_all": unavailable(NO_P_YES), "brier": unavailable(NO_P_YES),
                   "ece": {"value": float("nan"), "unavailable": NO_P_YES}, "reliability": []}  # fmt: skip
    else:
        summary = summarize_confidence(records, name, **boot)
    summary["p_yes_coverage"] = len(scored) / len(yes_no) if yes_no else float("nan")
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

"""metrics.json from prediction records: every model's headline metrics and P(yes) confidence, each adapter's paired
difference from the base (Holm-adjusted when several are compared), and the blank-image drop of each model.

    result = build_metrics(records, models=["base", "tuned"], ablation=True, info={...}, n_resamples=1000, seed=0)
"""

from __future__ import annotations

from collections.abc import Sequence

from cxr_vqa.answers import parse_yes_no
from cxr_vqa.errors import UserError
from cxr_vqa.vqa import BASE
from finetune import metrics as M
from finetune import stats as S
from finetune.confidence import compare_confidence, summarize_confidence


def build_metrics(
    records: list[dict], *, models: Sequence[str], ablation: bool, info: dict, n_resamples: int, seed: int
) -> dict:
    boot = {"n_resamples": n_resamples, "seed": seed}
    names = list(models) + ([f"{m}_blank" for m in models] if ablation else [])
    closed = [r.get("label") or parse_yes_no(r["reference"]) for r in records if r["kind"] == "closed"]
    result = {
        **info,
        "studies": len({r["study_id"] for r in records}), "patients": len({r["patient_id"] for r in records}),
        "questions": {"total": len(records), "closed": len(closed), "open": len(records) - len(closed)},
        "chance": {"closed_accuracy": M.majority_rate(closed), "rule": "always the majority answer"},
        "bootstrap": {"unit": "study", "resamples": n_resamples, "confidence": S.CONFIDENCE, "seed": seed},
        "models": {n: {**M.summarize(records, n, **boot), **confidence(records, n, boot)} for n in names},
        "difference": {},
        "ablation": {},
    }  # fmt: skip
    adapters = [m for m in models if m != BASE]
    for name in adapters:
        diff = {**M.compare(records, BASE, name, **boot), **compare_confidence(records, BASE, name, **boot)}
        result["difference"][f"{name}_minus_base"] = diff
    if len(adapters) > 1:  # several adapters against one base: correct the closed-accuracy tests for multiplicity
        diffs = [result["difference"][f"{name}_minus_base"] for name in adapters]
        for diff, adjusted in zip(diffs, S.holm([d["closed_accuracy"]["p_value"] for d in diffs]), strict=True):
            diff["closed_accuracy"]["p_holm"] = adjusted
        result["multiplicity"] = f"Holm-adjusted over {len(adapters)} adapters compared with the base (p_holm)"
    for name in models if ablation else []:  # the drop: with the image minus with a blank one
        blank = f"{name}_blank"
        result["ablation"][name] = {
            **M.compare(records, blank, name, **boot),
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

"""Written findings scored as the field scores them: the labels each report asserts against its reference's, as
F1-CheXbert in LLaVA-Rad's evaluation code (rrg_eval: chexbert.py, factuality_utils.py), with 95% bootstrap
intervals, paired tests against the base, a per-observation table, BLEU-4 and ROUGE-L beside them.

    block = findings_metrics(records, variants=["base", "tuned", "base_blank", "tuned_blank"],
                             pairs=[("base", "tuned")], ablated=["base", "tuned"], n_resamples=500, seed=0)
    block["models"]["tuned"]["micro_f1_14"]   # {"value", "ci"}; block["difference"]["tuned_minus_base"] ...
    f1_table(pred, ref)                       # the F1s of boolean (reports x observations) arrays, no bootstrap

Definitions (LLaVA-Rad's `map_to_binary` and scikit-learn's classification_report):
- each report is labelled by the same labeler as its reference (`cxr_vqa.labeler` by default) on the 14 CheXpert
  observations, "No Finding" included; an observation counts as positive only when labelled positive (negative,
  uncertain and not mentioned are 0); the "+" variants (`*_plus`) count uncertain as positive too;
- micro F1 pools true positives, false positives and false negatives over every observation and report:
  2 TP / (2 TP + FP + FN); macro F1 is the mean of the observations' F1s, where an observation that neither the
  references nor the reports assert scores 0 (scikit-learn's zero_division, as in LLaVA-Rad's figures);
- "14": all 14 observations; "5": Cardiomegaly, Edema, Consolidation, Atelectasis, Pleural Effusion;
- intervals: percentile bootstrap over reports (clustered by study, one findings question each in a dataprep
  dataset), 500 resamples by default as LLaVA-Rad; every variant is resampled with the same draws, so a difference
  is paired, and its p-value is the two-sided bootstrap p of `evaluation.stats.paired_p_value`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cxr_vqa.findings import FINDINGS_KIND
from cxr_vqa.labeler import FIVE, OBSERVATIONS, label_report
from evaluation import stats as S
from evaluation.text_metrics import bleu_stats, corpus_bleu, rouge_l

N_RESAMPLES = 500  # LLaVA-Rad's bootstrap
F1_METRICS = ("micro_f1_14", "macro_f1_14", "micro_f1_5", "macro_f1_5",
              "micro_f1_14_plus", "macro_f1_14_plus", "micro_f1_5_plus", "macro_f1_5_plus")  # fmt: skip
TEXT_METRICS = ("bleu4", "rouge_l", "length")
METRICS = F1_METRICS + TEXT_METRICS
PRIMARY = "micro_f1_14"  # the one findings test that joins the report's family of primary tests (Holm)
_FIVE = [OBSERVATIONS.index(o) for o in FIVE]
Labeler = Callable[[list[str]], list[dict]]


def rule_labeler(texts: list[str]) -> list[dict]:
    """The project's own labeler, report by report."""
    return [label_report(text or "") for text in texts]


def label_array(labels: Sequence[dict]) -> np.ndarray:
    """(reports x 14) of 1, 0 and -1, in OBSERVATIONS order; an observation not mentioned is 0."""
    return np.array([[found.get(o) or 0 for o in OBSERVATIONS] for found in labels], dtype=np.int8).reshape(-1, 14)


def _counts(pred: np.ndarray, ref: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted TP, FP, FN per observation: (resamples x observations) each, from boolean (reports x observations)."""
    pred, ref = pred.astype(float), ref.astype(float)
    return weights @ (pred * ref), weights @ (pred * (1 - ref)), weights @ ((1 - pred) * ref)


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = 2 * tp + fp + fn
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1e-300), 0.0)


def f1_table(pred: np.ndarray, ref: np.ndarray, weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Micro and macro F1 (one value per row of `weights`; one row of ones without) and per-observation F1,
    precision and recall (rows x observations) of boolean (reports x observations) arrays."""
    weights = np.ones((1, len(pred))) if weights is None else weights
    tp, fp, fn = _counts(pred, ref, weights)
    per = _f1(tp, fp, fn)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1e-300), 0.0)
    micro = _f1(tp.sum(axis=1), fp.sum(axis=1), fn.sum(axis=1))
    return {"micro": micro, "macro": per.mean(axis=1), "f1": per, "precision": precision, "recall": recall}


def binary(values: np.ndarray, plus: bool) -> np.ndarray:
    """Positive (1), or with `plus` positive or uncertain (1 or -1), as LLaVA-Rad's "rrg" and "rrg+" readings."""
    return (values == 1) | (plus & (values == -1))


class Reports:
    """One evaluation's findings questions as arrays: the reference's labels and each variant's, the BLEU counts and
    ROUGE-L of each report, and one bootstrap weight matrix (row 0: the sample itself) shared by every variant."""

    def __init__(self, records: Sequence[dict], variants: Sequence[str], labeler: Labeler, n_resamples: int,
                 seed: int) -> None:  # fmt: skip
        self.records = [r for r in records if r["kind"] == FINDINGS_KIND]
        self.ref = label_array(labeler([r["reference"] for r in self.records]))
        self.labels = {v: label_array(labeler([r["answers"][v] for r in self.records])) for v in variants}
        index, n_groups = S.group_index([r["study_id"] for r in self.records])
        draws = S.study_draws(n_groups, n_resamples, seed)[:, index]
        self.weights = np.vstack([np.ones((1, len(self.records))), draws])
        self.bleu = {v: np.array([bleu_stats(r["answers"][v], r["reference"]) for r in self.records], float)
                     for v in variants}  # fmt: skip
        self.rouge = {v: np.array([rouge_l(r["answers"][v], r["reference"]) for r in self.records]) for v in variants}
        self.length = {v: np.array([len(r["answers"][v].split()) for r in self.records], float) for v in variants}

    def _mean(self, values: np.ndarray) -> np.ndarray:
        return self.weights @ values / self.weights.sum(axis=1)

    def values(self, variant: str) -> dict[str, np.ndarray]:
        """Every metric of `variant`: (1 + resamples,) each, the sample's value first."""
        out = {}
        for plus in (False, True):
            pred, ref = binary(self.labels[variant], plus), binary(self.ref, plus)
            suffix = "_plus" if plus else ""
            for size, columns in (("14", slice(None)), ("5", _FIVE)):
                table = f1_table(pred[:, columns], ref[:, columns], self.weights)
                out[f"micro_f1_{size}{suffix}"], out[f"macro_f1_{size}{suffix}"] = table["micro"], table["macro"]
        out["bleu4"] = corpus_bleu(self.weights @ self.bleu[variant])
        out["rouge_l"], out["length"] = self._mean(self.rouge[variant]), self._mean(self.length[variant])
        return out

    def per_observation(self, variant: str) -> dict[str, dict]:
        """Support (reference positives), precision, recall and F1 with its interval, per observation (uncertain as
        negative)."""
        table = f1_table(binary(self.labels[variant], False), binary(self.ref, False), self.weights)
        support = binary(self.ref, False).sum(axis=0)
        return {
            o: {"support": int(support[k]), "precision": float(table["precision"][0, k]),
                "recall": float(table["recall"][0, k]), "f1": float(table["f1"][0, k]),
                "f1_ci": list(S.percentile_ci(table["f1"][1:, k]))}
            for k, o in enumerate(OBSERVATIONS)
        }  # fmt: skip


def _estimate(samples: np.ndarray) -> dict:
    return {"value": float(samples[0]), "ci": list(S.percentile_ci(samples[1:]))}


def _paired(a: dict, b: dict) -> dict:
    """b minus a on every metric, over the same resamples."""
    out = {}
    for metric in METRICS:
        diff = b[metric] - a[metric]
        out[metric] = {"value": float(diff[0]), "ci": list(S.percentile_ci(diff[1:])),
                       "p_value": S.paired_p_value(float(diff[0]), diff[1:]), "test": "paired_bootstrap"}  # fmt: skip
    return out


def findings_metrics(
    records: Sequence[dict], *, variants: Sequence[str], pairs: Sequence[tuple[str, str]], ablated: Sequence[str],
    labeler: Labeler = rule_labeler, labeler_name: str = "rules", n_resamples: int = N_RESAMPLES, seed: int = 0,
) -> dict | None:  # fmt: skip
    """metrics.json's "findings" block (None when no question is a findings question): every variant's metrics
    with intervals, `pairs`' differences (b minus a) and each of `ablated`'s drop without its film (film minus
    blank: `<model>_blank` must be among `variants`)."""
    reports = Reports(records, variants, labeler, n_resamples, seed)
    if not reports.records:
        return None
    values = {v: reports.values(v) for v in variants}
    support = binary(reports.ref, False).sum(axis=0)
    return {
        "reports": len(reports.records),
        "labeler": labeler_name,
        "observations": list(OBSERVATIONS),
        "five": list(FIVE),
        "reference_positives": {o: int(support[k]) for k, o in enumerate(OBSERVATIONS)},
        "bootstrap": {"unit": "report (by study)", "resamples": n_resamples, "confidence": S.CONFIDENCE, "seed": seed},
        "models": {
            v: {**{m: _estimate(values[v][m]) for m in METRICS}, "per_observation": reports.per_observation(v)}
            for v in variants
        },  # fmt: skip
        "difference": {f"{b}_minus_{a}": _paired(values[a], values[b]) for a, b in pairs},
        "ablation": {m: _paired(values[f"{m}_blank"], values[m]) for m in ablated},
    }

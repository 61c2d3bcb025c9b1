"""How well P(yes) ranks and calibrates: per-finding AUROC (the CheXpert competition's measure), macro AUROC, Brier
score and expected calibration error, with 95% intervals over studies, and the paired test of two models' macro
AUROC. Pure functions over prediction records that carry `p_yes: {variant: float}`.

    summarize_confidence(records, "tuned")            # per_finding, macro_auroc, auroc_all, brier, ece, reliability
    compare_confidence(records, "base", "tuned")      # tuned - base macro AUROC: interval and bootstrap p

A finding whose questions are all "yes" (or all "no") has no AUROC: it is reported as undefined (NaN) and left out
of the macro mean, never counted as 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxr_vqa.answers import YES, parse_yes_no
from evaluation import stats as S

ALL = "all"  # the pooled group, for benchmarks whose questions name no finding


def _rows(records: Sequence[dict], variants: Sequence[str]) -> list[dict]:
    """Closed yes/no questions with a P(yes) for every variant."""
    out = []
    for r in records:
        truth = r.get("label") or parse_yes_no(r.get("reference"))
        if (
            r["kind"] == "closed"
            and truth in ("yes", "no")
            and all(r.get("p_yes", {}).get(v) is not None for v in variants)
        ):
            out.append({**r, "_truth": truth == YES})
    return out


class _Table:
    """The yes/no questions as arrays, and one cluster-bootstrap weight matrix shared by every statistic of them."""

    def __init__(self, rows: list[dict], n_resamples: int, seed: int):
        self.y = np.array([r["_truth"] for r in rows], dtype=bool)
        self.findings = np.array([r.get("finding") or ALL for r in rows], dtype=object)
        index, n_studies = S.group_index([r["study_id"] for r in rows])
        self.weights = S.study_draws(n_studies, n_resamples, seed)[:, index] if rows else np.zeros((n_resamples, 0))
        self.rows = rows

    def p(self, variant: str) -> np.ndarray:
        return np.array([r["p_yes"][variant] for r in self.rows], dtype=float)

    def aurocs(self, variant: str) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Per finding: the AUROC and its resamples."""
        p, values, samples = self.p(variant), {}, {}
        for finding in sorted(set(self.findings)):
            mask = self.findings == finding
            values[finding] = S.auroc(p[mask], self.y[mask])
            samples[finding] = S.weighted_auroc(p[mask], self.y[mask], self.weights[:, mask])
        return values, samples

    def macro(self, variant: str) -> tuple[float, np.ndarray, list[str]]:
        values, samples = self.aurocs(variant)
        defined = [f for f, v in values.items() if not np.isnan(v)]
        if not defined:
            return float("nan"), np.full(self.weights.shape[0], np.nan), []
        stack = np.stack([samples[f] for f in defined])
        valid = ~np.isnan(stack)  # a resample can leave a finding with one class: averaged over the others
        counts = valid.sum(axis=0)
        resampled = np.where(counts > 0, np.where(valid, stack, 0).sum(axis=0) / np.maximum(counts, 1), np.nan)
        return float(np.mean([values[f] for f in defined])), resampled, defined


def _estimate(value: float, samples: np.ndarray, **extra) -> dict:
    return {"value": value, "ci": list(S.percentile_ci(samples)), **extra}


def summarize_confidence(records: Sequence[dict], variant: str, *, n_resamples: int = S.N_RESAMPLES, seed: int = 0):
    rows = _rows(records, [variant])
    table = _Table(rows, n_resamples, seed)
    values, samples = table.aurocs(variant)
    macro, macro_samples, defined = table.macro(variant)
    p, y = table.p(variant), table.y
    pooled = S.weighted_auroc(p, y, table.weights) if rows else np.array([np.nan])
    squared = (p - y) ** 2
    groups = [r["study_id"] for r in rows]
    return {
        "n": len(rows),
        "per_finding": {
            f: _estimate(
                v, samples[f], n=int((table.findings == f).sum()), positives=int(y[table.findings == f].sum())
            )
            for f, v in values.items()
        },
        "macro_auroc": _estimate(macro, macro_samples, findings=defined),
        "auroc_all": _estimate(S.auroc(p, y), pooled),
        "brier": {
            "value": S.brier(p, y),
            "ci": list(S.bootstrap_ci(squared, groups, n_resamples=n_resamples, seed=seed)),
        },
        "ece": {"value": S.expected_calibration_error(p, y), "bins": S.ECE_BINS},
        "reliability": S.reliability(p, y),
    }


def compare_confidence(records: Sequence[dict], a: str, b: str, *, n_resamples: int = S.N_RESAMPLES, seed: int = 0):
    """b minus a over the same questions and the same resamples: macro AUROC and Brier score, each with its interval
    and two-sided bootstrap p."""
    rows = _rows(records, [a, b])
    table = _Table(rows, n_resamples, seed)
    value_a, samples_a, _ = table.macro(a)
    value_b, samples_b, _ = table.macro(b)
    observed, diff = value_b - value_a, samples_b - samples_a
    macro = {"value": observed, "ci": list(S.percentile_ci(diff)), "p_value": S.paired_p_value(observed, diff),
             "test": "paired_bootstrap"}  # fmt: skip
    errors = [(table.p(name) - table.y) ** 2 for name in (a, b)]
    groups = [r["study_id"] for r in rows]
    brier = S.paired_bootstrap(*errors, groups, n_resamples=n_resamples, seed=seed)
    return {"macro_auroc": macro, "brier": {**brier, "test": "paired_bootstrap"}}

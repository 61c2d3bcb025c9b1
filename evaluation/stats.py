"""Statistics for evaluation: pure functions of numbers, no model, no I/O.

    bootstrap_ci(values, groups=study_ids)                 # 95% percentile interval, resampling studies
    paired_bootstrap(a, b, groups)                         # mean of b - a, its interval and a two-sided p-value
    mcnemar_exact(base_correct, tuned_correct)             # two-sided exact p for paired yes/no correctness
    auroc(scores, labels)                                  # NaN when a class is missing: undefined, not 0.5
    expected_calibration_error(p, labels)                  # 10 equal-width bins
    holm([p1, p2, ...])                                    # Holm-Bonferroni adjusted p-values

Intervals resample *studies*, not questions: the questions of one study share an image and are correlated, so a
question-level bootstrap would give intervals that are too narrow. One resampling matrix (`study_draws`) can be
shared by several statistics, which makes their differences paired.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_RESAMPLES = 1000
CONFIDENCE = 0.95
ECE_BINS = 10


def group_index(groups: Sequence) -> tuple[np.ndarray, int]:
    """Each value's group as an integer 0..n_groups-1."""
    _, index = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    return index, int(index.max()) + 1 if len(groups) else 0


def study_draws(n_groups: int, n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """(n_resamples, n_groups): how often each group is drawn in each cluster-bootstrap resample."""
    draws = np.random.default_rng(seed).integers(0, n_groups, size=(n_resamples, n_groups))
    counts = np.zeros((n_resamples, n_groups))
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1)
    return counts


def _resampled_means(values, groups, n_resamples: int, seed: int) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    index, n_groups = group_index(groups) if groups is not None else (np.arange(len(values)), len(values))
    weights = study_draws(n_groups, n_resamples, seed)[:, index]
    return (weights * values).sum(axis=1) / weights.sum(axis=1)


def percentile_ci(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    samples = np.asarray(samples, dtype=float)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ci(
    values: Sequence[float],
    groups: Sequence | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the mean; with `groups`, whole groups (studies) are resampled. NaN when empty."""
    if len(values) == 0:
        return float("nan"), float("nan")
    return percentile_ci(_resampled_means(values, groups, n_resamples, seed), confidence)


def paired_p_value(observed: float, resampled: np.ndarray) -> float:
    """Two-sided bootstrap p-value: the share of resampled differences, centred on zero, at least as far from zero
    as the observed one."""
    resampled = np.asarray(resampled, dtype=float)
    resampled = resampled[~np.isnan(resampled)]
    if observed == 0 or np.isnan(observed) or resampled.size == 0:
        return 1.0 if observed == 0 else float("nan")
    extreme = np.abs(resampled - observed) >= abs(observed) - 1e-12
    return float((1 + extreme.sum()) / (1 + resampled.size))


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    groups: Sequence | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict:
    """Mean of b - a over the same questions, its percentile interval and a two-sided bootstrap p-value."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    if len(a) == 0:
        return {"value": float("nan"), "ci": [float("nan"), float("nan")], "p_value": float("nan")}
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    observed = float(diff.mean())
    means = _resampled_means(diff, groups, n_resamples, seed)
    return {
        "value": observed,
        "ci": list(percentile_ci(means, confidence)),
        "p_value": paired_p_value(observed, means),
    }


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value for paired correctness: a binomial test on the discordant pairs."""
    from scipy.stats import binomtest

    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired samples differ in length: {len(a_correct)} vs {len(b_correct)}")
    only_a = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if y and not x)
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)


def weighted_auroc(scores: Sequence[float], labels: Sequence[bool], weights: np.ndarray) -> np.ndarray:
    """AUROC for each row of `weights` (resamples x questions): the weighted Mann-Whitney statistic, ties counted
    half. NaN in a row whose weights leave one class empty."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    order = np.argsort(scores, kind="stable")
    scores, labels, weights = scores[order], labels[order], weights[:, order]
    starts = np.flatnonzero(np.r_[True, np.diff(scores) != 0])  # one group per distinct score
    pos = np.add.reduceat(weights * labels, starts, axis=1)
    neg = np.add.reduceat(weights * ~labels, starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives with a lower score than each group
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (pos * (below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), value, np.nan)


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve; NaN (undefined) when one class is missing or there is no data."""
    if len(scores) == 0:
        return float("nan")
    return float(weighted_auroc(scores, labels, np.ones((1, len(scores))))[0])


def brier(p: Sequence[float], labels: Sequence[bool]) -> float:
    p, y = np.asarray(p, dtype=float), np.asarray(labels, dtype=float)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")


def reliability(p: Sequence[float], labels: Sequence[bool], bins: int = ECE_BINS) -> list[dict]:
    """Equal-width bins of predicted P(yes): mean confidence, share of yes labels and count in each non-empty bin."""
    p, y = np.asarray(p, dtype=float), np.asarray(labels, dtype=float)
    which = np.minimum((p * bins).astype(int), bins - 1)
    return [
        {"low": b / bins, "high": (b + 1) / bins, "confidence": float(p[which == b].mean()),
         "frequency": float(y[which == b].mean()), "n": int((which == b).sum())}
        for b in range(bins) if (which == b).any()
    ]  # fmt: skip


def expected_calibration_error(p: Sequence[float], labels: Sequence[bool], bins: int = ECE_BINS) -> float:
    """Σ over bins of |share of yes − mean P(yes)| weighted by the bin's share of questions."""
    table = reliability(p, labels, bins)
    total = sum(b["n"] for b in table)
    return float(sum(b["n"] * abs(b["frequency"] - b["confidence"]) for b in table) / total) if total else float("nan")


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    adjusted = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()

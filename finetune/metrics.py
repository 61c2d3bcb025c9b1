"""Answer metrics for chest X-ray VQA: pure functions from strings and numbers to numbers, no model, no I/O.

    parse_yes_no("Yes, mild cardiomegaly.")   # "yes";  parse_yes_no("Normal heart size.") -> None (strict)
    token_f1("small left effusion", "left pleural effusion")   # (precision, recall, f1)
    rouge_l("small left effusion", "left pleural effusion")
    bootstrap_ci(values, groups=study_ids)                    # 95% percentile interval, resampling studies
    mcnemar_exact(base_correct, tuned_correct)                # two-sided p for paired yes/no correctness

Strict closed parsing: the first whitespace-separated word, lower-cased and stripped of punctuation, must be "yes"
or "no"; anything else ("normal", "nope", an empty answer) is unparseable and counts as wrong. Lenient parsing
would credit a model for answers a reader could not act on.

Confidence intervals resample *studies*, not questions: the questions of one study share an image and are
correlated, so a question-level bootstrap would give intervals that are too narrow.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

YES, NO = "yes", "no"
_WORD_RE = re.compile(r"[a-z0-9]+")
N_RESAMPLES = 1000
CONFIDENCE = 0.95


def parse_yes_no(text: str | None) -> str | None:
    """'yes' / 'no' from the first word of an answer, or None when it is neither (strict)."""
    words = (text or "").split(maxsplit=1)
    if not words:
        return None
    first = words[0].strip(string.punctuation).lower()
    return first if first in (YES, NO) else None


def tokens(text: str | None) -> list[str]:
    """Lower-cased alphanumeric words: the unit of token F1 and ROUGE-L."""
    return _WORD_RE.findall((text or "").lower())


def token_f1(prediction: str, reference: str) -> tuple[float, float, float]:
    """(precision, recall, F1) of the multiset of words, SQuAD-style. Two empty texts agree perfectly."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        same = float(not pred and not ref)
        return same, same, same
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0, 0.0, 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return precision, recall, 2 * precision * recall / (precision + recall)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (beta = 1) over words: longest common subsequence, as `rouge-score` computes it."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(not pred and not ref)
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def score_answer(prediction: str, *, kind: str, reference: str, label: str | None = None) -> dict:
    """Per-question scores. Closed: parsed yes/no and correctness against `label` (or the reference's first word).
    Open: token precision/recall/F1 and ROUGE-L against the reference. Both: answer length in words."""
    scores: dict = {"length": len(prediction.split())}
    if kind == "closed":
        truth = label or parse_yes_no(reference)
        parsed = parse_yes_no(prediction)
        scores.update(parsed=parsed, correct=parsed is not None and parsed == truth)
    elif kind == "open":
        precision, recall, f1 = token_f1(prediction, reference)
        scores.update(precision=precision, recall=recall, f1=f1, rouge_l=rouge_l(prediction, reference))
    else:
        raise ValueError(f"kind must be 'closed' or 'open', got {kind!r}")
    return scores


def majority_rate(labels: Sequence[str | None]) -> float:
    """Accuracy of always answering the most common reference label: the 'chance' line for closed accuracy."""
    counts = Counter(label for label in labels if label is not None)
    return max(counts.values()) / len(labels) if labels and counts else float("nan")


def _group_index(n: int, groups: Sequence | None) -> tuple[np.ndarray, int]:
    if groups is None:
        return np.arange(n), n
    if len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} values")
    _, index = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    return index, int(index.max()) + 1 if n else 0


def _resampled_means(values, groups, n_resamples: int, seed: int) -> np.ndarray:
    """Means of `values` over `n_resamples` cluster-bootstrap samples (groups drawn with replacement)."""
    values = np.asarray(values, dtype=float)
    index, n_groups = _group_index(len(values), groups)
    sums = np.bincount(index, weights=values, minlength=n_groups)
    counts = np.bincount(index, minlength=n_groups).astype(float)
    draws = np.random.default_rng(seed).integers(0, n_groups, size=(n_resamples, n_groups))
    return sums[draws].sum(axis=1) / counts[draws].sum(axis=1)


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
    means = _resampled_means(values, groups, n_resamples, seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    groups: Sequence | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict:
    """Mean of b - a over the same questions, its percentile interval and a two-sided bootstrap p-value (the share of
    resampled differences, centred on zero, at least as far from zero as the observed one)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    if len(a) == 0:
        return {"value": float("nan"), "ci": [float("nan"), float("nan")], "p_value": float("nan")}
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    observed = float(diff.mean())
    means = _resampled_means(diff, groups, n_resamples, seed)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    extreme = np.abs(means - observed) >= abs(observed) - 1e-12
    p_value = 1.0 if observed == 0 else float((1 + extreme.sum()) / (1 + n_resamples))
    return {"value": observed, "ci": [float(low), float(high)], "p_value": p_value}


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
    if metric == "unparseable_rate":
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

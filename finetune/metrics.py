"""Answer metrics for chest X-ray VQA: pure functions from strings and numbers to numbers, no model, no I/O.

    score_answer("Yes, mild.", kind="closed", reference="Yes.", label="yes")    # parsed, correct, length
    token_f1("small left effusion", "left pleural effusion")                    # (precision, recall, f1)
    summarize(records, "tuned"), compare(records, "base", "tuned")              # headline metrics, paired tests

Closed answers are scored strictly: a yes/no question by the first word of the answer (`cxr_vqa.answers`: "normal"
is not "no", and an unparseable answer is wrong, never dropped from the denominator); any other closed answer by
exact match after normalising case, punctuation and spaces (never by substring: "left" is not "the left lung").
Open answers get recall (the share of the reference's words found in the answer, as medical VQA papers report),
token F1 and ROUGE-L. Intervals and tests come from `finetune.stats` and resample studies.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from cxr_vqa.answers import parse_yes_no
from finetune.stats import bootstrap_ci, mcnemar_exact, paired_bootstrap

_WORD_RE = re.compile(r"[a-z0-9]+")


def tokens(text: str | None) -> list[str]:
    """Lower-cased alphanumeric words: the unit of token F1, recall, ROUGE-L and closed exact match."""
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
    """Per-question scores. Closed yes/no (`label`, or a reference that reads yes/no): the parsed answer and its
    correctness. Other closed: normalised exact match. Open: token precision/recall/F1 and ROUGE-L. All: length."""
    scores: dict = {"length": len(prediction.split())}
    if kind == "closed":
        truth = label or parse_yes_no(reference)
        if truth is not None:
            parsed = parse_yes_no(prediction)
            scores.update(yes_no=True, parsed=parsed, correct=parsed is not None and parsed == truth)
        else:
            scores.update(
                yes_no=False, parsed=None, correct=bool(tokens(prediction)) and tokens(prediction) == tokens(reference)
            )
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

"""The scorer: one answer against its reference, as pure functions of strings, no model, no I/O.

    score_answer("Yes, mild.", kind="closed", reference="Yes.", label="yes")    # parsed, correct, length
    token_f1("small left effusion", "left pleural effusion")                    # (precision, recall, f1)

Closed answers are scored strictly: a yes/no question by the first word of the answer (`cxr_vqa.answers`: "normal"
is not "no", and an unparseable answer is wrong, never dropped from the denominator); any other closed answer by
exact match after normalising case, punctuation and spaces (never by substring: "left" is not "the left lung").
Open answers get recall (the share of the reference's words found in the answer, as medical VQA papers report),
token F1 and ROUGE-L; so do findings answers (a written report, kind "findings"), whose headline scores, the labels
its sentences assert, are computed over all reports at once (`evaluation.findings`). `evaluation.metrics` turns these
per-question scores into metrics.json.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from cxr_vqa.answers import parse_yes_no
from cxr_vqa.findings import FINDINGS_KIND

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
    elif kind in ("open", FINDINGS_KIND):
        precision, recall, f1 = token_f1(prediction, reference)
        scores.update(precision=precision, recall=recall, f1=f1, rouge_l=rouge_l(prediction, reference))
    else:
        raise ValueError(f"kind must be 'closed', 'open' or '{FINDINGS_KIND}', got {kind!r}")
    return scores


def majority_rate(labels: Sequence[str | None]) -> float:
    """Accuracy of always answering the most common reference label: the 'chance' line for closed accuracy."""
    counts = Counter(label for label in labels if label is not None)
    return max(counts.values()) / len(labels) if labels and counts else float("nan")

"""Word-overlap scores of written reports beside their label F1s: corpus BLEU-4 and ROUGE-L, as report-generation
papers print them (LLaVA-Rad's evaluation: BLEU-4 and ROUGE-L next to F1-CheXbert). Pure functions, no I/O.

    stats = np.array([bleu_stats(p, r) for p, r in zip(predictions, references)])   # one row a report
    corpus_bleu(stats.sum(axis=0))               # BLEU-4 of the whole corpus, 0..1
    corpus_bleu(weights @ stats)                 # the same for each bootstrap resample (a row of weights each)
    rouge_l("small left effusion", "left pleural effusion")   # one report's ROUGE-L F-measure

BLEU-4 is Papineni et al.'s corpus score: clipped n-gram matches (n = 1..4) pooled over every report, their
geometric mean, times the brevity penalty of the pooled lengths; no smoothing, so a corpus without one matching
4-gram scores 0 (as the `evaluate` library's "bleu", LLaVA-Rad's point estimate). The words are `scoring.tokens`'
lower-cased alphanumeric words, not sacrebleu's 13a tokens: figures can differ from a paper's in the second digit.
Because it is a ratio of pooled counts, its interval resamples each report's counts (`bleu_stats`), not its score.
ROUGE-L is the mean over reports of each one's longest-common-subsequence F-measure (`evaluation.scoring.rouge_l`, as
`rouge-score` without stemming).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from evaluation.scoring import rouge_l, tokens

MAX_N = 4
__all__ = ["MAX_N", "bleu_stats", "corpus_bleu", "rouge_l"]


def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def bleu_stats(prediction: str, reference: str) -> list[int]:
    """One report's BLEU counts: clipped matches for n = 1..4, the prediction's n-grams for n = 1..4, and the two
    lengths in words (prediction, reference)."""
    pred, ref = tokens(prediction), tokens(reference)
    matches = [sum((_ngrams(pred, n) & _ngrams(ref, n)).values()) for n in range(1, MAX_N + 1)]
    totals = [max(len(pred) - n + 1, 0) for n in range(1, MAX_N + 1)]
    return [*matches, *totals, len(pred), len(ref)]


def corpus_bleu(sums: np.ndarray) -> np.ndarray | float:
    """BLEU-4 from summed `bleu_stats` (the last axis holds the 10 counts; any leading axes are kept)."""
    sums = np.asarray(sums, dtype=float)
    matches, totals = sums[..., :MAX_N], sums[..., MAX_N : 2 * MAX_N]
    length, ref_length = sums[..., 2 * MAX_N], sums[..., 2 * MAX_N + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(totals > 0, matches / np.maximum(totals, 1), 0.0)
        log_mean = np.where((precision > 0).all(axis=-1), np.log(np.maximum(precision, 1e-300)).mean(axis=-1), -np.inf)
        penalty = np.where(length > ref_length, 1.0, np.exp(1 - ref_length / np.maximum(length, 1e-300)))
    score = np.where(length > 0, penalty * np.exp(log_mean), 0.0)
    return float(score) if score.ndim == 0 else score

"""P(yes)-based metrics and the strict closed scorer, on hand-made numbers whose results are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.confidence import compare_confidence, summarize_confidence
from evaluation.scoring import score_answer
from evaluation.stats import auroc, brier, expected_calibration_error, holm, weighted_auroc


def test_auroc_counts_pairs_and_halves_ties():
    assert auroc([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    # positives 0.8, 0.4; negatives 0.6, 0.4: pairs (0.8>0.6) 1, (0.8>0.4) 1, (0.4<0.6) 0, (0.4=0.4) 0.5 -> 2.5 / 4
    assert auroc([0.8, 0.4, 0.6, 0.4], [1, 1, 0, 0]) == pytest.approx(0.625)
    assert auroc([0.5] * 6, [1, 0, 1, 0, 1, 0]) == 0.5  # all tied


def test_auroc_with_one_class_missing_is_undefined_not_a_crash():
    for scores, labels in (([0.2, 0.9], [1, 1]), ([0.2, 0.9], [0, 0]), ([], [])):
        assert math.isnan(auroc(scores, labels))


def test_weighted_auroc_equals_repeating_the_questions():
    scores, labels = [0.9, 0.7, 0.4, 0.2, 0.6], [1, 0, 1, 0, 0]
    weights = np.array([[2, 1, 0, 3, 1]])
    repeated = [s for s, w in zip(scores, weights[0], strict=True) for _ in range(w)]
    repeated_labels = [y for y, w in zip(labels, weights[0], strict=True) for _ in range(w)]
    assert weighted_auroc(scores, labels, weights)[0] == pytest.approx(auroc(repeated, repeated_labels))


def test_ece_of_a_calibrated_and_a_miscalibrated_set():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    calibrated = rng.uniform(0, 1, p.size) < p  # labels drawn with probability p
    assert expected_calibration_error(p, calibrated) < 0.01
    # always 0.9 sure of "yes", but only half are yes: |0.5 - 0.9| in the one bin
    assert expected_calibration_error([0.9] * 10, [1, 0] * 5) == pytest.approx(0.4)
    assert brier([0.9] * 10, [1, 0] * 5) == pytest.approx((0.1**2 + 0.9**2) / 2)


def test_holm_adjusts_in_order():
    # sorted 0.01, 0.03, 0.04 -> x3 0.03, x2 0.06, x1 0.04 -> running max 0.03, 0.06, 0.06
    assert holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # 0.5 x 2 = 1.0, then 0.9 x 1 raised to the running max


@pytest.mark.parametrize(
    "prediction, reference, correct",
    [
        ("normal", "no", False),  # LLaVA-Med's scorer: "no" is a substring of "normal", so it counted a hit
        ("No.", "yes", False),  # a wrong yes/no answer stays in the denominator, as wrong
        ("Nope, none", "no", False),
        ("no, nothing", "No", True),
        ("the left lung", "left", False),  # other closed answers: exact match, never substring
        ("Left.", "left", True),
        ("PA view", "pa  view", True),
    ],
)
def test_the_strict_closed_scorer_on_llava_meds_failure_cases(prediction, reference, correct):
    assert score_answer(prediction, kind="closed", reference=reference)["correct"] is correct


def records(p_base, p_tuned, labels, findings, studies):
    return [
        {"kind": "closed", "label": "yes" if y else "no", "reference": "", "finding": f, "study_id": s,
         "p_yes": {"base": pb, "tuned": pt}}
        for pb, pt, y, f, s in zip(p_base, p_tuned, labels, findings, studies, strict=True)
    ]  # fmt: skip


def test_per_finding_and_macro_auroc_with_an_undefined_finding():
    rec = records(
        p_base=[0.5, 0.5, 0.5, 0.5, 0.6, 0.4],
        p_tuned=[0.9, 0.2, 0.8, 0.1, 0.7, 0.9],
        labels=[1, 0, 1, 0, 1, 1],
        findings=["A", "A", "B", "B", "C", "C"],  # C has only positives: no AUROC
        studies=["s1", "s2", "s3", "s4", "s5", "s6"],
    )
    tuned = summarize_confidence(rec, "tuned", n_resamples=200)
    assert tuned["per_finding"]["A"]["value"] == 1.0 and tuned["per_finding"]["B"]["value"] == 1.0
    assert math.isnan(tuned["per_finding"]["C"]["value"]) and tuned["per_finding"]["C"]["positives"] == 2
    assert tuned["macro_auroc"]["value"] == 1.0 and tuned["macro_auroc"]["findings"] == ["A", "B"]
    base = summarize_confidence(rec, "base", n_resamples=200)
    assert base["macro_auroc"]["value"] == 0.5  # ties everywhere in A and B
    diff = compare_confidence(rec, "base", "tuned", n_resamples=200)["macro_auroc"]
    assert diff["value"] == pytest.approx(0.5) and diff["ci"][0] <= 0.5 <= diff["ci"][1]

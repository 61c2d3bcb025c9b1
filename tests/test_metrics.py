"""Metric functions on hand-made predictions whose scores are worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest

from cxr_vqa.answers import parse_yes_no
from evaluation.metrics import compare, summarize
from evaluation.scoring import majority_rate, rouge_l, score_answer, token_f1
from evaluation.stats import bootstrap_ci, mcnemar_exact, paired_bootstrap


@pytest.mark.parametrize(
    ("answer", "parsed"),
    [
        ("Yes.", "yes"),
        ("yes", "yes"),
        ("No, the lungs are clear.", "no"),
        ("  NO!  ", "no"),
        ("**Yes**, small effusion", "yes"),
        ("Normal heart size.", None),  # "normal" is not "no"
        ("Nope", None),
        ("There is no effusion.", None),  # the verdict must come first
        ("Yesterday", None),
        ("yes-ish", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_yes_no_is_strict(answer, parsed):
    assert parse_yes_no(answer) == parsed


def test_token_f1_counts_shared_words():
    # pred {small, left, effusion}, ref {left, pleural, effusion}: overlap 2 → P = R = F1 = 2/3
    p, r, f1 = token_f1("Small left effusion.", "left pleural effusion")
    assert (p, r, f1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    # repeated words count once per occurrence in both: pred "no no" vs ref "no" → P 1/2, R 1, F1 2/3
    assert token_f1("no no", "No") == pytest.approx((0.5, 1.0, 2 / 3))
    assert token_f1("cardiomegaly", "clear lungs") == (0.0, 0.0, 0.0)
    assert token_f1("", "") == (1.0, 1.0, 1.0)
    assert token_f1("", "effusion") == (0.0, 0.0, 0.0)


def test_rouge_l_uses_longest_common_subsequence():
    # LCS of "the heart is enlarged" and "heart size is enlarged" = "heart is enlarged" (3): P = R = 3/4
    assert rouge_l("The heart is enlarged", "heart size is enlarged") == pytest.approx(0.75)
    # order matters for ROUGE-L, not for F1: reversed words share one in-order word → P = R = 1/3
    assert rouge_l("a b c", "c b a") == pytest.approx(1 / 3)
    assert token_f1("a b c", "c b a")[2] == pytest.approx(1.0)
    assert rouge_l("", "") == 1.0 and rouge_l("x", "") == 0.0


def test_score_answer_closed_and_open():
    closed = score_answer("Normal.", kind="closed", reference="No.", label="no")
    assert closed == {"length": 1, "yes_no": True, "parsed": None, "correct": False}
    assert score_answer("No, clear.", kind="closed", reference="No.", label="no")["correct"] is True
    assert score_answer("Yes", kind="closed", reference="No, there is none.")["correct"] is False  # label from text
    opened = score_answer("left effusion", kind="open", reference="small left effusion")
    assert opened["recall"] == pytest.approx(2 / 3) and opened["precision"] == 1.0 and opened["length"] == 2
    with pytest.raises(ValueError, match="kind"):
        score_answer("x", kind="multiple", reference="y")


def test_ci_of_a_constant_is_that_constant():
    assert bootstrap_ci([0.7] * 25) == (pytest.approx(0.7), pytest.approx(0.7))
    assert bootstrap_ci([1.0, 1.0, 1.0], groups=["s1", "s1", "s2"]) == (1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci([]))


def test_ci_contains_the_mean_and_is_seeded():
    values = [1.0] * 30 + [0.0] * 70
    low, high = bootstrap_ci(values, seed=3)
    assert low < 0.3 < high and high - low < 0.25
    assert bootstrap_ci(values, seed=3) == (low, high)


def test_study_bootstrap_is_wider_than_question_bootstrap_for_correlated_questions():
    # 20 studies × 5 questions, all right or all wrong together: only 20 independent units, not 100
    values = [float(s % 2) for s in range(20) for _ in range(5)]
    groups = [f"s{s}" for s in range(20) for _ in range(5)]
    by_question, by_study = bootstrap_ci(values), bootstrap_ci(values, groups)
    assert by_study[1] - by_study[0] > 1.5 * (by_question[1] - by_question[0])


def test_paired_bootstrap_and_mcnemar():
    base = [0.0] * 40
    tuned = [1.0] * 30 + [0.0] * 10
    result = paired_bootstrap(base, tuned)
    assert result["value"] == pytest.approx(0.75)
    assert result["ci"][0] > 0.5 and result["p_value"] < 0.01
    assert paired_bootstrap(base, base)["p_value"] == 1.0
    # 30 discordant pairs all in one direction: p = 2 * 0.5**30
    assert mcnemar_exact([False] * 40, [True] * 30 + [False] * 10) == pytest.approx(2 * 0.5**30)
    # 3 vs 2 discordant pairs: nowhere near significant (exact binomial: p = 1.0)
    assert mcnemar_exact([True, True, True, False, False], [False, False, False, True, True]) == pytest.approx(1.0)
    assert mcnemar_exact([True], [True]) == 1.0
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap([1.0], [1.0, 0.0])


def test_majority_rate_is_the_chance_line():
    assert majority_rate(["yes", "no", "no", "no"]) == 0.75
    assert math.isnan(majority_rate([]))


def _record(study, kind, reference, finding, base, tuned):
    label = parse_yes_no(reference) if kind == "closed" else None
    answers = {"base": base, "tuned": tuned}
    scores = {v: score_answer(a, kind=kind, reference=reference, label=label) for v, a in answers.items()}
    return {"study_id": study, "kind": kind, "finding": finding, "scores": scores}


def test_summarize_and_compare_on_hand_made_predictions():
    records = [
        _record("s1", "closed", "Yes.", "Cardiomegaly", "Normal.", "Yes."),
        _record("s1", "closed", "No.", "Edema", "No.", "No."),
        _record("s2", "closed", "No.", "Cardiomegaly", "banana", "Yes."),
        _record("s2", "open", "small left effusion", None, "nothing", "left effusion"),
    ]
    base, tuned = summarize(records, "base", n_resamples=50), summarize(records, "tuned", n_resamples=50)
    assert base["closed_accuracy"]["value"] == pytest.approx(1 / 3) and base["closed_accuracy"]["n"] == 3
    assert base["unparseable_rate"]["value"] == pytest.approx(2 / 3)
    assert tuned["closed_accuracy"]["value"] == pytest.approx(2 / 3) and tuned["unparseable_rate"]["value"] == 0
    assert tuned["open_f1"]["value"] == pytest.approx(0.8) and tuned["open_recall"]["value"] == pytest.approx(2 / 3)
    assert base["open_f1"]["value"] == 0.0 and base["open_f1"]["n"] == 1
    assert tuned["answer_length"]["value"] == pytest.approx((1 + 1 + 1 + 2) / 4)
    assert tuned["per_finding"]["Cardiomegaly"] == {"value": 0.5, "ci": [0.0, 1.0], "n": 2}
    assert tuned["per_finding"]["Edema"]["value"] == 1.0
    diff = compare(records, "base", "tuned", n_resamples=50)
    assert diff["closed_accuracy"]["value"] == pytest.approx(1 / 3)
    assert diff["closed_accuracy"]["test"] == "mcnemar_exact"
    assert diff["closed_accuracy"]["p_value"] == 1.0  # one discordant pair
    assert diff["open_f1"]["value"] == pytest.approx(0.8) and diff["open_f1"]["test"] == "paired_bootstrap"

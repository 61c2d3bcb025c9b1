"""Findings reports scored as the field scores them: the core's findings questions and model comparison, and the F1s,
intervals and paired tests of `evaluation.findings` on hand-made label dicts whose scores are worked out by hand in
the comments (the labeler is a lookup table here: these tests check the maths, not the labeler)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr_vqa.errors import UserError
from cxr_vqa.findings import (
    FINDINGS_QUESTION,
    FINDINGS_QUESTIONS,
    disagreements,
    is_findings_question,
    label_reports,
    reading,
)
from cxr_vqa.labeler import OBSERVATIONS
from evaluation import chexbert
from evaluation.findings import findings_metrics
from evaluation.metrics import build_metrics
from evaluation.scoring import rouge_l
from evaluation.text_metrics import bleu_stats, corpus_bleu

# --- the core: questions, labels, disagreements -----------------------------------------------------------------


def test_findings_questions_are_recognised_whatever_their_case_and_punctuation():
    assert FINDINGS_QUESTION == "Describe the findings." and FINDINGS_QUESTION in FINDINGS_QUESTIONS
    assert all(is_findings_question(q.upper().rstrip(".")) for q in FINDINGS_QUESTIONS)
    # the open question asks for the list of abnormalities: it is not a findings question
    assert not is_findings_question("What are the findings on this chest X-ray?")
    assert not is_findings_question(None) and not is_findings_question("")


def test_label_reports_labels_each_model_and_disagreements_compare_what_they_claim():
    reports = label_reports(
        {"base": "No pleural effusion.", "tuned": "The heart is enlarged.", "gpt": "Cardiomegaly."}
    )
    assert list(reports) == ["base", "tuned", "gpt"] and reports["tuned"]["text"] == "The heart is enlarged."
    assert reports["base"]["labels"]["Pleural Effusion"] == 0
    assert reports["tuned"]["labels"]["Cardiomegaly"] == 1 and reports["gpt"]["labels"]["Cardiomegaly"] == 1
    labels = {name: r["labels"] for name, r in reports.items()}
    # base does not claim cardiomegaly, the others do; every model reads no pleural effusion (negated or unmentioned)
    assert "Cardiomegaly" in disagreements(labels) and "Pleural Effusion" not in disagreements(labels)
    hand = {"a": {"Edema": 1, "Pneumothorax": 0}, "b": {"Edema": -1}, "c": {"Edema": 1}}
    assert disagreements(hand) == ["Edema"]  # present against uncertain; 0 against unmentioned is agreement
    assert disagreements({"a": {"Edema": 1}}) == [] and disagreements({"a": {"Edema": 1}, "b": {"Edema": 1}}) == []
    assert [reading(v) for v in (1, 0, -1, None)] == ["present", "absent", "uncertain", "not mentioned"]


# --- F1s on hand-made labels -------------------------------------------------------------------------------------

REFS = {
    "r1": {"Cardiomegaly": 1, "Edema": 1},
    "r2": {"Pleural Effusion": 1, "Atelectasis": -1},
    "r3": {"No Finding": 1},
}
PREDS = {"p1": {"Cardiomegaly": 1}, "p2": {"Pleural Effusion": -1, "Atelectasis": 1, "Pneumothorax": 1},
         "p3": {"No Finding": 1}}  # fmt: skip
TABLE = {**REFS, **PREDS, "": {}}


def lookup(texts: list[str]) -> list[dict]:
    return [TABLE[t] for t in texts]


def _records(answers: dict[str, list[str]]) -> list[dict]:
    return [{"kind": "findings", "study_id": f"s{i}", "reference": ref,
             "answers": {name: texts[i] for name, texts in answers.items()}}
            for i, ref in enumerate(REFS)]  # fmt: skip


def test_f1s_follow_llava_rads_definitions():
    block = findings_metrics(_records({"base": list(PREDS)}), variants=["base"], pairs=[], ablated=[],
                             labeler=lookup, n_resamples=100)  # fmt: skip
    m = {k: v["value"] for k, v in block["models"]["base"].items() if k != "per_observation"}
    # positive only: TP Cardiomegaly (r1), No Finding (r3); FP Atelectasis, Pneumothorax (r2); FN Edema, Effusion
    assert m["micro_f1_14"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))
    # per observation F1: Cardiomegaly 1, No Finding 1, the other twelve 0 (those nobody asserts count as 0)
    assert m["macro_f1_14"] == pytest.approx(2 / 14)
    # the 5: TP Cardiomegaly, FP Atelectasis, FN Edema and Pleural Effusion; only Cardiomegaly scores
    assert m["micro_f1_5"] == pytest.approx(2 / (2 + 1 + 2)) and m["macro_f1_5"] == pytest.approx(1 / 5)
    # uncertain as positive: the effusion (uncertain in p2) and the atelectasis (uncertain in r2) become TPs
    assert m["micro_f1_14_plus"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 1))
    assert m["macro_f1_14_plus"] == pytest.approx(4 / 14)
    assert m["micro_f1_5_plus"] == pytest.approx(6 / 7) and m["macro_f1_5_plus"] == pytest.approx(3 / 5)
    per = block["models"]["base"]["per_observation"]
    assert per["Consolidation"] == {**per["Consolidation"], "support": 0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert per["Atelectasis"]["support"] == 0 and per["Atelectasis"]["precision"] == 0.0  # uncertain: not support
    assert per["Cardiomegaly"]["f1"] == 1.0 and block["reference_positives"]["No Finding"] == 1
    assert block["reports"] == 3 and block["observations"] == list(OBSERVATIONS)


def test_a_perfect_report_scores_1_and_an_empty_corpus_gives_no_block():
    block = findings_metrics(_records({"ref": list(REFS)}), variants=["ref"], pairs=[], ablated=[], labeler=lookup,
                             n_resamples=100)  # fmt: skip
    s = block["models"]["ref"]
    assert s["micro_f1_14"]["value"] == 1.0 and s["micro_f1_14"]["ci"] == [1.0, 1.0]
    assert s["macro_f1_14"]["value"] == pytest.approx(4 / 14)  # ten observations nobody asserts score 0
    closed = [{"kind": "closed", "study_id": "s", "reference": "Yes.", "answers": {"ref": "Yes."}}]
    assert findings_metrics(closed, variants=["ref"], pairs=[], ablated=[], labeler=lookup) is None


def _many(n: int, good: float, seed: int) -> list[dict]:
    """n findings questions; `good` of `tuned`'s reports match the reference, the base's never, blank ones never."""
    rng = np.random.default_rng(seed)
    refs = list(REFS)
    out = []
    for i in range(n):
        ref = refs[i % 3]
        tuned = ref if rng.random() < good else "p2"
        out.append({"kind": "findings", "study_id": f"s{i}", "reference": ref,
                    "answers": {"base": "", "tuned": tuned, "base_blank": "", "tuned_blank": ""}})  # fmt: skip
    return out


def test_the_bootstrap_is_seeded_and_paired_tests_point_the_right_way():
    records = _many(60, good=0.8, seed=1)
    run = dict(variants=["base", "tuned", "base_blank", "tuned_blank"], pairs=[("base", "tuned")],
               ablated=["base", "tuned"], labeler=lookup, n_resamples=200)  # fmt: skip
    first, again, other = (findings_metrics(records, **run, seed=s) for s in (0, 0, 1))
    assert (
        first == again
        and first["models"]["tuned"]["micro_f1_14"]["ci"] != other["models"]["tuned"]["micro_f1_14"]["ci"]
    )
    tuned, base = first["models"]["tuned"]["micro_f1_14"], first["models"]["base"]["micro_f1_14"]
    diff = first["difference"]["tuned_minus_base"]["micro_f1_14"]
    assert diff["value"] == pytest.approx(tuned["value"] - base["value"]) and diff["value"] > 0.5
    assert diff["ci"][0] > 0 and diff["p_value"] == pytest.approx(1 / 201)  # no resample reaches 0
    drop = first["ablation"]["tuned"]["micro_f1_14"]  # the film minus the blank film
    assert drop["value"] > 0.5 and drop["p_value"] < 0.01
    assert first["ablation"]["base"]["micro_f1_14"] == {**drop, "value": 0.0, "ci": [0.0, 0.0], "p_value": 1.0}
    lo, hi = tuned["ci"]
    assert lo < tuned["value"] < hi and first["bootstrap"]["resamples"] == 200


def test_findings_join_closed_accuracy_in_one_holm_family():
    records = _many(40, good=0.9, seed=2)
    for i, r in enumerate(records[:20]):  # one closed question a study: the tuned model right, the base wrong
        r_closed = {"kind": "closed", "study_id": r["study_id"], "patient_id": "p", "reference": "Yes.",
                    "label": "yes", "finding": "Edema", "p_yes": {}, "id": f"c{i}"}  # fmt: skip
        answers = {"base": "No.", "tuned": "Yes.", "base_blank": "No.", "tuned_blank": "No."}
        r_closed["answers"] = answers
        r_closed["scores"] = {n: {"length": 1, "yes_no": True, "parsed": a.strip(".").lower(),
                                  "correct": a == "Yes."} for n, a in answers.items()}  # fmt: skip
        records.append(r_closed)
    for r in records:
        r.setdefault("patient_id", "p")
        r.setdefault("scores", {n: {"length": 1, "f1": 0, "recall": 0, "precision": 0, "rouge_l": 0}
                                for n in r["answers"]})  # fmt: skip
    m = build_metrics(records, models=["base", "tuned"], ablation=True, info={}, n_resamples=200, seed=0,
                      labeler=lookup)  # fmt: skip
    closed = m["difference"]["tuned_minus_base"]["closed_accuracy"]
    f1 = m["findings"]["difference"]["tuned_minus_base"]["micro_f1_14"]
    # two tests, Holm: the smaller p doubled, the larger kept (never below the smaller's adjusted value)
    low, high = sorted([closed["p_value"], f1["p_value"]])
    assert sorted([closed["p_holm"], f1["p_holm"]]) == pytest.approx([min(1, 2 * low), min(1, max(2 * low, high))])
    assert "findings micro-F1-14" in m["multiplicity"] and m["questions"]["findings"] == 40
    assert "p_holm" not in m["findings"]["difference"]["tuned_minus_base"]["macro_f1_14"]  # secondary: unadjusted


# --- BLEU-4 and ROUGE-L on known pairs ---------------------------------------------------------------------------


def test_bleu4_is_the_corpus_score_with_a_brevity_penalty():
    # 6 of 6 words, 4 of 5 bigrams, 3 of 4 trigrams, 2 of 3 four-grams match; 6 words against 7: BP = exp(1 - 7/6)
    stats = bleu_stats("There is a small left effusion.", "there is a small left pleural effusion")
    assert stats == [6, 4, 3, 2, 6, 5, 4, 3, 6, 7]
    assert corpus_bleu(np.array(stats)) == pytest.approx(math.exp(-1 / 6) * (1 * 0.8 * 0.75 * 2 / 3) ** 0.25)
    assert corpus_bleu(np.array(bleu_stats("no acute abnormality here", "No acute abnormality here."))) == 1.0
    # pooled, not averaged: a report with no 4-gram match does not zero the corpus
    pooled = np.array([bleu_stats("a b c d", "a b c d"), bleu_stats("x y", "x z")]).sum(axis=0)
    assert 0 < corpus_bleu(pooled) < 1
    assert corpus_bleu(np.array(bleu_stats("the heart", "the heart is enlarged"))) == 0.0  # no 4-gram: unsmoothed
    assert list(corpus_bleu(np.array([stats, stats]))) == pytest.approx([corpus_bleu(np.array(stats))] * 2)


def test_rouge_l_of_a_report():
    # LCS "heart is enlarged" (3 words): P = 3/3, R = 3/5 → F = 2PR/(P+R) = 0.75
    assert rouge_l("Heart is enlarged.", "the heart size is enlarged") == pytest.approx(0.75)


def test_chexbert_labeler_refuses_in_one_line_when_not_installed(monkeypatch):
    monkeypatch.setattr(chexbert, "SCORERS", (("no_such_package_here", "F1CheXbert"),))
    with pytest.raises(UserError) as err:
        chexbert.make_labeler("chexbert")
    assert "RadEval" in str(err.value) and "\n" not in str(err.value)
    assert chexbert.make_labeler("rules")(["Cardiomegaly."])[0]["Cardiomegaly"] == 1

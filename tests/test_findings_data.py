"""The findings turn in the dataset: both generators open each conversation with it (exact turns), --no-findings
leaves it out, stats.json gives its share of the answer tokens, and the synthetic release's findings name what was
drawn."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import openai
import pytest
from llm_server import OpenAIServer, distinct_studies, small_release

from cxr_vqa.costs import estimate_tokens
from cxr_vqa.findings import FINDINGS_QUESTIONS
from cxr_vqa.labeler import label_report
from dataprep import __main__ as dataprep_cli
from dataprep.build import make_row
from dataprep.chexpert import LABELS, Study
from dataprep.clean import cites_text, clean_report, mentions_prior
from dataprep.llm.generator import LLMGenerator
from dataprep.qa import FINDINGS_MAX_WORDS, add_findings
from dataprep.qa_labels import LabelsGenerator
from dataprep.synthetic_reports import sample_findings, write_report

LABELLED = {**dict.fromkeys(LABELS), "Cardiomegaly": 1.0, "Pneumothorax": 0.0}


def _study(sid: str, findings: str, impression: str = "No acute abnormality.") -> Study:
    return Study(sid, "p1", "train", findings, impression, [("x.png", "PA")], dict(LABELLED))


def _findings(sid: str, seed: int, answer: str) -> dict:
    question = random.Random(f"{seed}:{sid}:findings").choice(FINDINGS_QUESTIONS)
    return {"question": question, "answer": answer, "kind": "findings", "finding": None, "label": None}


def test_labels_generator_opens_each_conversation_with_the_findings_turn():
    studies = [_study("p1/s1", "The heart is enlarged. No pneumothorax."), _study("p1/s2", "", "Cardiomegaly."),
               _study("p1/s3", "word " * (FINDINGS_MAX_WORDS + 1))]  # fmt: skip
    with_turn = LabelsGenerator(qa_per_study=4, seed=3).generate(studies)
    without = LabelsGenerator(qa_per_study=4, seed=3, findings_share=0).generate(studies)
    first, second, long = (with_turn[s.study_id].pairs for s in studies)
    assert first[0] == _findings("p1/s1", 3, "The heart is enlarged. No pneumothorax.")
    assert second[0] == _findings("p1/s2", 3, "Cardiomegaly.")  # no findings section: the impression
    # the other pairs are exactly those of --no-findings: the turn's phrasing has its own generator
    assert first[1:] == without["p1/s1"].pairs and second[1:] == without["p1/s2"].pairs
    assert long == without["p1/s3"].pairs  # too long to keep whole: left out, counted
    assert all(p["kind"] != "findings" for r in without.values() for p in r.pairs)
    generator = LabelsGenerator(qa_per_study=4, seed=3)
    generator.generate(studies)
    assert generator.stats["findings"] == 2 and generator.stats["findings_left_out"] == {"too_long": 1}
    # the turn comes first, with the film: asked as the evaluation and the app ask it
    messages = make_row(studies[0], "x.png", "PA", first, "labels")["messages"]
    assert messages[0]["content"][0]["type"] == "image" and messages[0]["content"][1]["text"] == first[0]["question"]
    assert messages[1]["content"][0]["text"] == "The heart is enlarged. No pneumothorax."


def test_a_findings_share_keeps_the_turn_in_that_share_of_the_studies_drawn_from_the_seed(run_cli):
    studies = [_study(f"p1/s{i}", "The heart is enlarged.") for i in range(200)]
    full = LabelsGenerator(qa_per_study=3, seed=5).generate(studies)
    generator = LabelsGenerator(qa_per_study=3, seed=5, findings_share=0.25)
    half = generator.generate(studies)
    kept = [s.study_id for s in studies if half[s.study_id].pairs[0]["kind"] == "findings"]
    assert 30 < len(kept) < 70 and generator.stats["findings"] == len(kept)
    assert generator.stats["findings_left_out"] == {"share": 200 - len(kept)}
    for s in studies:  # a study in the share gets the very turn it gets with every study; the others none
        assert half[s.study_id].pairs == (full[s.study_id].pairs if s.study_id in kept else full[s.study_id].pairs[1:])
    again = LabelsGenerator(qa_per_study=3, seed=5, findings_share=0.25).generate(studies)
    assert {k: r.pairs for k, r in again.items()} == {k: r.pairs for k, r in half.items()}
    code, line = run_cli(dataprep_cli.main, ["--chexpert-root", "R", "--out", "D", "--findings-share", "1.5"])
    assert code == 2 and "--findings-share must be between 0 and 1" in line


def test_findings_questions_pass_the_filters_every_question_passes():
    assert not any(cites_text(q) or mentions_prior(q) for q in FINDINGS_QUESTIONS)


def test_a_generated_findings_question_gives_way_to_the_reports_own():
    pairs = [
        {"question": "Describe the findings", "answer": "Normal.", "kind": "open", "finding": None},
        {"question": "Is there cardiomegaly?", "answer": "Yes.", "kind": "closed", "finding": "Cardiomegaly"},
    ]
    counts = Counter()
    out = add_findings(pairs, _study("p1/s1", "Cardiomegaly."), 0, counts)
    assert [p["kind"] for p in out] == ["findings", "closed"] and out[0]["answer"] == "Cardiomegaly."
    assert counts == {"findings": 1}


def test_llm_generator_adds_the_findings_turn_itself(tmp_path):
    release = small_release(tmp_path / "release")
    studies = distinct_studies(release, 3)
    with OpenAIServer() as server:
        client = openai.AsyncOpenAI(base_url=server.url, api_key="test-key")
        generator = LLMGenerator(client, "test-model", tmp_path / "cache", progress=False)
        results = generator.generate(studies)
        sent = list(server.reports)
    for study in studies:
        pairs = results[study.study_id].pairs
        assert pairs[0] == _findings(study.study_id, 0, study.findings or study.impression)
        assert all(p["kind"] in ("closed", "open") for p in pairs[1:]) and len(pairs) == 6
    # the LLM is asked for its five pairs only, once a report: the turn is the report's own text
    assert len(sent) == 3 and generator.stats["findings"] == 3 and generator.stats["findings_left_out"] == {}


def test_no_findings_leaves_it_out_and_stats_give_its_share_of_answer_tokens(tmp_path):
    from datasets import load_from_disk

    from dataprep.synthetic import write_release

    write_release(tmp_path / "S", patients=16, seed=0, image_size=64)
    for flag, out in (([], tmp_path / "with"), (["--no-findings"], tmp_path / "without")):
        code = dataprep_cli.main(["--chexpert-root", str(tmp_path / "S"), "--out", str(out), "--progress", "false",
                                  *flag])  # fmt: skip
        assert code == 0
    stats = {name: json.loads((tmp_path / name / "stats.json").read_text()) for name in ("with", "without")}
    pairs = [p for split in load_from_disk(str(tmp_path / "with")).values() for qa in split["qa"] for p in qa]
    findings = [p for p in pairs if p["kind"] == "findings"]
    assert findings and stats["with"]["answers"]["findings"] == len(findings) == stats["with"]["rows"]
    share = sum(estimate_tokens(p["answer"]) for p in findings) / sum(estimate_tokens(p["answer"]) for p in pairs)
    assert stats["with"]["findings"]["share_of_answer_tokens"] == pytest.approx(share, abs=1e-4) and 0 < share < 1
    assert stats["with"]["findings"]["answer_words"] == sum(len(p["answer"].split()) for p in findings)
    assert stats["without"]["answers"]["findings"] == 0 and stats["without"]["findings"]["turns"] == 0
    assert stats["with"]["qa_pairs"] - stats["without"]["qa_pairs"] == len(findings)
    assert stats["with"]["answers"]["open"] == stats["without"]["answers"]["open"]  # findings not counted as open


def test_synthetic_findings_name_every_drawn_finding_with_its_side_and_device():
    for seed in range(300):
        rng = np.random.default_rng(seed)
        found = sample_findings(rng)
        sections, labels, _ = write_report(found, rng)
        text = clean_report(sections["section_findings"]).lower()
        read = label_report(text)
        for name, details in found.items():
            assert read.get(name) in (1, -1), (name, text)
            side = {"both": "bilateral"}.get(details.get("side", ""), details.get("side", ""))
            assert side in text, (name, text)
            if name == "Consolidation":  # the one finding drawn in a zone (a pneumothorax takes the lateral lung)
                assert f"{side} {details['zone']}" in text, text
            if name == "Support Devices":
                assert details["device"] in text
        if not any(labels[n] in (1.0, -1.0) for n in ("Cardiomegaly", "Consolidation", "Pneumothorax",
                                                      "Pleural Effusion")):  # fmt: skip
            assert read.get("No Finding") == 1

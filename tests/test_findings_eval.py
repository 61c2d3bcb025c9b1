"""`python -m evaluation` on findings questions: each model's report and its blank-film report labelled and scored
into metrics.json's findings block, report.md and findings.png; findings decoded in batches of their own, with
their own length cap."""

from __future__ import annotations

import io
import json

import pytest
from test_evaluate import _row

from cxr_vqa.generation import GenerationSettings
from cxr_vqa.labeler import FIVE, OBSERVATIONS
from evaluation import __main__ as ev
from evaluation.findings import binary, f1_table, label_array, rule_labeler
from evaluation.predictions import answer_all

FINDINGS = "Describe the findings."
STUDIES = [
    ("patient1", "patient1/study1", [(FINDINGS, "The heart is enlarged. No pleural effusion.", "findings", None),
                                     ("Is there cardiomegaly?", "Yes.", "closed", "Cardiomegaly")]),
    ("patient2", "patient2/study1", [(FINDINGS, "No acute cardiopulmonary abnormality.", "findings", None),
                                     ("Is there a pleural effusion?", "No.", "closed", "Pleural Effusion")]),
    ("patient3", "patient3/study2", [(FINDINGS, "There is a left pleural effusion.", "findings", None),
                                     ("Is there a pleural effusion?", "Yes.", "closed", "Pleural Effusion")]),
]  # fmt: skip
SHORT, LONG = 2, 12


@pytest.fixture(scope="module")
def findings_report(tiny_model_dir, random_adapter_dir, tmp_path_factory):
    from datasets import Dataset, DatasetDict, Image, List

    rows = [_row(i, *study) for i, study in enumerate(STUDIES)]
    data = Dataset.from_list(rows).cast_column("images", List(Image()))
    dataset = tmp_path_factory.mktemp("findings-data")
    DatasetDict({"train": data.select([0]), "validation": data.select([1]), "test": data}).save_to_disk(str(dataset))
    out = tmp_path_factory.mktemp("findings-report")
    ev.main(["--dataset", str(dataset), "--out", str(out), "--base", tiny_model_dir, "--adapter", random_adapter_dir,
             "--no-4bit", "--device", "cpu", "--max-new-tokens", str(SHORT), "--findings-max-new-tokens", str(LONG),
             "--batch-size", "8", "--resamples", "100", "--findings-resamples", "100"])  # fmt: skip
    return out


def test_metrics_json_has_the_findings_block_with_blank_films_and_paired_tests(findings_report):
    metrics = json.loads((findings_report / "metrics.json").read_text())
    assert metrics["questions"] == {"total": 6, "closed": 3, "open": 0, "findings": 3}
    block = metrics["findings"]
    assert block["reports"] == 3 and block["labeler"] == "rules" and block["five"] == list(FIVE)
    assert set(block["models"]) == {"base", "tuned", "base_blank", "tuned_blank"}
    assert block["bootstrap"]["resamples"] == 100
    for summary in block["models"].values():
        assert set(summary["per_observation"]) == set(OBSERVATIONS)
        for key in ("micro_f1_14", "macro_f1_5", "micro_f1_14_plus", "bleu4", "rouge_l"):
            low, high = summary[key]["ci"]
            assert 0 <= low <= summary[key]["value"] <= high <= 1 or key == "length"
    diff = block["difference"]["tuned_minus_base"]["micro_f1_14"]
    assert diff["test"] == "paired_bootstrap" and 0 < diff["p_value"] <= 1
    assert set(block["ablation"]) == {"base", "tuned"}  # the film minus the blank film, per model
    # the closed-accuracy and findings micro-F1-14 tests of the one comparison: a Holm family of two
    assert "p_holm" in diff and "p_holm" in metrics["difference"]["tuned_minus_base"]["closed_accuracy"]
    assert json.loads((findings_report / "run.json").read_text())["findings_max_new_tokens"] == LONG


def test_findings_f1_follows_from_the_predictions(findings_report):
    records = [json.loads(line) for line in (findings_report / "predictions.jsonl").read_text().splitlines()]
    reports = [r for r in records if r["kind"] == "findings"]
    metrics = json.loads((findings_report / "metrics.json").read_text())["findings"]
    ref = binary(label_array(rule_labeler([r["reference"] for r in reports])), False)
    for name in ("tuned", "base_blank"):
        pred = binary(label_array(rule_labeler([r["answers"][name] for r in reports])), False)
        assert metrics["models"][name]["micro_f1_14"]["value"] == pytest.approx(f1_table(pred, ref)["micro"][0])
    assert all(set(r["scores"]["tuned"]) >= {"rouge_l", "recall", "length"} for r in reports)


def test_findings_get_their_own_length_cap(findings_report):
    records = [json.loads(line) for line in (findings_report / "predictions.jsonl").read_text().splitlines()]
    chars = {kind: [len(a) for r in records if r["kind"] == kind for a in r["answers"].values()]
             for kind in ("closed", "findings")}  # fmt: skip
    # a random model rarely stops: its closed answers end at the short cap (2 tokens), its reports run to 12
    assert sum(chars["findings"]) / len(chars["findings"]) > 3 * sum(chars["closed"]) / len(chars["closed"])


def test_report_md_and_findings_png_show_it(findings_report):
    text = (findings_report / "report.md").read_text()
    assert (
        "## Findings reports (3 reports)" in text and "| micro F1-14 |" in text and "not on CheXbert's scale" in text
    )
    assert "Findings without the film" in text and "| Pleural Effusion | 1 |" in text
    assert (findings_report / "findings.png").read_bytes()[:4] == b"\x89PNG"


class _Recorder:
    """A model stub that records each generate call's settings and questions."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[str]]] = []

    def answer(self, pics, convs, models, settings):
        from cxr_vqa.answers import Answer

        self.calls.append((settings.max_new_tokens, [c[-1]["content"][-1]["text"] for c in convs]))
        return [Answer("Yes.", 0.9) for _ in pics]


def test_questions_are_batched_by_kind_short_ones_first():
    from PIL import Image

    questions = [{"id": f"q{i}", "row": i // 2, "study_id": f"s{i // 2}", "patient_id": "p", "kind": kind,
                  "question": f"{kind} {i}", "reference": "Yes.", "finding": None, "label": "yes" if kind == "closed"
                  else None} for i, kind in enumerate(["findings", "closed"] * 3)]  # fmt: skip
    settings = {"closed": GenerationSettings(SHORT), "open": GenerationSettings(SHORT),
                "findings": GenerationSettings(LONG)}  # fmt: skip
    vqa, sink = _Recorder(), io.StringIO()
    answer_all(vqa, lambda row: Image.new("RGB", (8, 8)), questions, {}, [("base", "base", False)], settings, 2, sink)
    assert vqa.calls == [(SHORT, ["closed 1", "closed 3"]), (SHORT, ["closed 5"]),
                         (LONG, ["findings 0", "findings 2"]), (LONG, ["findings 4"])]  # fmt: skip
    assert sorted(json.loads(line)["id"] for line in sink.getvalue().splitlines()) == sorted(
        q["id"] for q in questions
    )

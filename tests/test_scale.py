"""Whole-dataset paths walked past their internal boundaries: evaluation over hundreds of studies (a stub answerer
for the batching, the film window and an exact resume; the tiny model for one real run over 110 studies), and the
Batch API's per-file limits."""

from __future__ import annotations

import io
import json

import pytest
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage

from cxr_vqa.answers import Answer
from cxr_vqa.generation import GenerationSettings
from dataprep.llm.batch_api import batch_lines
from evaluation import __main__ as ev
from evaluation.predictions import answer_all, batches, list_questions, resume, variants

SETTINGS = GenerationSettings(max_new_tokens=2)


def colour(i: int) -> tuple[int, int, int]:
    return i % 256, i // 256, 7


def film_bytes(i: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (size, size), colour(i)).save(buffer, "PNG")
    return buffer.getvalue()


def split(n_studies: int, size: int = 8) -> Dataset:
    """n studies of 1-3 questions each, in the columns evaluation reads; study i's film is one colour."""
    qa = {"question": Value("string"), "answer": Value("string"), "kind": Value("string"),
          "finding": Value("string"), "label": Value("string")}  # fmt: skip
    features = Features({"images": List(Image()), "qa": List(qa), "study_id": Value("string"),
                         "patient_id": Value("string")})  # fmt: skip
    rows = {"images": [], "qa": [], "study_id": [], "patient_id": []}
    for i in range(n_studies):
        rows["images"].append([{"bytes": film_bytes(i, size), "path": None}])
        rows["qa"].append([{"question": f"Is there finding {k}?", "answer": "Yes." if (i + k) % 2 else "No.",
                            "kind": "closed", "finding": f"F{k}", "label": "yes" if (i + k) % 2 else "no"}
                           for k in range(1 + i % 3)])  # fmt: skip
        rows["study_id"].append(f"p{i}/s1")
        rows["patient_id"].append(f"p{i}")
    return Dataset.from_dict(rows, features=features)


class Stub:
    """Answers from what it is shown: the film's colour and the question, plus the first question of the call, so two
    runs agree only if they formed the same batches. Records how many films each call held."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after, self.films_per_call = 0, fail_after, []

    def answer(self, images, conversations, adapters, settings):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt  # the run is killed here
        self.calls += 1
        self.films_per_call.append(len({id(image) for image in images if image.getpixel((0, 0)) != (0, 0, 0)}))
        first = conversations[0][-1]["content"][-1]["text"]
        return [
            Answer(f"Yes {image.getpixel((0, 0))} {conv[-1]['content'][-1]['text']} {adapter} first={first}", 0.5)
            for image, conv, adapter in zip(images, conversations, adapters, strict=True)
        ]


def run_stub(rows, out, stub, batch_size=8, ablation=True):
    kinds = variants(["base", "tuned"], ablation)
    run = {"variants": [k[0] for k in kinds], "batch_size": batch_size}
    done = resume(out, run)
    questions = list_questions(rows)
    images = rows.select_columns(["images"])
    with open(out / "predictions.jsonl", "a") as sink:
        answer_all(stub, lambda r: images[r]["images"][0], questions, done, kinds, SETTINGS, batch_size, sink)
    return questions, resume(out, run)


def test_300_studies_each_answer_reads_its_own_film_and_memory_holds_one_batch(tmp_path):
    rows = split(300)
    stub = Stub()
    questions, done = run_stub(rows, tmp_path, stub, batch_size=12)  # 3 questions x 4 variants a call
    assert len(questions) == 600 and len(done) == 600
    for q in questions:
        record = done[q["id"]]
        i = int(q["study_id"][1:].split("/")[0])
        assert record["answers"]["base"].startswith(f"Yes {colour(i)} {q['question']} base")
        assert record["answers"]["tuned_blank"].startswith(f"Yes (0, 0, 0) {q['question']} tuned")
    assert stub.calls == 200 and max(stub.films_per_call) <= 3  # the films of a call's 3 questions, no more


@pytest.mark.parametrize("killed_after", [1, 37, 199])
def test_a_killed_run_resumes_with_only_the_rest_and_ends_as_an_uninterrupted_one(tmp_path, killed_after):
    rows = split(300)
    _, whole = run_stub(rows, tmp_path / "whole", Stub())
    with pytest.raises(KeyboardInterrupt):
        run_stub(rows, tmp_path / "killed", Stub(fail_after=killed_after))
    # a kill while a batch was being written leaves a cut line: the batch is answered again whole
    with open(tmp_path / "killed" / "predictions.jsonl", "a") as sink:
        sink.write('{"id": "p299/s1#0", "answ')
    again = Stub()
    _, resumed = run_stub(rows, tmp_path / "killed", again)
    assert again.calls == 300 - killed_after  # 600 questions, 2 a call: only the batches not finished
    assert resumed == whole


def test_a_run_that_answered_nothing_does_not_block_other_settings(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_stub(split(4), tmp_path, Stub(fail_after=0))  # died before its first batch: an empty predictions file
    assert (tmp_path / "predictions.jsonl").stat().st_size == 0
    _, done = run_stub(split(4), tmp_path, Stub(), batch_size=4, ablation=False)  # other settings: a fresh run
    assert len(done) == 7 and not (tmp_path / "predictions.jsonl.tmp").exists()


def test_fixed_batches_do_not_depend_on_what_is_done():
    questions = [{"id": str(i)} for i in range(10)]
    assert [len(b) for b in batches(questions, 4)] == [4, 4, 2]


@pytest.fixture(scope="module")
def split_of_110(tmp_path_factory):
    from datasets import DatasetDict

    from cxr_vqa.template import conversation_from_qa

    rows = split(110, size=336).to_list()
    for row in rows:
        row["messages"] = conversation_from_qa([(qa["question"], qa["answer"]) for qa in row["qa"]])
        row.update(image_path="x.png", view="PA", source="labels")
    data = Dataset.from_list(rows).cast_column("images", List(Image()))
    out = tmp_path_factory.mktemp("data-110")
    DatasetDict(train=data.select([0]), validation=data.select([1]), test=data).save_to_disk(str(out))
    return str(out), sum(len(row["qa"]) for row in rows)


def test_the_tiny_model_evaluates_110_studies_to_the_end(split_of_110, tiny_model_dir, tmp_path):
    dataset, n_questions = split_of_110
    out = tmp_path / "report"
    ev.main(["--dataset", dataset, "--out", str(out), "--base", tiny_model_dir, "--no-4bit", "--device", "cpu",
             "--max-new-tokens", "2", "--batch-size", "32", "--no-ablation", "--resamples", "100"])  # fmt: skip
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == n_questions and len({r["id"] for r in records}) == n_questions
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["studies"] == 110 and metrics["questions"]["closed"] == n_questions


def test_batch_files_split_at_50000_requests_and_at_the_byte_limit_in_utf8():
    bodies = {f"k{i}": {"m": "x"} for i in range(50_001)}
    assert [len(chunk) for chunk in batch_lines(bodies)] == [50_000, 1]
    report = {"m": "épanchement pleural bilatéral " * 20}  # 2 bytes for every é
    bodies = {f"k{i:02d}": report for i in range(40)}
    line_bytes = len(next(batch_lines({"k00": report}))[0].encode()) + 1
    limit = 5 * line_bytes
    chunks = list(batch_lines(bodies, max_bytes=limit))
    assert [len(c) for c in chunks] == [5] * 8
    assert all(sum(len(line.encode()) + 1 for line in chunk) <= limit for chunk in chunks)
    assert [json.loads(line)["custom_id"] for chunk in chunks for line in chunk] == list(bodies)

"""`python -m evaluation` end to end on the tiny checkpoint and a random adapter, with a 3-study dataset in the
dataprep contract format built here. The report is made once per tokenizer (the `checkpoint` fixture: the tiny one
and llava-1.5-7b-hf's real one), so answers are decoded and parsed as a 7B run decodes them."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageDraw

from cxr_vqa.errors import UserError
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.model import load_model
from cxr_vqa.template import add_question, conversation_from_qa
from cxr_vqa.vqa import BASE, TUNED
from evaluation import __main__ as ev
from evaluation import evaluate as evaluate_module
from evaluation.predictions import resume

MAX_NEW_TOKENS = 6
STUDIES = [  # (patient, study, [(question, answer, kind, finding)])
    ("patient1", "patient1/study1", [("Is there cardiomegaly?", "Yes.", "closed", "Cardiomegaly"),
                                     ("What abnormalities are seen?", "Enlarged heart.", "open", None)]),
    ("patient2", "patient2/study1", [("Is there a pleural effusion?", "No.", "closed", "Pleural Effusion"),
                                     ("Is there cardiomegaly?", "No.", "closed", "Cardiomegaly")]),
    ("patient3", "patient3/study2", [("Is there edema?", "Yes, mild.", "closed", "Edema")]),
]  # fmt: skip


def _film(seed: int) -> Image.Image:
    image = Image.new("RGB", (336, 336), (20, 20, 20))
    ImageDraw.Draw(image).ellipse((60 + 10 * seed, 80, 260, 300), fill=(200, 200, 200))
    return image


def _row(index, patient, study, pairs):
    qa = [
        {"question": q, "answer": a, "kind": k, "finding": f, "label": a.split()[0].strip(".,").lower()
         if k == "closed" else None}
        for q, a, k, f in pairs
    ]  # fmt: skip
    return {
        "messages": conversation_from_qa([(q, a) for q, a, _, _ in pairs]),
        "images": [_film(index)],
        "qa": qa,
        "patient_id": patient,
        "study_id": study,
        "image_path": f"train/{study}/view1_frontal.png",
        "view": "PA",
        "source": "labels",
    }


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    from datasets import Dataset, DatasetDict, Image, List

    rows = [_row(i, *study) for i, study in enumerate(STUDIES)]
    test = Dataset.from_list(rows)
    test = test.cast_column("images", List(Image()))
    data = DatasetDict({"train": test.select([0]), "validation": test.select([1]), "test": test})
    out = tmp_path_factory.mktemp("qa-data")
    data.save_to_disk(str(out))
    return str(out)


def _args(dataset, out, base, adapter=None, *extra):
    args = ["--dataset", dataset, "--out", str(out), "--base", base, "--no-4bit", "--device", "cpu"]
    args += ["--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "8", "--resamples", "200"]
    return args + (["--adapter", adapter] if adapter else []) + list(extra)


@pytest.fixture(scope="module")
def report(dataset_dir, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    ev.main(_args(dataset_dir, out, *checkpoint))
    return out


def _records(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_writes_every_file_with_the_metrics_schema(report):
    assert (report / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["questions"] == {"total": 5, "closed": 4, "open": 1}
    assert metrics["studies"] == 3 and metrics["patients"] == 3
    assert metrics["chance"]["closed_accuracy"] == 0.5  # 2 yes, 2 no
    assert set(metrics["models"]) == {"base", "tuned", "base_blank", "tuned_blank"}
    for summary in metrics["models"].values():
        for key in ("closed_accuracy", "unparseable_rate", "open_f1", "open_recall", "open_rouge_l", "answer_length"):
            low, high = summary[key]["ci"]
            assert low <= summary[key]["value"] <= high
        assert summary["closed_accuracy"]["n"] == 4 and summary["open_f1"]["n"] == 1
        assert set(summary["per_finding"]) == {"Cardiomegaly", "Pleural Effusion", "Edema"}
    diff = metrics["difference"]["tuned_minus_base"]["closed_accuracy"]
    assert diff["test"] == "mcnemar_exact" and 0 <= diff["p_value"] <= 1
    assert set(metrics["ablation"]) == {"base", "tuned"}
    text = (report / "report.md").read_text()
    assert "single-turn" in text and "not for diagnosis" in text and "Image ablation" in text


def test_metrics_follow_from_the_predictions(report):
    records = _records(report)
    metrics = json.loads((report / "metrics.json").read_text())
    for name in ("base", "tuned", "tuned_blank"):
        closed = [r for r in records if r["kind"] == "closed"]
        accuracy = sum(r["scores"][name]["correct"] for r in closed) / len(closed)
        assert metrics["models"][name]["closed_accuracy"]["value"] == pytest.approx(accuracy)
        lengths = [len(r["answers"][name].split()) for r in records]
        assert metrics["models"][name]["answer_length"]["value"] == pytest.approx(sum(lengths) / len(lengths))


def test_predictions_are_the_model_cores_per_row_answers(report, dataset_dir, checkpoint):
    from datasets import load_from_disk

    records = _records(report)
    assert [r["id"] for r in records] == [f"{s}#{j}" for _, s, pairs in STUDIES for j in range(len(pairs))]
    assert records[3]["question"] == "Is there cardiomegaly?" and records[3]["reference"] == "No."
    vqa = load_model(*checkpoint, load_in_4bit=False, device="cpu")
    settings = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS)
    test = load_from_disk(dataset_dir)["test"]
    row_of = {s: i for i, (_, s, _) in enumerate(STUDIES)}
    for record in records[::2]:
        image = test[row_of[record["study_id"]]]["images"][0]
        conv = add_question(None, record["question"])
        for name, adapter, picture in (("base", BASE, image), ("tuned", TUNED, image),
                                       ("tuned_blank", TUNED, Image.new("RGB", image.size))):  # fmt: skip
            assert record["answers"][name] == vqa.answer([picture], [conv], [adapter], settings)[0].text, name
    assert any(r["answers"]["base"] != r["answers"]["tuned"] for r in records)  # the adapter is really applied


def test_resume_answers_only_the_missing_questions(report, dataset_dir, checkpoint, monkeypatch):
    before = (report / "predictions.jsonl").read_text().splitlines()
    # a run killed mid-write: two questions missing, the last line cut short
    (report / "predictions.jsonl").write_text("\n".join(before[:3]) + "\n" + before[3][:25])
    asked = []

    def counting_load_model(*args, **kwargs):
        vqa = load_model(*args, **kwargs)
        answer = vqa.answer
        vqa.answer = lambda images, convs, models, settings, on_text=None: (
            asked.extend(c[-1] for c in convs) or answer(images, convs, models, settings)
        )
        return vqa

    monkeypatch.setattr(evaluate_module, "load_model", counting_load_model)
    ev.main(_args(dataset_dir, report, *checkpoint))
    # batches of 2 questions (8 rows / 4 variants): the cut batch (questions 2-3) again whole, then question 4
    assert len(asked) == 3 * 4  # × (base, tuned) × (film, blank)
    after = (report / "predictions.jsonl").read_text().splitlines()
    assert sorted(after) == sorted(before)  # deterministic greedy answers: the same records again


def test_base_only_with_limit_and_no_ablation(dataset_dir, tiny_model_dir, tmp_path):
    ev.main(_args(dataset_dir, tmp_path, tiny_model_dir, None, "--limit", "1", "--no-ablation"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["models"]) == {"base"} and metrics["difference"] == {} and metrics["ablation"] == {}
    assert metrics["studies"] == 1 and metrics["questions"]["total"] == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--dataset": "/nonexistent/data"}, "not found"),
        ({"--split": "holdout"}, "no 'holdout' split"),
        ({"--batch-size": "0"}, "must be positive"),
        ({"--max-new-tokens": "0"}, "max_new_tokens"),
        ({"--base": "/nonexistent/model"}, "not found"),
    ],
)
def test_bad_input_is_one_line(change, message, dataset_dir, tmp_path, run_cli):
    args = _args(dataset_dir, tmp_path, "/nonexistent/model" if "--base" in change else "unused")
    for flag, value in change.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    code, line = run_cli(ev.main, args)
    assert code == 2 and message in line


def test_changed_settings_do_not_mix_into_an_old_report(report, dataset_dir, checkpoint, run_cli):
    code, line = run_cli(ev.main, _args(dataset_dir, report, checkpoint[0]))  # same --out, no adapter this time
    assert code == 2 and "other settings" in line


def test_an_unreadable_run_file_is_one_line_not_a_traceback(tmp_path, run_cli):
    (tmp_path / "predictions.jsonl").write_text('{"id": "patient1/study1#0"}\n')
    (tmp_path / "run.json").write_text('{"dataset": "/da')  # cut short by a kill (before it was written atomically)
    with pytest.raises(UserError, match="run.json cannot be read .*pick a new --out"):
        resume(tmp_path, {"dataset": "/data"})
    assert (tmp_path / "predictions.jsonl").read_text() == '{"id": "patient1/study1#0"}\n'  # kept as it was


def test_missing_radeval_fails_before_generating(dataset_dir, tmp_path, run_cli):
    import importlib.util

    if importlib.util.find_spec("RadEval"):
        pytest.skip("RadEval is installed here")
    code, line = run_cli(ev.main, _args(dataset_dir, tmp_path, "unused", None, "--extra-metrics", "radeval"))
    assert code == 2 and "pip install RadEval" in line


@pytest.mark.parametrize(("answer", "verdict"), [("Yes.", "yes"), ("No, the lungs are clear.", "no")])
def test_trained_answer_ids_decode_to_what_the_evaluation_parses(checkpoint, answer, verdict, monkeypatch):
    """The ids a row trains on for an answer, emitted by the model, come back through the serving path (generate and
    stream) as that answer's text, which the evaluation parses: no stray space, `</s>` or piece of the prompt."""
    from types import SimpleNamespace

    import torch

    from cxr_vqa.answers import parse_yes_no
    from finetune.collator import IGNORE_INDEX, AnswerOnlyCollator

    vqa = load_model(*checkpoint, load_in_4bit=False, device="cpu")
    row = {"messages": conversation_from_qa([("Is there edema?", answer)]), "images": [_film(0)]}
    labels = AnswerOnlyCollator(vqa.processor)([row])["labels"][0]
    emitted = labels[labels != IGNORE_INDEX].tolist()
    assert emitted[-1] == vqa.processor.tokenizer.eos_token_id

    def emit(input_ids, streamer=None, **_):  # a model that answers exactly what it was trained on
        steps = [input_ids] + [torch.full((len(input_ids), 1), token) for token in emitted]
        for step in steps if streamer else []:
            streamer.put(step)  # as generate does: the prompt first, then each step's new tokens
        if streamer:
            streamer.end()
        first_step = torch.zeros(len(input_ids), vqa.model.config.text_config.vocab_size)
        first_step[:, emitted[0]] = 10.0
        return SimpleNamespace(sequences=torch.cat(steps, dim=1), logits=(first_step,))

    monkeypatch.setattr(vqa.model, "generate", emit)
    conv = add_question(None, "Is there edema?")
    settings = GenerationSettings(max_new_tokens=8)
    served = [a.text for a in vqa.answer([_film(0)] * 2, [conv] * 2, [BASE, TUNED], settings)]
    steps: list[list[str]] = []
    vqa.answer([_film(0)], [conv], [TUNED], GenerationSettings(max_new_tokens=8), on_text=steps.append)
    assert served == [answer, answer] and steps[-1] == [answer]
    assert parse_yes_no(served[0]) == verdict
    [answered] = vqa.answer([_film(0)], [conv], [TUNED], GenerationSettings(max_new_tokens=8))
    assert answered.p_yes == pytest.approx(1.0 if verdict == "yes" else 0.0, abs=1e-3)  # the first piece is yes/no

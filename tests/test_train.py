"""Training on the tiny checkpoint in 4-bit on CPU: a 2-step LoRA run (what changes, what is written), resuming, an
overfit run served back through the model core (the app's path), and one-line errors before any model loads."""

from __future__ import annotations

import shutil

import pytest
import torch
from datasets import Dataset, DatasetDict, List
from datasets import Image as ImageFeature
from PIL import Image, ImageDraw
from transformers import TrainerCallback
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

import finetune.train as train_module
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.model import attach_adapter, load_base_model, load_model
from cxr_vqa.template import CHAT_TEMPLATE, add_question, conversation_from_qa
from cxr_vqa.vqa import BASE, TUNED
from finetune.__main__ import main
from finetune.collator import AnswerOnlyCollator
from finetune.config import parse_config
from finetune.train import train

CONFIG = "finetune/configs/tiny-cpu.yaml"
STUDIES = [
    [("Is there cardiomegaly?", "Yes."), ("Is there a pleural effusion?", "No.")],
    [("What abnormalities are seen?", "Left lower lobe consolidation.")],
    [("Is there edema?", "No."), ("Are support devices present?", "Yes."), ("Is the heart size normal?", "Yes.")],
    [("Is there a pneumothorax?", "Yes.")],
]


def film(seed: int) -> Image.Image:
    img = Image.new("RGB", (336, 336), (30 + 50 * seed,) * 3)
    ImageDraw.Draw(img).ellipse([40 + 20 * seed, 60, 200 + 10 * seed, 300], fill=(235, 235, 235))
    return img


def contract_row(seed: int, pairs) -> dict:
    """One study in the dataprep contract (DESIGN.md): multi-turn messages, one image, structured qa."""
    qa = [{"question": q, "answer": a, "kind": "open", "finding": None, "label": None} for q, a in pairs]
    return {
        "messages": conversation_from_qa(pairs),
        "images": [film(seed)],
        "qa": qa,
        "patient_id": f"patient{seed}",
        "study_id": f"study{seed}",
        "image_path": f"train/patient{seed}/study1/view1_frontal.png",
        "view": "PA",
        "source": "labels",
    }


def save_dataset(path, splits: dict[str, list[dict]]) -> str:
    parts = {}
    for name, rows in splits.items():
        parts[name] = Dataset.from_list(rows).cast_column("images", List(ImageFeature()))
    DatasetDict(parts).save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    rows = [contract_row(i, pairs) for i, pairs in enumerate(STUDIES)]
    return save_dataset(tmp_path_factory.mktemp("data"), {"train": rows, "validation": rows[:2], "test": rows[3:]})


def config(tiny, data, out, *extra):
    return parse_config(
        ["--config", CONFIG, "--model_name_or_path", tiny, "--dataset", data, "--output_dir", str(out)] + list(extra)
    )


class Recorder(TrainerCallback):
    """Snapshots the weights when training starts and counts the optimizer steps actually taken."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start_step = state.global_step
        self.before = {name: t.detach().clone() for name, t in model.state_dict().items()}
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


@pytest.fixture(scope="module")
def two_steps(tiny_model_dir, dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    recorder = Recorder()
    extra = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1"]
    extra += ["--save_steps", "1", "--eval_steps", "2"]
    trainer = train(*config(tiny_model_dir, dataset_dir, out, *extra), callbacks=[recorder])
    return trainer, recorder, out


def test_two_step_qlora_run_trains_lora_only(two_steps):
    import bitsandbytes as bnb

    trainer, recorder, _ = two_steps
    assert type(trainer.data_collator) is AnswerOnlyCollator
    assert not isinstance(trainer.data_collator, DataCollatorForVisionLanguageModeling)
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())

    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert any("eval_loss" in e for e in trainer.state.log_history)

    after = trainer.model.state_dict()
    lora = [n for n in recorder.before if "lora_" in n]
    projector = [n for n in recorder.before if "modules_to_save" in n]  # tiny-cpu.yaml trains the projector
    frozen = [n for n in recorder.before if n not in lora and n not in projector]
    assert lora and projector and len(frozen) > len(lora)
    assert all(not torch.equal(recorder.before[n], after[n]) for n in lora + projector)
    assert all(torch.equal(recorder.before[n], after[n]) for n in frozen)  # 4-bit base, vision tower, lm_head


def test_two_step_run_writes_adapter_processor_and_card(two_steps, dataset_dir, tiny_model_dir):
    trainer, _, out = two_steps
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert (out / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    card = (out / "README.md").read_text()
    last_loss = [e["loss"] for e in trainer.state.log_history if "loss" in e][-1]
    assert f"base_model: {tiny_model_dir}" in card
    assert "not for diagnosis" in card and "synthetic" not in card  # dataset_dir is not from a synthetic release
    assert "train: 4 studies, 7 QA pairs" in card and "validation: 2 studies, 3 QA pairs" in card
    assert f"loss: {last_loss:.4f}" in card
    assert not any(a in card for pairs in STUDIES for _, a in pairs if len(a) > 4)  # counts, never the QA text


def test_resume_continues_from_the_saved_step(two_steps, tiny_model_dir, dataset_dir, tmp_path):
    _, _, first = two_steps
    out = tmp_path / "resumed"
    shutil.copytree(first, out)
    recorder = Recorder()
    extra = ["--max_steps", "3", "--per_device_train_batch_size", "2", "--logging_steps", "1", "--eval_strategy", "no"]
    trainer = train(
        *config(tiny_model_dir, dataset_dir, out, *extra, "--resume_from_checkpoint"), callbacks=[recorder]
    )
    assert (recorder.start_step, recorder.steps, trainer.state.global_step) == (2, 1, 3)
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [1, 2, 3]


OVERFIT = [
    ("Is there cardiomegaly?", "Yes."),
    ("Does this film show a fracture?", "No."),
    ("What abnormalities are seen?", "Left lower lobe consolidation."),
    ("Which side is the effusion?", "Right."),
]


def test_overfit_answers_come_back_through_the_model_core(tiny_model_dir, tmp_path):
    """Train 4 rows to memorisation, then answer through `load_model(...).generate` as the app does: the fine-tuned
    rows give the trained answers (so training text == serving text, EOS included, and the adapter survives disk),
    the base rows of the same batch do not."""
    rows = [contract_row(i, [pair]) for i, pair in enumerate(OVERFIT)]
    data = save_dataset(tmp_path / "data", {"train": rows, "validation": rows})
    out = tmp_path / "overfit"
    # adam_beta2 0.9: a short run must forget the huge first gradients quickly, or the last Yes/No split stalls
    # (with these settings seeds 0-3 all end below 0.01 loss).
    extra = ["--max_steps", "40", "--learning_rate", "4e-3", "--lr_scheduler_type", "linear", "--adam_beta2", "0.9"]
    extra += ["--eval_strategy", "no", "--save_strategy", "no", "--activation_checkpointing", "false", "--merge"]
    train(*config(tiny_model_dir, data, out, *extra))

    images = [film(i) for i in range(len(OVERFIT))]
    questions = [add_question(None, q) for q, _ in OVERFIT]
    answers = [a for _, a in OVERFIT]
    settings = GenerationSettings(max_new_tokens=12)
    vqa = load_model(tiny_model_dir, adapter=str(out))  # 4-bit base + the adapter from disk
    both = [a.text for a in vqa.answer(images + images, questions + questions, [TUNED] * 4 + [BASE] * 4, settings)]
    assert both[:4] == answers
    assert all(base != answer for base, answer in zip(both[4:], answers, strict=True))

    # --merge: the merged 16-bit model computes what the unquantized base + adapter computes.
    merged = load_model(str(out / "merged"), load_in_4bit=False)
    reference = attach_adapter(load_base_model(tiny_model_dir, load_in_4bit=False, device="cpu"), str(out))
    plain = load_base_model(tiny_model_dir, load_in_4bit=False, device="cpu")
    batch = merged._inputs(images[:2], questions[:2], None)
    with torch.no_grad():
        got, want, base = (m(**batch).logits[:, -1] for m in (merged.model, reference, plain))
    assert torch.allclose(got, want, atol=0.05, rtol=0.01)
    assert (got - base).abs().max() > 1.0


@pytest.fixture(scope="module")
def broken_datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    good = contract_row(0, STUDIES[0])
    no_qa = {k: v for k, v in good.items() if k != "qa"}
    two_images = {**good, "images": [film(0), film(1)]}
    return {
        "no_qa_column": save_dataset(root / "no_qa", {"train": [no_qa], "validation": [no_qa]}),
        "no_validation": save_dataset(root / "no_val", {"train": [good]}),
        "two_images": save_dataset(root / "two_images", {"train": [two_images], "validation": [good]}),
    }


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d, t: ["--dataset", str(t / "nowhere")], "not found: build one with"),
        (lambda d, t: ["--dataset", d["no_qa_column"]], "lacks column(s) qa"),
        (lambda d, t: ["--dataset", d["no_validation"], "--train_split", "test"], "no 'test' split"),
        (lambda d, t: ["--dataset", d["no_validation"]], "no 'validation' split"),
        (lambda d, t: ["--dataset", d["two_images"]], "row 0: each row needs exactly one image"),
        (lambda d, t: ["--optim", "paged_adamw_8bit"], "needs a CUDA GPU"),
        (lambda d, t: ["--attn_implementation", "flash_attention_2"], "needs a CUDA GPU"),
        (lambda d, t: ["--bf16", "true"], "bf16: true needs a CUDA GPU"),
        (lambda d, t: ["--resume_from_checkpoint"], "no complete checkpoint-* directory"),
        (lambda d, t: ["--max_length", "512"], "would truncate the 576 image tokens"),
        (
            lambda d, t: ["--lora_modules_to_sav", "x"],
            "unrecognized arguments: --lora_modules_to_sav",
        ),  # abbreviations are not guessed
        (lambda d, t: ["--lora_target_modules", r".*vision_tower.*\.qproj"], "matches no module"),
        (lambda d, t: ["--lora_modules_to_save", "projector"], "no module named 'projector'"),
        # The app's mixed-adapter batches cannot serve a whole projector (an nn.Module), only its Linear layers.
        (lambda d, t: ["--lora_modules_to_save", "multi_modal_projector"], "multi_modal_projector.linear_1, multi"),
    ],
)
def test_bad_input_fails_in_one_line_before_loading_a_model(
    setup, message, broken_datasets, dataset_dir, tiny_model_dir, tmp_path, monkeypatch, run_cli
):
    if torch.cuda.is_available() and "CUDA" in message:
        pytest.skip("checks a CPU-only machine")

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(train_module, "build_model", no_model)
    argv = ["--config", CONFIG, "--model_name_or_path", tiny_model_dir, "--dataset", dataset_dir]
    argv += ["--output_dir", str(tmp_path / "out"), *setup(broken_datasets, tmp_path)]
    code, line = run_cli(main, argv)
    assert code == 2 and message in line


def test_empty_train_split_fails_in_one_line(tmp_path, tiny_model_dir, run_cli):
    good = contract_row(0, STUDIES[0])
    empty = Dataset.from_list([good]).cast_column("images", List(ImageFeature())).select([])
    DatasetDict(train=empty, validation=empty).save_to_disk(str(tmp_path / "data"))
    code, line = run_cli(
        main, ["--config", CONFIG, "--model_name_or_path", tiny_model_dir, "--dataset", str(tmp_path / "data")]
    )
    assert code == 2 and line.startswith("error: ") and "[train] is empty" in line


def test_resume_skips_a_checkpoint_killed_while_saving(tmp_path):
    from types import SimpleNamespace

    from finetune.config import resolve_checkpoint

    for step, complete in ((4, True), (8, False), (12, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-best").mkdir()  # not a step: ignored
    args = SimpleNamespace(resume_from_checkpoint=True, output_dir=str(tmp_path))
    assert resolve_checkpoint(args) == str(tmp_path / "checkpoint-4")
    (tmp_path / "checkpoint-12" / "trainer_state.json").write_text("{}")
    assert resolve_checkpoint(args) == str(tmp_path / "checkpoint-12")

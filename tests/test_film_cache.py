"""Training with the frozen vision tower's features kept per film (finetune/film_cache.py): the loss is the model's
own on the same batch, a short run trains what it should and leaves the tower alone, shuffled films are another
study's, each used once, and a trained tower is refused."""

from __future__ import annotations

import json

import pytest
import torch
from test_train import STUDIES, Recorder, config, contract_row, save_dataset

from cxr_vqa.errors import UserError
from finetune.collator import AnswerOnlyCollator
from finetune.film_cache import FilmCacheCollator, answer_loss, check_frozen_tower, feature_bytes
from finetune.train import build_trainer, check_film_cache, train

CACHED = ["--cache_film_features", "--eval_strategy", "no", "--load_in_4bit", "false", "--dataloader_num_workers", "0"]


@pytest.fixture(scope="module")
def rows():
    return [contract_row(i, pairs) for i, pairs in enumerate(STUDIES)]


@pytest.fixture(scope="module")
def data(rows, tmp_path_factory):
    return save_dataset(tmp_path_factory.mktemp("data"), {"train": rows, "validation": rows[:1]})


def test_the_cached_loss_is_the_models_own(tiny_model_dir, data, rows, tmp_path):
    trainer, _ = build_trainer(*config(tiny_model_dir, data, tmp_path / "out", *CACHED))
    model = trainer.model
    with torch.no_grad():  # a projector and LoRA away from zero, so every trained part counts in the comparison
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    model.eval()
    cached = trainer.data_collator([{"row": i} for i in range(len(rows))])
    plain = AnswerOnlyCollator(trainer.processing_class)(rows)
    with torch.no_grad():
        want = model(**plain).loss  # the full forward: vision tower, projector, every logit
        got, hits, count = answer_loss(model, cached)
    assert count == (plain["labels"][:, 1:] != -100).sum() and 0 <= hits <= count
    assert torch.allclose(got, want, atol=1e-5), (got, want)
    assert set(trainer.data_collator.tokens) == set(range(len(rows)))  # kept: the next epoch decodes nothing


def test_a_short_cached_run_trains_the_adapter_and_leaves_the_tower(tiny_model_dir, data, tmp_path):
    recorder = Recorder()
    extra = [*CACHED, "--max_steps", "3", "--per_device_train_batch_size", "2", "--logging_steps", "1"]
    trainer = train(*config(tiny_model_dir, data, tmp_path / "out", *extra), callbacks=[recorder])
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    assert all("mean_token_accuracy" in e for e in trainer.state.log_history if "loss" in e)
    after = trainer.model.state_dict()
    trained = [n for n in recorder.before if "lora_" in n or "modules_to_save" in n]
    tower = [n for n in recorder.before if "vision_tower" in n]
    assert trained and tower
    assert all(not torch.equal(recorder.before[n], after[n]) for n in trained)
    assert all(torch.equal(recorder.before[n], after[n]) for n in tower)
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())  # what the demo app reads
    assert (progress["step"], progress["max_steps"], progress["epochs"]) == (3, 3, None)  # a max_steps run


def test_shuffled_films_belong_to_other_studies_each_used_once(tiny_model_dir, data, tmp_path):
    trainer, _ = build_trainer(*config(tiny_model_dir, data, tmp_path / "out", *CACHED, "--shuffle_films"))
    collator = trainer.data_collator
    films = collator.film_of
    assert sorted(films) == list(range(len(films))) and all(f != i for i, f in enumerate(films))
    batch = collator([{"row": 0}, {"row": 1}])
    own = FilmCacheCollator(collator.dataset, trainer.processing_class, trainer.model)([{"row": films[0]}])
    assert torch.equal(batch["film_features"][0], own["film_features"][0])  # row 0 sees row films[0]'s film


def test_shuffled_films_need_the_cache_and_a_trained_tower_is_refused(tiny_model_dir, data, tmp_path, run_cli):
    from finetune.__main__ import main

    argv = ["--config", "finetune/configs/tiny-cpu.yaml", "--model_name_or_path", tiny_model_dir, "--dataset", data]
    code, line = run_cli(main, [*argv, "--shuffle_films"])
    assert code == 2 and "shuffle_films needs cache_film_features" in line
    trainer, _ = build_trainer(*config(tiny_model_dir, data, tmp_path / "out", "--load_in_4bit", "false"))
    next(p for n, p in trainer.model.named_parameters() if "vision_tower" in n).requires_grad_(True)
    with pytest.raises(UserError, match="needs a frozen vision tower"):
        check_frozen_tower(trainer.model)


def test_on_cuda_the_collator_runs_in_the_main_process(tiny_model_dir, data, tmp_path, monkeypatch, caplog):
    """It runs the tower on the GPU: a forked DataLoader worker would fail ("Cannot re-initialize CUDA in forked
    subprocess"). On CPU the recipes' worker stays, and keeps the cache across epochs."""
    workers = ["--cache_film_features", "--eval_strategy", "no", "--dataloader_num_workers", "1",
               "--dataloader_persistent_workers", "true"]  # fmt: skip
    _, cpu = config(tiny_model_dir, data, tmp_path / "out", *workers)
    _, gpu = config(tiny_model_dir, data, tmp_path / "out", *workers)
    check_film_cache(cpu)
    assert (cpu.dataloader_num_workers, cpu.dataloader_persistent_workers) == (1, True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu.use_cpu = False  # as TrainConfig leaves it where CUDA is
    with caplog.at_level("INFO", logger="finetune.train"):
        check_film_cache(gpu)
    assert (gpu.dataloader_num_workers, gpu.dataloader_persistent_workers) == (0, False)
    assert "forked DataLoader worker cannot" in caplog.text


def test_the_cache_costs_what_the_docs_say_per_film():
    """1.2 MB a film for LLaVA-1.5-7B's tower (576 tokens x 1024 wide, fp16), built from its config, empty."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig()  # LLaVA-1.5's CLIP ViT-L/14 at 336 px; a 1-layer stand-in for the rest
    config.vision_config.num_hidden_layers = config.text_config.num_hidden_layers = 1
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config).to(torch.float16)
    assert feature_bytes(model) == 576 * 1024 * 2 == 1_179_648

"""Every shipped config parses, says how to launch it, and means what the recipe says; flags override YAML; unknown
keys fail in one line. Also the 7B architecture the GPU benchmark builds. No model is loaded here."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from cxr_vqa.model import LANGUAGE_LORA_TARGETS
from finetune.__main__ import main
from finetune.config import parse_config

CONFIGS = sorted(Path("finetune/configs").glob("*.yaml")) + sorted(Path("bench").glob("*.yaml"))
TRAINING_CONFIGS = [p for p in CONFIGS if not p.name.startswith("accelerate-")]


def test_configs_are_shipped():
    assert {p.name for p in CONFIGS} >= {"llava-1.5-7b-qlora.yaml", "tiny-cpu.yaml", "accelerate-multi-gpu.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_opens_with_its_launch_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("#")
    text = path.read_text()
    assert f"--config {path.as_posix()}" in text or f"--config_file {path.as_posix()}" in text


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.name)
def test_every_training_config_parses(path):
    script_args, train_args = parse_config(["--config", str(path)])
    assert train_args.remove_unused_columns is False
    assert train_args.dataset_kwargs == {"skip_prepare_dataset": True}
    assert train_args.max_length is None  # image tokens are never truncated
    if not torch.cuda.is_available():
        assert (train_args.bf16, train_args.fp16) == (False, False)  # fp32 on CPU


@pytest.mark.parametrize("name", ["llava-1.5-7b-qlora.yaml", "tiny-cpu.yaml"])
def test_recipes_evaluate_checkpoint_and_spare_the_vision_tower(name):
    script_args, train_args = parse_config(["--config", f"finetune/configs/{name}"])
    assert train_args.eval_strategy != "no" and script_args.eval_split == "validation"
    assert train_args.save_strategy != "no" and train_args.report_to in ([], ["none"], "none")
    assert script_args.lora_target_modules == LANGUAGE_LORA_TARGETS and script_args.load_in_4bit


def test_7b_config_is_the_seed_recipe_with_qlora():
    script_args, train_args = parse_config(["--config", "finetune/configs/llava-1.5-7b-qlora.yaml"])
    assert script_args.model_name_or_path == "llava-hf/llava-1.5-7b-hf"
    assert (script_args.lora_r, script_args.lora_alpha) == (64, 16)
    assert train_args.per_device_train_batch_size == 1
    assert train_args.logging_steps == 5 and train_args.num_train_epochs == 1
    assert train_args.activation_checkpointing and train_args.gradient_checkpointing
    assert train_args.learning_rate == 2e-4
    assert train_args.optim == "paged_adamw_8bit"


def test_accelerate_config_is_a_valid_multi_gpu_config():
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file("finetune/configs/accelerate-multi-gpu.yaml")
    assert config.distributed_type == "MULTI_GPU" and config.mixed_precision == "no"


def test_flags_override_the_yaml():
    argv = ["--config", "finetune/configs/tiny-cpu.yaml", "--dataset", "D", "--model_name_or_path", "M"]
    argv += ["--output_dir", "O", "--max_steps", "7", "--lora_r", "4", "--merge"]
    script_args, train_args = parse_config(argv)
    assert (script_args.dataset, script_args.model_name_or_path, script_args.lora_r) == ("D", "M", 4)
    assert (train_args.output_dir, train_args.max_steps, script_args.merge) == ("O", 7, True)
    assert train_args.learning_rate == 2e-3  # untouched keys keep the YAML value


@pytest.mark.parametrize(
    "flag, expected", [([], None), (["--resume_from_checkpoint"], "latest"), (["--resume_from_checkpoint", "X"], "X")]
)
def test_resume_flag_takes_an_optional_path(flag, expected):
    _, train_args = parse_config(["--config", "finetune/configs/tiny-cpu.yaml", *flag])
    assert train_args.resume_from_checkpoint == expected


def test_unknown_yaml_key_fails_in_one_line(tmp_path, run_cli):
    path = tmp_path / "bad.yaml"
    path.write_text("lora_r: 8\nlearning_rat: 0.1\nlora_alpah: 2\n")
    code, line = run_cli(parse_config, ["--config", str(path)])
    assert (
        code == 2
        and "unknown key(s) in" in line
        and line.endswith("bad.yaml: learning_rat, lora_alpah " + "(`python -m finetune --help` lists the options)")
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "nowhere.yaml"], "cannot read --config nowhere.yaml"),
        (["--config"], "argument --config: expected one argument"),
        (["--lora_r", "0"], "lora_r must be >= 1"),
        (["--packing", "true"], "packing and padding_free are not supported"),
        (["--remove_unused_columns", "true"], "remove_unused_columns must be false"),
    ],
)
def test_bad_config_fails_in_one_line(argv, message, run_cli):
    code, line = run_cli(main, argv)
    assert code == 2 and message in line


def test_help_lists_the_contract_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for flag in ["--config", "--dataset", "--model_name_or_path", "--output_dir", "--max_steps", "--merge"]:
        assert flag in out
    assert "--resume_from_checkpoint" in out


@pytest.fixture
def gpu_bench(monkeypatch):
    """bench/gpu.py's modules (the 7B architecture, the parts), found the way `python bench/gpu.py` finds them:
    bench/ first on the path."""
    monkeypatch.syspath_prepend(str(Path("bench").resolve()))
    return importlib.import_module("llava_7b"), importlib.import_module("gpu_parts")


def test_gpu_bench_builds_the_real_7b_architecture_on_the_meta_device(gpu_bench):
    from transformers import LlavaForConditionalGeneration

    config = gpu_bench[0].llava_7b_config()
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    params = {n: p.numel() for n, p in model.named_parameters()}
    assert 7.05e9 < sum(params.values()) < 7.07e9  # llava-1.5-7b-hf: 7.06B
    assert 3.0e8 < sum(v for n, v in params.items() if "vision_tower" in n) < 3.1e8  # CLIP ViT-L/14
    assert (config.vision_config.image_size // config.vision_config.patch_size) ** 2 == config.image_seq_length == 576
    assert config.vision_feature_layer == -2 and config.text_config.vocab_size == 32064


def test_gpu_bench_feeds_the_7b_tokenizers_real_training_rows(gpu_bench, llama_model_dir):
    from cxr_vqa.model import load_processor

    batch = gpu_bench[1].real_batch(llama_model_dir, 2, 700)
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == labels.shape == (2, 700) and batch["pixel_values"].shape == (2, 3, 336, 336)
    assert (ids == 32000).sum(dim=1).tolist() == [576, 576] and torch.equal(ids[0], ids[1])
    trained = labels[0] != -100
    assert 0 < trained.sum() < 100 and torch.equal(labels[0][trained], ids[0][trained])
    text = load_processor(llama_model_dir).tokenizer.decode(ids[0][trained])
    # the study's answers, each with its </s>
    assert text.startswith("Yes, the cardiac silhouette is enlarged.</s>") and "No.</s>" in text

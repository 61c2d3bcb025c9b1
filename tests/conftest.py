"""Shared fixtures: a tiny LLaVA-1.5-architecture checkpoint built offline, and a random LoRA adapter for it.

Everything loads through the same `from_pretrained` path as llava-hf/llava-1.5-7b-hf; nothing touches the network.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported anywhere: tests never download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402


@pytest.fixture
def run_cli(capsys):
    """Call a command's `main(argv)` expecting it to fail; returns (exit status, last line it wrote to stderr)."""

    def run(main, argv):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        return exit_info.value.code, lines[-1] if lines else ""

    return run


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny LLaVA-1.5 checkpoint + processor on disk (hidden 64, 2 layers, 336 px / patch 14 → 576 tokens)."""
    from finetune.tiny_model import build_tiny_llava

    return str(build_tiny_llava(tmp_path_factory.mktemp("tiny-llava")))


@pytest.fixture(scope="session")
def random_adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter with random (non-zero) weights: its answers differ from the base model's."""
    import torch
    from peft import LoraConfig, get_peft_model

    from cxr_vqa.model import LANGUAGE_LORA_TARGETS, load_base_model

    torch.manual_seed(1)
    model = load_base_model(tiny_model_dir, load_in_4bit=False, device="cpu")
    config = LoraConfig(r=8, lora_alpha=16, target_modules=LANGUAGE_LORA_TARGETS, init_lora_weights=False)
    out = tmp_path_factory.mktemp("random-adapter")
    get_peft_model(model, config).save_pretrained(out)
    return str(out)

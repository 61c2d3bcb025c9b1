"""Shared fixtures: tiny LLaVA-1.5-architecture checkpoints built offline, and random LoRA adapters for them.

Two tokenizers: the tiny checkpoint's byte-level BPE, trained on the spot, and llava-1.5-7b-hf's real one (Llama's
SentencePiece-BPE vocabulary, from the npm package llama-tokenizer-js: the only download, once per session, skipped
with one line where npm or its registry is missing). `checkpoint` runs a test on both. Everything loads through the
same `from_pretrained` path as llava-hf/llava-1.5-7b-hf; nothing touches the Hugging Face Hub.
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


def _random_adapter(model_dir: str, out, seed: int = 1, rank: int = 8) -> str:
    """A LoRA adapter with random (non-zero) weights: its answers differ from the base model's."""
    import torch
    from peft import LoraConfig, get_peft_model

    from cxr_vqa.model import LANGUAGE_LORA_TARGETS, load_base_model

    torch.manual_seed(seed)
    model = load_base_model(model_dir, load_in_4bit=False, device="cpu")
    config = LoraConfig(r=rank, lora_alpha=16, target_modules=LANGUAGE_LORA_TARGETS, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def random_adapter_dir(tiny_model_dir, tmp_path_factory):
    return _random_adapter(tiny_model_dir, tmp_path_factory.mktemp("random-adapter"))


@pytest.fixture(scope="session")
def second_adapter_dir(tiny_model_dir, tmp_path_factory):
    """Another adapter for the tiny model (other seed, rank 4): for several adapters served from one base."""
    return _random_adapter(tiny_model_dir, tmp_path_factory.mktemp("second-adapter"), seed=2, rank=4)


@pytest.fixture(scope="session")
def qa_dataset(tmp_path_factory):
    """The 3-study dataset of tests/test_evaluate.py in the dataprep contract format, on disk (all three in test)."""
    from datasets import Dataset, DatasetDict, Image, List
    from test_evaluate import STUDIES, _row

    data = Dataset.from_list([_row(i, *study) for i, study in enumerate(STUDIES)]).cast_column("images", List(Image()))
    out = tmp_path_factory.mktemp("qa-data")
    DatasetDict({"train": data.select([0]), "validation": data.select([1]), "test": data}).save_to_disk(str(out))
    return str(out)


@pytest.fixture(scope="session")
def llama_package(tmp_path_factory):
    """The npm tarball holding Llama's vocabulary and merges (never committed: Meta's vocabulary)."""
    from finetune.llama_tokenizer import TokenizerSourceError, fetch_package

    try:
        return fetch_package(tmp_path_factory.mktemp("npm"))
    except TokenizerSourceError as err:
        if os.environ.get("CXR_VQA_REQUIRE_REAL_TOKENIZER") == "1":  # set by .ci/run: CI must not skip them
            pytest.fail(f"no real Llama tokenizer: {err}")
        pytest.skip(f"no real Llama tokenizer: {err}")


@pytest.fixture(scope="session")
def llama_model_dir(llama_package, tmp_path_factory):
    """The tiny model with llava-1.5-7b-hf's processor files and ids: 32,064 embedding rows, <image> 32000."""
    from finetune.tiny_model import build_tiny_llava

    return str(build_tiny_llava(tmp_path_factory.mktemp("tiny-llava-llama"), llama_package=llama_package))


@pytest.fixture(scope="session")
def llama_adapter_dir(llama_model_dir, tmp_path_factory):
    return _random_adapter(llama_model_dir, tmp_path_factory.mktemp("llama-adapter"))


@pytest.fixture(scope="session", params=["tiny-bpe", "llama"])
def checkpoint(request) -> tuple[str, str]:
    """(model dir, random adapter dir), once per tokenizer: what holds for one must hold for the other."""
    if request.param == "llama":
        return request.getfixturevalue("llama_model_dir"), request.getfixturevalue("llama_adapter_dir")
    return request.getfixturevalue("tiny_model_dir"), request.getfixturevalue("random_adapter_dir")

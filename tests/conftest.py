"""Shared fixtures: tiny LLaVA-1.5-architecture checkpoints built offline, and random LoRA adapters for them.

Two tokenizers: the tiny checkpoint's byte-level BPE, trained on the spot, and llava-1.5-7b-hf's real one (Llama's
SentencePiece-BPE vocabulary, from the npm package llama-tokenizer-js: the only download, once per session, skipped
with one line where npm or its registry is missing). `checkpoint` runs a test on both. Everything loads through the
same `from_pretrained` path as llava-hf/llava-1.5-7b-hf; nothing touches the Hugging Face Hub.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported anywhere: tests never download
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _session_digest_cache(tmp_path_factory):
    """Model file digests (cxr_vqa.identity) go to this session's folder, not the user's ~/.cache."""
    os.environ["CXR_VQA_CACHE_DIR"] = str(tmp_path_factory.mktemp("digests"))


@pytest.fixture(scope="session")
def smoke_demo(tmp_path_factory):
    """`python -m finetune.demo` end to end on a handful of patients, built once for the tests that read a real build
    (tests/test_demo_build.py checks the build itself, tests/test_pointing_game.py plays on a copy): (its folder,
    the command, the environment, the finished run)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("smoke-demo") / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "finetune.demo", str(out), "--patients", "60", "--epochs", "0.2",
               "--base-steps", "2"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return out, command, env, done


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


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> str:
    """A dataset built by the real commands (`dataprep.synthetic`, then `dataprep --generator labels`) from a
    synthetic release of 60 phantom patients."""
    from dataprep import __main__ as dataprep_cli
    from dataprep import synthetic

    release = tmp_path_factory.mktemp("synthetic-release")
    synthetic.main([str(release), "--patients", "60", "--image-size", "128"])
    out = tmp_path_factory.mktemp("synthetic-data") / "data"
    assert dataprep_cli.main(["--chexpert-root", str(release), "--out", str(out), "--generator", "labels"]) == 0
    return str(out)


@pytest.fixture(scope="session")
def coarse_model(tmp_path_factory) -> tuple[str, str]:
    """(model dir, random adapter dir) of a tiny LLaVA that reads a film in 28 px patches: 144 image tokens instead
    of 576, four times cheaper where a test answers hundreds of questions."""
    from finetune.tiny_model import build_tiny_llava

    model = str(build_tiny_llava(tmp_path_factory.mktemp("tiny-llava-28"), patch_size=28))
    return model, _random_adapter(model, tmp_path_factory.mktemp("coarse-adapter"))


@pytest.fixture(scope="session")
def synthetic_evaluation(synthetic_data, coarse_model, tmp_path_factory) -> Path:
    """The folder of a real `python -m evaluation` of that model and adapter over the first 40 studies of the
    synthetic train split (two-token answers, findings questions and blank-image runs included): metrics.json,
    report.md, its three figures, predictions.jsonl."""
    from evaluation import __main__ as ev

    evaluated = tmp_path_factory.mktemp("synthetic-evaluation")
    ev.main(["--dataset", synthetic_data, "--split", "train", "--out", str(evaluated), "--base", coarse_model[0],
             "--adapter", coarse_model[1], "--no-4bit", "--device", "cpu", "--max-new-tokens", "2", "--limit", "40",
             "--findings-max-new-tokens", "2", "--batch-size", "64", "--resamples", "100"])  # fmt: skip
    return evaluated


@pytest.fixture(scope="session")
def synthetic_report(synthetic_evaluation, tmp_path_factory):
    """A report of 1,200 questions for the Explore tab: `synthetic_evaluation`'s records repeated under new ids
    (`<id>~<k>`, bench/explore.py's `grow`) up to 1,200: evaluating 1,200 questions would cost minutes of a CPU."""
    from bench.explore import grow

    out = tmp_path_factory.mktemp("synthetic-report")
    grow(synthetic_evaluation, out, 1200)
    # written last: a finished report
    (out / "metrics.json").write_bytes((synthetic_evaluation / "metrics.json").read_bytes())
    return out

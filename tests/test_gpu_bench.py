"""bench/gpu.py without a GPU: `--smoke` runs its three parts (both answers, evaluation throughput, QLoRA training) on
the tiny checkpoint on CPU and prints the RESULT lines the GPU run prints; and its forced decoding length holds even
for a model that wants to stop at once."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULT_KEYS = {
    "compare": ["speedup", "tok_s_row_b1", "tok_s_row_b2", "peak_gib"],
    "train": ["best_mb", "tok_s", "tok_s_mb1", "peak_gib", "mfu"],
    "eval": ["q_s_b8", "q_s_b32"],
}


def test_smoke_run_prints_the_three_result_lines_with_positive_figures(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "bench/gpu.py", "--smoke", "--workdir", str(tmp_path / "work")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("device: CPU")
    assert re.fullmatch(r"versions: torch \S+, transformers \S+, peft \S+, trl \S+, bitsandbytes \S+", lines[1])
    results = [line.split() for line in lines if line.startswith("RESULT ")]
    parts = {fields[1].removeprefix("part="): dict(f.split("=", 1) for f in fields[2:]) for fields in results}
    assert len(results) == 3 and {part: list(values) for part, values in parts.items()} == RESULT_KEYS
    figures = {f"{part}.{key}": float(value) for part, values in parts.items() for key, value in values.items()}
    assert all(value > 0 for value in figures.values()), figures
    assert int(parts["train"]["best_mb"]) in (1, 2, 4, 8)
    # the best micro-batch is the fastest of those tried, micro-batch 1 among them
    assert figures["train.tok_s"] >= figures["train.tok_s_mb1"]
    for micro in (1, 2, 4, 8):  # every micro-batch was tried: the memory limit is a GPU's, not checked on CPU
        assert re.search(rf"^train micro-batch {micro} x 750 tokens: ", out.stdout, re.MULTILINE)


@pytest.fixture
def gpu_parts(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    return importlib.import_module("gpu_parts")


@pytest.mark.filterwarnings("ignore:Unfeasible length constraints")  # the last call asks for more than max
def test_forced_length_decodes_every_token_asked_even_when_the_model_would_stop(
    gpu_parts, tiny_model_dir, random_adapter_dir
):
    from cxr_vqa.generation import GenerationSettings
    from cxr_vqa.model import load_model
    from cxr_vqa.vqa import BASE, TUNED

    vqa = load_model(tiny_model_dir, adapter=random_adapter_dir, load_in_4bit=False, device="cpu")
    eos = vqa.processor.tokenizer.eos_token_id
    with torch.no_grad():  # EOS first by far: unforced, every answer is empty
        vqa.model.get_base_model().lm_head.weight[eos] = 10.0
    film, conversation = vqa.prepare_film(gpu_parts.FILM).image, vqa.conversation(None, "Is there cardiomegaly?")
    rows = ([film, film], [conversation, conversation], [BASE, TUNED], GenerationSettings(max_new_tokens=6))
    assert [a.text for a in vqa.answer(*rows)] == ["", ""]
    with gpu_parts.forced_length(vqa, 6):
        forced = vqa.answer(*rows)
    assert all(len(vqa.processor.tokenizer(a.text, add_special_tokens=False)["input_ids"]) > 0 for a in forced)
    assert "generate" not in vars(vqa.model) and vqa.model.generation_config.min_new_tokens is None  # restored
    with pytest.raises(RuntimeError, match="asked for 7 new tokens a row, got 6"), gpu_parts.forced_length(vqa, 7):
        vqa.answer(*rows)  # fewer than forced (max_new_tokens 6 wins): the check refuses the call

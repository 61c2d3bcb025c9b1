"""bench/real_size.py without its 14 GB: the streamed checkpoint writer gives the shards `save_pretrained` gives
(names, shard of each name, shapes, dtypes) with values of the init's scale, and `--smoke` runs the whole bench on a
tiny twin of the 7B config (the 7B's vocabulary and tokenizer, 336 px / patch 14, 2 layers of width 64) in several
shards: RESULT line, the loaded parts, a reused checkpoint, and the memory guards that stop it in one line."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["language model, 4-bit", "vision tower", "projector", "embeddings", "lm_head", "LoRA adapter"]


@pytest.fixture
def llava_7b(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    return importlib.import_module("llava_7b")


def test_streamed_shards_hold_what_save_pretrained_writes(llava_7b, tmp_path):
    from safetensors import safe_open
    from transformers import LlavaForConditionalGeneration

    config = llava_7b.llava_7b_config(tiny=True)
    LlavaForConditionalGeneration(config).to(torch.float16).save_pretrained(tmp_path / "saved", max_shard_size="2MB")
    saved_index = json.loads((tmp_path / "saved" / llava_7b.INDEX).read_text())["weight_map"]
    layout = llava_7b.checkpoint_layout(config, torch.float16, "2MB")
    assert len(layout) >= 3 and {name: file for file, names in layout.items() for name in names} == saved_index
    assert "language_model.lm_head.weight" in saved_index  # the checkpoint's names, not the v5 module tree's

    (tmp_path / "ours").mkdir()
    generator = torch.Generator().manual_seed(0)
    for file, tensors in layout.items():
        llava_7b.write_shard(tmp_path / "ours" / file, tensors, generator)
        with safe_open(tmp_path / "ours" / file, "pt") as ours, safe_open(tmp_path / "saved" / file, "pt") as saved:
            names = ours.keys()
            assert names == saved.keys() and ours.metadata() == saved.metadata() == {"format": "pt"}
            for name in names:
                mine, theirs = ours.get_tensor(name), saved.get_tensor(name)
                assert (mine.shape, mine.dtype) == (theirs.shape, theirs.dtype), name
                if name.endswith("bias"):
                    assert not mine.any(), name
                elif name.endswith(("layernorm.weight", "layrnorm.weight", "norm.weight", "layer_norm1.weight")):
                    assert (mine == 1).all(), name
                elif mine.numel() > 1000:
                    assert 0.018 < mine.float().std() < 0.022, name
    assert not list((tmp_path / "ours").glob("*.partial"))


def run_bench(workdir: Path, npm_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "bench/real_size.py", "--smoke", "--workdir", str(workdir), "--npm-dir", str(npm_dir)]
    return subprocess.run(command + list(flags), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke_run(llama_package, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("real-size")
    return workdir, Path(llama_package).parent, run_bench(workdir, Path(llama_package).parent)


def test_smoke_run_loads_the_sharded_checkpoint_as_the_app_does_and_prints_the_result(smoke_run):
    workdir, _, out = smoke_run
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("device: CPU") and lines[2].startswith("machine: ")
    assert len(list((workdir / "tiny-7b").glob("model-0000?-of-0000?.safetensors"))) >= 3
    result = re.fullmatch(
        r"RESULT part=real_size load_s=(\S+) peak_rss_gib=(\S+) resident_gib=(\S+) generate_s=(\S+)", lines[-1]
    )
    assert result, lines[-1]
    load_s, peak, resident, generate_s = map(float, result.groups())
    assert load_s > 0 and peak >= resident > 0 and generate_s > 0
    parts = {m[1]: m[2] for m in re.finditer(r"^  (\S.*?)\s+[\d.]+M params\s+[\d.]+ GiB\s+(.+)$", out.stdout, re.M)}
    assert set(parts) == {*PARTS, "language model"}  # the norms, left out of 4-bit
    assert parts["language model, 4-bit"] == "nf4"
    assert parts["vision tower"].startswith("float32") and parts["lm_head"] == "float32"  # CPU: fp32, not 4-bit
    assert re.search(r"^compare \(base \+ adapter, one batched generate, 4 new tokens a row\)", out.stdout, re.M)


def test_a_second_run_reuses_the_checkpoint(smoke_run):
    workdir, npm_dir, first = smoke_run
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_bench(workdir, npm_dir, "--new-tokens", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing the random checkpoint in" in again.stdout and "wrote a random" not in again.stdout
    assert again.stdout.splitlines()[-1].startswith("RESULT part=real_size ")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--min-available-gib", "100000"], "this load is given (--min-available-gib): not started"),
        (["--memory-floor-gib", "100000"], "the measuring process ended with status 3 before the load finished"),
    ],
)
def test_memory_guards_stop_the_bench_in_one_line(smoke_run, flags, message):
    workdir, npm_dir, _ = smoke_run
    out = run_bench(workdir, npm_dir, *flags)
    assert out.returncode != 0 and "RESULT" not in out.stdout
    assert out.stderr.strip().splitlines()[-1].startswith("error: ") and message in out.stderr
    if "--memory-floor-gib" in flags:  # the measuring process's own line says why it stopped
        assert "error: stopped: the machine's available memory fell to" in out.stdout

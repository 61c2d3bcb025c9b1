"""Several processes on CPU: `torchrun --nproc_per_node 2 -m finetune` runs DDP over gloo on loopback and trains what
one process trains at the same global batch (same logged losses, same LoRA weights after plain SGD steps), writes its
output directory once, and resumes from its checkpoint. Select with `pytest -m ddp`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import STUDIES, config, contract_row, save_dataset

from finetune.train import train

pytestmark = pytest.mark.ddp

ROOT = Path(__file__).resolve().parents[1]
# Plain SGD without clipping: the update is the gradient times the rate, so a gradient scaled by the number of
# processes shows in the weights (Adam would normalise it away, clipping would cap it). Constant rate: the 3-step
# reference and the 2-step run + 1 resumed step share one schedule.
SGD = ["--optim", "sgd", "--learning_rate", "1e-3", "--lr_scheduler_type", "constant", "--max_grad_norm", "0"]
FLAGS = SGD + ["--logging_steps", "1", "--eval_steps", "1", "--save_steps", "1", "--save_total_limit", "3"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(argv: list[str]) -> str:
    """`torchrun --nproc_per_node 2 -m finetune ARGV` on loopback; its stdout and stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo would otherwise pick the interface the hostname resolves to
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    launch += ["--master_port", str(free_port()), "-m", "finetune"]
    done = subprocess.run(launch + argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    return output


def logged(log_history: list[dict], key: str) -> dict[int, float]:
    return {e["step"]: e[key] for e in log_history if key in e}


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[name].float() - b[name].float()).abs().max().item() for name in a)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """One process at batch 4 for 3 steps; two processes at batch 2 for 2 steps, then resumed to step 3."""
    rows = [contract_row(i, pairs) for i, pairs in enumerate(STUDIES)]
    # 3 validation rows over 2 processes: DDP repeats one to even out the shards, and must not count it
    data = save_dataset(tmp_path_factory.mktemp("data"), {"train": rows, "validation": rows[:3]})
    root = tmp_path_factory.mktemp("ddp")
    one = config(tiny_model_dir, data, root / "one", *FLAGS, "--max_steps", "3", "--per_device_train_batch_size", "4")
    reference = train(*one).state.log_history

    argv = ["--config", "finetune/configs/tiny-cpu.yaml", "--model_name_or_path", tiny_model_dir, "--dataset", data]
    argv += FLAGS + ["--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "1"]
    stdout = torchrun(argv + ["--output_dir", str(root / "two"), "--max_steps", "2"])
    shutil.copytree(root / "two", root / "resumed")
    resumed = torchrun(argv + ["--output_dir", str(root / "resumed"), "--max_steps", "3", "--resume_from_checkpoint"])
    return {"root": root, "reference": reference, "stdout": stdout, "resumed_stdout": resumed}


def test_two_processes_log_the_losses_of_one(runs):
    two = json.loads((runs["root"] / "two/checkpoint-2/trainer_state.json").read_text())["log_history"]
    for key in ("loss", "grad_norm", "eval_loss"):
        want, got = logged(runs["reference"], key), logged(two, key)
        assert list(got) == [1, 2], key
        for step in got:
            assert got[step] == pytest.approx(want[step], rel=1e-4), (key, step)
    epochs = logged(runs["reference"], "epoch")
    assert logged(two, "epoch") == {step: epochs[step] for step in (1, 2)}  # each process saw half of every batch


def test_two_processes_make_the_update_of_one(runs):
    root = runs["root"]
    one = load_file(root / "one/checkpoint-2/adapter_model.safetensors")
    two = load_file(root / "two/adapter_model.safetensors")
    moved = max_difference(one, load_file(root / "one/checkpoint-1/adapter_model.safetensors"))
    assert moved > 1e-3  # one SGD step moves the weights far more than the tolerance below
    assert max_difference(two, one) < 1e-3 * moved


def test_the_output_directory_is_written_once(runs):
    root = runs["root"]
    assert runs["stdout"].count("trained 2 steps") == 1  # one summary: rank 0's
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in runs["stdout"]
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "tokenizer.json"} <= {
        p.name for p in (root / "two").iterdir()
    }
    assert "2 per device x 1 accumulation x 2 processes" in (root / "two/README.md").read_text()
    checkpoint = {p.name for p in (root / "two/checkpoint-2").iterdir()}
    assert {"rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors", "trainer_state.json"} <= checkpoint


def test_resume_under_ddp_continues_as_one_process_would(runs):
    root = runs["root"]
    resumed = json.loads((root / "resumed/checkpoint-3/trainer_state.json").read_text())["log_history"]
    assert runs["resumed_stdout"].count("trained 3 steps") == 1
    assert list(logged(resumed, "loss")) == [1, 2, 3]
    assert logged(resumed, "loss")[3] == pytest.approx(logged(runs["reference"], "loss")[3], rel=1e-4)
    one = load_file(root / "one/adapter_model.safetensors")
    moved = max_difference(one, load_file(root / "one/checkpoint-2/adapter_model.safetensors"))
    assert max_difference(load_file(root / "resumed/adapter_model.safetensors"), one) < 1e-3 * moved


def test_the_film_cache_under_two_processes_makes_the_update_of_one(tiny_model_dir, tmp_path):
    """With cache_film_features the loss runs the model's parts (finetune/film_cache.py), past DDP's forward and the
    hooks that average gradients: they are averaged after the backward instead, so two processes at batch 2 still
    train what one trains at batch 4 (the demo's recipe trains this way)."""
    rows = [contract_row(i, pairs) for i, pairs in enumerate(STUDIES)]
    data = save_dataset(tmp_path / "data", {"train": rows, "validation": rows[:2]})
    cached = ["--cache_film_features", "true", "--load_in_4bit", "false", "--eval_strategy", "no", "--logging_steps",
              "1", "--save_strategy", "steps", "--save_steps", "1", "--max_steps", "2"]  # fmt: skip
    one = config(tiny_model_dir, data, tmp_path / "one", *SGD, *cached, "--per_device_train_batch_size", "4")
    reference = logged(train(*one).state.log_history, "loss")
    argv = ["--config", "finetune/configs/tiny-cpu.yaml", "--model_name_or_path", tiny_model_dir, "--dataset", data]
    torchrun(argv + SGD + cached + ["--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "two")])
    two = json.loads((tmp_path / "two/checkpoint-2/trainer_state.json").read_text())["log_history"]
    assert logged(two, "loss") == pytest.approx(reference, rel=1e-4)  # step 2's loss follows step 1's shared update
    one_weights = load_file(tmp_path / "one/adapter_model.safetensors")
    moved = max_difference(one_weights, load_file(tmp_path / "one/checkpoint-1/adapter_model.safetensors"))
    assert moved > 1e-3
    assert max_difference(load_file(tmp_path / "two/adapter_model.safetensors"), one_weights) < 1e-3 * moved


def test_a_gpu_backend_on_cpu_fails_in_one_line(monkeypatch, run_cli):
    if torch.cuda.is_available():
        pytest.skip("checks a CPU-only machine")
    from finetune.__main__ import main

    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; the check comes before any process group
    code, line = run_cli(main, ["--config", "finetune/configs/tiny-cpu.yaml", "--ddp_backend", "nccl"])
    assert code == 2 and "ddp_backend: nccl needs GPUs" in line

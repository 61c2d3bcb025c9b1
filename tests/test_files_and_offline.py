"""What a user meets outside the happy path: artifacts another user (the container's uid 1000) must read, a weights
file that exists but cannot be read, a machine without network, and `docker stop` (SIGTERM to PID 1).

Root reads every file whatever its mode, and this suite runs as root here. So "another user" is played for real:
reads go through `setpriv` as uid 65534, and the unreadable weights file belongs to uid 65534 with mode 0600 while
the loader runs as root without the capabilities that bypass file modes (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from cxr_vqa.files import current_umask, share, unreadable, unreadable_message, write_text_atomic
from dataprep.__main__ import main as dataprep_main
from dataprep.llm.cache import DiskCache
from dataprep.synthetic import write_release
from finetune.config import parse_config
from finetune.train import train

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0
SETPRIV = shutil.which("setpriv")
NOBODY = 65534


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def open_dir():
    """A folder others can enter (pytest's tmp_path sits in a 0700 folder, which would hide every mode below it)."""
    path = Path(tempfile.mkdtemp(prefix="cxr-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*")}


def read_as_nobody(files: list[Path]) -> subprocess.CompletedProcess:
    cmd = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "cat", "--", *map(str, files)]
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_a_trained_adapter_under_umask_022_is_readable_by_another_user(tiny_model_dir, open_dir, umask_022):
    release, data, out = open_dir / "release", open_dir / "data", open_dir / "run"
    write_release(release, patients=12, seed=0, image_size=96)
    assert dataprep_main(["--chexpert-root", str(release), "--out", str(data), "--generator", "labels"]) == 0
    extra = ["--max_steps", "1", "--per_device_train_batch_size", "1", "--eval_strategy", "no", "--save_steps", "1"]
    args = ["--config", "finetune/configs/tiny-cpu.yaml", "--model_name_or_path", tiny_model_dir]
    train(*parse_config(args + ["--dataset", str(data), "--output_dir", str(out), *extra]))

    for root in (out, data):  # the adapter with its checkpoint, and the dataset it was trained on
        found = modes(root)
        # group and others may read every file and enter every folder
        private = {name: oct(m) for name, m in found.items() if m & 0o044 != 0o044 or m & 0o011 != 0o011 and
                   (root / name).is_dir()}  # fmt: skip
        assert found and not private, private
    weights = [out / "adapter_model.safetensors", out / "checkpoint-1" / "adapter_model.safetensors"]
    assert all(stat.S_IMODE(w.stat().st_mode) == 0o644 for w in weights)  # safetensors alone writes 0600
    if IS_ROOT and SETPRIV:
        files = [p for p in out.rglob("*") if p.is_file()] + [p for p in data.rglob("*") if p.is_file()]
        result = read_as_nobody(files)
        assert result.returncode == 0, result.stderr


def test_share_adds_only_what_the_umask_allows(tmp_path):
    folder = tmp_path / "adapter"
    (folder / "sub").mkdir(parents=True)
    for name, mode in [("weights", 0o600), ("sub/exec", 0o700), ("wide", 0o666)]:
        (folder / name).write_text("x")
        (folder / name).chmod(mode)
    (folder / "link").symlink_to("/nonexistent")
    for mask, expected in [
        (0o022, {"weights": 0o644, "sub/exec": 0o744, "wide": 0o666}),
        (0o027, {"weights": 0o640, "sub/exec": 0o740, "wide": 0o666}),  # group only
        (0o077, {"weights": 0o600, "sub/exec": 0o700, "wide": 0o666}),  # nothing added, nothing taken
    ]:
        for name, mode in [("weights", 0o600), ("sub/exec", 0o700), ("sub", 0o700)]:
            (folder / name).chmod(mode)
        old = os.umask(mask)
        try:
            assert current_umask() == mask
            share(folder)
        finally:
            os.umask(old)
        got = {name: stat.S_IMODE((folder / name).stat().st_mode) for name in expected}
        assert got == expected, oct(mask)
        assert stat.S_IMODE((folder / "sub").stat().st_mode) == 0o777 & ~mask


def test_the_llm_reply_cache_is_not_private(tmp_path, umask_022):
    cache = DiskCache(tmp_path / "cache")
    cache.put("ab" * 32, {"content": "{}"})
    assert stat.S_IMODE(cache.path("ab" * 32).stat().st_mode) == 0o644  # mkstemp alone gives 0600
    assert cache.get("ab" * 32) == {"content": "{}"}


def test_an_atomic_write_is_whole_or_absent_and_not_private(tmp_path, umask_022):
    target = tmp_path / "run.json"
    write_text_atomic(target, '{"a": 1}\n')
    assert target.read_text() == '{"a": 1}\n' and stat.S_IMODE(target.stat().st_mode) == 0o644
    with pytest.raises(UnicodeEncodeError):  # fails halfway through the write: the old file stays as it was
        write_text_atomic(target, '{"a": 2, "b": "' + "x" * 70_000 + '\udc80"}')
    assert target.read_text() == '{"a": 1}\n' and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_the_tiny_checkpoint_is_shared(tiny_model_dir):
    allowed = 0o444 & ~current_umask()
    weights = Path(tiny_model_dir) / "model.safetensors"
    assert stat.S_IMODE(weights.stat().st_mode) & 0o444 == allowed | 0o400


def test_unreadable_weights_are_reported_as_permission_denied(tiny_model_dir, open_dir):
    model = open_dir / "tiny"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    code = (
        "from cxr_vqa.cli import user_errors\nfrom cxr_vqa.model import load_base_model\nwith user_errors():\n"
        f"    load_base_model({str(model)!r}, load_in_4bit=False, device='cpu')\n"
    )
    if IS_ROOT:  # a file of another user, read by root without the mode-bypassing capabilities
        if not SETPRIV:
            pytest.skip("needs setpriv (util-linux) to drop root's file-mode override")
        os.chown(weights, NOBODY, NOBODY)
        weights.chmod(0o600)
        prefix = [SETPRIV, "--bounding-set=-dac_override,-dac_read_search"]
    else:
        weights.chmod(0o000)
        prefix = []
    result = subprocess.run(
        [*prefix, sys.executable, "-c", code],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
    )  # fmt: skip
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, result.stderr
    assert last.startswith(f"error: permission denied: {weights} exists but this user"), last
    assert "mode 0600" in last or "mode 0000" in last
    assert f"chmod -R a+rX {model}" in last and "No such file" not in result.stderr


def test_unreadable_lists_what_cannot_be_read(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert unreadable(tmp_path) == []
    # root reads everything: simulate what os.access answers a user without read permission
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p).name != "model.safetensors" and real_access(p, mode))
    assert unreadable(tmp_path) == [tmp_path / "model.safetensors"]
    assert unreadable_message(tmp_path / "model.safetensors").startswith("permission denied: ")


@pytest.fixture
def closed_hub(tmp_path):
    """An environment whose Hub endpoint is a local port that refuses connections, with an empty cache and
    HF_HUB_OFFLINE unset: what a machine without network looks like to huggingface_hub, minus the DNS step."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused at once
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env |= {"HF_ENDPOINT": f"http://127.0.0.1:{sock.getsockname()[1]}", "HF_HOME": str(tmp_path / "hf"),
                "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # fmt: skip
        yield env


def test_an_unreachable_hub_fails_in_seconds_with_one_line(closed_hub, tmp_path):
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "app.py", "--no-4bit", "--votes-db", str(tmp_path / "votes.sqlite")],
        capture_output=True, text=True, timeout=60, env=closed_hub, cwd=ROOT,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    assert elapsed < 15, elapsed
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no retry warnings before it
    line = lines[0]
    assert line.startswith(f"error: cannot reach the Hugging Face Hub at {closed_hub['HF_ENDPOINT']}"), line
    assert "'llava-hf/llava-1.5-7b-hf'" in line and "not in the local cache" in line
    assert "HF_HUB_OFFLINE=1" in line and "python app.py --demo" in line and "local checkpoint directory" in line


def test_an_unreachable_hub_loads_a_cached_model_offline(closed_hub, tiny_model_dir):
    """A container with a cache volume and no network: the cached copy loads at once, without retries; an adapter
    that was never downloaded fails in one line."""
    repo = Path(closed_hub["HF_HOME"]) / "hub" / "models--cxr-test--tiny-llava"
    commit = "0" * 40
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = (
        "from cxr_vqa.model import ModelLoadError, load_model\n"
        "print(load_model('cxr-test/tiny-llava', load_in_4bit=False).base_name)\n"
        "try:\n    load_model('cxr-test/tiny-llava', 'cxr-test/not-cached', load_in_4bit=False)\n"
        "except ModelLoadError as err:\n    print(err)\n"
    )
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=closed_hub, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start < 15
    loaded, adapter_error = result.stdout.strip().splitlines()
    assert loaded == "cxr-test/tiny-llava"
    # offline now, yet an adapter that is not cached is still told apart from one that is
    assert adapter_error.startswith("cannot reach the Hugging Face Hub") and "'cxr-test/not-cached'" in adapter_error
    assert "cannot be reached" in result.stderr and "from the local cache" in result.stderr
    assert "Retrying" not in result.stderr


def as_pid_1() -> list[str]:
    """`unshare` puts the app in a new PID namespace as PID 1, as in a container; [] where that is not allowed."""
    probe = (
        subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True)
        if shutil.which("unshare")
        else None
    )
    return ["unshare", "--pid", "--fork"] if probe is not None and probe.returncode == 0 else []


def test_sigterm_closes_the_app_cleanly_and_fast(tiny_model_dir, tmp_path):
    """What `docker stop` does: SIGTERM to PID 1, then SIGKILL after 10 s."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    wrapper = as_pid_1()
    cmd = [*wrapper, sys.executable, "app.py", "--base", tiny_model_dir, "--no-4bit", "--port", str(port),
           "--votes-db", str(tmp_path / "votes.sqlite")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "app.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while "Running on local URL" not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.3)
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
        time.sleep(1)  # past Gradio's own start-up requests: the server is idle and serving
        app_pid = proc.pid
        if wrapper:  # signal PID 1 itself, as `docker stop` does, not the unshare parent
            app_pid = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        start = time.monotonic()
        os.kill(app_pid, signal.SIGTERM)
        proc.wait(timeout=20)
        elapsed = time.monotonic() - start
    finally:
        proc.kill()
    output = log.read_text()
    assert proc.returncode == 0, output  # without a handler: -15 (plain process) or no exit at all (PID 1)
    assert elapsed < 8, elapsed
    assert "Traceback" not in output and "closing server" in output and output.rstrip().endswith("server closed")

"""The container as a user meets it: build the image on a given base, start it on a tiny checkpoint and an adapter
made here (mounted read-only, as docs/deploying.md's local-adapter `docker run` does: the container's uid 1000 must
be able to read what this user saved), call `/compare`, `docker stop` it, then start the default command with no
network. Prints each step's time, the stop's exit code, the offline start's one line and the image size. Needs a Docker
engine and this project's environment on the host (`pip install -e .`); the model is built on the host, offline.

    python scripts/docker_check.py                                  # the Dockerfile's CUDA base (pulled, large)
    python scripts/docker_check.py --base my-python-torch:3.11      # any base with Python 3.11 (+ torch, or pip
                                                                    # installs a CUDA build of it)
    DOCKER_HOST=unix:///tmp/docker.sock python scripts/docker_check.py --base B --build-network host

Last line: `RESULT build_s=.. ready_s=.. compare_s=.. stop_s=.. stop_exit=.. offline_s=.. offline_exit=.. image_gb=..`
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
FILM = ROOT / "assets" / "examples" / "pleural_effusion.png"
QUESTION = "Is there a pleural effusion?"
MOUNT = "/home/app/runs"


def run(*cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kwargs)


def timed(fn, *args, **kwargs):
    start = time.monotonic()
    value = fn(*args, **kwargs)
    return time.monotonic() - start, value


def make_artifacts(work: Path) -> tuple[Path, Path]:
    """A tiny checkpoint and a one-step adapter, written by the project's own commands under this user's umask."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    tiny, release, data, adapter = work / "tiny", work / "release", work / "data", work / "adapter"
    steps = [
        ["-m", "finetune.tiny_model", str(tiny)],
        ["-m", "dataprep.synthetic", str(release), "--patients", "12", "--image-size", "96"],
        ["-m", "dataprep", "--root", str(release), "--out", str(data), "--generator", "labels"],
        ["-m", "finetune", "--config", "finetune/configs/tiny-cpu.yaml", "--model_name_or_path", str(tiny),
         "--dataset", str(data), "--output_dir", str(adapter), "--max_steps", "1", "--eval_strategy", "no",
         "--save_strategy", "no"],
    ]  # fmt: skip
    for step in steps:
        result = subprocess.run([sys.executable, *step], cwd=ROOT, env=env, capture_output=True, text=True)
        if result.returncode:
            sys.exit(f"{' '.join(step)} failed:\n{result.stderr[-2000:]}")
    return tiny, adapter


def wait_ready(url: str, container: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=3).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if run("docker", "inspect", "--format", "{{.State.Running}}", container).stdout.strip() != "true":
            sys.exit(f"the container stopped:\n{run('docker', 'logs', container, check=False).stderr[-3000:]}")
        time.sleep(1)
    sys.exit(f"not serving after {timeout:.0f} s")


def wait_healthy(container: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = run("docker", "inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()
        if status in ("healthy", "unhealthy"):
            break
        time.sleep(2)
    return status


def compare(url: str) -> tuple[str, str]:
    from gradio_client import Client, handle_file

    return Client(url, verbose=False).predict(handle_file(str(FILM)), QUESTION, api_name="/compare")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", help="BASE_IMAGE build argument (default: the Dockerfile's CUDA PyTorch base)")
    parser.add_argument("--tag", default="cxr-vqa-app:check", help="image tag to build")
    parser.add_argument("--work", default="runs/docker-check", help="where the tiny checkpoint and adapter go")
    parser.add_argument("--port", type=int, default=17860, help="host port for the container's 7860")
    parser.add_argument("--build-network", help="docker build --network (e.g. host, where the bridge has no route)")
    parser.add_argument("--ready-timeout", type=float, default=600, help="seconds to wait for the app to serve")
    args = parser.parse_args(argv)
    name, votes = "cxr-vqa-check", "cxr-vqa-check-votes"
    report: dict[str, object] = {}

    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    seconds, (tiny, adapter) = timed(make_artifacts, work)
    weights = [tiny / "model.safetensors", adapter / "adapter_model.safetensors"]
    modes = {str(w.relative_to(work)): f"{stat.S_IMODE(w.stat().st_mode):04o}" for w in weights}
    print(f"artifacts in {seconds:.0f} s, modes {modes}")

    build = ["docker", "build", "-t", args.tag]
    build += ["--build-arg", f"BASE_IMAGE={args.base}"] if args.base else []
    build += ["--network", args.build_network] if args.build_network else []
    report["build_s"], result = timed(subprocess.run, [*build, str(ROOT)], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"docker build failed:\n{result.stderr[-3000:]}")
    size = int(run("docker", "image", "inspect", "--format", "{{.Size}}", args.tag).stdout)
    report["image_gb"] = size / 1e9
    print(f"built {args.tag} in {report['build_s']:.0f} s, {report['image_gb']:.2f} GB")

    run("docker", "rm", "-f", name, check=False)
    start = time.monotonic()
    run("docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{args.port}:7860", "-v", f"{work}:{MOUNT}:ro",
        "-v", f"{votes}:/home/app/data", args.tag, "python", "app.py", "--base", f"{MOUNT}/tiny", "--adapter",
        f"{MOUNT}/adapter", "--votes-db", "/home/app/data/votes.sqlite")  # fmt: skip
    try:
        url = f"http://127.0.0.1:{args.port}/"
        wait_ready(url, name, args.ready_timeout)
        report["ready_s"] = time.monotonic() - start
        user = run("docker", "exec", name, "id", "-u").stdout.strip()
        print(f"serving after {report['ready_s']:.1f} s as uid {user}")
        report["compare_s"], (base, tuned) = timed(compare, url)
        print(f"/compare in {report['compare_s']:.2f} s: base {base[:40]!r}, tuned {tuned[:40]!r}")
        if not base or not tuned:
            sys.exit("/compare returned an empty answer")
        health = wait_healthy(name, 100)
        print(f"health after {time.monotonic() - start:.0f} s: {health}")
        report["stop_s"], _ = timed(run, "docker", "stop", "-t", "10", name)
        state = json.loads(run("docker", "inspect", "--format", "{{json .State}}", name).stdout)
        report["stop_exit"] = state["ExitCode"]
        last = (run("docker", "logs", "--tail", "1", name).stdout.strip().splitlines() or [""])[-1]
        print(f"docker stop took {report['stop_s']:.1f} s, exit {state['ExitCode']}, last line {last!r}")
    finally:
        run("docker", "rm", "-f", name, check=False)
        run("docker", "volume", "rm", votes, check=False)

    # the image's default command (the 7B base from the Hub) on a machine without network
    report["offline_s"], result = timed(run, "docker", "run", "--rm", "--network", "none", args.tag, check=False)
    report["offline_exit"] = result.returncode
    lines = (result.stdout + result.stderr).strip().splitlines()
    print(f"offline default start: exit {result.returncode} after {report['offline_s']:.1f} s, {len(lines)} lines:")
    print("\n".join(f"    {line}" for line in lines[-4:]))

    print("RESULT " + " ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in report.items()))


if __name__ == "__main__":
    main()

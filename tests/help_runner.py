"""`python ENTRY --help` for many entry points at the cost of one: the heavy libraries they share (torch,
transformers, trl, gradio ...) are imported once here, then each entry point runs in a forked child, as `python -m`
or `python script.py` would run it (runpy, `__main__`, its own sys.argv and sys.path[0]), with its stdout and stderr
captured. Each child starts from this process's state, never from another child's. Its last line is one JSON
object: {"ENTRY": {"returncode": int, "stdout": str, "stderr": str}}.

    python tests/help_runner.py -m dataprep app.py bench/gpu.py      # what tests/test_readme.py runs
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# imported before forking: what most entry points import at start (each costs seconds in a fresh process)
SHARED = ("torch", "transformers", "peft", "trl", "datasets", "gradio", "gradio_client", "PIL.Image", "numpy")


def parse(argv: list[str]) -> list[tuple[str, ...]]:
    entries, args = [], iter(argv)
    for arg in args:
        entries.append(("-m", next(args)) if arg == "-m" else (arg,))
    return entries


def run_here(entry: tuple[str, ...]) -> int:
    """Run one entry point with --help in this (child) process, as the interpreter would; its exit status."""
    try:
        if entry[0] == "-m":
            sys.argv, sys.path[0] = [entry[1], "--help"], str(ROOT)
            runpy.run_module(entry[1], run_name="__main__", alter_sys=True)
        else:
            script = ROOT / entry[0]
            sys.argv, sys.path[0] = [str(script), "--help"], str(script.parent)
            runpy.run_path(str(script), run_name="__main__")
        return 0
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def run_forked(entry: tuple[str, ...]) -> tuple[int, object, object]:
    """Fork a child that runs `entry --help` with its output in two temporary files; (pid, stdout file, stderr)."""
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115 (read and closed by main)
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.dup2(out.fileno(), 1), os.dup2(err.fileno(), 2)
        code = run_here(entry)
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    return pid, out, err


def main(argv: list[str]) -> None:
    entries = parse(argv)
    jobs = max(2, os.cpu_count() or 2)
    if not hasattr(os, "fork"):  # Windows: a fresh interpreter each, one after another
        results = {}
        for entry in entries:
            done = subprocess.run([sys.executable, *entry, "--help"], cwd=ROOT, capture_output=True, text=True)
            results[" ".join(entry)] = {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
        print("\n" + json.dumps(results))
        return
    for name in SHARED:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    results, running, waiting = {}, {}, list(entries)
    while waiting or running:
        while waiting and len(running) < jobs:
            entry = waiting.pop(0)
            pid, out, err = run_forked(entry)
            running[pid] = (entry, out, err)
        pid, status = os.wait()
        entry, out, err = running.pop(pid)
        with out, err:
            out.seek(0), err.seek(0)
            results[" ".join(entry)] = {
                "returncode": os.waitstatus_to_exitcode(status),
                "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace"),
            }
    print("\n" + json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])

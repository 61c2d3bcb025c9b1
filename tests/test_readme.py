"""Every command README.md shows a newcomer exists and answers `--help` with exit status 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# `python -m package.module` or `python path/to/script.py`, as README writes them
COMMAND = re.compile(r"\bpython3? (-m [A-Za-z_][\w.]*|(?:[\w-]+/)*[\w-]+\.py)\b")


def readme_commands() -> list[str]:
    return sorted(set(COMMAND.findall((ROOT / "README.md").read_text(encoding="utf-8"))) - {"-m pytest", "-m venv"})


def test_readme_names_the_main_commands():
    found = readme_commands()
    for wanted in ("-m dataprep", "-m finetune", "-m evaluation", "app.py"):
        assert wanted in found


@pytest.mark.parametrize("command", readme_commands())
def test_each_readme_command_answers_help(command):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, *command.split(), "--help"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-1500:]
    assert "usage" in out.stdout.lower(), out.stdout[:500]

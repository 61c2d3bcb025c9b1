"""bench/pointing_game.py --smoke on a copy of the suite's small demo build (`python -m finetune.demo`,
tests/conftest.py): its questions answered and mapped, the table and the RESULT line; a release from before
regions.jsonl gets the same regions written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = re.compile(
    r"^RESULT tuned=(\S+) tuned_lo=(\S+) base=(\S+) base_hi=(\S+) random=(\S+) random_hi=(\S+) blank=(\S+) n=(\d+)$"
)


def bench(*args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "bench/pointing_game.py", "--smoke", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_pointing_game_smoke_run_prints_its_table_and_result(smoke_demo, tmp_path):
    built = smoke_demo[3]
    assert built.returncode == 0, built.stderr[-2000:]
    shutil.copytree(smoke_demo[0], tmp_path / "demo", symlinks=True)  # a copy: its regions are taken away below
    out = bench("--demo", str(tmp_path / "demo"), "--limit", "3", "--batch", "2")
    last = out.strip().splitlines()[-1]
    match = RESULT.match(last)
    assert match, last
    rates = [float(x) for x in match.groups()[:7]]
    assert all(0 <= r <= 1 for r in rates) and int(match.group(8)) == 3
    assert rates[1] <= rates[0] and rates[5] >= rates[4]  # a low end under its rate, a high end over it
    assert "overall" in out and "random map" in out and "visual attention sinks found" in out

    regions = tmp_path / "demo" / "release" / "regions.jsonl"
    written = regions.read_bytes()  # by the release stage itself
    regions.unlink()  # as in a release built before regions were recorded
    out = bench("--demo", str(tmp_path / "demo"), "--limit", "1")
    assert "writing" in out and regions.read_bytes() == written and RESULT.match(out.strip().splitlines()[-1])

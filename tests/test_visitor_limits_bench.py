"""bench/visitor_limits.py --smoke: the real app on a tiny model under one client's bursts of concurrent requests
while a second client asks; the first is told it is busy, the second is answered, nothing crashes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_smoke_run_refuses_the_first_client_answers_the_second_and_prints_its_result():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "bench/visitor_limits.py", "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = done.stdout.strip().splitlines()[-1]
    pattern = (r"RESULT single_s=([\d.]+) second_client_s=([\d.]+) ratio=([\d.]+) first_client_answered=(\d+) "
               r"first_client_busy=(\d+) errors=(\d+) refusal_ms=\d+")  # fmt: skip
    found = re.fullmatch(pattern, result)
    assert found, result
    single, second, _, answered, busy, errors = found.groups()
    assert float(single) > 0 and float(second) > 0  # the second client was answered, not refused
    assert int(answered) >= 1 and int(busy) >= 1 and int(errors) == 0
    assert "busy: a question from your network address" in done.stdout  # what the first client was told

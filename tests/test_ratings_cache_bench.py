"""bench/ratings_cache.py --smoke: the Results tab's ratings computed once per change of the votes, then served from
the cache for a small fraction of one computation, and computed again after a new vote."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_smoke_run_serves_loads_from_the_cache_until_a_vote_comes():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "bench/ratings_cache.py", "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found = re.fullmatch(r"RESULT votes=100 uncached_s=([\d.]+) cached_s=([\d.]+) speedup=(\d+) after_vote_s=([\d.]+)",
                         done.stdout.strip().splitlines()[-1])  # fmt: skip
    assert found, done.stdout[-500:]
    uncached, cached, _, after_vote = map(float, found.groups())
    assert cached < uncached / 10 and after_vote > 5 * cached  # a load is a query; a new vote is a computation

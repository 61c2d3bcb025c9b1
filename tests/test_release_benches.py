"""The release benches' small modes: bench/read_releases.py and bench/release_figures.py --smoke print their
RESULT lines with every source's figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, f"bench/{script}", "--smoke", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    return dict(pair.split("=", 1) for pair in last.split()[1:])


@pytest.mark.parametrize("source", ["chexpert_plus", "mimic_cxr", "iu_xray"])
def test_read_releases_smoke(source, read_result):
    assert int(read_result[f"{source}_studies"]) >= 40
    assert float(read_result[f"{source}_studies_per_s"]) > 0
    assert 0 < float(read_result[f"{source}_peak_rss_mib"]) < 2000


@pytest.fixture(scope="module")
def read_result(tmp_path_factory) -> dict[str, str]:
    return run_bench("read_releases.py", "--workdir", str(tmp_path_factory.mktemp("bench-releases")))


def test_read_releases_measures_the_frontal_choice(read_result):
    assert 0.8 <= float(read_result["iu_xray_frontal_right"]) <= 1.0


def test_release_figures_smoke(tmp_path):
    result = run_bench("release_figures.py", "--workdir", str(tmp_path))
    for source in ("chexpert_plus", "mimic_cxr", "iu_xray"):
        studies, rows, rejected = (int(result[f"{source}_{k}"]) for k in ("studies", "rows", "rejected"))
        assert studies == rows + rejected and rows > 0 and rejected > 0
        assert int(result[f"{source}_qa_pairs"]) > rows and re.fullmatch(r"\d+\.\d", result[f"{source}_seconds"])

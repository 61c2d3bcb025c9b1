"""Every script in bench/ runs here in its small mode, as a user runs it (`python bench/X.py ...` from the repository
root, offline, one thread), and must exit 0 with a well-formed last `RESULT key=value ...` line holding the keys it
promises: an API change that breaks a bench fails CI instead of rotting until someone reruns it.

To add a bench: one line in SMOKES (its small-mode arguments and its RESULT keys), or, where a test file of its own
runs its small mode, that file's name. The benches run two at a time in the background while the tests read their
results, so the whole table costs about half its CPU time in wall time on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# bench -> its small-mode arguments and the keys of its RESULT line, in order ("{name}": a path the `paths` fixture
# makes below), or the test file that runs its small mode itself.
SMOKES: dict[str, tuple[str, str] | str] = {
    "app_latency": ("--model {model} --adapter {adapter} --new-tokens 4 --repeats 1", "overhead"),
    "dataprep_llm": ("--reports 8 --patients 20 --latency 0.02 --repeats 1", "speedup cached_requests"),
    "explore": ("--report {report} --questions 500 --repeats 1",
                "questions open_s select_ms_max filter_ms_max page_kb table_kb page_share"),
    "findings_cost": ("--smoke --work {learn_work}", "tokens_before tokens_after answer_tokens_before "
                      "answer_tokens_after step_ms_before step_ms_after ratio"),
    "gguf": "tests/test_gguf_serving.py",
    "gpu": "tests/test_gpu_bench.py",
    "labeler": "tests/test_labeler_command.py",
    "learn_synthetic": ("--smoke --work {learn_work}",
                        "seeds tuned_min tuned_auroc_min base_max question_chance base_unparseable_max base_auroc_max "
                        "blank_max blank_unparseable_max blank_auroc_max drop_min p_max minutes"),
    "model_identity": ("--smoke", "gib hash_s gib_per_s cached_ms rehash_s"),
    "pointing_game": "tests/test_pointing_game.py",
    "ratings_cache": "tests/test_ratings_cache_bench.py",
    "read_releases": "tests/test_release_benches.py",
    "real_size": "tests/test_real_size.py",
    "release_figures": "tests/test_release_benches.py",
    "relevance_cost": ("--demo {demo} --repeats 1 --layer-tokens 16", "time_ratio_short time_ratio_long extra_gib_7b"),
    "remote": ("--hidden 64 --layers 1 --new-tokens 4 --latency 0.1 --repeats 1", "ratio compare_all local remote"),
    "side_by_side": ("--smoke", "adapters speedup memory_ratio"),
    "train_profile": ("--work {learn_work} --rows 16 --steps 8", "before_ms after_ms ratio"),
    "train_step": ("--model {model} --studies 2 --repeats 1 --step", "tokens_per_qa_ratio"),
    "upload_limits": "tests/test_upload_limits.py",
    "visitor_limits": "tests/test_visitor_limits_bench.py",
}  # fmt: skip
# these reuse the learning bench's data and speaking base (minutes to make alone), one after the other: both train
# into its folder's profile/
AFTER = {"train_profile": "learn_synthetic", "findings_cost": "train_profile"}
# what a small mode's figures must show beyond their form, where they mean something even small
CHECKS = {  # findings_cost: the turn adds its question and answer to every row, its answer to the loss
    "findings_cost": lambda f: (
        f["tokens_after"] > f["tokens_before"]
        and f["answer_tokens_after"] > f["answer_tokens_before"] > 0
        and f["step_ms_before"] > 0
        and f["ratio"] > 0
    ),
}
RUN_HERE = sorted(name for name, smoke in SMOKES.items() if isinstance(smoke, tuple))
RESULT_FIELD = re.compile(r"[a-z][a-z0-9_]*=-?(\d+(\.\d*)?|\.\d+)(e[-+]?\d+)?|[a-z][a-z0-9_]*=(inf|nan)")


def benches_with_a_main() -> list[str]:
    """The scripts in bench/ a user runs (they have a `__main__` entry), not the modules they import."""
    return sorted(p.stem for p in (ROOT / "bench").glob("*.py") if 'if __name__ == "__main__":' in p.read_text())


def test_every_bench_has_a_smoke_run():
    missing = [name for name in benches_with_a_main() if name not in SMOKES]
    assert not missing, (
        f"bench/{missing[0]}.py has no smoke run: add a line to SMOKES in tests/test_benches.py, "
        f'"{missing[0]}": ("<small-mode arguments, e.g. --smoke>", "<its RESULT keys, in order>"), or, when a test '
        f'file of its own runs its small mode, "{missing[0]}": "tests/test_<that file>.py"'
    )
    for name, smoke in SMOKES.items():
        assert (ROOT / "bench" / f"{name}.py").is_file(), f"SMOKES names bench/{name}.py, which is gone"
        if isinstance(smoke, str):  # its own test runs it: that test must exist and run this script
            assert f"{name}.py" in (ROOT / smoke).read_text(), f"{smoke} does not run bench/{name}.py"


@pytest.fixture(scope="module")
def paths(tmp_path_factory, coarse_model, qa_dataset) -> dict[str, str]:
    """What the smoke runs are pointed at: the suite's tiny model and adapter (28 px patches), a report of them on
    the 3-study dataset, a finished demo build made of them, and a working folder the learning bench fills."""
    from app import EXAMPLES_DIR
    from cxr_vqa.contract import DEMO_FORMAT, DEMO_MARKER
    from evaluation import __main__ as ev

    root = tmp_path_factory.mktemp("benches")
    model, adapter = coarse_model
    report = root / "report"
    ev.main(["--dataset", qa_dataset, "--out", str(report), "--base", model, "--adapter", adapter, "--no-4bit",
             "--device", "cpu", "--max-new-tokens", "2", "--resamples", "100"])  # fmt: skip
    demo = root / "demo"  # as `python -m finetune.demo` leaves a finished build
    (demo / "speaking-base").mkdir(parents=True)
    (demo / "speaking-base" / "merged").symlink_to(model)
    (demo / "adapter-seed0").symlink_to(adapter)
    (demo / "examples").symlink_to(EXAMPLES_DIR)
    marker = {"format": DEMO_FORMAT, "complete": True, "trained": True, "base": "speaking-base/merged",
              "adapter": "adapter-seed0", "examples": "examples/examples.json", "report": "report"}  # fmt: skip
    (demo / DEMO_MARKER).write_text(json.dumps(marker))
    return {"model": model, "adapter": adapter, "report": str(report), "demo": str(demo),
            "learn_work": str(root / "learn")}  # fmt: skip


def run_bench(name: str, paths: dict[str, str]) -> subprocess.CompletedProcess:
    args = SMOKES[name][0].format(**paths).split()
    command = [sys.executable, f"bench/{name}.py", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    done.seconds = time.monotonic() - start
    return done


@pytest.fixture(scope="module")
def smoke_runs(request, paths) -> dict[str, Future]:
    """The selected benches' smoke runs (and what they run AFTER), two at a time in the background while the tests
    wait for theirs; one in AFTER runs in the same worker once the other has finished."""
    selected = {item.callspec.params["name"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}  # fmt: skip
    while missing := {AFTER[name] for name in selected if name in AFTER} - selected:  # what they wait for, in turn
        selected |= missing
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="bench")
    request.addfinalizer(lambda: pool.shutdown(wait=True, cancel_futures=True))
    runs: dict[str, Future] = {}

    def chained(name: str, first: Future) -> subprocess.CompletedProcess:
        first.result()
        return run_bench(name, paths)

    # the ones others wait for first (the learning bench is also the longest), those that wait last
    for name in sorted(selected, key=lambda n: (n in AFTER, n not in AFTER.values(), n)):
        first = runs[AFTER[name]] if name in AFTER else None
        runs[name] = pool.submit(chained, name, first) if first else pool.submit(run_bench, name, paths)
    return runs


@pytest.mark.parametrize("name", RUN_HERE)
def test_bench_smoke_run_prints_its_result_line(name, smoke_runs):
    done = smoke_runs[name].result()
    output = f"bench/{name}.py ({done.seconds:.0f} s):\n{done.stdout[-1500:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, output
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert results and done.stdout.strip().splitlines()[-1] == results[-1], f"no last RESULT line: {output}"
    fields = results[-1].split()[1:]
    assert all(RESULT_FIELD.fullmatch(field) for field in fields), f"not key=number: {results[-1]}"
    assert [field.split("=")[0] for field in fields] == SMOKES[name][1].split(), results[-1]
    figures = {field.split("=")[0]: float(field.split("=")[1]) for field in fields}
    assert CHECKS.get(name, lambda f: True)(figures), results[-1]

"""The stages of the demo build and of the learning bench: each a real command line, run in its own process, recorded
in WORK/stages/NAME.json once it has finished (with its wall and CPU seconds) and skipped afterwards; a stage recorded
with other settings stops the build instead of mixing them. Training resumes from its last complete checkpoint.

    stages = [*data_stages(work), base_stage(work), train_stage(work, work / "adapter-seed0")]
    for stage in stages:
        run_stage(work, stage)          # seconds taken, or None when it had finished earlier

The recipe is split in three: the model's shape and the data here (why these values: the YAML files' comments), the
base's training in finetune/configs/tiny-synthetic-base.yaml, the adapter's in finetune/configs/tiny-synthetic.yaml.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cxr_vqa.errors import UserError
from cxr_vqa.files import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RECIPE = Path(__file__).parent / "configs" / "tiny-synthetic.yaml"  # the adapter: learns to read the films
BASE_RECIPE = Path(__file__).parent / "configs" / "tiny-synthetic-base.yaml"  # the base: learns the answers' words
# The tiny model: a 4-layer, 64-wide random LLaVA whose CLIP tower sees 28 px patches (144 image tokens) with fixed
# sine-cosine positions.
TINY_ARGS = ("--hidden", "64", "--layers", "4", "--vision-hidden", "64", "--vision-layers", "2", "--patch-size", "28",
             "--sincos-positions")  # fmt: skip
PATIENTS = 1000
# no broken studies (they test dataprep's reject paths, here they would only cost training data); films 292 px wide,
# so 336 tall: dataprep's letterbox to the model's 336 px only pads them (at 384 px they took half again as long to
# draw and were shrunk to the same 292 x 336 anyway); no lateral views (a study keeps its frontal film, drawn first:
# the same film either way); no validation patients (training does not early-stop: the official valid tenth would be
# drawn and prepared for nothing); 15% held out for test; every labelled finding asked, 8 pairs a study: more
# supervision per film costs little next to its image tokens; a findings turn in a quarter of the studies (it opens
# their conversations, which the recipe trains as two examples, findings_alone: first in every study it cut held-out
# closed accuracy to 0.764, in half of them 0.948; docs/findings.md)
RELEASE_ARGS = ("--no-defects", "--image-size", "292", "--no-laterals", "--valid-patients", "0")
DATAPREP_ARGS = ("--generator", "labels", "--split-fractions", "0.85,0,0.15", "--qa-per-study", "8",
                 "--findings-share", "0.25")  # fmt: skip
BASE_DIR, MERGED = "speaking-base", "speaking-base/merged"
# The base learns the answers' words on films shuffled between studies, so it needs no film of the adapter's data:
# it trains on a small release of its own (other patients, drawn with seed + BASE_SEED), ready in seconds, while the
# adapter's release is drawn beside it at a lower priority (finetune/demo.py). Its held-out 30% (40 patients, 89
# studies at seed 0: 15% left out a finding) gives the demo's example films, a study per finding, which neither model
# trained on; the other 211 rows make between two and three passes of the base's 140 steps of 4 rows.
BASE_PATIENTS, BASE_SEED = 150, 1_000_003
BASE_DATAPREP_ARGS = tuple("0.7,0,0.3" if a == "0.85,0,0.15" else a for a in DATAPREP_ARGS)
# the synthetic findings sections run 32 tokens on average, 63 at most, in the tiny model's tokenizer
FINDINGS_TOKENS = 72  # the base stage's adapter, and the merged base served


@dataclass
class Stage:
    """One command line of the pipeline: `python -m module *args`, finished once its record says so."""

    name: str
    module: str
    args: list[str]
    resume_dir: Path | None = None  # training: resume from a complete checkpoint-* left here by a killed run
    always: bool = False  # run every time (evaluation resumes on its own)
    identity: list[str] = field(init=False)

    def __post_init__(self):
        self.args = [str(a) for a in self.args]
        self.identity = [self.module, *self.args]


def data_stages(work: Path, *, patients: int = PATIENTS, seed: int = 0) -> list[Stage]:
    """The tiny checkpoint, the synthetic release and its QA dataset under `work` (tiny-llava/, release/, data/), then
    the base's own small release and dataset (base-release/, base-data/): in this order, one after the other, or as
    finetune/demo.py runs them, the base's first."""
    tiny, release, data = work / "tiny-llava", work / "release", work / "data"
    base_release, base_data, base_seed = work / "base-release", work / "base-data", seed + BASE_SEED
    return [
        Stage("tiny model", "finetune.tiny_model", [tiny, *TINY_ARGS]),
        Stage("release", "dataprep.synthetic", [release, "--patients", patients, "--seed", seed, *RELEASE_ARGS]),
        Stage("dataprep", "dataprep", ["--root", release, "--out", data, "--seed", seed, *DATAPREP_ARGS]),
        Stage("base release", "dataprep.synthetic",
              [base_release, "--patients", min(BASE_PATIENTS, patients), "--seed", base_seed, *RELEASE_ARGS]),
        Stage("base dataprep", "dataprep", ["--root", base_release, "--out", base_data, "--seed", base_seed,
                                            *BASE_DATAPREP_ARGS]),
    ]  # fmt: skip


def base_stage(work: Path, *, extra: tuple = (), early: bool = False) -> Stage:
    """The speaking base: the tiny checkpoint trained on the answers of its own small dataset (base-data/) with
    shuffled films, merged into `work`/speaking-base/merged. `early`: it may start before the stages it reads have
    finished, and waits for their records (--wait_for) once its imports are done."""
    records = [_record(work, Stage(name, "", [])) for name in ("tiny model", "base dataprep")]
    waits = ["--wait_for", *records] if early else []
    args = ["--config", BASE_RECIPE.relative_to(ROOT), "--model_name_or_path", work / "tiny-llava",
            "--dataset", work / "base-data", "--output_dir", work / BASE_DIR, *waits, *extra]  # fmt: skip
    return Stage("base", "finetune", args)


def train_stage(work: Path, adapter: Path, *, trainer_seed: int = 0, extra: tuple = ()) -> Stage:
    """Fine-tune the speaking base of `work` on its dataset with the recipe into `adapter`."""
    args = ["--config", RECIPE.relative_to(ROOT), "--model_name_or_path", work / MERGED,
            "--dataset", work / "data", "--output_dir", adapter, "--seed", trainer_seed, *extra]  # fmt: skip
    return Stage(f"train (seed {trainer_seed})", "finetune", args, resume_dir=adapter)


def evaluate_stage(work: Path, adapter: Path, report: Path, *, limit: int | None = None, batch_size: int = 32,
                   always: bool = False) -> Stage:  # fmt: skip
    """The held-out test split, base vs tuned, with the blank-image ablation, into `report`."""
    args = ["--dataset", work / "data", "--split", "test", "--base", work / MERGED, "--adapter", adapter,
            "--out", report, "--no-4bit", "--device", "cpu", "--batch-size", batch_size, "--max-new-tokens", 24,
            "--findings-max-new-tokens", FINDINGS_TOKENS, *(["--limit", limit] if limit else [])]  # fmt: skip
    return Stage(f"evaluate ({adapter.name})", "evaluation", args, always=always)


def _record(work: Path, stage: Stage) -> Path:
    return work / "stages" / (stage.name.replace(" ", "-").replace("(", "").replace(")", "") + ".json")


def finished(work: Path, stage: Stage) -> bool:
    """Whether `stage` has finished under `work` with these settings; UserError if it finished with others."""
    record = _record(work, stage)
    if stage.always or not record.is_file():
        return False
    earlier = _command(record)
    if earlier is None:  # cut short by a kill before records were written whole: run the stage again
        return False
    if earlier != stage.identity:
        raise UserError(
            f"{work} holds a '{stage.name}' stage built with other settings ({' '.join(earlier)}): "
            "start over with --fresh or pick another directory"
        )
    return True


def _command(record: Path) -> list[str] | None:
    """The command a stage record (or .started file) holds; None when it cannot be read."""
    try:
        return json.loads(record.read_text())["command"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# Each stage leads a process group of its own (killed whole), in the builder's session: Linux's scheduler shares the
# CPU fairly between sessions first (autogroups), so a stage in a session of its own took its fair share whatever its
# nice value, and the adapter's release, meant to run at the lowest priority, slowed the first page's stages.
# Python 3.10 has no process_group: a session of its own there.
OWN_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}


class Children:
    """The stages' processes running now, whichever thread waits on each. A signal (SIGTERM, Ctrl-C) reaches only the
    main thread, so the build kills them here, all at once (`kill`), instead of waiting for those its threads run.
    Each stage leads its own process group, so what a stage started (a DataLoader worker, a drawing pool) dies too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen] = set()
        self._stopped = False

    def start(self, command: list[str], **options) -> subprocess.Popen:
        with self._lock:  # a stage starting while `kill` runs would be missed by it
            if self._stopped:
                raise UserError("the build was stopped: no further stage starts")
            process = subprocess.Popen(command, **OWN_GROUP, **options)
            self._running.add(process)
        return process

    def reaped(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._running.discard(process)

    def kill(self) -> None:
        """Kill every running stage with everything it started, and wait until each has ended; none starts after."""
        with self._lock:
            self._stopped, running = True, list(self._running)
        for process in running:
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.killpg(process.pid, signal.SIGKILL)
        for process in running:
            with contextlib.suppress(ChildProcessError):  # reaped meanwhile by the thread that waits on it
                process.wait()


def _run(command: list[str], env: dict, sink, children: Children, nice: int = 0) -> tuple[int, float]:
    """(exit code, CPU seconds of the process and its children) of `command`; killed if we are interrupted."""
    process = children.start(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT if sink else None)
    if nice and hasattr(os, "setpriority"):  # before its imports end, so the workers it starts inherit it
        with contextlib.suppress(OSError):  # ended already
            os.setpriority(os.PRIO_PROCESS, process.pid, min(os.getpriority(os.PRIO_PROCESS, 0) + nice, 19))
    try:
        _pid, status, usage = os.wait4(process.pid, 0)
    except BaseException:  # Ctrl-C or SIGTERM: the stage ends with us instead of running on, orphaned
        children.kill()
        raise
    children.reaped(process)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    return process.returncode, usage.ru_utime + usage.ru_stime


def run_stage(work: Path, stage: Stage, *, threads: int = 1, log: Path | None = None,
              children: Children | None = None, nice: int = 0) -> float | None:  # fmt: skip
    """Run `stage` unless it has finished; its output goes to `log` (or streams here); `children` holds its process
    while it runs (a build's stages side by side share one); `nice` > 0 lowers its priority (and its workers'), so
    that a stage beside it keeps its core. Seconds taken, None when reused. A failing command raises UserError naming
    the stage (and the log's last lines)."""
    children = children or Children()
    if finished(work, stage):
        print(f"[{stage.name}] finished earlier, reused", flush=True)
        return None
    command = [sys.executable, "-m", stage.module, *stage.args]
    started = _record(work, stage).with_suffix(".started")  # the settings of a run that may have been killed
    if stage.resume_dir and any(stage.resume_dir.glob("checkpoint-*/trainer_state.json")):  # written last
        earlier = _command(started) if started.is_file() else stage.identity
        if earlier != stage.identity:
            settings = "with other settings" if earlier else f"whose settings {started.name} does not say"
            raise UserError(
                f"{stage.resume_dir} holds checkpoints of an unfinished '{stage.name}' {settings}: start over with "
                "--fresh or pick another directory"
            )
        command.append("--resume_from_checkpoint")  # the latest complete checkpoint, skipping a half-written one
    if not stage.always:
        started.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(started, json.dumps({"command": stage.identity}) + "\n")
    print(f"[{stage.name}] {' '.join(stage.identity)}" + (f"  (output: {log})" if log else ""), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    start = time.time()
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as sink:
            code, cpu = _run(command, env, sink, children, nice)
    else:
        code, cpu = _run(command, env, None, children, nice)
    if code != 0:
        tail = " | ".join(log.read_text().strip().splitlines()[-3:]) if log else "see its output above"
        raise UserError(f"[{stage.name}] failed with exit code {code}: {tail}")
    seconds = time.time() - start
    if not stage.always:
        record = {"command": stage.identity, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2)}
        write_text_atomic(_record(work, stage), json.dumps(record) + "\n")
    print(f"[{stage.name}] done in {seconds:.0f} s ({cpu:.0f} CPU-seconds)", flush=True)
    return seconds

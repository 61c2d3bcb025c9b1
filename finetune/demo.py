"""Build the app's offline demo: a random tiny LLaVA taught to speak, then to read synthetic films, through the real
pipeline, ending with its own evaluation.

    python -m finetune.demo runs/demo             # about 10 minutes on 2 CPU cores; a killed build continues
    python -m finetune.demo runs/demo --seed 1    # another trainer seed on the same data
    python -m finetune.demo --out runs/demo --fresh   # start over

Stages (finetune/demo_stages.py: each the real command line in its own process, skipped once it has finished): the
base's own small synthetic release and its QA dataset (`python -m dataprep.synthetic`, `python -m dataprep
--generator labels`: 150 patients, OUT/base-release/, OUT/base-data/) beside the tiny checkpoint (`python -m
finetune.tiny_model`), and, at a lower priority beside all of them, the adapter's release of 1,000 patients and its
dataset (OUT/release/, OUT/data/, their output in OUT/logs/). Then OUT/examples/: one held-out film of the base's data
per finding and a normal one, with examples.json (neither model trains on them). Then the base, which learns the
language of the answers on films shuffled between studies, so it answers in fluent sentences at chance (`python -m
finetune --config finetune/configs/tiny-synthetic-base.yaml`, merged into OUT/speaking-base/merged). OUT/demo.json is
written then: the app can serve. Then the adapter (`python -m finetune --config finetune/configs/tiny-synthetic.yaml`,
a checkpoint every epoch, which the app serves as they come; it resumes from the last one) and the evaluation of base
and adapter on the held-out patients (`python -m evaluation`, into OUT/report/; another seed's into
OUT/report-seedN/). demo.json is rewritten, "complete", last.

One process builds OUT at a time: it holds OUT/build.lock, and another finds it held and leaves. OUT/status.json
says which stage runs. bench/learn_synthetic.py runs the same stages with three trainer seeds.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cxr_vqa.contract import DEMO_FORMAT, DEMO_LOCK, DEMO_MARKER, DEMO_STATUS, demo_build, write_examples
from cxr_vqa.errors import UserError
from cxr_vqa.files import write_text_atomic
from finetune.demo_stages import (
    BASE_RECIPE,
    MERGED,
    PATIENTS,
    RECIPE,
    ROOT,
    Children,
    Stage,
    base_stage,
    data_stages,
    evaluate_stage,
    run_stage,
    train_stage,
)

LOWER_PRIORITY = 19  # the adapter's data, made beside the base (os.setpriority: 0 normal, 19 lowest)


def pick_examples(dataset: Path, out: Path) -> list[dict]:
    """One frontal film per finding (the study shows that finding alone) and a normal one, from the held-out test
    split, saved under `out` with examples.json: file, findings, question, answer (the study's own QA pair)."""
    from cxr_vqa.contract import check_split, open_splits

    test = check_split(open_splits(dataset), dataset, "test", "evaluate")
    picked: dict[str, tuple[int, dict]] = {}
    for i, row in enumerate(test.select_columns(["qa", "view"])):
        closed = {qa["finding"]: qa for qa in row["qa"] if qa["kind"] == "closed"}
        positive = {name for name, qa in closed.items() if qa["label"] == "yes"}
        # a device alone leaves the film normal, so its study also says yes to "normal?"
        only = positive - {"No Finding"} or positive
        if row["view"] == "lateral" or len(only) != 1:
            continue
        (name,) = only
        picked.setdefault(name, (i, closed[name]))
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for name, (i, qa) in sorted(picked.items(), key=lambda item: (item[0] != "No Finding", item[0])):
        row = test[i]
        file = "normal.png" if name == "No Finding" else name.lower().replace(" ", "_") + ".png"
        row["images"][0].save(out / file)
        findings = [] if name == "No Finding" else [name]
        index.append({"file": file, "findings": findings, "question": qa["question"], "answer": qa["answer"],
                      "source": "Held-out phantom", "study_id": row["study_id"]})  # fmt: skip
    write_examples(out, index)
    return index


@dataclass
class Plan:
    """The demo's stages in order: the app can serve once `data` and `base` are done, `train` writes the adapter the
    demo ends with, `evaluate` its report into `report` (a folder name under OUT)."""

    data: list[Stage]
    base: Stage
    train: Stage
    evaluate: Stage
    report: str = "report"

    @property
    def stages(self) -> list[Stage]:
        return [*self.data, self.base, self.train, self.evaluate]


def demo_plan(out: Path, *, seed: int = 0, patients: int = PATIENTS, epochs: float | None = None,
              base_steps: int | None = None) -> Plan:  # fmt: skip
    """Every stage of the demo's build into `out`, the adapter trained with trainer seed `seed`. Seed 0 reports into
    OUT/report (where the app and bench/explore.py look), another seed into its own OUT/report-seedN: evaluation
    resumes from what it finds in its folder, and another adapter's finished report there would stop it."""
    base = base_stage(out, extra=("--max_steps", base_steps) if base_steps is not None else (), early=True)
    adapter = out / f"adapter-seed{seed}"
    extra = ("--num_train_epochs", epochs) if epochs is not None else ()
    train = train_stage(out, adapter, trainer_seed=seed, extra=extra)
    report = "report" if seed == 0 else f"report-seed{seed}"
    return Plan(data_stages(out, patients=patients), base, train, evaluate_stage(out, adapter, out / report), report)


def _write_json(path: Path, content: dict) -> None:
    write_text_atomic(path, json.dumps(content, indent=1) + "\n")  # the app reads it while the build runs


def _status(out: Path, running: list[Stage], plan: Plan, **extra) -> None:
    names = [s.name for s in plan.stages]
    _write_json(out / DEMO_STATUS, {"running": [s.name for s in running], "stages": names, "pid": os.getpid(),
                                    "time": time.time(), **extra})  # fmt: skip


def build(out: Path, plan: Plan, *, threads: int = 1) -> dict:
    """Run (or finish) the stages of `plan` into `out`, writing demo.json once the app can serve and again, complete,
    at the end; returns its content. However it ends (a failed stage, SIGTERM, Ctrl-C), no stage runs on."""
    children = Children()
    try:
        return _build(out, plan, threads, children)
    finally:
        children.kill()  # the stages still running, those that threads wait on included


def _build(out: Path, plan: Plan, threads: int, children: Children) -> dict:
    start, n = time.time(), len(plan.stages)
    tiny, release, dataprep, base_release, base_dataprep = plan.data
    # The first page waits only for the base's own small data, the tiny model and the base. The adapter's release and
    # dataset are made beside them at a lower priority (their output in OUT/logs/), so they take the spare core and
    # are ready about when they would have been one after the other. Not `with`: its exit would wait for the stages
    # before an exception (SIGTERM) reaches build(), which kills them.
    pool = ThreadPoolExecutor(3)
    try:
        _status(out, [base_release, tiny, release], plan)
        print(f"stages 1-3/{n}: {base_release.name} and {tiny.name}; {release.name} and {dataprep.name} beside them, "
              f"at a lower priority (output: {out / 'logs'})", flush=True)  # fmt: skip
        adapter_data = pool.submit(_in_turn, out, [release, dataprep], threads, children)
        made = pool.submit(run_stage, out, tiny, threads=threads, children=children)
        # the base starts now and waits for the records of what it reads: its imports (seconds) overlap the data
        based = pool.submit(run_stage, out, plan.base, threads=threads, children=children)
        for stage in (base_release, base_dataprep):
            run_stage(out, stage, threads=threads, children=children)
        made.result()
        examples = pick_examples(out / "base-data", out / "examples")
        _status(out, [plan.base, release if not adapter_data.done() else dataprep], plan)
        print(f"stage {n - 2}/{n}: {plan.base.name}", flush=True)
        based.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    adapter = plan.train.resume_dir.name
    marker = {
        "format": DEMO_FORMAT, "complete": False, "trained": False, "base": MERGED, "adapter": adapter,
        "report": plan.report, "examples": "examples/examples.json", "stages": [s.identity for s in plan.stages],
        "recipe": [str(p.relative_to(ROOT)) for p in (BASE_RECIPE, RECIPE)],
        "example_files": [e["file"] for e in examples],
    }  # fmt: skip
    _write_json(out / DEMO_MARKER, marker)
    print(f"demo can serve ({time.time() - start:.0f} s): base {out / MERGED}, {len(examples)} examples", flush=True)
    try:
        adapter_data.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    for k, stage in enumerate([plan.train, plan.evaluate], n - 1):
        _status(out, [stage], plan)
        print(f"stage {k}/{n}: {stage.name}", flush=True)
        run_stage(out, stage, threads=threads, children=children)
        if stage is plan.train:  # the final adapter is there: the app serves it from its next answer
            marker.update(trained=True)
            _write_json(out / DEMO_MARKER, marker)
    marker.update(complete=True, seconds=round(time.time() - start))
    _write_json(out / DEMO_MARKER, marker)
    _status(out, [], plan, complete=True)
    print(f"demo complete in {out} ({time.time() - start:.0f} s): adapter {out / adapter}, report {out / plan.report}")
    return marker


def _in_turn(out: Path, stages: list[Stage], threads: int, children: Children) -> None:
    """Run `stages` one after the other at a lower priority, each into OUT/logs/NAME.log."""
    for stage in stages:
        log = out / "logs" / (stage.name.replace(" ", "-") + ".log")
        run_stage(out, stage, threads=threads, children=children, log=log, nice=LOWER_PRIORITY)


def hold_lock(out: Path):
    """The open lock file of `out`, locked by this process until it exits; None when another process holds it."""
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / DEMO_LOCK, "a+")  # noqa: SIM115 (open while this process lives: the lock is the open file)
    for _ in range(20):  # an app looking whether someone builds holds it for an instant: try for a second
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            time.sleep(0.05)
    lock.close()
    return None


def stop_on_sigterm() -> None:
    """Terminated (e.g. by the app): unwind through build(), which kills the running stages instead of orphaning
    them."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def main(argv: list[str] | None = None) -> None:
    from cxr_vqa.cli import parse_config, user_errors

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--out", *argv]  # OUT may come first, without its flag
    (cfg,) = parse_config([DemoConfig], argv, prog="python -m finetune.demo", description=__doc__)
    stop_on_sigterm()
    out = Path(cfg.out).resolve()
    with user_errors():
        lock = hold_lock(out)
        if lock is None:
            print(f"another process is building the demo in {out} ({out / DEMO_STATUS} says how far): leaving it be")
            return
        if cfg.fresh:  # everything but the lock we hold: a second builder must find it locked
            for path in out.iterdir():
                if path.name != DEMO_LOCK:
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        plan = demo_plan(out, seed=cfg.seed, patients=cfg.patients, epochs=cfg.epochs, base_steps=cfg.base_steps)
        marker = demo_build(out)
        if marker and marker.get("stages") == [s.identity for s in plan.stages]:
            print(f"demo already built in {out}: nothing to do")
            return
        (out / DEMO_MARKER).unlink(missing_ok=True)  # another seed or recipe: the marker must not outlive its build
        try:
            build(out, plan, threads=cfg.threads)
        except UserError as err:  # the app shows why the build stopped
            _status(out, [], plan, failed=str(err).splitlines()[0][:300])
            raise


@dataclass
class DemoConfig:
    out: str = field(default="", metadata={"help": "cache directory for every stage's output (required)"})
    seed: int = field(default=0, metadata={"help": "trainer seed (the data is always drawn with seed 0)"})
    threads: int = field(default=1, metadata={"help": "torch threads per stage: 1 is fastest on a busy machine"})
    fresh: bool = field(default=False, metadata={"help": "delete OUT first and build everything again"})
    patients: int = field(default=PATIENTS, metadata={"help": "synthetic patients; fewer only for a smoke run"})
    epochs: float | None = field(
        default=None, metadata={"help": "override the recipe's epochs, > 0 (smoke runs: a fraction, e.g. 0.2)"}
    )
    base_steps: int | None = field(default=None, metadata={"help": "override the base's steps, >= 1 (smoke runs)"})

    def __post_init__(self):
        if not self.out:
            raise UserError("give OUT, the directory to build the demo in")
        if self.threads < 1 or self.patients < 20:
            raise UserError(f"--threads must be >= 1 and --patients >= 20, got {self.threads} and {self.patients}")
        # not 0: the Trainer reads --max_steps 0 as "no step limit" and trains the base's whole epochs
        if (self.epochs is not None and self.epochs <= 0) or (self.base_steps is not None and self.base_steps < 1):
            raise UserError(f"--epochs must be > 0 and --base-steps >= 1, got {self.epochs} and {self.base_steps}")


if __name__ == "__main__":
    main()

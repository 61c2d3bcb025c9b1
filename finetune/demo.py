"""Build the app's offline demo: a random tiny LLaVA taught to read synthetic films, through the real pipeline.

    python -m finetune.demo runs/demo             # about 10 minutes on 2 CPU cores; a killed build continues
    python -m finetune.demo runs/demo --seed 1    # another trainer seed on the same data
    python -m finetune.demo --out runs/demo --fresh   # start over

Stages, each the real command line in its own process, and each skipped once it has finished (OUT/stages/NAME.json
records the command that finished it; a stage recorded with other settings stops the build instead of mixing
them): the tiny checkpoint (`python -m finetune.tiny_model`), a synthetic release (`python -m dataprep.synthetic`),
the QA dataset (`python -m dataprep --generator labels`) and the adapter (`python -m finetune --config
finetune/configs/tiny-synthetic.yaml`, which resumes from its last epoch). Then OUT/examples/ gets one film per
finding and a normal one, all from held-out test patients, with examples.json; OUT/demo.json is written last and
marks the build complete (`cxr_vqa.contract.demo_build` reads it). bench/learn_synthetic.py runs the same stages and
evaluates them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cxr_vqa.contract import DEMO_FORMAT, DEMO_MARKER, demo_build, write_examples
from cxr_vqa.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
RECIPE = Path(__file__).parent / "configs" / "tiny-synthetic.yaml"  # the training half of the recipe
# The data half of the recipe (why these values: the YAML's comments). The tiny model: a 4-layer, 64-wide random
# LLaVA whose CLIP tower sees 28 px patches (144 image tokens) with fixed sine-cosine positions.
TINY_ARGS = ("--hidden", "64", "--layers", "4", "--vision-hidden", "64", "--vision-layers", "2", "--patch-size", "28",
             "--sincos-positions")  # fmt: skip
PATIENTS = 1200
# no broken studies (they test dataprep's reject paths, here they would only cost training data); no validation
# patients beyond the official ones (training does not early-stop); 15% held out for test; every labelled finding
# asked, 8 pairs a study: more supervision per film costs little next to its image tokens
RELEASE_ARGS = ("--no-defects",)
DATAPREP_ARGS = ("--generator", "labels", "--split-fractions", "0.85,0,0.15", "--qa-per-study", "8")


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
    """The tiny checkpoint, the synthetic release and its QA dataset under `work` (tiny-llava/, release/, data/)."""
    tiny, release, data = work / "tiny-llava", work / "release", work / "data"
    return [
        Stage("tiny model", "finetune.tiny_model", [tiny, *TINY_ARGS]),
        Stage("release", "dataprep.synthetic", [release, "--patients", patients, "--seed", seed, *RELEASE_ARGS]),
        Stage("dataprep", "dataprep", ["--chexpert-root", release, "--out", data, "--seed", seed, *DATAPREP_ARGS]),
    ]


def train_stage(work: Path, adapter: Path, *, trainer_seed: int = 0, extra: tuple = ()) -> Stage:
    """Fine-tune the tiny checkpoint of `work` on its dataset with the recipe into `adapter`."""
    args = ["--config", RECIPE.relative_to(ROOT), "--model_name_or_path", work / "tiny-llava",
            "--dataset", work / "data", "--output_dir", adapter, "--seed", trainer_seed, *extra]  # fmt: skip
    return Stage(f"train (seed {trainer_seed})", "finetune", args, resume_dir=adapter)


def _record(work: Path, stage: Stage) -> Path:
    return work / "stages" / (stage.name.replace(" ", "-").replace("(", "").replace(")", "") + ".json")


def finished(work: Path, stage: Stage) -> bool:
    """Whether `stage` has finished under `work` with these settings; UserError if it finished with others."""
    record = _record(work, stage)
    if stage.always or not record.is_file():
        return False
    earlier = json.loads(record.read_text())["command"]
    if earlier != stage.identity:
        raise UserError(
            f"{work} holds a '{stage.name}' stage built with other settings ({' '.join(earlier)}): "
            "start over with --fresh or pick another directory"
        )
    return True


def run_stage(work: Path, stage: Stage, *, threads: int = 1, log: Path | None = None) -> float | None:
    """Run `stage` unless it has finished; its output goes to `log` (or streams here). Seconds taken, None when
    reused. A failing command raises UserError naming the stage (and the log's last lines)."""
    if finished(work, stage):
        print(f"[{stage.name}] finished earlier, reused", flush=True)
        return None
    command = [sys.executable, "-m", stage.module, *stage.args]
    started = _record(work, stage).with_suffix(".started")  # the settings of a run that may have been killed
    if stage.resume_dir and any(stage.resume_dir.glob("checkpoint-*/trainer_state.json")):  # written last
        if started.is_file() and json.loads(started.read_text())["command"] != stage.identity:
            raise UserError(
                f"{stage.resume_dir} holds checkpoints of an unfinished '{stage.name}' with other settings: start "
                "over with --fresh or pick another directory"
            )
        command.append("--resume_from_checkpoint")  # the latest complete checkpoint, skipping a half-written one
    if not stage.always:
        started.parent.mkdir(parents=True, exist_ok=True)
        started.write_text(json.dumps({"command": stage.identity}) + "\n")
    print(f"[{stage.name}] {' '.join(stage.identity)}" + (f"  (output: {log})" if log else ""), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip
    start = time.time()
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as sink:
            code = subprocess.run(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT).returncode
    else:
        code = subprocess.run(command, cwd=ROOT, env=env).returncode
    if code != 0:
        tail = " | ".join(log.read_text().strip().splitlines()[-3:]) if log else "see its output above"
        raise UserError(f"[{stage.name}] failed with exit code {code}: {tail}")
    seconds = time.time() - start
    if not stage.always:
        _record(work, stage).parent.mkdir(parents=True, exist_ok=True)
        _record(work, stage).write_text(json.dumps({"command": stage.identity, "seconds": round(seconds)}) + "\n")
    print(f"[{stage.name}] done in {seconds:.0f} s", flush=True)
    return seconds


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


def demo_stages(out: Path, *, seed: int = 0, patients: int = PATIENTS, epochs: float | None = None) -> list[Stage]:
    """Every stage of the demo's build into `out`, the adapter trained with trainer seed `seed`."""
    extra = ("--num_train_epochs", epochs) if epochs is not None else ()
    return [*data_stages(out, patients=patients), train_stage(out, out / f"adapter-seed{seed}", trainer_seed=seed,
                                                              extra=extra)]  # fmt: skip


def build(out: Path, stages: list[Stage], *, threads: int = 1) -> dict:
    """Run (or finish) `stages` into `out`, then write the examples and demo.json; returns demo.json's content."""
    start = time.time()
    for k, stage in enumerate(stages, 1):
        print(f"stage {k}/{len(stages)}: {stage.name}", flush=True)
        run_stage(out, stage, threads=threads)
    examples = pick_examples(out / "data", out / "examples")
    adapter = Path(stages[-1].resume_dir).name
    marker = {
        "format": DEMO_FORMAT, "base": "tiny-llava", "adapter": adapter, "examples": "examples/examples.json",
        "recipe": str(RECIPE.relative_to(ROOT)), "stages": [s.identity for s in stages],
        "example_files": [e["file"] for e in examples], "seconds": round(time.time() - start),
    }  # fmt: skip
    (out / (DEMO_MARKER + ".tmp")).write_text(json.dumps(marker, indent=1) + "\n")
    (out / (DEMO_MARKER + ".tmp")).replace(out / DEMO_MARKER)  # whole or absent, never half-written
    print(f"demo ready in {out} ({time.time() - start:.0f} s): base {out / 'tiny-llava'}, adapter {out / adapter}, "
          f"{len(examples)} examples")  # fmt: skip
    return marker


def main(argv: list[str] | None = None) -> None:
    from cxr_vqa.cli import parse_config, user_errors

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv = ["--out", *argv]  # OUT may come first, without its flag
    (cfg,) = parse_config([DemoConfig], argv, prog="python -m finetune.demo", description=__doc__)
    # terminated (e.g. by the app): unwind, so subprocess.run kills the running stage instead of orphaning it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    out = Path(cfg.out).resolve()
    with user_errors():
        if cfg.fresh and out.exists():
            shutil.rmtree(out)
        stages = demo_stages(out, seed=cfg.seed, patients=cfg.patients, epochs=cfg.epochs)
        marker = demo_build(out)
        if marker and marker.get("stages") == [s.identity for s in stages]:
            print(f"demo already built in {out}: nothing to do")
            return
        (out / DEMO_MARKER).unlink(missing_ok=True)  # another seed or recipe: the marker must not outlive its build
        build(out, stages, threads=cfg.threads)


@dataclass
class DemoConfig:
    out: str = field(default="", metadata={"help": "cache directory for every stage's output (required)"})
    seed: int = field(default=0, metadata={"help": "trainer seed (the data is always drawn with seed 0)"})
    threads: int = field(default=1, metadata={"help": "torch threads per stage: 1 is fastest on a busy machine"})
    fresh: bool = field(default=False, metadata={"help": "delete OUT first and build everything again"})
    patients: int = field(default=PATIENTS, metadata={"help": "synthetic patients; fewer only for a smoke run"})
    epochs: float | None = field(default=None, metadata={"help": "override the recipe's epochs (smoke runs)"})

    def __post_init__(self):
        if not self.out:
            raise UserError("give OUT, the directory to build the demo in")
        if self.threads < 1 or self.patients < 20:
            raise UserError(f"--threads must be >= 1 and --patients >= 20, got {self.threads} and {self.patients}")


if __name__ == "__main__":
    main()

"""`python app.py --demo`: the offline default. Tiny demo models built on first use by `python -m finetune.demo DIR`
(the learning bench's recipe, trainer seed 0, through the real command lines; progress on the console), served as
soon as the base and the examples exist, while the adapter still trains: the fine-tuned pane answers with the newest
complete checkpoint, then with the final adapter, and says which.

The app does not import the pipelines: it runs their command and reads what it leaves (`cxr_vqa.contract`):
DIR/demo.json (written once the demo can serve, rewritten as training and evaluation end), DIR/status.json (the
running stage), the adapter's checkpoint-N/ and progress.json. A killed app continues the build on its next start;
a second app on the same DIR finds the build running (its lock held) and serves without starting another.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxr_vqa.contract import (
    DEMO_LOCK,
    DEMO_STATUS,
    TRAINING_PROGRESS,
    Example,
    demo_build,
    latest_complete_checkpoint,
    read_examples,
)
from cxr_vqa.errors import UserError

if TYPE_CHECKING:  # as for TUNED below, the model code (torch) is imported where it is used
    from cxr_vqa.vqa import Weights

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]  # where `python -m finetune.demo` runs
HEADER = (
    "🧪 **Demo models.** Both answers come from *tiny demo models* built on this machine from a random 4-layer "
    "LLaVA. The base learned to answer in words from **synthetic phantoms** whose films were shuffled between "
    "studies, so it speaks but cannot read a film; the fine-tuned model is a LoRA adapter trained on top of it, with "
    "each phantom's own film. The phantoms are drawn by `dataprep.synthetic`: trained never on patients, these models "
    "show how the pipeline works and know nothing about real chest X-rays. For the real models: `python app.py --base "
    "llava-hf/llava-1.5-7b-hf --adapter YOUR_ADAPTER`."
)
DEMO_DIR = "runs/demo"  # --demo-dir's default
WAIT_SECONDS = 0.5
STOP_SECONDS = 60  # for the builder to end its stage on SIGTERM, before it is killed
WAITING = "no checkpoint yet: the fine-tuned model answers once the first epoch of fine-tuning ends"


@dataclass(frozen=True)
class Demo:
    out: Path
    base: str
    adapter: Path  # the training's output_dir: checkpoint-N/ while it trains, the final adapter at its top after
    examples: list[Example]
    report: Path
    marker: dict

    def reread(self) -> dict:
        """demo.json as it is now (the build rewrites it as training and evaluation end)."""
        return demo_build(self.out, serving=True) or self.marker


def read(out: Path) -> Demo | None:
    """The build in `out` once it can serve (its base and examples exist), or None."""
    marker = demo_build(out, serving=True)
    examples = read_examples((out / marker["examples"]).parent) if marker else None
    if marker is None or examples is None:
        return None
    return Demo(out, str(out / marker["base"]), out / marker["adapter"], examples, out / marker["report"], marker)


def building(out: Path) -> bool:
    """Whether a process builds `out` now: it holds the lock (released when it exits, however it exits). Looking
    takes the lock for an instant; a builder starting then retries."""
    try:
        with open(out / DEMO_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when the file closes
    except BlockingIOError:
        return True
    except OSError:  # no folder yet
        return False
    return False


def spawn(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "finetune.demo", str(out)], cwd=ROOT, env=env)


early_builds: dict[Path, subprocess.Popen] = {}  # builds started by app_lib.demo_early, until start adopts them


def start(out: str | Path) -> tuple[Demo, subprocess.Popen | None]:
    """(the demo in `out` once it can serve, the builder this app started or None): a build that is not complete is
    started, or continued, unless another process builds it already."""
    out = Path(out).resolve()
    found = read(out)
    if found is not None and found.marker.get("complete"):
        print(f"demo models from {out}")
        return found, None
    from cxr_vqa.model import warm_up

    warming = threading.Thread(target=warm_up, name="warm-up", daemon=True)  # the imports, while the base trains
    builder = early_builds.pop(out, None)  # started by app_lib.demo_early.start_early, which said so
    if builder is None and not building(out):
        print(f"building the demo models in {out}: the page comes up once the base is trained (about a minute on a "
              "CPU), then the fine-tuned model trains on while it serves (progress below)", flush=True)  # fmt: skip
        builder = spawn(out)
    elif builder is None:
        print(f"another process is building the demo in {out}: serving what it builds", flush=True)
    try:
        while (found := read(out)) is None:
            if warming.ident is None and "base" in read_json(out / DEMO_STATUS).get("running", []):
                warming.start()  # once the base trains: the releases, which draw on every core, are done or niced
            if builder is not None and builder.poll() == 0:
                builder = None  # it found another build running and left it be: wait for that one
            code = builder.poll() if builder is not None else None if building(out) else "unknown"
            if code is not None:
                raise UserError(
                    f"building the demo in {out} failed (exit {code}; see above); run it again to continue where it "
                    "stopped, or `python -m finetune.demo --fresh --out DIR` to start over"
                )
            time.sleep(WAIT_SECONDS)
    except BaseException:  # Ctrl-C, SIGTERM (the app turns it into KeyboardInterrupt) or a failed build
        stop(builder)
        raise
    return found, builder


def stop(builder: subprocess.Popen | None) -> None:
    """End the build this app started (it forwards the signal to its stage, which ends instead of training on,
    orphaned); the next start continues it."""
    if builder is not None and builder.poll() is None:
        builder.terminate()
        try:
            builder.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            log.warning("the demo build did not stop within %d s of SIGTERM: killed", STOP_SECONDS)
            builder.kill()
            builder.wait()


def read_json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _duration(seconds: float) -> str:
    return f"about {round(seconds / 60)} minutes" if seconds >= 90 else f"about {max(5, round(seconds / 5) * 5):.0f} s"


def served_label(path: Path, final: bool) -> str:
    """How the pane names what answers: "the final adapter", or "the epoch-2 checkpoint" (from its trainer state)."""
    if final:
        return "the final adapter"
    epoch = read_json(path / "trainer_state.json").get("epoch")
    return f"the epoch-{epoch:g} checkpoint" if isinstance(epoch, int | float) else f"checkpoint {path.name}"


def newest(demo: Demo) -> tuple[Path, bool] | None:
    """(what the fine-tuned pane should answer with, whether it is the final adapter), or None before the first
    checkpoint: the final adapter once training has ended, else the newest checkpoint saved whole."""
    if demo.reread().get("trained"):
        return demo.adapter, True
    checkpoint = latest_complete_checkpoint(demo.adapter)
    return (checkpoint, False) if checkpoint else None


def describe(demo: Demo, served: str | None, final: bool) -> dict:
    """The build's state for `/demo_status` and the page: stage, epoch, what the fine-tuned pane answers with."""
    marker, status = demo.reread(), read_json(demo.out / DEMO_STATUS)
    progress = read_json(demo.adapter / TRAINING_PROGRESS)
    active = building(demo.out)
    stage = "complete" if marker.get("complete") else ", ".join(status.get("running", [])) or "stopped"
    left = None
    if progress.get("seconds_per_step") and not marker.get("trained"):
        left = (progress["max_steps"] - progress["step"]) * progress["seconds_per_step"]
    return {
        "stage": stage if active or marker.get("complete") else f"stopped during {stage}",
        "building": active,
        "epoch": progress.get("epoch"),
        "epochs": progress.get("epochs"),
        "seconds_left": round(left) if left is not None else None,
        "serving": served,
        "final": final,
        "report": bool(marker.get("complete")),
        "failed": status.get("failed"),
    }


def status_markdown(state: dict, patients: int | None) -> str:
    """The build's state in plain words, above the panes."""
    serving, done = state["serving"], "**Fine-tuned pane:**"
    if state["report"]:
        return f"{done} {serving}, trained on {patients or 'the'} synthetic patients; its evaluation on held-out " \
               "patients is in the **Results** tab."  # fmt: skip
    if state["final"]:
        return f"{done} {serving}. Evaluating both models on held-out patients for the **Results** tab…"
    answering = f"answering with {serving}" if serving else "no checkpoint yet: the pane answers once epoch 1 ends"
    if not state["building"]:
        why = f" ({state['failed']})" if state.get("failed") else ""
        return f"**The build stopped**{why} during {state['stage'].removeprefix('stopped during ')}; {answering}. " \
               "Restart the app to continue it."  # fmt: skip
    if state["epoch"] is None:
        return f"**Preparing the fine-tuning** ({state['stage']}); {answering}."
    epochs = state["epochs"]
    current = int(state["epoch"]) + 1 if not epochs else min(int(state["epoch"]) + 1, round(epochs))
    of = f"epoch {current} of {round(epochs)}" if epochs else f"epoch {current}"
    left = f", {_duration(state['seconds_left'])} left" if state["seconds_left"] is not None else ""
    return f"**Fine-tuning on {patients or 'the'} synthetic patients:** {of}{left}; {answering}."


class Live:
    """The fine-tuned pane follows the build: before each answer, under the model's lock (`VQAModel.before_answer`),
    the newest complete checkpoint, or the final adapter, replaces what answered before. Never mid-answer, never a
    checkpoint the trainer is still writing (one without its trainer_state.json, written last). One that fails to load
    is logged and passed over until a newer one comes: what answered before answers on."""

    def __init__(self, demo: Demo, vqa):
        self.demo, self.vqa = demo, vqa
        self.served: tuple[Path, bool] | None = None
        self.failed: tuple[Path, bool] | None = None  # not tried again on every answer: its files do not change
        self.label: str | None = None  # named when loaded: the trainer deletes an older checkpoint, served or not
        self.named: dict[int, str] = {}  # each weights version (`VQAModel.version`) -> the label of what it served
        vqa.before_answer = self.refresh
        self.patients = read_json(demo.out / "data" / "stats.json").get("splits", {}).get("train", {}).get("patients")

    def refresh(self) -> None:
        from cxr_vqa.model import use_adapter

        with self.vqa.lock:  # the answers' lock (re-entrant: the hook holds it): one look and load at a time
            target = None
            try:
                target = newest(self.demo)
                if target is None or target in (self.served, self.failed):
                    return
                label = served_label(*target)
                use_adapter(self.vqa, str(target[0]))  # a str: votes store where each model came from
            except Exception as err:  # rotated away while read, cut short, ...: never the answer's error
                self.failed = target
                log.warning("kept %s: %s", self.label or "no adapter", (str(err) or repr(err)).splitlines()[0])
                return
            self.served, self.label, self.failed = target, label, None
            self.named[self.vqa.version] = label
        log.info("fine-tuned pane: %s (%s)", label, target[0])

    def watch(self, every: float = 2.0) -> threading.Thread:
        """Also look for a newer checkpoint every `every` seconds between answers (waiting for the model's lock), so
        the page and `/demo_status` say what answers before anyone asks; ends once the build is complete."""

        def loop():
            while True:
                try:  # a watcher that died would leave the page and `/demo_status` saying the same forever
                    if self.served and self.served[1] and self.demo.reread().get("complete"):
                        return
                    self.refresh()
                except Exception:
                    log.exception("looking for a newer checkpoint failed; looking again in %g s", every)
                time.sleep(every)

        thread = threading.Thread(target=loop, name="demo-checkpoints", daemon=True)
        thread.start()
        return thread

    def state(self) -> dict:
        """`/demo_status`: {"stage", "building", "epoch", "epochs", "seconds_left", "serving", "final", "report",
        "failed"}."""
        return describe(self.demo, self.label, bool(self.served and self.served[1]))

    def markdown(self, state: dict | None = None) -> str:
        return status_markdown(state or self.state(), self.patients)

    def names(self, weights: Weights | None = None) -> dict[str, str]:
        """{TUNED: what the fine-tuned model was with `weights` (`VQAModel.last_weights`; None: the weights loaded
        now), e.g. "the epoch-2 checkpoint"}, or {} before the first checkpoint."""
        from cxr_vqa.vqa import TUNED

        version = self.vqa.version if weights is None else weights.version
        return {TUNED: self.named[version]} if version in self.named else {}

    def notes(self, weights: Weights | None = None) -> dict[str, str]:
        """What the fine-tuned pane says under an answer given with `weights` (None: the weights loaded now), or in
        place of one."""
        from cxr_vqa.vqa import TUNED

        named = self.names(weights)
        return {TUNED: f"answered by {named[TUNED]}" if named else WAITING}

    def wire(self, blocks, status, report_views: list, reload_report) -> None:
        """Inside `blocks`: `status` (a Markdown) current from the page's load, then every 2 s until the build is
        complete, the views that show its report (Results, Explore) given `reload_report()`'s updates when the report
        appears (once a page: on its load, or the tick that finds the build complete, which stops the timer), and the
        `/demo_status` API."""
        import gradio as gr

        def tick():
            state = self.state()
            report = reload_report() if state["report"] else tuple(gr.skip() for _ in report_views)
            return self.markdown(state), gr.Timer(active=not state["report"]), *report

        timer = gr.Timer(2.0)
        for event in (blocks.load, timer.tick):
            event(tick, None, [status, timer, *report_views], queue=False, show_progress="hidden")
        gr.Button(visible=False).click(
            self.state, None, gr.JSON(visible=False), api_name="demo_status", queue=False,
            api_description="() → {stage, building, epoch, epochs, seconds_left, serving, final, report, failed}",
        )  # fmt: skip

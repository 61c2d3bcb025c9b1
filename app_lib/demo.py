"""`python app.py --demo`: the offline default. A tiny random LLaVA and an adapter trained on synthetic phantoms,
built on first use by `python -m finetune.demo DIR` (the learning bench's recipe, trainer seed 0, through the real
command lines; progress on the console; a killed build continues), then reused: later starts serve in seconds.

The app does not import the pipelines: it runs their command and reads what it leaves, DIR/demo.json (written last,
so it exists only for a complete build; `cxr_vqa.contract.demo_build` reads it for both): {"format": 1, "base":
"tiny-llava", "adapter": "adapter-seed0", "examples": "examples/examples.json", ...}, paths relative to DIR. The
examples are films of held-out test patients.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cxr_vqa.contract import Example, demo_build, read_examples
from cxr_vqa.errors import UserError
from cxr_vqa.vqa import TUNED

ROOT = Path(__file__).resolve().parents[1]  # where `python -m finetune.demo` runs
HEADER = (
    "🧪 **Demo models.** Both answers come from *tiny demo models* built on this machine: a random 4-layer LLaVA "
    "(the base, whose answers are noise) and a LoRA adapter trained for minutes on **synthetic phantoms** drawn by "
    "`dataprep.synthetic`, never on patients. They show how the pipeline works; they know nothing about real chest "
    "X-rays. For the real models: `python app.py --base llava-hf/llava-1.5-7b-hf --adapter YOUR_ADAPTER`."
)


@dataclass(frozen=True)
class Demo:
    base: str
    adapter: str
    examples: list[Example]


def read(out: Path) -> Demo | None:
    """The complete build in `out`, or None (no marker yet, another format, or a file it names is gone)."""
    marker = demo_build(out)
    if marker is None:
        return None
    examples = read_examples((out / marker["examples"]).parent)
    if examples is None:
        return None
    return Demo(str(out / marker["base"]), f"{TUNED}={out / marker['adapter']}", examples)


def prepare(out: str | Path) -> Demo:
    """The demo in `out`, built first if it is not there yet."""
    out = Path(out)
    found = read(out)
    if found is not None:
        print(f"demo models from {out}")
        return found
    print(f"building the demo models in {out}: first start only, a few minutes on a CPU (progress below)", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    builder = subprocess.Popen([sys.executable, "-m", "finetune.demo", str(out.resolve())], cwd=ROOT, env=env)
    try:
        code = builder.wait()
    except BaseException:  # Ctrl-C or SIGTERM (the app turns it into KeyboardInterrupt): stop the running stage too
        builder.terminate()  # the builder forwards it to its stage, which ends instead of training on, orphaned
        builder.wait(timeout=60)
        raise
    found = read(out)
    if code != 0 or found is None:
        raise UserError(
            f"building the demo in {out} failed (exit {code}; see above); run it again to "
            "continue where it stopped, or `python -m finetune.demo --fresh --out DIR` to start over"
        )
    return found

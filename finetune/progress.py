"""How far a training run is, for other programs: `python -m finetune` keeps OUTPUT_DIR/progress.json current.

    {"step": 466, "max_steps": 1864, "epoch": 2.0, "epochs": 8, "seconds_per_step": 0.12}

The demo app reads it to say "epoch 3 of 8, about 2 minutes left" while it serves the newest checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback

from cxr_vqa.contract import TRAINING_PROGRESS
from cxr_vqa.files import write_text_atomic


class ProgressFile(TrainerCallback):
    """Keeps OUTPUT_DIR/progress.json (`cxr_vqa.contract.TRAINING_PROGRESS`) current, written whole every few seconds
    and at the end, so another program (the demo app) can say how far training is and when it should end."""

    def __init__(self, every: float = 2.0):
        self.every, self.written, self.started, self.first_step = every, 0.0, 0.0, 0

    def _write(self, args, state) -> None:
        if not state.is_world_process_zero:
            return
        steps = state.global_step - self.first_step
        seconds = time.time() - self.started
        epochs = args.num_train_epochs if args.max_steps <= 0 else None  # a run of max_steps counts steps only
        record = {"step": state.global_step, "max_steps": state.max_steps, "epoch": round(state.epoch or 0.0, 4),
                  "epochs": epochs, "seconds_per_step": round(seconds / steps, 4) if steps else None}  # fmt: skip
        path = Path(args.output_dir) / TRAINING_PROGRESS
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(record) + "\n")  # the app reads it while it changes
        self.written = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.time(), state.global_step  # a resumed run starts past step 0
        self._write(args, state)

    def on_step_end(self, args, state, control, **kwargs):
        if time.time() - self.written >= self.every:
            self._write(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self._write(args, state)

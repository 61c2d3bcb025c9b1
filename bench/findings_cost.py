"""What the findings turn costs the demo's training, side by side in one run: the same synthetic release prepared with
and without it (`python -m dataprep ... --no-findings`), then tokens per training example (the tiny model's
tokenizer, the film's image tokens included; under the recipe's findings_alone a row that opens with the findings turn
is two examples) and CPU ms per training step of the demo's adapter recipe on each (the process's CPU time, so a
loaded machine inflates it less than wall time; once every film has been seen and cached).

    python bench/findings_cost.py                       # the demo's data in runs/findings-cost (built if missing)
    python bench/findings_cost.py --work runs/demo      # reuse a built demo: only the --no-findings data is added
    python bench/findings_cost.py --smoke               # 20 patients, a few steps: the plumbing only

Last line: `RESULT tokens_before=<per row, no findings turn> tokens_after=<with it> answer_tokens_before=<loss
positions per row> answer_tokens_after=<..> step_ms_before=<CPU ms a step> step_ms_after=<..>
ratio=<CPU ms a row costs, after / before>`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from cxr_vqa.cli import user_errors
from finetune.collator import AnswerOnlyCollator
from finetune.config import parse_config
from finetune.demo_stages import MERGED, RECIPE, Stage, base_stage, data_stages, run_stage
from finetune.train import build_trainer

NO_FINDINGS = "data-no-findings"


class CpuClock(TrainerCallback):
    """CPU seconds at the end of each step of this process."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append(time.process_time())


def _argv(work: Path, data: str, steps: int) -> list[str]:
    return ["--config", str(RECIPE), "--model_name_or_path", str(work / MERGED), "--dataset", str(work / data),
            "--output_dir", str(work / "profile"), "--max_steps", str(steps), "--save_strategy", "no",
            "--logging_steps", "1000", "--dataloader_num_workers", "0", "--dataloader_persistent_workers", "false",
            "--disable_tqdm", "true"]  # fmt: skip


def measure(work: Path, data: str, rows: int, steps: int) -> dict[str, float]:
    """Tokens and answer (loss) tokens per row over the first `rows` training rows (a row the recipe trains as two
    examples, findings_alone, counts both), its examples per row, and CPU ms a step after the first pass."""
    trainer, _ = build_trainer(*parse_config(_argv(work, data, steps)))
    source = getattr(trainer.data_collator, "dataset", trainer.train_dataset)  # the film cache trains on row indices
    parts = getattr(source, "parts", None)  # FindingsAlone: example -> (row, part)
    numbers = [n for n, (row, _) in enumerate(parts) if row < rows] if parts else list(range(rows))
    trainer.train_dataset = trainer.train_dataset.select(numbers)
    batch_size = trainer.args.per_device_train_batch_size
    first = -(-len(numbers) // batch_size)  # the first pass fills the film cache
    trainer.args.max_steps = max(steps, 2 * first + 2)
    collate = AnswerOnlyCollator(trainer.processing_class)
    lengths, answers = [], []
    for start in range(0, len(numbers), 8):
        batch = collate([source[n] for n in numbers[start : start + 8]])
        lengths += batch["attention_mask"].sum(dim=1).tolist()
        answers += (batch["labels"] != -100).sum(dim=1).tolist()
    clock = CpuClock()
    trainer.add_callback(clock)
    trainer.train()
    gaps = [b - a for a, b in zip(clock.marks[first:], clock.marks[first + 1 :], strict=False)]
    return {"tokens": sum(lengths) / rows, "answer_tokens": sum(answers) / rows, "examples": len(numbers) / rows,
            "step_ms": 1000 * statistics.median(gaps)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/findings-cost", help="a demo or learning-bench folder, or a new one")
    parser.add_argument("--rows", type=int, default=64, help="training rows cycled through (a multiple of 8)")
    parser.add_argument("--steps", type=int, default=48, help="steps per dataset, the first pass included")
    parser.add_argument("--smoke", action="store_true", help="20 patients, 16 rows, 8 steps, a 2-step base")
    args = parser.parse_args(argv)
    patients, base_extra = (20, ("--max_steps", 2)) if args.smoke else (None, ())
    if args.smoke:
        args.rows, args.steps = 16, 8
    if args.rows < 16 or args.rows % 8 or args.steps < 2 * args.rows // 8 + 2:
        parser.error("--rows must be a multiple of 8 (>= 16) and --steps cover two passes and 2 steps more")
    torch.set_num_threads(1)
    work = Path(args.work).resolve()
    with user_errors():
        tiny, release, dataprep, *base_data = data_stages(work, **({"patients": patients} if patients else {}))
        plain = Stage("dataprep (no findings)", dataprep.module,
                      [*dataprep.args[: dataprep.args.index("--out") + 1], str(work / NO_FINDINGS),
                       *dataprep.args[dataprep.args.index("--out") + 2 :], "--no-findings"])  # fmt: skip
        for stage in (tiny, release, dataprep, plain, *base_data, base_stage(work, extra=base_extra)):
            run_stage(work, stage)
        found = {}
        for name, data in (("before", NO_FINDINGS), ("after", "data")):
            found[name] = measure(work, data, args.rows, args.steps)
            f = found[name]
            print(f"  {name:<7} ({data}): {f['tokens']:.1f} tokens a row, {f['answer_tokens']:.1f} of them answers "
                  f"(the loss), {f['examples']:.2f} examples a row, {f['step_ms']:.1f} CPU ms a step",
                  flush=True)  # fmt: skip
    b, a = found["before"], found["after"]
    print(f"RESULT tokens_before={b['tokens']:.1f} tokens_after={a['tokens']:.1f} answer_tokens_before="
          f"{b['answer_tokens']:.1f} answer_tokens_after={a['answer_tokens']:.1f} step_ms_before={b['step_ms']:.1f} "
          f"step_ms_after={a['step_ms']:.1f} ratio={row_ms(a) / row_ms(b):.2f}")  # fmt: skip


def row_ms(figures: dict[str, float]) -> float:
    """CPU ms a training row costs: a step's, per example in a batch of 8, times its examples."""
    return figures["step_ms"] * figures["examples"] / 8


if __name__ == "__main__":
    main()

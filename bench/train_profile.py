"""Where a training step of the demo's recipe goes, and what the film cache and a smaller adapter save, side by side in
one run on the demo's own data: CPU time per step (the process's, so a loaded machine inflates it less than wall
time), once every film has been seen, with the collator in the training process.

    python bench/train_profile.py                     # data of runs/learn-synthetic (built here if missing)
    python bench/train_profile.py --work runs/demo --rows 64 --steps 48

Parts of one step (a batch of 8 rows, the same batch for each): decoding the films and collating (image processor,
chat template, answer mask), the frozen vision tower, the trained model's forward and backward, the optimizer. Then
whole steps through the Trainer for each recipe: the previous one (every film through the processor and the tower
at every step, TRL's loss over every position, LoRA r64 with token embeddings and lm_head trained), the same with
the film cache (finetune/film_cache.py), and the cache with the recipe's adapter (LoRA r16 and the projector, on
the speaking base that already knows the words). Last line:
`RESULT before_ms=<CPU ms a step, previous recipe> after_ms=<this recipe> ratio=<after / before>`.
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
from finetune.demo_stages import MERGED, RECIPE, base_stage, data_stages, run_stage
from finetune.film_cache import llava_parts, tower_features
from finetune.train import build_trainer

# the recipe before the film cache (its flag last: RECIPES turns it on) and before findings_alone
PREVIOUS = ["--lora_r", "64", "--lora_alpha", "64", "--lora_modules_to_save", "multi_modal_projector.linear_1",
            "multi_modal_projector.linear_2", "embed_tokens", "lm_head", "--findings_alone", "false",
            "--cache_film_features", "false"]  # fmt: skip
RECIPES = {
    "previous (no cache, r64 + embeddings + lm_head)": ("tiny-llava", PREVIOUS),
    "film cache, same adapter": ("tiny-llava", [*PREVIOUS[:-1], "true"]),
    "film cache, this recipe's adapter": (MERGED, []),
}


class CpuClock(TrainerCallback):
    """CPU seconds of each step of this process."""

    def __init__(self):
        self.marks: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append(time.process_time())


def _ms(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times)


def parts(work: Path) -> None:
    """The previous recipe's step, taken apart on one batch."""
    args = ["--model_name_or_path", str(work / "tiny-llava"), *PREVIOUS]
    trainer, _ = build_trainer(*parse_config(["--config", str(RECIPE), "--dataset", str(work / "data"),
                                              "--output_dir", str(work / "profile"), *args]))  # fmt: skip
    model, data = trainer.model, trainer.train_dataset
    collate = AnswerOnlyCollator(trainer.processing_class)
    rows = [data[i] for i in range(8)]
    batch = collate(rows)
    llava, _ = llava_parts(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def forward_backward():
        model.zero_grad()
        model(**batch).loss.backward()

    with torch.no_grad():
        tower = _ms(lambda: tower_features(llava, batch["pixel_values"]))
    figures = {
        "read and decode 8 films": _ms(lambda: [data[i] for i in range(8)]),
        "collate (processor, template, mask)": _ms(lambda: collate(rows)),
        "vision tower (frozen)": tower,
        "forward + backward (tower included)": _ms(forward_backward),
        "optimizer step": _ms(optimizer.step),
    }
    print(f"one batch of 8 rows, {batch['input_ids'].shape[1]} tokens each (CPU ms):")
    for name, ms in figures.items():
        print(f"  {name:<38} {ms:7.1f}")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            forward_backward()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    for label, match in (("matrix products", ("aten::mm", "aten::addmm", "aten::bmm")), ("attention", ("attention",))):
        share = sum(e.self_cpu_time_total for e in events if any(m in e.key for m in match)) / total
        calls = sum(e.count for e in events if e.key in match) // 3
        print(f"  forward + backward, {label}: {share:.0%} of its time" + (f" ({calls} a step)" if calls else ""))


def whole_steps(work: Path, rows: int, steps: int) -> dict[str, float]:
    """CPU ms a step for each recipe, after the first pass over `rows` rows (when the cache is full)."""
    found = {}
    for name, (base, extra) in RECIPES.items():
        argv = ["--config", str(RECIPE), "--model_name_or_path", str(work / base), "--dataset", str(work / "data"),
                "--output_dir", str(work / "profile"), "--max_steps", str(steps), "--save_strategy", "no",
                "--logging_steps", "1000", "--dataloader_num_workers", "0", "--dataloader_persistent_workers",
                "false", "--disable_tqdm", "true", *extra]  # fmt: skip
        trainer, _ = build_trainer(*parse_config(argv))
        trainer.train_dataset = trainer.train_dataset.select(range(rows))
        clock = CpuClock()
        trainer.add_callback(clock)
        trainer.train()
        first = rows // trainer.args.per_device_train_batch_size  # the first pass fills the cache
        gaps = [b - a for a, b in zip(clock.marks[first:], clock.marks[first + 1 :], strict=False)]
        found[name] = 1000 * statistics.median(gaps)
        print(f"  {name:<50} {found[name]:7.1f} CPU ms a step", flush=True)
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/learn-synthetic", help="a demo or learning-bench folder")
    parser.add_argument("--rows", type=int, default=64, help="training rows cycled through (a multiple of 8)")
    parser.add_argument("--steps", type=int, default=48, help="steps per recipe, the first pass included")
    args = parser.parse_args(argv)
    if args.rows < 16 or args.rows % 8 or args.steps < 2 * args.rows // 8 + 4:
        parser.error("--rows must be a multiple of 8 (>= 16) and --steps cover two passes and 4 steps more")
    torch.set_num_threads(1)
    work = Path(args.work).resolve()
    with user_errors():
        if not (work / MERGED / "config.json").is_file():  # the demo's or the learning bench's folder is reused
            for stage in [*data_stages(work), base_stage(work)]:
                run_stage(work, stage)
        parts(work)
        print(f"whole steps through the Trainer, {args.rows} rows cycled, after the first pass:")
        found = whole_steps(work, args.rows, args.steps)
    before, after = found[next(iter(RECIPES))], found[list(RECIPES)[-1]]
    print(f"RESULT before_ms={before:.1f} after_ms={after:.1f} ratio={after / before:.2f}")


if __name__ == "__main__":
    main()

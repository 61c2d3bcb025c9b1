"""The model card (README.md) written beside a trained adapter: what it was trained from and how, and what it is not
for. Counts only: no report text ever goes into the card."""

from __future__ import annotations

from pathlib import Path

from cxr_vqa.contract import SYNTHETIC_NOTE
from cxr_vqa.sources import split_revision
from finetune.config import ScriptArguments, TrainConfig


def final_losses(log_history: list[dict]) -> dict:
    last = {}
    for entry in log_history:
        for key in ("loss", "eval_loss", "train_loss"):
            if key in entry:
                last[key] = entry[key]
    return last


def _what_it_is(base: str, stats: dict) -> list[str]:
    if stats.get("synthetic"):  # the demo's adapter: say so before anything else
        return [f"A **demo** LoRA adapter for `{base}`, trained with `python -m finetune` on question-answer pairs",
                f"about {SYNTHETIC_NOTE}. It knows nothing about real chest X-rays."]  # fmt: skip
    return [f"A LoRA adapter for `{base}` answering questions about chest X-rays, trained with `python -m finetune`",
            "on question-answer pairs built from CheXpert-Plus-style reports and labels."]  # fmt: skip


def write_model_card(trainer, script_args: ScriptArguments, train_args: TrainConfig, stats: dict) -> Path:
    """README.md beside the adapter: base, data (`stats`: rows and QA pairs per split, rows per source), settings,
    final losses, and what the model is not for. Counts only: no report text ever goes into the card."""
    losses = final_losses(trainer.state.log_history)
    precision = "bf16" if train_args.bf16 else "fp16" if train_args.fp16 else "fp32"
    settings = {
        "base": script_args.model_name_or_path,
        "quantization": "4-bit nf4 (QLoRA)" if script_args.load_in_4bit else "none",
        "lora": f"r={script_args.lora_r}, alpha={script_args.lora_alpha}, dropout={script_args.lora_dropout}",
        "lora targets": f"`{script_args.lora_target_modules}`",
        "trained in full": ", ".join(script_args.lora_modules_to_save or []) or "nothing",
        "learning rate": train_args.learning_rate,
        "batch": f"{train_args.per_device_train_batch_size} per device x {train_args.gradient_accumulation_steps} "
        f"accumulation x {train_args.world_size} processes",
        "steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0, 3),
        "precision": precision,
        "seed": train_args.seed,
    }
    if script_args.findings_alone:
        settings["findings turn"] = (f"trained alone with its film ({stats.get('findings_alone', 0)} training rows "
                                     "split in two)")  # fmt: skip
    loss_lines = [f"- {name}: {value:.4f}" for name, value in losses.items()] or ["- no loss was logged"]
    lines = [
        "---",
        f"base_model: {split_revision(script_args.model_name_or_path)[0]}",  # the Hub's metadata: an id, no @revision
        "library_name: peft",
        "tags: [llava, chest-x-ray, vqa, qlora, research-only]",
        "---",
        "",
        f"# {Path(train_args.output_dir).name}",
        "",
        *_what_it_is(script_args.model_name_or_path, stats),
        "",
        "**Research demo, not for diagnosis.** Answers can be wrong, and the model has not been validated clinically.",
        "",
        "## Data",
        "",
        f"- dataset: `{script_args.dataset}` (splits by patient)",
        *[
            f"- {name}: {rows} studies, {stats['qa_pairs'].get(name, 0)} QA pairs"
            for name, rows in stats.get("rows", {}).items()
        ],
        *[f"- source {name}: {count} studies" for name, count in stats.get("sources", {}).items()],
        "",
        "## Training",
        "",
        *[f"- {name}: {value}" for name, value in settings.items()],
        "",
        "## Final losses",
        "",
        *loss_lines,
        "",
        "## Use",
        "",
        "```python",
        "from cxr_vqa.model import load_model",
        f'vqa = load_model("{script_args.model_name_or_path}", adapter="{train_args.output_dir}")',
        "```",
        "",
    ]
    path = Path(train_args.output_dir) / "README.md"
    path.write_text("\n".join(lines))
    return path

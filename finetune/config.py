"""Typed configuration for `python -m finetune`: our `ScriptArguments` plus `TrainConfig`, TRL's `SFTConfig` with the
defaults this project needs, parsed the project's one way (`cxr_vqa.cli`: YAML gives defaults, flags override,
unknown keys fail, exit 2). Also the checks of a parsed config against this machine (GPU-only options) and against
output_dir (what to resume).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from trl import SFTConfig

from cxr_vqa.cli import parse_config as parse
from cxr_vqa.contract import latest_complete_checkpoint
from cxr_vqa.errors import UserError
from cxr_vqa.model import DEFAULT_BASE, LANGUAGE_LORA_TARGETS

log = logging.getLogger(__name__)

ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")


@dataclass
class ScriptArguments:
    dataset: str = field(
        default="data/chexpert-qa",
        metadata={"help": "Directory written by `python -m dataprep` (a DatasetDict saved with save_to_disk)."},
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default="validation", metadata={"help": "Split to evaluate on when eval_strategy is not 'no'."}
    )
    model_name_or_path: str = field(
        default=DEFAULT_BASE,
        metadata={
            "help": "Base LLaVA-1.5 checkpoint: a Hub id (ID@REVISION pins a branch, tag or commit) or a local "
            "directory."
        },
    )
    load_in_4bit: bool = field(
        default=True, metadata={"help": "QLoRA: load the base in 4-bit nf4 through the model core (works on CPU too)."}
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention kernel; flash attention needs a CUDA GPU.", "choices": ATTENTION_IMPLEMENTATIONS},
    )
    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default=LANGUAGE_LORA_TARGETS,
        metadata={
            "help": "Regex (PEFT full-match) of the modules that get LoRA; the default spares the vision tower."
        },
    )
    lora_modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "Modules trained in full and saved with the adapter; Linear layers only, which the app can serve, "
            "e.g. multi_modal_projector.linear_1 multi_modal_projector.linear_2."
        },
    )
    merge: bool = field(
        default=False,
        metadata={"help": "Also write a merged 16-bit model to OUTPUT_DIR/merged (serving without PEFT)."},
    )
    cache_film_features: bool = field(
        default=False,
        metadata={"help": "Keep each film's frozen vision-tower features (and its row's tokens) from the first epoch "
                  "that uses them, and take the loss at answer positions only (finetune/film_cache.py). Costs RAM: "
                  "image tokens x tower width x 2 bytes a film, 1.2 MB for LLaVA-1.5-7B (576 x 1024, fp16). On "
                  "CUDA the collator runs in the main process (dataloader_num_workers 0)."},
    )  # fmt: skip
    shuffle_films: bool = field(
        default=False,
        metadata={"help": "Show each row another study's film, so films carry no information: the model learns the "
                  "answers' language, not to read films (the demo's base). Needs cache_film_features."},
    )  # fmt: skip

    findings_alone: bool = field(
        default=False,
        metadata={"help": "Train a row that opens with a findings turn as two examples, that turn alone with its film "
                  "and the rest with the same film, so no yes/no answer is learned from the findings text before it "
                  "(finetune/examples.py; docs/findings.md)."},
    )  # fmt: skip

    wait_for: list[str] | None = field(
        default=None,
        metadata={"help": "Files to wait for before reading the model or the dataset (a pipeline's record that the "
                  "stages making them have finished): the imports, seconds of them, run meanwhile."},
    )  # fmt: skip

    def __post_init__(self):
        if self.lora_r < 1 or self.lora_alpha <= 0:
            raise UserError(f"lora_r must be >= 1 and lora_alpha > 0, got r={self.lora_r} alpha={self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UserError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if isinstance(self.lora_modules_to_save, str):  # a YAML scalar instead of a list
            self.lora_modules_to_save = [self.lora_modules_to_save]
        if self.shuffle_films and not self.cache_film_features:
            raise UserError("shuffle_films needs cache_film_features: true (films are shuffled in its cache)")


@dataclass
class TrainConfig(SFTConfig):
    """`SFTConfig` with this project's defaults: a custom collator over raw rows, never truncating image tokens, and
    mixed precision picked from the hardware (bf16 where supported, fp16 on older GPUs, fp32 on CPU)."""

    output_dir: str = field(default="runs/llava-cxr", metadata={"help": "Where the adapter and checkpoints go."})
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision (CUDA). Leave bf16 and fp16 unset to pick from the GPU."}
    )
    fp16: bool | None = field(default=None, metadata={"help": "fp16 mixed precision (CUDA), for GPUs without bf16."})
    max_length: int | None = field(
        default=None,
        metadata={"help": "Must stay unset: truncation would cut image tokens. Filter long rows instead."},
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must be false: the collator needs the raw `messages` and `images` columns."}
    )
    dataset_kwargs: dict | str | None = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={"help": "Kept at skip_prepare_dataset: the collator tokenizes on the fly."},
    )
    # transformers 5 renamed gradient checkpointing to activation checkpointing; the old names still work (with a
    # warning), and TRL sets the old one by default, so it is unset here to let the new one speak.
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias: use activation_checkpointing."}
    )
    activation_checkpointing: bool | None = field(
        default=True, metadata={"help": "Recompute activations in the backward pass: less memory, ~20%% slower."}
    )
    activation_checkpointing_kwargs: dict | str | None = field(
        default_factory=lambda: {"use_reentrant": False},
        metadata={"help": "Non-reentrant checkpointing: it works with frozen 4-bit inputs and DDP."},
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "A checkpoint-N directory, or the flag alone for the latest complete one in output_dir.",
            "nargs": "?",
            "const": "latest",
        },
    )

    def __post_init__(self):
        # Without CUDA, accelerate sets up DDP only when told use_cpu. Otherwise a launch of several processes gets
        # a process group but no DDP: every process trains its own copy, and TRL, rescaling the loss for a gradient
        # average that never happens, multiplies each copy's loss and gradients by the number of processes.
        if not torch.cuda.is_available():
            self.use_cpu = True
        if self.use_cpu and launched_processes() > 1:
            if self.ddp_backend not in (None, "gloo", "mpi"):
                raise UserError(f"ddp_backend: {self.ddp_backend} needs GPUs: remove it (DDP on CPU runs on gloo)")
            self.ddp_backend = self.ddp_backend or "gloo"
        cuda = torch.cuda.is_available() and not self.use_cpu
        if not cuda and (self.bf16 or self.fp16):
            which = "bf16" if self.bf16 else "fp16"
            raise UserError(
                f"{which}: true needs a CUDA GPU and this machine has none: remove it (CPU trains in fp32)"
            )
        if not cuda:
            self.dataloader_pin_memory = False  # pinning needs an accelerator; on CPU it only warns
        if self.bf16 is None and self.fp16 is None:  # auto: bf16 where the GPU has it, fp16 on older GPUs
            self.bf16 = cuda and torch.cuda.is_bf16_supported()
            self.fp16 = cuda and not self.bf16
        self.bf16, self.fp16 = bool(self.bf16), bool(self.fp16)
        if self.max_length is not None:
            raise UserError(
                f"max_length: {self.max_length} would truncate the 576 image tokens: remove it (the collator never "
                "truncates; drop over-long rows in dataprep)"
            )
        if self.remove_unused_columns:
            raise UserError("remove_unused_columns must be false: the collator reads the raw messages and images")
        if self.packing or self.padding_free:
            raise UserError("packing and padding_free are not supported for image rows: remove them")
        if isinstance(self.dataset_kwargs, dict) and not self.dataset_kwargs.get("skip_prepare_dataset", True):
            raise UserError("dataset_kwargs.skip_prepare_dataset must stay true: the collator tokenizes each batch")
        super().__post_init__()


def launched_processes() -> int:
    """How many processes `torchrun` or `accelerate launch` started (1 for a plain `python -m finetune`)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def parse_config(argv: list[str] | None = None, description: str | None = None) -> tuple[ScriptArguments, TrainConfig]:
    """`--config FILE` plus flags into the two dataclasses; a mistake exits 2 with one line."""
    return parse([ScriptArguments, TrainConfig], argv, prog="python -m finetune", description=description)


def check_device(script_args: ScriptArguments, train_args: TrainConfig) -> None:
    """GPU-only options on a machine without one fail here, in one line, before anything heavy happens."""
    cuda = torch.cuda.is_available() and not train_args.use_cpu
    optim = str(getattr(train_args.optim, "value", train_args.optim))
    attn = script_args.attn_implementation or ""
    if not cuda and ("paged" in optim or "8bit" in optim):
        raise UserError(f"optim: {optim} needs a CUDA GPU and this machine has none: use adamw_torch")
    if attn.startswith("flash"):
        if not cuda:
            raise UserError(f"attn_implementation: {attn} needs a CUDA GPU and this machine has none: use sdpa")
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise UserError(
                f"attn_implementation: {attn} needs the flash-attn package: install it or use sdpa"
            ) from None


def resolve_checkpoint(train_args: TrainConfig) -> str | None:
    """The checkpoint to resume from: None, an explicit directory, or the latest complete one in output_dir."""
    wanted = train_args.resume_from_checkpoint
    if wanted is None or wanted is False or str(wanted).lower() in ("", "false"):
        return None
    if wanted is True or str(wanted).lower() in ("latest", "true"):  # YAML may say `resume_from_checkpoint: true`
        found = latest_complete_checkpoint(train_args.output_dir)  # a run killed while saving left one incomplete
        if found is None:
            raise UserError(f"no complete checkpoint-* directory in {train_args.output_dir} to resume from")
        return str(found)
    if not (Path(wanted) / "trainer_state.json").is_file():
        raise UserError(f"{wanted} is not a checkpoint directory (no trainer_state.json)")
    return wanted

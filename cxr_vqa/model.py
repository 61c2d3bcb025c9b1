"""Loading LLaVA-1.5: the base (4-bit nf4 by default, or full precision), its processor with the project's chat
template, and LoRA adapters. `load_model` returns the `VQAModel` that training, evaluation and the app use.

    from cxr_vqa.model import load_model
    vqa = load_model("llava-hf/llava-1.5-7b-hf", adapter="runs/llava-cxr")      # 4-bit nf4 by default
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from cxr_vqa.errors import UserError
from cxr_vqa.files import unreadable, unreadable_message
from cxr_vqa.hub import hub_problem
from cxr_vqa.template import CHAT_TEMPLATE
from cxr_vqa.vqa import TUNED, VQAModel

logger = logging.getLogger(__name__)

DEFAULT_BASE = "llava-hf/llava-1.5-7b-hf"
# Kept in full precision under 4-bit: the vision tower and projector are small and sensitive, lm_head feeds logits.
# transformers matches these from the start of the module name (or as a suffix), so the full v5 names are needed:
# a bare "vision_tower" silently quantizes the whole CLIP tower.
KEEP_UNQUANTIZED = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
# The seed recipe's LoRA targets: attention and MLP projections of the language model, not of the CLIP tower.
LANGUAGE_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class ModelLoadError(UserError):
    """A model, processor or adapter that cannot be used; the message names the problem and the fix."""


def pick_device(device: str | None = None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {device!r} asked for, but this machine has no CUDA GPU: drop --device or use cpu"
        )
    return dev


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU has it, fp16 on older GPUs, fp32 on CPU (CPU half-precision matmuls are slow or absent)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        llm_int8_skip_modules=KEEP_UNQUANTIZED,
    )


def _check_model_source(name: str) -> None:
    """Fail early, in one line, on paths that cannot be a LLaVA checkpoint, and on a Hub that cannot be reached."""
    path = Path(name)
    if path.exists():
        _check_readable(path)
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{name} has no config.json: point --base at a LLaVA-1.5 checkpoint directory "
                "(e.g. one written by `python -m finetune.tiny_model`) or a Hub id"
            )
        return
    looks_local = name.startswith((".", "/", "~")) or name.count("/") != 1
    if looks_local:
        raise ModelLoadError(f"model {name!r} not found: no such directory, and it is not a Hub id (owner/name)")
    if problem := hub_problem(name, "config.json"):
        raise ModelLoadError(problem)


def _check_adapter_source(adapter: str) -> None:
    if Path(adapter).exists():
        _check_readable(Path(adapter))
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"{adapter} has no adapter_config.json: pass the directory that `python -m finetune` wrote"
            )
    elif adapter.count("/") == 1 and (problem := hub_problem(adapter, "adapter_config.json")):
        raise ModelLoadError(problem)


def _check_readable(path: Path) -> None:
    """transformers reports an unreadable weights file as "No such file or directory": name the real problem."""
    if path.is_dir() and (denied := unreadable(path)):
        raise ModelLoadError(unreadable_message(denied[0]))


def _offline_hint() -> str:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return " (HF_HUB_OFFLINE=1 is set: download it once online, or pass a local directory)"
    return " (check the name, your network, and `huggingface-cli login` for gated models)"


def load_processor(name: str):
    """The checkpoint's processor with the project's chat template and left padding for batched generation."""
    from transformers import AutoProcessor

    _check_model_source(name)
    try:
        processor = AutoProcessor.from_pretrained(name)
    except (OSError, ValueError, TypeError) as err:
        if Path(name).is_dir():
            raise ModelLoadError(
                f"{name} has weights but no processor files (tokenizer, preprocessor config): save the processor "
                f"beside the weights, e.g. `AutoProcessor.from_pretrained('{DEFAULT_BASE}').save_pretrained('{name}')`"
            ) from None
        raise ModelLoadError(
            f"cannot load the processor of {name!r}{_offline_hint()}: {str(err).splitlines()[0][:200]}"
        ) from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ModelLoadError(f"{name!r} has no image processor: it is not a LLaVA (vision-language) checkpoint")
    processor.chat_template = CHAT_TEMPLATE
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.unk_token or processor.tokenizer.eos_token
    return processor


def load_base_model(
    name: str = DEFAULT_BASE,
    *,
    load_in_4bit: bool = True,
    device: str | None = None,
    dtype: torch.dtype | None = None,
):
    """`LlavaForConditionalGeneration` from a Hub id or a local directory, 4-bit nf4 by default."""
    from transformers import AutoConfig, LlavaForConditionalGeneration

    _check_model_source(name)
    dev = pick_device(device)
    dtype = dtype or pick_dtype(dev)
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"cannot read the config of {name!r}{_offline_hint()}: {str(err).splitlines()[0]}"
        ) from None
    if config.model_type != "llava":
        raise ModelLoadError(f"{name!r} is a {config.model_type!r} model, not LLaVA: pass a LLaVA-1.5 checkpoint")

    kwargs: dict = {"dtype": dtype}
    if load_in_4bit:
        kwargs["quantization_config"] = quantization_config(dtype)
        kwargs["device_map"] = {"": str(dev) if dev.type != "cuda" else dev.index or 0}
    try:
        model = LlavaForConditionalGeneration.from_pretrained(name, **kwargs)
    except (OSError, ImportError) as err:
        raise ModelLoadError(
            f"cannot load the weights of {name!r}{_offline_hint()}: {str(err).splitlines()[0]}"
        ) from None
    if not load_in_4bit:
        model.to(dev)
    model.eval()
    return model


def attach_adapter(model, adapter: str, *, trainable: bool = False):
    """Wrap `model` in a PeftModel holding `adapter` (a local directory or a Hub id) under the name TUNED."""
    from peft import PeftModel

    config_file = Path(adapter) / "adapter_config.json"
    _check_adapter_source(adapter)
    try:
        return PeftModel.from_pretrained(model, adapter, adapter_name=TUNED, is_trainable=trainable)
    except (RuntimeError, ValueError, KeyError) as err:
        trained_on = ""
        if config_file.is_file():
            trained_on = json.loads(config_file.read_text()).get("base_model_name_or_path") or ""
        raise ModelLoadError(
            f"adapter {adapter!r} does not fit base model {model.name_or_path!r}"
            + (f" (it was trained on {trained_on!r})" if trained_on else "")
            + f": pass the base it was trained on. Detail: {str(err).splitlines()[0][:200]}"
        ) from None
    except OSError as err:
        raise ModelLoadError(f"cannot load adapter {adapter!r}{_offline_hint()}: {str(err).splitlines()[0]}") from None


def load_model(
    base: str = DEFAULT_BASE,
    adapter: str | None = None,
    *,
    load_in_4bit: bool = True,
    device: str | None = None,
) -> VQAModel:
    """Load the base (4-bit nf4 by default) and, if given, attach the LoRA adapter: one copy of the weights serves
    both the base and the fine-tuned answers."""
    # before transformers is imported and the base loads for minutes: a bad source or an unreachable Hub in seconds
    _check_model_source(base)
    if adapter:
        _check_adapter_source(adapter)
    dev = pick_device(device)
    if load_in_4bit:
        _check_bitsandbytes(dev)
    processor = load_processor(base)
    model = load_base_model(base, load_in_4bit=load_in_4bit, device=str(dev))
    if adapter:
        model = attach_adapter(model, adapter)
        model.eval()
    logger.info("loaded %s%s (%s)", base, f" + {adapter}" if adapter else "", "4-bit" if load_in_4bit else "full")
    return VQAModel(model, processor, base_name=base, adapter_name=adapter)


def _check_bitsandbytes(device: torch.device) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelLoadError(
            "4-bit loading needs bitsandbytes: `pip install bitsandbytes`, or pass --no-4bit"
        ) from None

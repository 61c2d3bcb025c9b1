"""Loading LLaVA-1.5: the base (4-bit nf4 by default, or full precision), its processor with the project's chat
template, and LoRA adapters. `load_model` returns the `VQAModel` that training, evaluation and the app use.

    from cxr_vqa.model import load_model
    vqa = load_model("llava-hf/llava-1.5-7b-hf", adapter="runs/llava-cxr")      # 4-bit nf4 by default
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from cxr_vqa.reports import BLANK
from cxr_vqa.sources import ADAPTER, ModelLoadError, Source, offline_hint, resolve
from cxr_vqa.template import CHAT_TEMPLATE
from cxr_vqa.vqa import BASE, TUNED, VQAModel

logger = logging.getLogger(__name__)

DEFAULT_BASE = "llava-hf/llava-1.5-7b-hf"
# Kept in full precision under 4-bit: the vision tower and projector are small and sensitive, lm_head feeds logits.
# transformers matches these from the start of the module name (or as a suffix), so the full v5 names are needed:
# a bare "vision_tower" silently quantizes the whole CLIP tower.
KEEP_UNQUANTIZED = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
# The seed recipe's LoRA targets: attention and MLP projections of the language model, not of the CLIP tower.
LANGUAGE_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# A model's name in panes, votes and report columns, adapters and remote models alike. It may not end in "_blank" (any
# case): the evaluation names a model's blank-film run NAME_blank (cxr_vqa.reports), so "x_blank" would read as x's.
ADAPTER_NAME = re.compile(rf"(?!.*{BLANK}\Z)[A-Za-z0-9][A-Za-z0-9_.-]*", re.IGNORECASE)
NAME_RULE = f"letters, digits, . _ -, not ending in {BLANK} (it marks a model's blank-film run)"


def pick_device(device: str | None = None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ModelLoadError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but this machine has no Apple-silicon GPU (mps): use cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"device {device!r} asked for, but this machine has no CUDA GPU: drop --device or use cpu"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU has it, fp16 on older GPUs and Apple's (mps), fp32 on CPU (CPU half-precision matmuls are
    slow or absent)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":  # Apple silicon: 16-bit halves the memory (the 7B: about 14 GB, docs/gguf.md)
        return torch.float16
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


def load_processor(base: str | Source):
    """The checkpoint's processor with the project's chat template and left padding for batched generation."""
    from transformers import AutoProcessor

    base = resolve(base)
    name = base.name
    try:
        processor = AutoProcessor.from_pretrained(name, **base.hub_kwargs)
    except (OSError, ValueError, TypeError) as err:
        if Path(name).is_dir():
            raise ModelLoadError(
                f"{name} has weights but no processor files (tokenizer, preprocessor config): save the processor "
                f"beside the weights, e.g. `AutoProcessor.from_pretrained('{DEFAULT_BASE}').save_pretrained('{name}')`"
            ) from None
        raise ModelLoadError(
            f"cannot load the processor of {name!r}{offline_hint()}: {str(err).splitlines()[0][:200]}"
        ) from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise ModelLoadError(f"{name!r} has no image processor: it is not a LLaVA (vision-language) checkpoint")
    processor.chat_template = CHAT_TEMPLATE
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.unk_token or processor.tokenizer.eos_token
    _match_image_tokens(processor, base.config, name)
    return processor


def vision_features(config) -> int:
    """Features the vision tower gives the language model per image: one per patch plus CLIP's CLS, less the first
    one under the "default" strategy (as `LlavaModel.get_image_features` selects them)."""
    vision = config.vision_config
    count = (vision.image_size // vision.patch_size) ** 2 + (vision.model_type == "clip_vision_model")
    return count - 1 if config.vision_feature_select_strategy == "default" else count


def image_tokens(processor) -> int:
    """`<image>` tokens the processor expands one film to, counted on a blank film of the model's input size."""
    size = processor.image_processor.crop_size
    blank = Image.new("RGB", (size["width"], size["height"]))
    ids = processor(images=[blank], text=[processor.image_token])["input_ids"][0]
    return list(ids).count(processor.image_token_id)


def _match_image_tokens(processor, config, name: str) -> None:
    """Tokens and features must match, or the first forward fails with "Image features and image tokens do not
    match". Hub snapshots from before 2025 lack `num_additional_image_tokens`; transformers then counts no CLS and a
    336 px film becomes 575 tokens against 576 features: repaired here, anything else refused."""
    features, tokens = vision_features(config), image_tokens(processor)
    if tokens + 1 == features and processor.num_additional_image_tokens == 0:
        processor.num_additional_image_tokens = 1
        tokens = image_tokens(processor)
        logger.warning(
            "%s: processor_config.json has no num_additional_image_tokens (an older snapshot); counting CLIP's CLS "
            "token, so a film is %d image tokens as the vision tower gives %d features. Update the snapshot, or add "
            '"num_additional_image_tokens": 1 to its processor_config.json, to silence this.',
            name, tokens, features,
        )  # fmt: skip
    if tokens != features:
        raise ModelLoadError(
            f"the processor of {name!r} expands a film to {tokens} image tokens, but its vision tower gives "
            f"{features} features: make patch_size, num_additional_image_tokens and vision_feature_select_strategy in "
            "processor_config.json agree with config.json"
        )


def load_base_model(
    base: str | Source = DEFAULT_BASE,
    *,
    load_in_4bit: bool = True,
    device: str | None = None,
    dtype: torch.dtype | None = None,
):
    """`LlavaForConditionalGeneration` from a Hub id or a local directory, 4-bit nf4 by default."""
    from transformers import LlavaForConditionalGeneration

    base = resolve(base)
    name = base.name
    dev = pick_device(device)
    dtype = dtype or pick_dtype(dev)
    kwargs: dict = {"dtype": dtype, "config": base.config, **base.hub_kwargs}
    if load_in_4bit:
        kwargs["quantization_config"] = quantization_config(dtype)
        kwargs["device_map"] = {"": str(dev) if dev.type != "cuda" else dev.index or 0}
    try:
        model = LlavaForConditionalGeneration.from_pretrained(name, **kwargs)
    except (OSError, ImportError) as err:
        raise ModelLoadError(
            f"cannot load the weights of {name!r}{offline_hint()}: {str(err).splitlines()[0]}"
        ) from None
    if not load_in_4bit:
        model.to(dev)
    model.eval()
    return model


def adapter_specs(adapters: str | Sequence[str] | None) -> dict[str, str]:
    """Model name -> adapter source, from `--adapter` values: `NAME=PATH`, or a bare path or Hub id, named after its
    last part (a lone bare one is named TUNED, the fine-tuned model)."""
    items = [adapters] if isinstance(adapters, str) else list(adapters or [])
    specs: dict[str, str] = {}
    for item in items:
        name, sep, source = item.partition("=")
        reserved = sep and name.lower().endswith(BLANK) and ADAPTER_NAME.fullmatch(name[: -len(BLANK)])
        if not (sep and ADAPTER_NAME.fullmatch(name)) and not reserved:  # "runs/lr=1e-4" is a path, not NAME=PATH
            bare = item if Path(item).exists() else item.partition("@")[0]  # ID@REVISION is named after its id
            name, source = (TUNED if len(items) == 1 else Path(bare.rstrip("/")).name), item
        if not source or not ADAPTER_NAME.fullmatch(name):
            raise ModelLoadError(f"--adapter {item!r}: give NAME=PATH (a name of {NAME_RULE}) or a path")
        if name == BASE or name in specs:
            taken = "is the base model's name" if name == BASE else "is given twice"
            raise ModelLoadError(f"--adapter {item!r}: the name {name!r} {taken}; name it with NAME=PATH")
        specs[name] = source
    return specs


def attach_adapter(model, adapter: str | Source, *, name: str = TUNED, trainable: bool = False):
    """Attach `adapter` (a local directory or a Hub id) under `name`: wraps `model` in a PeftModel, or adds to the
    adapters of one (every adapter shares the one copy of the base weights)."""
    from peft import PeftModel

    source = resolve(adapter, ADAPTER)
    adapter = source.name
    try:
        kwargs = {"adapter_name": name, "is_trainable": trainable, **source.hub_kwargs}
        if isinstance(model, PeftModel):
            model.load_adapter(adapter, **kwargs)
            return model
        return PeftModel.from_pretrained(model, adapter, **kwargs)
    except (RuntimeError, ValueError, KeyError) as err:
        trained_on = source.config.get("base_model_name_or_path") or ""
        raise ModelLoadError(
            f"adapter {adapter!r} does not fit base model {model.name_or_path!r}"
            + (f" (it was trained on {trained_on!r})" if trained_on else "")
            + f": pass the base it was trained on. Detail: {str(err).splitlines()[0][:200]}"
        ) from None
    except OSError as err:
        raise ModelLoadError(f"cannot load adapter {adapter!r}{offline_hint()}: {str(err).splitlines()[0]}") from None


def warm_up() -> None:
    """Import what loading a model needs (transformers' LLaVA, PEFT: seconds on a small CPU), e.g. in a thread while
    something else builds the model to load."""
    import peft  # noqa: F401
    from transformers import AutoProcessor, LlavaForConditionalGeneration  # noqa: F401


def use_adapter(vqa: VQAModel, adapter: str | Source, *, name: str = TUNED) -> None:
    """Serve `adapter` as model `name` from the next answer on: attached the first time, after that its weights
    replace the ones loaded under that name (a newer checkpoint of the same training). Waits for the answer in
    progress, if any: never mid-answer. One that cannot be loaded (gone, truncated, another shape) raises
    ModelLoadError and leaves the model as it was: the adapter loaded before, or the bare base."""
    from peft.utils import get_peft_model_state_dict, load_peft_weights, set_peft_model_state_dict
    from safetensors import SafetensorError

    source = resolve(adapter, ADAPTER)
    with vqa.lock:
        try:
            # read whole first: a folder deleted or a file cut short since `resolve` fails here, touching nothing
            weights = load_peft_weights(source.name, device=str(vqa.device), **source.hub_kwargs)
            if name not in vqa.adapters:
                try:
                    vqa.model = attach_adapter(vqa.model, source, name=name).eval()
                except Exception:
                    _remove_tuner_layers(vqa.model, name)  # PEFT wraps the base's layers before it loads weights
                    raise
            else:  # checked whole before any tensor is copied: a failed swap must not leave half of each
                loaded = get_peft_model_state_dict(vqa.model, adapter_name=name)
                if misfit := _misfit(loaded, weights):
                    raise ModelLoadError(
                        f"adapter {source.name!r} does not fit the adapter {name!r} it should replace (another rank "
                        f"or other modules?): {misfit}"
                    )
                set_peft_model_state_dict(vqa.model, weights, adapter_name=name)
        except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # gone since resolved, truncated, ...
            raise ModelLoadError(f"cannot load adapter {source.name!r}: {str(err).splitlines()[0][:200]}") from None
        vqa.adapters[name] = source.spec
        vqa.version += 1


def _misfit(loaded: dict, weights: dict) -> str | None:
    """Why `weights` cannot replace the `loaded` adapter weights (a tensor missing, extra, or of another shape)."""
    for key in sorted(loaded.keys() | weights.keys()):
        if key not in weights or key not in loaded:
            return f"{key} is {'missing' if key not in weights else 'not in the adapter it replaces'}"
        if weights[key].shape != loaded[key].shape:
            return f"{key} is {tuple(weights[key].shape)}, not {tuple(loaded[key].shape)}"
    return None


def _remove_tuner_layers(model, name: str) -> None:
    """Undo a first attach of `name` that failed half-way: PEFT's layers back to the base layers they wrap, its
    config gone."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(model, PeftModel):  # adding to the adapters of one: that adapter goes, the others stay
        if name in model.peft_config:
            model.delete_adapter(name)
        return
    for path, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    if "peft_config" in vars(model):
        del model.peft_config


def load_model(
    base: str = DEFAULT_BASE,
    adapter: str | Sequence[str] | None = None,
    *,
    load_in_4bit: bool = True,
    device: str | None = None,
) -> VQAModel:
    """Load the base (4-bit nf4 by default) and attach every adapter (`adapter_specs`: a path, or NAME=PATH values):
    one copy of the weights serves the base and every fine-tuned model."""
    specs = adapter_specs(adapter)
    # every source checked once, before the base loads for minutes: a bad path or an unreachable Hub in seconds
    checked = resolve(base)
    sources = {name: resolve(source, ADAPTER) for name, source in specs.items()}
    dev = pick_device(device)
    if load_in_4bit and dev.type == "mps":  # bitsandbytes' 4-bit kernels are CUDA's (and CPU's): 16-bit on a Mac
        logger.warning("4-bit needs bitsandbytes' CUDA or CPU kernels: loading 16-bit on %s instead", dev)
        load_in_4bit = False
    if load_in_4bit:
        _check_bitsandbytes(dev)
    processor = load_processor(checked)
    model = load_base_model(checked, load_in_4bit=load_in_4bit, device=str(dev))
    for name, source in sources.items():
        model = attach_adapter(model, source, name=name)
    model.eval()
    loaded = "".join(f" + {name}={source}" for name, source in specs.items())
    logger.info("loaded %s%s (%s)", base, loaded, "4-bit" if load_in_4bit else "full")
    return VQAModel(model, processor, base_name=base, adapters=specs)


def _check_bitsandbytes(device: torch.device) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ModelLoadError(
            "4-bit loading needs bitsandbytes: `pip install bitsandbytes`, or pass --no-4bit"
        ) from None

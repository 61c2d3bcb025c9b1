"""The one place that knows LLaVA-1.5: loading (4-bit or not), the processor and its template, prompts, adapters and
batched generation. Training, evaluation and the app all go through here, so the prompt a model is trained on is
the prompt it is served with.

    from finetune.model import load_model, GenerationSettings
    from finetune.template import add_question
    vqa = load_model("llava-hf/llava-1.5-7b-hf", adapter="runs/llava-cxr")      # 4-bit nf4 by default
    base, tuned = vqa.compare(image, add_question(None, "Is there cardiomegaly?"))
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import Queue

import torch
from PIL import Image

from finetune.template import CHAT_TEMPLATE

logger = logging.getLogger(__name__)

DEFAULT_BASE = "llava-hf/llava-1.5-7b-hf"
BASE = "__base__"  # PEFT's adapter name for "no adapter" in a mixed batch
TUNED = "default"  # the name the fine-tuned adapter is attached under
# Kept in full precision under 4-bit: the vision tower and projector are small and sensitive, lm_head feeds logits.
# transformers matches these from the start of the module name (or as a suffix), so the full v5 names are needed:
# a bare "vision_tower" silently quantizes the whole CLIP tower.
KEEP_UNQUANTIZED = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
# The seed recipe's LoRA targets: attention and MLP projections of the language model, not of the CLIP tower.
LANGUAGE_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class ModelLoadError(RuntimeError):
    """A model, processor or adapter that cannot be used; the message names the problem and the fix."""


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0

    def __post_init__(self):
        if not 1 <= self.max_new_tokens <= 4096:
            raise ValueError(f"max_new_tokens must be in 1..4096, got {self.max_new_tokens}")
        if not 0.0 <= self.temperature <= 5.0:
            raise ValueError(f"temperature must be in 0..5, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self) -> dict:
        if self.temperature == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }


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
    """Fail early, in one line, on paths that cannot be a LLaVA checkpoint."""
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{name} has no config.json: point --base at a LLaVA-1.5 checkpoint directory "
                "(e.g. one written by `python -m finetune.tiny_model`) or a Hub id"
            )
        return
    looks_local = name.startswith((".", "/", "~")) or name.count("/") != 1
    if looks_local:
        raise ModelLoadError(f"model {name!r} not found: no such directory, and it is not a Hub id (owner/name)")


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
    if Path(adapter).exists() and not config_file.is_file():
        raise ModelLoadError(
            f"{adapter} has no adapter_config.json: pass the directory that `python -m finetune` wrote"
        )
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


def render(processor, messages: Sequence[dict], *, add_generation_prompt: bool) -> str:
    """Conversation → the exact text the model sees, for training (full turns) and inference (ends in ASSISTANT:)."""
    return processor.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=CHAT_TEMPLATE
    )


def encode(processor, images: Sequence[Image.Image], texts: Sequence[str]):
    """Tokenize rendered texts with their images. Never truncate: `<image>` expands to one token per patch and the
    count must match the vision features."""
    return processor(images=list(images), text=list(texts), padding=True, truncation=False, return_tensors="pt")


class VQAModel:
    """A LLaVA model, its processor, and optionally a LoRA adapter, answering batches of (image, conversation)."""

    def __init__(self, model, processor, *, base_name: str, adapter_name: str | None = None):
        self.model = model
        self.processor = processor
        self.base_name = base_name
        self.adapter_name = adapter_name
        self._lock = threading.Lock()  # one generate at a time: PEFT's adapter routing is per-call global state

    @property
    def has_adapter(self) -> bool:
        return self.adapter_name is not None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def count_tokens(self, text: str) -> int:
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _inputs(self, images, conversations, adapters):
        if len(images) != len(conversations) or (adapters is not None and len(adapters) != len(images)):
            raise ValueError("images, conversations and adapters must have the same length")
        if adapters and not self.has_adapter and any(a != BASE for a in adapters):
            raise ValueError("no adapter is loaded: every row must use the base model")
        texts = [render(self.processor, c, add_generation_prompt=True) for c in conversations]
        batch = encode(self.processor, images, texts).to(self.device)
        batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
        kwargs = dict(batch)
        if self.has_adapter:
            kwargs["adapter_names"] = list(adapters or [TUNED] * len(images))
        return kwargs

    def _generate_kwargs(self, settings: GenerationSettings) -> dict:
        tok = self.processor.tokenizer
        return {**settings.generate_kwargs(), "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}

    @torch.inference_mode()
    def generate(
        self,
        images: Sequence[Image.Image],
        conversations: Sequence[Sequence[dict]],
        adapters: Sequence[str] | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> list[str]:
        """Answer each row's last question, all rows in ONE generate call; `adapters[i]` is BASE or TUNED."""
        kwargs = self._inputs(images, conversations, adapters)
        prompt_len = kwargs["input_ids"].shape[1]
        with self._lock:
            out = self.model.generate(**kwargs, **self._generate_kwargs(settings))
        return [t.strip() for t in self.processor.batch_decode(out[:, prompt_len:], skip_special_tokens=True)]

    def stream(
        self,
        images: Sequence[Image.Image],
        conversations: Sequence[Sequence[dict]],
        adapters: Sequence[str] | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> Iterator[list[str]]:
        """Like `generate`, yielding every row's text so far after each decoding step (one batched call)."""
        kwargs = self._inputs(images, conversations, adapters)
        streamer = BatchStreamer(self.processor.tokenizer, len(images))
        errors: list[BaseException] = []

        def run():
            try:
                with self._lock, torch.inference_mode():
                    self.model.generate(**kwargs, **self._generate_kwargs(settings), streamer=streamer)
            except BaseException as err:  # surfaced in the caller's thread below
                errors.append(err)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if errors:
            raise errors[0]

    def compare(
        self,
        image: Image.Image,
        base_conversation: Sequence[dict],
        tuned_conversation: Sequence[dict] | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> tuple[str, str | None]:
        """(base answer, fine-tuned answer) from one batched call; the tuned answer is None without an adapter."""
        if not self.has_adapter:
            return self.generate([image], [base_conversation], [BASE], settings)[0], None
        base, tuned = self.generate(
            [image, image], [base_conversation, tuned_conversation or base_conversation], [BASE, TUNED], settings
        )
        return base, tuned


class BatchStreamer:
    """A `generate` streamer for batches: `put` gets each step's new tokens for all rows; iterating yields the
    decoded text of every row so far. transformers' own streamers handle a single row only."""

    def __init__(self, tokenizer, batch_size: int):
        self.tokenizer = tokenizer
        self.tokens: list[list[int]] = [[] for _ in range(batch_size)]
        self.done = [False] * batch_size
        self.queue: Queue = Queue()
        self._seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:  # generate first passes the prompt itself
            self._seen_prompt = True
            return
        for row, token in enumerate(value.reshape(len(self.tokens), -1)[:, -1].tolist()):
            if self.done[row]:
                continue
            if token == self.tokenizer.eos_token_id:
                self.done[row] = True
            else:
                self.tokens[row].append(token)
        self.queue.put([self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in self.tokens])

    def end(self) -> None:
        self.queue.put(None)

    def __iter__(self) -> Iterator[list[str]]:
        while (texts := self.queue.get()) is not None:
            yield texts


def load_model(
    base: str = DEFAULT_BASE,
    adapter: str | None = None,
    *,
    load_in_4bit: bool = True,
    device: str | None = None,
) -> VQAModel:
    """Load the base (4-bit nf4 by default) and, if given, attach the LoRA adapter: one copy of the weights serves
    both the base and the fine-tuned answers."""
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

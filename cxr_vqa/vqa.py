"""`VQAModel`: a loaded LLaVA-1.5, its processor and LoRA adapter, behind the small API that training, evaluation
and the app share. Callers hand it films and questions; they never touch its processor, tokenizer or config, so
the prompt a model is trained on is the prompt it is served with.

    vqa = cxr_vqa.model.load_model(base, adapter)
    film = vqa.prepare_film("upload.dcm")                          # decoded, letterboxed to the model's input
    question, notes = vqa.clean_question(typed)                    # special tokens and control characters removed
    conversation = vqa.conversation(None, question)                # checked against the context window
    base, tuned = vqa.compare(film.image, conversation)            # one batched generate, two answers
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import torch
from PIL import Image

from cxr_vqa.generation import BatchStreamer, GenerationSettings
from cxr_vqa.images import Film, ImageSource, load_film
from cxr_vqa.questions import TokenBudget, clean_question
from cxr_vqa.template import CHAT_TEMPLATE, add_question

BASE = "__base__"  # PEFT's adapter name for "no adapter" in a mixed batch
TUNED = "default"  # the name the fine-tuned adapter is attached under


def render(processor, messages: Sequence[dict], *, add_generation_prompt: bool) -> str:
    """Conversation → the exact text the model sees, for training (full turns) and inference (ends in ASSISTANT:)."""
    return processor.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=CHAT_TEMPLATE
    )


def encode(processor, images: Sequence[Image.Image], texts: Sequence[str]):
    """Tokenize rendered texts with their images. Never truncate: `<image>` expands to one token per patch and the
    count must match the vision features."""
    return processor(images=list(images), text=list(texts), padding=True, truncation=False, return_tensors="pt")


def special_texts(processor) -> list[str]:
    """Every text the tokenizer turns into a control token, longest first: the processor's image token and the
    BOS/EOS/pad/unk tokens by what they are, not only `all_special_tokens`, which in older Hub snapshots (no
    `extra_special_tokens`) leaves out `<image>`, so a typed one would ask for a second image."""
    tok = processor.tokenizer
    found = {processor.image_token, tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token}
    found |= set(tok.all_special_tokens) | {t.content for t in tok.added_tokens_decoder.values() if t.special}
    return sorted((t for t in found if t), key=lambda t: (-len(t), t))


class VQAModel:
    """A LLaVA model, its processor, and optionally a LoRA adapter, answering batches of (image, conversation)."""

    def __init__(self, model, processor, *, base_name: str, adapter_name: str | None = None):
        self.model = model
        self.processor = processor
        self.base_name = base_name
        self.adapter_name = adapter_name
        self._lock = threading.Lock()  # one generate at a time: PEFT's adapter routing is per-call global state
        config = model.config
        self.budget = TokenBudget(config.text_config.max_position_embeddings, config.image_seq_length)
        self._special_texts = special_texts(processor)

    # -- what the model is ---------------------------------------------------------------------------------------

    @property
    def has_adapter(self) -> bool:
        return self.adapter_name is not None

    @property
    def is_4bit(self) -> bool:
        return bool(getattr(self.model, "is_loaded_in_4bit", False))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def input_size(self) -> int:
        """The side of the square film the vision tower reads (336 px for LLaVA-1.5)."""
        return int(self.processor.image_processor.crop_size["height"])

    # -- inputs -------------------------------------------------------------------------------------------------

    def prepare_film(self, source: ImageSource) -> Film:
        """Decode a PNG/JPEG/DICOM and letterbox it to the model's input, so the processor's centre crop is a no-op
        (it would cut off the costophrenic angles)."""
        return load_film(source, self.input_size)

    def clean_question(self, text: str | None) -> tuple[str, list[str]]:
        """(the question as it will be asked, notes on what was removed or is risky)."""
        return clean_question(text, self._special_texts)

    def count_tokens(self, text: str) -> int:
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def conversation(
        self, history: list[dict] | None, question: str, max_new_tokens: int = GenerationSettings.max_new_tokens
    ) -> list[dict]:
        """`history` plus `question`, checked against the question and context limits in tokens."""
        conversation = add_question(history, question)
        prompt = render(self.processor, conversation, add_generation_prompt=True)
        self.budget.check(self.count_tokens(question), self.count_tokens(prompt), max_new_tokens)
        return conversation

    # -- answers ------------------------------------------------------------------------------------------------

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

"""`VQAModel`: a loaded LLaVA-1.5, its processor and LoRA adapter, behind the small API that training, evaluation
and the app share. Callers hand it films and questions; they never touch its processor, tokenizer or config, so
the prompt a model is trained on is the prompt it is served with.

    vqa = cxr_vqa.model.load_model(base, adapter)
    film = vqa.prepare_film("upload.dcm")                          # decoded, letterboxed to the model's input
    question, notes = vqa.clean_question(typed)                    # special tokens and control characters removed
    conversation = vqa.conversation(None, question)                # checked against the context window
    answers = vqa.compare(film.image, conversation)                # {"base": Answer, "tuned": Answer}: one generate
    answers = vqa.answer(images, conversations, models)            # any rows, each on its model: one generate
    maps = vqa.relevance(images, conversations, texts, models)     # where each answer looked: cxr_vqa.relevance
    vqa.last_weights()                                             # the weights this thread's last call used
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from cxr_vqa.answers import Answer, YesNoIds, p_yes
from cxr_vqa.generation import BatchStreamer, GenerationSettings
from cxr_vqa.images import Film, ImageSource, load_film
from cxr_vqa.questions import TokenBudget, clean_question
from cxr_vqa.relevance import RelevanceMap, explain
from cxr_vqa.template import CHAT_TEMPLATE, add_question, assistant_turn

BASE = "base"  # the model name of the base; every loaded adapter answers under its own name
TUNED = "tuned"  # the name of a lone adapter given without one
PEFT_BASE = "__base__"  # PEFT's adapter name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class Weights:
    """The weights a call used: `version` counts the adapters swapped in since loading (`cxr_vqa.model.use_adapter`),
    `sources` says where each model's came from (the base's id, each adapter's path)."""

    version: int
    sources: dict[str, str]


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
    """A LLaVA model, its processor, and LoRA adapters by name (one copy of the base serves them all), answering
    batches of (image, conversation, model name) rows in one generate call."""

    def __init__(self, model, processor, *, base_name: str, adapters: dict[str, str] | None = None):
        self.model = model
        self.processor = processor
        self.base_name = base_name
        self.adapters = dict(adapters or {})  # model name -> where the adapter came from, in load order
        self.version = 0  # one more for every adapter attached or swapped in after loading
        self._used = threading.local()  # the Weights of each thread's last answer or map
        self._lock = threading.RLock()  # one generate at a time: PEFT's adapter routing is per-call global state
        # called under that lock before each answer: where new weights are swapped in (a demo that serves its newest
        # checkpoint while it trains), so never mid-answer
        self.before_answer: Callable[[], None] | None = None
        config = model.config
        self.budget = TokenBudget(config.text_config.max_position_embeddings, config.image_seq_length)
        self.yes_no = YesNoIds.from_tokenizer(processor.tokenizer)
        self._special_texts = special_texts(processor)

    # -- what the model is ---------------------------------------------------------------------------------------

    @property
    def has_adapter(self) -> bool:
        return bool(self.adapters)

    @property
    def model_names(self) -> list[str]:
        """The base first, then every adapter: the panes of the app, the models of an evaluation."""
        return [BASE, *self.adapters]

    @property
    def lock(self) -> threading.RLock:
        """Held while an answer is computed: whoever changes the weights takes it too."""
        return self._lock

    def weights(self) -> Weights:
        """The weights loaded now (version and sources read together: `use_adapter` changes both under the lock)."""
        with self._lock:
            return Weights(self.version, {BASE: self.base_name, **self.adapters})

    def last_weights(self) -> Weights | None:
        """The weights of this thread's last answer or relevance map (None before any): a demo swaps in checkpoints
        between calls, so what answered is read here, right after the call, not from what is loaded by then."""
        return getattr(self._used, "weights", None)

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

    def _inputs(self, images, conversations, models, add_generation_prompt: bool = True):
        """Model inputs for rows answered by `models[i]` (a model name; None: every row on the first adapter)."""
        if len(images) != len(conversations) or (models is not None and len(models) != len(images)):
            raise ValueError("images, conversations and models must have the same length")
        models = list(models or [next(iter(self.adapters), BASE)] * len(images))
        if not self.has_adapter and any(m != BASE for m in models):
            raise ValueError("no adapter is loaded: every row must use the base model")
        unknown = sorted(set(models) - set(self.model_names))
        if unknown:
            raise ValueError(f"unknown model(s) {', '.join(unknown)}: loaded are {', '.join(self.model_names)}")
        texts = [render(self.processor, c, add_generation_prompt=add_generation_prompt) for c in conversations]
        batch = encode(self.processor, images, texts).to(self.device)
        batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
        kwargs = dict(batch)
        if self.has_adapter:
            kwargs["adapter_names"] = [PEFT_BASE if m == BASE else m for m in models]
        return kwargs

    def _generate_kwargs(self, settings: GenerationSettings) -> dict:
        tok = self.processor.tokenizer
        return {**settings.generate_kwargs(), "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}

    def _generate(self, kwargs: dict, settings: GenerationSettings, streamer=None):
        # the first step's logits give P(yes): the same forward that chose the answer's first token
        with self._lock, torch.inference_mode():
            return self.model.generate(
                **kwargs, **self._generate_kwargs(settings), return_dict_in_generate=True, output_logits=True,
                streamer=streamer,
            )  # fmt: skip

    def _answers(self, out, prompt_len: int) -> list[Answer]:
        texts = self.processor.batch_decode(out.sequences[:, prompt_len:], skip_special_tokens=True)
        return [Answer(t.strip(), p) for t, p in zip(texts, p_yes(out.logits[0], self.yes_no), strict=True)]

    def answer(
        self,
        images: Sequence[Image.Image],
        conversations: Sequence[Sequence[dict]],
        models: Sequence[str] | None = None,
        settings: GenerationSettings = GenerationSettings(),
        on_text: Callable[[list[str]], None] | None = None,
    ) -> list[Answer]:
        """Answer each row's last question with its model (None: every row on the first adapter), all rows in ONE
        generate call: text and P(yes). `on_text`, for streaming, gets every row's text so far after each step."""
        with self._lock:  # the hook, the inputs and the generate see one model
            if self.before_answer is not None:
                self.before_answer()
            kwargs = self._inputs(images, conversations, models)
            streamer = BatchStreamer(self.processor.tokenizer, len(images), on_text) if on_text else None
            answers = self._answers(self._generate(kwargs, settings, streamer), kwargs["input_ids"].shape[1])
            self._used.weights = self.weights()
            return answers

    def compare(
        self,
        image: Image.Image,
        conversations: dict[str, Sequence[dict]] | Sequence[dict],
        settings: GenerationSettings = GenerationSettings(),
        on_text: Callable[[dict[str, str]], None] | None = None,
    ) -> dict[str, Answer]:
        """Every model's answer to one film from one batched call, by model name: `conversations` is one conversation
        for every loaded model, or one per model name to ask (follow-ups continue each model's own conversation).
        `on_text`, for streaming, gets {model name: text so far} after each decoding step."""
        if not isinstance(conversations, dict):
            conversations = dict.fromkeys(self.model_names, conversations)
        names = list(conversations)
        relay = (lambda texts: on_text(dict(zip(names, texts, strict=True)))) if on_text else None
        answers = self.answer([image] * len(names), [conversations[n] for n in names], names, settings, relay)
        return dict(zip(names, answers, strict=True))

    def relevance(
        self,
        images: Sequence[Image.Image],
        conversations: Sequence[Sequence[dict]],
        answers: Sequence[str],
        models: Sequence[str] | None = None,
    ) -> list[RelevanceMap]:
        """Where each row's model looked for `answers[i]`, the answer it gave to `conversations[i]`: a map over the
        film's patches per row (`cxr_vqa.relevance`), every row in one forward and one backward, only when asked."""
        full = [[*c, assistant_turn(a)] for c, a in zip(conversations, answers, strict=True)]
        with self._lock:  # the inputs (adapter names, device, dtype) and the forward see one model
            kwargs = self._inputs(images, full, models, add_generation_prompt=False)
            counts = [self._answer_tokens(c, a) for c, a in zip(conversations, answers, strict=True)]
            maps = explain(self.model, kwargs, counts, self.processor.image_token_id)
            self._used.weights = self.weights()
            return maps

    def _answer_tokens(self, conversation: Sequence[dict], answer: str) -> int:
        """Tokens `answer` and its end of sequence add after the prompt: the inference prompt is a prefix of the
        training text (cxr_vqa.template), so the difference is the answer as the model was trained to write it."""
        prompt = render(self.processor, conversation, add_generation_prompt=True)
        full = render(self.processor, [*conversation, assistant_turn(answer)], add_generation_prompt=False)
        return self.count_tokens(full) - self.count_tokens(prompt)

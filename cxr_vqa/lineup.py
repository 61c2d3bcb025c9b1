"""Every model that answers in the app: the local `VQAModel`'s base and adapters (one batched generate) and any remote
models (`cxr_vqa.remote`), behind the small API the app calls, so the UI asks one object and never cares where a
model runs.

    lineup = Lineup(vqa, [RemoteModel(spec)])        # vqa None: remote models only (`--base none`)
    lineup.model_names                               # ["base", "tuned", "gpt4o"]: local first, then remote
    answers = lineup.compare(film.image, conversation, settings, on_text=print)

`compare` runs each remote call in a thread of its own, concurrently with the local generate and never under the
local model's lock, so a 2-second endpoint adds nothing to a 2-second local answer. A remote model that fails (down,
slow, refused key) gets an `Answer` whose `error` says why in one line, while the others answer. Streaming: `on_text`
gets {model name: text so far} for the models that moved: all local rows after each decoding step, one remote model
after each piece it sent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from PIL import Image

from cxr_vqa.answers import Answer
from cxr_vqa.errors import UserError
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.images import Film, ImageSource, load_film
from cxr_vqa.questions import MAX_QUESTION_TOKENS, clean_question
from cxr_vqa.remote import RemoteError, RemoteModel
from cxr_vqa.template import CONTROL_TEXTS, add_question
from cxr_vqa.vqa import VQAModel

logger = logging.getLogger(__name__)

INPUT_SIZE = 336  # LLaVA-1.5's input: what remote models are sent when no local model says otherwise
NO_BASE = "none"  # `--base none`: remote models only


class Lineup:
    def __init__(self, vqa: VQAModel | None, remotes: Sequence[RemoteModel] = ()):
        self.local = vqa
        self.remotes = {r.name: r for r in remotes}
        if len(self.remotes) != len(remotes):
            twice = next(r.name for i, r in enumerate(remotes) if r.name in (s.name for s in remotes[:i]))
            raise UserError(f"remote model name {twice} is given twice: give each model its own name")
        taken = [n for n in self.remotes if vqa is not None and n in vqa.model_names]
        if taken:
            raise UserError(f"remote model name {taken[0]} is a local model's: give each model its own name")
        if vqa is None and not remotes:
            raise UserError("no model to serve: without a local base (--base none) give at least one --remote")

    # -- what the models are -----------------------------------------------------------------------------------

    @property
    def local_names(self) -> list[str]:
        return self.local.model_names if self.local is not None else []

    @property
    def remote_names(self) -> list[str]:
        return list(self.remotes)

    @property
    def model_names(self) -> list[str]:
        """Local models first (base, then adapters), then the remote ones, in the order given."""
        return self.local_names + self.remote_names

    @property
    def has_adapter(self) -> bool:
        return self.local is not None and self.local.has_adapter

    @property
    def adapters(self) -> dict[str, str]:
        return self.local.adapters if self.local is not None else {}

    @property
    def base_name(self) -> str:
        return self.local.base_name if self.local is not None else NO_BASE

    @property
    def is_4bit(self) -> bool:
        return self.local is not None and self.local.is_4bit

    @property
    def sources(self) -> dict[str, str]:
        """Where each model comes from, as votes record it: the base's id, each adapter's path, each remote's
        BASE_URL#MODEL."""
        local = {self.local_names[0]: self.base_name, **self.adapters} if self.local is not None else {}
        return local | {name: r.source for name, r in self.remotes.items()}

    # -- inputs -------------------------------------------------------------------------------------------------

    def prepare_film(self, source: ImageSource) -> Film:
        return self.local.prepare_film(source) if self.local is not None else load_film(source, INPUT_SIZE)

    def clean_question(self, text: str | None) -> tuple[str, list[str]]:
        if self.local is not None:
            return self.local.clean_question(text)
        return clean_question(text, CONTROL_TEXTS)

    def conversation(self, history: list[dict] | None, question: str, max_new_tokens: int) -> list[dict]:
        """`history` plus `question`: checked in tokens by the local model, or by length where there is none (each
        endpoint keeps its own context limits)."""
        if self.local is not None:
            return self.local.conversation(history, question, max_new_tokens)
        if len(question) > 4 * MAX_QUESTION_TOKENS:  # ~4 characters a token
            raise UserError(f"question too long: {len(question):,} characters; ask a sentence or two")
        return add_question(history, question)

    # -- answers ------------------------------------------------------------------------------------------------

    def compare(
        self,
        image: Image.Image,
        conversations: dict[str, Sequence[dict]] | Sequence[dict],
        settings: GenerationSettings = GenerationSettings(),
        on_text: Callable[[dict[str, str]], None] | None = None,
    ) -> dict[str, Answer]:
        """Every asked model's answer by name: `conversations` is one conversation for every model, or one per model
        name to ask. Local models answer in one batched generate, remote ones concurrently, each in its thread."""
        if not isinstance(conversations, dict):
            conversations = dict.fromkeys(self.model_names, conversations)
        unknown = sorted(set(conversations) - set(self.model_names))
        if unknown:
            raise ValueError(f"unknown model(s) {', '.join(unknown)}: loaded are {', '.join(self.model_names)}")
        answers: dict[str, Answer] = {}

        def ask(name: str) -> None:
            relay = (lambda text: on_text({name: text})) if on_text else None
            try:
                answers[name] = self.remotes[name].answer(image, conversations[name], settings, relay)
            except RemoteError as err:
                answers[name] = Answer("", None, error=str(err))
            except Exception as err:  # a malformed stream, a failing on_text: this pane fails, the others answer
                # the type only: an exception's text may quote the request or the key
                logger.warning("remote model %s failed: %s", name, type(err).__name__)
                answers[name] = Answer("", None, error=f"{name} did not answer: {type(err).__name__}")

        threads = [threading.Thread(target=ask, args=(name,), daemon=True)
                   for name in conversations if name in self.remotes]  # fmt: skip
        for thread in threads:
            thread.start()
        local = {name: c for name, c in conversations.items() if name not in self.remotes}
        try:
            if local:
                answers.update(self.local.compare(image, local, settings, on_text=on_text))
        finally:  # a failed local generate still waits for the remote calls: none outlives the request
            for thread in threads:
                thread.join()
        return {name: answers[name] for name in conversations}

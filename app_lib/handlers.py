"""The app's event handlers as plain methods over a `VQAModel`: testable without a browser or a server.

Every model call goes through the core's `VQAModel` (`prepare_film`, `clean_question`, `conversation`, then `stream`
for the panes and `compare` for the API and blind trials), so the app asks exactly the prompt the model was trained
on and never touches the processor, tokenizer or config itself. User mistakes raise `gr.Error` with a one-line message;
risky-but-allowed input (control characters removed, another script) raises `gr.Warning` and carries on.
"""

from __future__ import annotations

import random
import sqlite3
import time
from contextlib import contextmanager

import gradio as gr
import torch

from app_lib.results import results_markdown
from app_lib.votes import Trial, VoteStore
from cxr_vqa.errors import UserError
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.images import Film
from cxr_vqa.template import assistant_turn
from cxr_vqa.vqa import BASE, TUNED, VQAModel

NO_ADAPTER = (
    "No fine-tuned adapter is loaded, so this pane stays empty: start the app with `--adapter DIR` "
    "(or set `ADAPTER_MODEL`) to compare."
)
NO_BLIND = "blind A/B needs a fine-tuned adapter: start the app with --adapter DIR (or set ADAPTER_MODEL)"
VOTE_FIRST = "no pair to vote on: press “Answer blind” first (each pair takes one vote)"
NO_IMAGE = "no image: upload a chest X-ray (PNG, JPEG or DICOM) or pick an example first"


@contextmanager
def user_errors():
    """Turn the errors a person can act on into `gr.Error`, so the UI shows one line and the server carries on."""
    try:
        yield
    except UserError as err:
        raise gr.Error(str(err)) from None
    except torch.OutOfMemoryError:
        raise gr.Error("the GPU ran out of memory: lower max new tokens or try again in a moment") from None


def chat_messages(conversation: list[dict] | None) -> list[dict]:
    """Project conversation (typed parts, image in turn one) → Gradio chatbot messages (text only)."""
    messages = []
    for turn in conversation or []:
        text = " ".join(p["text"] for p in turn["content"] if p["type"] == "text")
        messages.append({"role": turn["role"], "content": text})
    return messages


def pane_stats(seconds: float, tokens: int) -> str:
    rate = tokens / seconds if seconds > 0 else 0.0
    return f"{seconds:.2f} s · {tokens} tokens · {rate:.1f} tokens/s"


class Handlers:
    """State lives in Gradio (per browser tab); this object holds only the model, the vote store and settings."""

    def __init__(
        self,
        vqa: VQAModel,
        votes: VoteStore,
        *,
        settings: GenerationSettings = GenerationSettings(),
        rng: random.Random | None = None,
    ):
        self.vqa = vqa
        self.votes = votes
        self.settings = settings  # for `/compare`, which takes no settings; the UI sliders start from it
        self.rng = rng or random.SystemRandom()  # blind sides must not be predictable

    @property
    def adapter_label(self) -> str:
        return self.vqa.adapter_name or "none"

    # -- inputs ------------------------------------------------------------------------------------------------

    def load_film(self, path: str | None):
        """File picked → (film as the model sees it, Film state, status line); a new film starts new chats."""
        reset = ([], [], "", "", None)
        if not path:
            return None, None, "", *reset
        try:
            film = self.vqa.prepare_film(path)
        except UserError as err:
            gr.Warning(str(err))
            return None, None, f"**Cannot use this file:** {err}", *reset
        (width, height), size = film.original_size, film.image.width
        status = f"Loaded a {width}×{height} film, letterboxed to {size}×{size} as the model sees it."
        return film.image, film, status, *reset

    def _clean(self, question: str | None) -> str:
        """The question as it will be asked; each change or risk becomes a warning toast."""
        question, notes = self.vqa.clean_question(question)
        for note in notes:
            gr.Warning(note)
        return question

    def _conversation(self, history: list[dict] | None, question: str, settings: GenerationSettings) -> list[dict]:
        """`history` plus `question`, checked against the question and context limits in tokens."""
        return self.vqa.conversation(history, question, settings.max_new_tokens)

    @staticmethod
    def _settings(max_new_tokens, temperature, top_p) -> GenerationSettings:
        try:
            return GenerationSettings(int(max_new_tokens), float(temperature), float(top_p))
        except (TypeError, ValueError) as err:  # sliders keep the UI in range; API callers may not
            raise UserError(f"generation settings: {err}") from None

    # -- side by side ------------------------------------------------------------------------------------------

    def ask(self, film: Film | None, question: str, chats: dict | None, max_new_tokens, temperature, top_p):
        """Stream both answers; yields (base chat, tuned chat, base stats, tuned stats, chats state, question box)."""
        chats = chats or {"base": [], "tuned": []}
        with user_errors():
            if film is None:
                raise UserError(NO_IMAGE)
            settings = self._settings(max_new_tokens, temperature, top_p)
            question = self._clean(question)
            base_conv = self._conversation(chats["base"], question, settings)
            tuned_conv = self._conversation(chats["tuned"], question, settings) if self.vqa.has_adapter else None
        rows = [base_conv] + ([tuned_conv] if tuned_conv else [])
        adapters = [BASE, TUNED][: len(rows)]
        texts, done_at, tokens = [""] * len(rows), [0.0] * len(rows), [0] * len(rows)
        start = time.perf_counter()

        def frame(stats: list[str]):
            base_chat = chat_messages(base_conv) + [{"role": "assistant", "content": texts[0]}]
            tuned_chat = chat_messages(tuned_conv) + [{"role": "assistant", "content": texts[1]}] if tuned_conv else []
            return base_chat, tuned_chat, stats[0], stats[1]

        waiting = ["…", "…" if tuned_conv else NO_ADAPTER]
        yield *frame(waiting), chats, ""
        with user_errors():
            # one streamed step = one new token per unfinished row; a row's latency and token count run to the step
            # where its text last grew, since each row stops at its own EOS while the batch runs to the last one
            for n_step, step in enumerate(self.vqa.stream([film.image] * len(rows), rows, adapters, settings), 1):
                now = time.perf_counter()
                for i, text in enumerate(step):
                    if text != texts[i]:
                        texts[i], done_at[i], tokens[i] = text, now - start, n_step
                yield *frame(waiting), chats, ""
        stats = [pane_stats(done_at[i], tokens[i]) for i in range(len(rows))] + [NO_ADAPTER]
        chats = {
            "base": base_conv + [assistant_turn(texts[0])],
            "tuned": tuned_conv + [assistant_turn(texts[1])] if tuned_conv else [],
        }
        yield *frame(stats), chats, ""

    @staticmethod
    def clear():
        """(base chat, tuned chat, base stats, tuned stats, chats state): a fresh conversation, same film."""
        return [], [], "", "", None

    # -- API -----------------------------------------------------------------------------------------------------

    def compare(self, path: str | None, question: str) -> tuple[str, str]:
        """`/compare`: (base answer, fine-tuned answer) for one question, with the app's settings, in one batched
        generate. The fine-tuned answer is "" when no adapter is loaded."""
        with user_errors():
            if not path:
                raise UserError(NO_IMAGE)
            film = self.vqa.prepare_film(path)
            settings = self.settings
            conversation = self._conversation(None, self._clean(question), settings)
            base, tuned = self.vqa.compare(film.image, conversation, settings=settings)
        return base, tuned or ""

    # -- blind A/B -------------------------------------------------------------------------------------------------

    def blind_answer(self, film: Film | None, question: str, max_new_tokens, temperature, top_p):
        """(answer A, answer B, Trial state, reveal line): both answers from one call, sides drawn at random."""
        with user_errors():
            if not self.vqa.has_adapter:
                raise UserError(NO_BLIND)
            if film is None:
                raise UserError(NO_IMAGE)
            settings = self._settings(max_new_tokens, temperature, top_p)
            question = self._clean(question)
            conversation = self._conversation(None, question, settings)
            base, tuned = self.vqa.compare(film.image, conversation, settings=settings)
        trial = Trial(
            question=question,
            base_answer=base,
            tuned_answer=tuned or "",
            a_model=self.rng.choice(["base", "tuned"]),
            image_sha256=film.sha256,
        )
        answer_a, answer_b = trial.answers
        return answer_a, answer_b, trial, "Which answer is better? Vote to reveal which model wrote which."

    def vote(self, choice: str, trial: Trial | None):
        """(reveal line, Trial state): store the vote in SQLite, then say which side was which."""
        if trial is None:
            raise gr.Error(VOTE_FIRST)
        try:
            self.votes.add(trial, choice, base_model=self.vqa.base_name, adapter=self.adapter_label)
        except (OSError, sqlite3.Error, ValueError) as err:
            raise gr.Error(f"could not store the vote: {err}") from None
        names = {"base": "the **base** model", "tuned": "the **fine-tuned** model"}
        b_model = "tuned" if trial.a_model == "base" else "base"
        shown = {"A": "A", "B": "B", "tie": "a tie", "both_wrong": "both wrong"}[choice]
        reveal = f"You voted {shown}. **A** was {names[trial.a_model]}, **B** was {names[b_model]}. Vote stored."
        return reveal, None

    def results(self) -> str:
        counts = self.votes.counts(base_model=self.vqa.base_name, adapter=self.adapter_label)
        return results_markdown(counts)

"""The app's event handlers as plain methods over the core's `Lineup` of models: testable without a browser or a
server.

Every model call goes through the core (`prepare_film`, `clean_question`, `conversation`, then `compare`, streamed
for the panes), so the app asks exactly the prompt the model was trained on and never touches the processor,
tokenizer or config itself. The panes are the models, base first, remote ones last; the local panes are filled by ONE
batched generate, each remote pane by its endpoint at the same time, and a remote model that fails says so in its own
pane. User mistakes raise `gr.Error` with a one-line message; risky-but-allowed input (control characters removed,
another script) raises `gr.Warning` and carries on.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from queue import Queue

import gradio as gr
import torch

from app_lib.tables import answer_text
from app_lib.votes import VoteStore
from cxr_vqa.answers import Answer
from cxr_vqa.errors import UserError
from cxr_vqa.findings import is_findings_question
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.images import Film
from cxr_vqa.lineup import Lineup
from cxr_vqa.template import assistant_turn
from cxr_vqa.vqa import BASE, TUNED, VQAModel, Weights

NO_ADAPTER = (
    "No fine-tuned adapter is loaded, so this pane stays empty: start the app with `--adapter DIR` "
    "(or set `ADAPTER_MODEL`) to compare."
)
NO_IMAGE = "no image: upload a chest X-ray (PNG, JPEG or DICOM) or pick an example first"
NO_LOCAL = (
    "no local model is loaded (--base none): /compare and /compare_scores answer base and fine-tuned; use /compare_all"
)


@contextmanager
def ui_errors():
    """Turn the errors a person can act on into `gr.Error`, so the UI shows one line and the server carries on (the
    command-line counterpart, `cxr_vqa.cli.user_errors`, exits 2 instead)."""
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


def pane_stats(seconds: float, tokens: int, answer: Answer | None = None, report: bool = False) -> str:
    """A pane's line under its answer; P(yes) only for a yes/no answer, never under a findings `report` (one that
    opens with "No pneumothorax." is not a no)."""
    if answer is not None and answer.error:
        return "no answer"
    rate = tokens / seconds if seconds > 0 else 0.0
    yes_no = answer and answer.is_closed and answer.p_yes is not None and not report
    confidence = f" · P(yes) {answer.p_yes:.2f}" if yes_no else ""
    return f"{seconds:.2f} s · {tokens} tokens · {rate:.1f} tokens/s{confidence}"


def pane_label(model: str, remote: bool = False) -> str:
    if remote:
        return f"Remote: {model}"
    return "Base" if model == BASE else "Fine-tuned" if model == TUNED else f"Fine-tuned: {model}"


def scores(answer: Answer | None) -> dict | None:
    """`/compare_scores`' shape of one answer; P(yes) only for a yes/no answer."""
    if answer is None:
        return None
    return {"answer": answer.text, "p_yes": answer.p_yes if answer.is_closed else None}


class Chats(dict):
    """The panes' conversations, {model: conversation}, and the local weights their last answers came from
    (`VQAModel.last_weights`): a demo swaps in checkpoints between answers, and a map drawn later says so."""

    weights: Weights | None = None


class _Stopped(Exception):
    """Nobody reads the stream any more (the browser left): ends the local generate at its next token."""


def streamed(call: Callable[[Callable], dict]) -> Iterator[tuple[dict | None, dict | None]]:
    """Run `call(on_text)` in a thread and yield (update, None) for each update it reports, then (None, its result);
    an error it raises is raised here, in the caller's thread. Closed early (Gradio closes the handler's generator
    when the browser disconnects), it stops the local generate at its next token, so that it does not hold the model's
    lock to max_new_tokens; a remote model's thread, which holds no lock, ends on its own."""
    updates: Queue = Queue()
    result: list = []
    stopped = threading.Event()

    def on_text(update) -> None:
        if not stopped.is_set():
            updates.put(update)
        elif threading.current_thread() is runner:  # the local generate reports from this thread
            raise _Stopped

    def run():
        try:
            result.append(call(on_text))
        except _Stopped:
            pass
        except BaseException as err:  # surfaced below
            result.append(err)
        finally:
            updates.put(None)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        while (update := updates.get()) is not None:
            yield update, None
    finally:
        stopped.set()
    if isinstance(result[0], BaseException):
        raise result[0]
    yield None, result[0]


class Inputs:
    """What every tab does with a film and a question before the model sees them. State lives in Gradio (per
    browser tab); handlers hold only the model, the vote store and the settings."""

    def __init__(
        self,
        vqa: Lineup | VQAModel,
        votes: VoteStore,
        *,
        settings: GenerationSettings = GenerationSettings(),
        rng: random.Random | None = None,
    ):
        self.vqa = vqa if isinstance(vqa, Lineup) else Lineup(vqa)  # a lone VQAModel: its base and adapters
        self.votes = votes
        self.settings = settings  # for the API, which takes no settings; the UI sliders start from it
        self.rng = rng or random.SystemRandom()  # blind sides must not be predictable

    def _clean(self, question: str | None) -> str:
        """The question as it will be asked; each change or risk becomes a warning toast."""
        question, notes = self.vqa.clean_question(question)
        for note in notes:
            gr.Warning(note)
        return question

    @staticmethod
    def _settings(max_new_tokens, temperature, top_p) -> GenerationSettings:
        try:
            return GenerationSettings(int(max_new_tokens), float(temperature), float(top_p))
        except (TypeError, ValueError) as err:  # sliders keep the UI in range; API callers may not
            raise UserError(f"generation settings: {err}") from None


class Handlers(Inputs):
    """The film, the side-by-side panes and the API."""

    def __init__(
        self, vqa: Lineup | VQAModel, votes: VoteStore, *, notes: Callable[..., dict] | None = None, **kwargs
    ):
        super().__init__(vqa, votes, **kwargs)
        # the panes: every model, base first, remote last; a base without an adapter gets an empty fine-tuned pane
        # that says why
        models = self.vqa
        local = models.local_names if models.has_adapter or not models.local_names else [BASE, TUNED]
        self.panes = local + models.remote_names
        # a line per model on what answered it with the given weights (None: those loaded now), or why its pane is
        # empty (a demo still training: which checkpoint)
        self.notes = notes or (lambda weights=None: {})

    def _empty(self):
        return [[] for _ in self.panes], ["" for _ in self.panes]

    # -- inputs ------------------------------------------------------------------------------------------------

    def load_film(self, path: str | None):
        """File picked → (film as the model sees it, Film state, status line); a new film starts new chats."""
        chats, stats = self._empty()
        reset = (*chats, *stats, None)
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

    def _film(self, path: str | None) -> Film:
        if not path:
            raise UserError(NO_IMAGE)
        return self.vqa.prepare_film(path)

    # -- side by side ------------------------------------------------------------------------------------------

    def ask(self, film: Film | None, question: str, chats: dict | None, max_new_tokens, temperature, top_p):
        """Stream every model's answer; yields (one chat per pane, one stats line per pane, chats state, question)."""
        models = self.vqa.model_names
        chats = chats or {m: [] for m in models}
        with ui_errors():
            if film is None:
                raise UserError(NO_IMAGE)
            settings = self._settings(max_new_tokens, temperature, top_p)
            question = self._clean(question)
            convs = {m: self.vqa.conversation(chats.get(m), question, settings.max_new_tokens) for m in models}
        texts, done_at, tokens = dict.fromkeys(models, ""), dict.fromkeys(models, 0.0), dict.fromkeys(models, 0)
        start, waiting_notes = time.perf_counter(), self.notes()

        def frame(stats: dict[str, str]):
            panes = [chat_messages(convs[m]) + [{"role": "assistant", "content": texts[m]}] if m in convs else []
                     for m in self.panes]  # fmt: skip
            return *panes, *[stats.get(m, waiting_notes.get(m, NO_ADAPTER)) for m in self.panes]

        waiting = dict.fromkeys(models, "…")
        yield *frame(waiting), chats, ""
        answers: dict[str, Answer] = {}
        steps = dict.fromkeys(models, 0)
        local = self.vqa.local

        def call(on_text):  # the weights are read in the thread that answered, right after its answer
            found = self.vqa.compare(film.image, convs, settings, on_text=on_text)
            return found, local.last_weights() if local is not None else None

        used = None
        with ui_errors(), closing(streamed(call)) as stream:  # closed with this generator: the generate stops too
            # a streamed step of the local models = one new token per unfinished row, of a remote model = one piece it
            # sent; a model's latency and token count run to its step where its text last grew, since each local row
            # stops at its own EOS while the batch runs to the last one
            for step, done in stream:
                if done is not None:  # the final texts, decoded whole
                    answers, used = done
                    texts.update({m: answer_text(a) for m, a in answers.items()})
                    break
                now = time.perf_counter()
                for m, text in step.items():
                    steps[m] += 1
                    if text != texts[m]:
                        texts[m], done_at[m], tokens[m] = text, now - start, steps[m]
                yield *frame(waiting), chats, ""
        notes = self.notes(used)  # what answered: a checkpoint swapped in since does not change it
        report = is_findings_question(question)
        stats = {m: pane_stats(done_at[m], tokens[m], answers.get(m), report) for m in models}
        stats = {m: line + (f" · {notes[m]}" if m in notes else "") for m, line in stats.items()}
        # a model that gave no answer keeps its conversation as it was, without the question it could not answer
        chats = Chats({m: chats.get(m, []) if answers[m].error else convs[m] + [assistant_turn(texts[m])]
                       for m in models})  # fmt: skip
        chats.weights = used
        yield *frame(stats), chats, ""

    def clear(self):
        """(one empty chat per pane, empty stats, chats state): a fresh conversation, same film."""
        chats, stats = self._empty()
        return *chats, *stats, None

    # -- API -----------------------------------------------------------------------------------------------------

    def _answers(self, path: str | None, question: str, models: list[str],
                 settings: GenerationSettings | None = None) -> dict[str, Answer]:  # fmt: skip
        settings = settings or self.settings
        with ui_errors():
            if not models:
                raise UserError(NO_LOCAL)
            film = self._film(path)
            conversation = self.vqa.conversation(None, self._clean(question), settings.max_new_tokens)
            return self.vqa.compare(film.image, dict.fromkeys(models, conversation), settings)

    def compare(self, path: str | None, question: str) -> tuple[str, str]:
        """`/compare`: (base answer, first adapter's answer; "" without an adapter), one batched generate of the local
        models (remote ones are not asked)."""
        answers = list(self._answers(path, question, self.vqa.local_names).values())
        return answers[0].text, answers[1].text if len(answers) > 1 else ""

    def compare_scores(self, path: str | None, question: str) -> dict:
        """`/compare_scores`: {"base": {"answer", "p_yes"}, "tuned": {...} or None}; p_yes null for open answers."""
        answers = list(self._answers(path, question, self.vqa.local_names).values())
        return {"base": scores(answers[0]), "tuned": scores(answers[1] if len(answers) > 1 else None)}

    def compare_all(self, path: str | None, question: str) -> dict[str, str]:
        """`/compare_all`: {model name: answer} for every model, one batched generate for the local ones and the
        remote ones at the same time; a remote model that did not answer gives "error: <why>"."""
        answers = self._answers(path, question, self.vqa.model_names)
        return {name: answer_text(answer) for name, answer in answers.items()}

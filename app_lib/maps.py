"""The "Where did it look?" view: each model's relevance map for its last answer in the side-by-side panes, as a heat
overlay on the film as the model saw it, one per pane; and the `/maps` API. Computed only when asked (the button, or an
API call): one extra forward and backward over every local model's row (`VQAModel.relevance`). A model whose
weights are not here (a remote one) or that is not loaded has no map, and says so; one whose weights changed since its
answer (a demo swaps in each new checkpoint) is mapped with the weights it has now, and says that too.

    maps = Maps(vqa, votes)
    view = maps.view(film, chats, len(panes), GPU_EVENT)  # inside the Side by side tab: button, gallery, status
    view.clear_on(ask_btn.click, clear_btn.click)        # a new answer makes the old maps stale
    maps.maps(path, question)                            # {model: {"answer", "map": [[...]], "sinks", "available"}}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from app_lib.handlers import NO_IMAGE, Inputs, pane_label, ui_errors
from app_lib.tables import answer_text
from cxr_vqa.errors import UserError
from cxr_vqa.images import Film
from cxr_vqa.relevance import RelevanceMap, overlay
from cxr_vqa.template import assistant_turn
from cxr_vqa.vqa import Weights

ASK_FIRST = "no answer to explain yet: ask a question first, then press “Where did it look?”"
NOT_AVAILABLE = "not available: its weights are not in this app (a remote model, or no adapter loaded)"
HELP = (
    "Each model's relevance map for its last answer: gradient-weighted attention from the answer to the film's "
    "patches (brighter = more relevant), visual attention sinks left out. It shows where an answer drew on the film, "
    "not where a finding is, and costs one extra pass over the model."
)


def last_answer(conversation: list[dict] | None) -> tuple[list[dict], str] | None:
    """(the conversation up to the last question, the last answer's text), or None before any answer."""
    if not conversation or conversation[-1]["role"] != "assistant":
        return None
    text = " ".join(p["text"] for p in conversation[-1]["content"] if p["type"] == "text")
    return conversation[:-1], text


@dataclass
class View:
    button: gr.Button
    gallery: gr.Gallery
    status: gr.Markdown

    def clear_on(self, *triggers) -> None:
        for trigger in triggers:
            trigger(lambda: (None, HELP), None, [self.gallery, self.status], queue=False, api_visibility="private")


class Maps(Inputs):
    def __init__(self, vqa, votes, *, names: Callable[[Weights], dict[str, str]] | None = None, **kwargs):
        super().__init__(vqa, votes, **kwargs)
        self.names = names  # {model: what it was with those weights}, e.g. "the epoch-2 checkpoint"; else its source

    def explain(self, film: Film, conversations: dict[str, list[dict]]) -> dict[str, tuple[str, RelevanceMap | None]]:
        """{model: (its last answer, its map or None when it has none)} for the models that have answered."""
        answered = {m: found for m, c in conversations.items() if (found := last_answer(c)) is not None}
        local = [m for m in answered if m in self.vqa.local_names]  # remote models have no map
        convs, answers = [answered[m][0] for m in local], [answered[m][1] for m in local]
        maps = self.vqa.local.relevance([film.image] * len(local), convs, answers, local) if local else []
        found = dict(zip(local, maps, strict=True))
        return {m: (answer, found.get(m)) for m, (_, answer) in answered.items()}

    def _moved(self, answered: Weights | None, drawn: Weights | None) -> dict[str, str]:
        """{model: a note} for each local model whose map was drawn with other weights than gave its answer."""
        if answered is None or drawn is None or answered.version == drawn.version:
            return {}
        then, now = self._named(answered), self._named(drawn)
        changed = [m for m, source in drawn.sources.items() if answered.sources.get(m, source) != source]
        return {m: f"drawn with {now[m]}; the answer came from {then[m]}" for m in changed}

    def _named(self, weights: Weights) -> dict[str, str]:
        named = {m: f"`{source}`" for m, source in weights.sources.items()}
        return named | (self.names(weights) if self.names else {})

    def _last_weights(self) -> Weights | None:
        """The local weights of this thread's last answer or map."""
        return self.vqa.local.last_weights() if self.vqa.local is not None else None

    def show_maps(self, film: Film | None, chats: dict | None):
        """The button: (gallery of (overlay, caption), one per pane that has a map; status line)."""
        with ui_errors():
            if film is None:
                raise UserError(NO_IMAGE)
            began = time.perf_counter()
            explained = self.explain(film, chats or {})
            if not explained:
                raise UserError(ASK_FIRST)
        seconds = time.perf_counter() - began
        moved = self._moved(getattr(chats, "weights", None), self._last_weights())
        gallery, notes = [], []
        for model, (answer, found) in explained.items():
            if found is None:
                notes.append(f"**{pane_label(model, remote=model in self.vqa.remotes)}**: {NOT_AVAILABLE}")
                continue
            if model in moved:
                notes.append(f"**{pane_label(model)}**: {moved[model]}")
            sinks = f" · {len(found.sinks)} sink patch(es) left out" if found.sinks else ""
            gallery.append((overlay(film.image, found.grid), f"{pane_label(model)}: “{answer[:80]}”{sinks}"))
        status = f"Maps of {len(gallery)} model(s) in {seconds:.1f} s (one forward and backward for all of them)."
        return gallery, "  \n".join([status, *notes])

    def maps(self, path: str | None, question: str) -> dict:
        """`/maps`: every model answers (film, question) as in `/compare_all`, then {model: {"answer", "map": side x
        side floats in [0, 1], row-major over the film's patches, peak 1, or None, "sinks": patches left out,
        "available"}}; a model without a map has "map": None, "available": False and a "note", one whose weights
        changed between its answer and its map (a demo's new checkpoint) a "note" that says so."""
        with ui_errors():
            if not path:
                raise UserError(NO_IMAGE)
            film = self.vqa.prepare_film(path)
            conversation = self.vqa.conversation(None, self._clean(question), self.settings.max_new_tokens)
            answers = self.vqa.compare(film.image, conversation, self.settings)
            answered = self._last_weights()  # by this thread's last call: the answer
            chats = {m: [*conversation, assistant_turn(a.text)] for m, a in answers.items()}
            explained = self.explain(film, chats)
        moved = self._moved(answered, self._last_weights())
        texts = {m: answer_text(a) for m, a in answers.items()}  # as /compare_all: a failed remote model says why
        return {
            model: {
                "answer": texts[model],
                "map": found.grid.round(4).tolist(),
                "sinks": list(found.sinks),
                "available": True,
                **({"note": moved[model]} if model in moved else {}),
            }
            if found is not None
            else {"answer": texts[model], "map": None, "sinks": [], "available": False, "note": NOT_AVAILABLE}
            for model, (_, found) in explained.items()
        }

    def view(self, film: gr.State, chats: gr.State, columns: int, gpu_event: dict, wrap=lambda fn: fn) -> View:
        """The button, the gallery (a column per pane) and the status line, wired to `show_maps`; call inside a tab."""
        button = gr.Button("Where did it look?", size="sm", elem_id="maps-button")
        gallery = gr.Gallery(
            label="Where each model looked for its last answer", columns=max(columns, 1), height="auto",
            object_fit="contain", elem_id="maps", interactive=False, buttons=["download", "fullscreen"],
        )  # fmt: skip  # no "share": a film would go to the Space's public discussions
        status = gr.Markdown(HELP, elem_id="maps-status")
        button.click(wrap(self.show_maps), [film, chats], [gallery, status], api_visibility="private", **gpu_event)
        return View(button, gallery, status)

"""The Side by side tab: one chat pane per model (base first, remote last), Ask, Findings and Clear, each report's
findings as chips under its pane (`app_lib.findings_view`), and the "Where did it look?" maps under them; wired to
`Handlers` once the generation sliders exist.

    view = side_by_side_tab(handlers, maps, page, gpu_event=GPU_EVENT, wrap=on_gpu)   # inside gr.Tabs
    view.wire(handlers, page, sliders, gpu_event=GPU_EVENT, wrap=on_gpu)             # once the sliders exist
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlparse

import gradio as gr

from app_lib.findings_view import FindingsView
from app_lib.handlers import NO_ADAPTER, Handlers, pane_label
from app_lib.maps import Maps
from app_lib.maps import View as MapView
from app_lib.tables import model_label
from cxr_vqa.endpoint import is_local
from cxr_vqa.lineup import Lineup
from cxr_vqa.vqa import BASE, TUNED

# no "share" button anywhere (Gradio shows one by default on images, galleries and chats on a Space): one click would
# post a film to the Space's public discussion page
PANE = {"height": 320, "buttons": ["copy_all"]}
NO_SHARE = ["download", "fullscreen"]  # an image's buttons
PRIVATE = {"api_visibility": "private"}


def pane_id(model: str) -> str:
    """The pane's element id: base-chat, tuned-chat, or model-<name>-chat."""
    return model if model in (BASE, TUNED) else f"model-{model}"


def models_line(models: Lineup, training: str | None = None) -> str:
    """The line under the title: which models answer, from where; `training`, a demo's adapter still training."""
    adapters = ", ".join(f"`{name}` = {model_label(source)}" for name, source in models.adapters.items())
    if training is not None:
        adapters = f"`{TUNED}` = `{training}` (its newest checkpoint while it trains)"
    remote = ", ".join(f"`{name}` = `{models.sources[name]}`" for name in models.remote_names)
    quantized = "4-bit nf4" if models.is_4bit else "full precision"
    local = (f"Base model: {model_label(models.base_name)} ({quantized}) · Adapters: {adapters or 'none'}"
             if models.local is not None else "No local model (`--base none`)")  # fmt: skip
    return local + (f" · Remote: {remote}" if remote else "")


def provider(base_url: str) -> str:
    """Who receives what is sent to a remote model: its host (and port), or this machine for a local server."""
    where = urlparse(base_url).netloc
    return f"this machine ({where})" if is_local(base_url) else where


def provider_note(models: Lineup, name: str) -> str:
    """The line under a remote model's pane: where the film and the question go when it answers."""
    return (f"🌐 Asking **{name}** sends the film (as the model sees it) and the conversation to "
            f"**{provider(models.remotes[name].spec.base_url)}**.")  # fmt: skip


def remote_notice(models: Lineup) -> str | None:
    """One line for the top of the page: every provider a film may go to, from any tab (a blind trial may draw a
    remote model, a batch and /compare_all ask all of them)."""
    if not models.remote_names:
        return None
    hosts = ", ".join(f"**{provider(models.remotes[n].spec.base_url)}** ({n})" for n in models.remote_names)
    return (f"🌐 Remote models answer here too: films and questions asked of them (side by side, blind A/B, batch) "
            f"are sent to {hosts}.")  # fmt: skip


@dataclass
class Page:
    """The page's film and question, which every tab asks about: the upload box, the film as the model sees it, its
    status line, the decoded film and the panes' conversations (states), and the question box."""

    film_file: gr.File
    film_view: gr.Image
    film_status: gr.Markdown
    film: gr.State
    chats: gr.State
    question: gr.Textbox


@dataclass
class SideBySide:
    ask: gr.Button
    findings: gr.Button
    clear: gr.Button
    panes: list[gr.Chatbot]
    stats: list[gr.Markdown]
    chips: list[gr.HTML]  # one report's findings under each pane, then the line naming the disagreements
    maps: MapView

    def wire(self, h: Handlers, page: Page, sliders: list, *, gpu_event: dict, wrap=lambda fn: fn) -> None:
        """A film picked, Ask (or Enter), Findings, Clear (or a pane's trash icon): each fills or empties every pane
        and its chips."""
        view = FindingsView(h)
        chat_outputs = [*self.panes, *self.stats, page.chats]
        film_outputs = [page.film_view, page.film, page.film_status, *chat_outputs]
        page.film_file.change(h.load_film, [page.film_file], film_outputs, concurrency_limit=4, **PRIVATE)
        page.film_file.change(view.clear, None, self.chips, queue=False, **PRIVATE)
        ask = wrap(view.ask)
        for trigger in (self.ask.click, page.question.submit):
            trigger(ask, [page.film, page.question, page.chats, *sliders], [*chat_outputs, page.question, *self.chips],
                    **gpu_event, **PRIVATE)  # fmt: skip
        self.findings.click(wrap(view.ask_findings), [page.film, *sliders], [*chat_outputs, *self.chips],
                            **gpu_event, **PRIVATE)  # fmt: skip
        for clear in (self.clear.click, *[pane.clear for pane in self.panes]):  # a pane's trash icon clears them all
            clear(lambda: (*h.clear(), *view.clear()), None, [*chat_outputs, *self.chips], queue=False, **PRIVATE)
        # a new answer, conversation or film makes the maps of the old answers stale
        self.maps.clear_on(self.ask.click, self.findings.click, page.question.submit, self.clear.click,
                           page.film_file.change)  # fmt: skip


def side_by_side_tab(h: Handlers, maps: Maps, page: Page, *, waiting: str = NO_ADAPTER, gpu_event: dict,
                     wrap=lambda fn: fn) -> SideBySide:  # fmt: skip
    """The tab's body, inside the caller's gr.Tabs; `waiting` is what an adapter's pane says before it can answer."""
    models = h.vqa
    with gr.Tab("Side by side"):
        with gr.Row():
            ask_btn = gr.Button("Ask", variant="primary", elem_id="ask")
            findings_btn = gr.Button("Findings", variant="primary", elem_id="findings")
            clear_btn = gr.Button("Clear conversation", elem_id="clear")
        summary = gr.HTML(elem_id="findings-summary")
        panes, stats, chips = [], [], []
        with gr.Row(elem_id="panes"):
            for model in h.panes:
                remote = model in models.remotes
                with gr.Column():
                    placeholder = waiting if model not in models.model_names else None
                    panes.append(gr.Chatbot(label=pane_label(model, remote=remote), elem_id=f"{pane_id(model)}-chat",
                                            placeholder=placeholder, **PANE))  # fmt: skip
                    stats.append(gr.Markdown(elem_id=f"{pane_id(model)}-stats"))
                    chips.append(gr.HTML(elem_id=f"{pane_id(model)}-findings"))
                    if remote:
                        gr.Markdown(provider_note(models, model), elem_id=f"{pane_id(model)}-provider")
        map_view = maps.view(page.film, page.chats, len(h.panes), gpu_event, wrap)
    return SideBySide(ask_btn, findings_btn, clear_btn, panes, stats, [*chips, summary], map_view)

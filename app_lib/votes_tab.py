"""The Blind A/B and Results tabs, and who may read the votes: everyone sees the ratings and win rates; the CSV of
every vote (each one's question, both answers, the film's hash, the time) is the operator's only, given the token set
in the environment, in the page or over the API:

    CXR_VQA_OPERATOR_TOKEN=$(python -c "import secrets; print(secrets.token_urlsafe(32))") python app.py ...
    gradio_client.Client(url).predict(token, api_name="/export_votes")      # -> the CSV's path; refused without it

Without a token set the export is off, and the page says so.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from functools import partial

import gradio as gr

from app_lib.blind import NO_BLIND, Blind
from app_lib.results import PLOTS, load_report, report_updates
from cxr_vqa.errors import UserError
from cxr_vqa.reports import COMPARISON_PNG, CONFIDENCE_PNG, FINDINGS_PNG

OPERATOR_TOKEN_ENV = "CXR_VQA_OPERATOR_TOKEN"
MIN_TOKEN_CHARS = 16  # a guessable token would open every vote to anyone who tries a few
EXPORT_OFF = (f"the votes export is off: the operator turns it on by starting the app with ${OPERATOR_TOKEN_ENV} set "
              "(a long random string)")  # fmt: skip
WRONG_TOKEN = "the votes export is for the operator: that is not the operator token"
PRIVATE = {"api_visibility": "private"}


def operator_token(environ=os.environ) -> str | None:
    """The operator's token from the environment (never a flag: it would show in `ps` and shell histories)."""
    token = environ.get(OPERATOR_TOKEN_ENV) or None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise UserError(f"${OPERATOR_TOKEN_ENV} is too short: use at least {MIN_TOKEN_CHARS} random characters, e.g. "
                        "python -c 'import secrets; print(secrets.token_urlsafe(32))'")  # fmt: skip
    return token


def what_a_vote_stores(retention_days: int | None) -> str:
    kept = (f"Votes older than **{retention_days} days** are deleted." if retention_days
            else "Votes are kept until the operator deletes them.")  # fmt: skip
    return (
        "**What a vote stores**: the time (UTC), your question, which two models answered and where they come "
        "from, both answers, your vote, and a SHA-256 hash of the film: never the film, your address or your "
        f"session. {kept} Everyone sees the ratings and win rates; only the operator can export the votes."
    )


@dataclass(frozen=True)
class Operator:
    """Who may export the votes: whoever gives `token` (None: nobody, the export is off)."""

    token: str | None = None

    def check(self, given: str | None) -> None:
        if self.token is None:
            raise gr.Error(EXPORT_OFF)
        # constant time: how much of a guess was right must not show in how long the refusal took
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise gr.Error(WRONG_TOKEN)

    def export(self, blind: Blind, given: str | None) -> str:
        """`/export_votes` and the Results tab's button: the CSV of every vote, for the operator only."""
        self.check(given)
        return blind.export()


def blind_tab(*, available: bool, retention_days: int | None):
    """The tab's body, inside the caller's gr.Tabs: (button, answer A, answer B, vote buttons, reveal line)."""
    with gr.Tab("Blind A/B"):
        gr.Markdown("Both models answer; you see the answers as **A** and **B** in random order, vote, then the sides "
                    "are revealed." + ("" if available else f"\n\n**Unavailable:** {NO_BLIND}."))  # fmt: skip
        gr.Markdown(what_a_vote_stores(retention_days), elem_id="vote-stores")
        button = gr.Button("Answer blind", variant="primary", interactive=available, elem_id="blind")
        with gr.Row():
            answer_a = gr.Textbox(label="A", interactive=False, lines=4, elem_id="answer-a")
            answer_b = gr.Textbox(label="B", interactive=False, lines=4, elem_id="answer-b")
        with gr.Row():
            votes = {
                "A": gr.Button("A is better", elem_id="vote-a"),
                "B": gr.Button("B is better", elem_id="vote-b"),
                "tie": gr.Button("Tie", elem_id="vote-tie"),
                "both_wrong": gr.Button("Both wrong", elem_id="vote-both-wrong"),
            }
        reveal = gr.Markdown(elem_id="reveal")
    return button, answer_a, answer_b, votes, reveal


def wire_blind(blind: Blind, button, answer_a, answer_b, votes: dict, reveal, *, film, question, trial, sliders,
               gpu_event: dict, wrap=lambda fn: fn) -> None:  # fmt: skip
    """Answer blind (a model call: the shared worker's queue and the visitor limits) and the four vote buttons."""
    outputs = [answer_a, answer_b, trial, reveal]
    button.click(wrap(blind.answer), [film, question, *sliders], outputs, **gpu_event, **PRIVATE)
    for choice, vote in votes.items():
        vote.click(partial(blind.vote, choice), [trial], [reveal, trial], concurrency_limit=4, **PRIVATE)


def results_tab(demo: gr.Blocks, blind: Blind, operator: Operator, retention_days: int | None, report_dir=None):
    """The Results tab, inside the caller's gr.Tabs: the ratings (on page load, on Refresh and whenever the tab is
    opened), the operator's export and the evaluation report in `report_dir`; returns (the report's views, a function
    giving their updates), which a demo still building reloads when its report comes."""
    with gr.Tab("Results", elem_id="results-tab") as tab:
        report_views, reload = _results(demo, tab, blind, operator, retention_days, report_dir)
    return report_views, reload


def _results(demo, tab: gr.Tab, blind: Blind, operator: Operator, retention_days: int | None, report_dir):
    """The tab's body: the public ratings, the operator's export, the evaluation report."""
    results = gr.Markdown(elem_id="results")
    refresh = gr.Button("Refresh", size="sm")
    with gr.Accordion("Export every vote (operator only)", open=False):
        on = operator.token is not None
        gr.Markdown(what_a_vote_stores(retention_days) + ("" if on else f"\n\n**Export off**: {EXPORT_OFF}."),
                    elem_id="export-note")  # fmt: skip
        with gr.Row():
            token = gr.Textbox(label="Operator token", type="password", interactive=on, elem_id="operator-token")
            export = gr.DownloadButton("Export all votes (CSV)", size="sm", interactive=on, elem_id="export")
    # votes cast since the page loaded show when the tab is opened again; cached: a look costs one query until a vote
    # changes them
    for event in (demo.load, tab.select, refresh.click):
        event(blind.results, None, [results], queue=False, **PRIVATE)
    export.click(partial(operator.export, blind), [token], [export], queue=False, **PRIVATE)
    # the API, also without a token set (then it says the export is off); never in the shared model queue
    gr.Button(visible=False).click(
        partial(operator.export, blind), [gr.Textbox(visible=False)], [gr.File(visible=False)],
        api_name="export_votes", concurrency_limit=1, concurrency_id="export_votes",
        api_description="(operator token) → the CSV of every vote; refused without the token set at start",
    )  # fmt: skip
    report = load_report(report_dir)
    note = gr.Markdown(report.note, elem_id="report-note")
    plots = {}  # first: a reader takes in the figures at a glance, then reads the tables' numbers
    with gr.Row():  # the two headline figures side by side, the wide reliability diagram under them
        for name in (COMPARISON_PNG, FINDINGS_PNG):
            plots[name] = _plot(report, name)
    plots[CONFIDENCE_PNG] = _plot(report, CONFIDENCE_PNG)
    text = gr.Markdown(report.markdown or "", visible=report.markdown is not None, elem_id="report-md")
    with gr.Accordion("metrics.json (every figure, raw)", open=False, visible=report.metrics is not None,
                      elem_id="report-json") as raw:  # fmt: skip
        metrics = gr.JSON(report.metrics, label="metrics.json", visible=report.metrics is not None)
    report_views = [note, text, *[plots[name] for name in PLOTS], raw, metrics]  # report_updates' order
    reload = partial(report_updates, report_dir)  # a report may be written while the app runs (the demo's)
    if report_dir is not None:
        for event in (demo.load, refresh.click):
            event(reload, None, report_views, queue=False, **PRIVATE)
    return report_views, reload


def _plot(report, name: str) -> gr.Image:
    """One figure of the report (hidden while it is missing); no "share" button. Its label is for screen readers: on
    the page it would cover the figure's own title."""
    return gr.Image(report.plots.get(name), label=f"{name}: {PLOTS[name]}", show_label=False, interactive=False,
                    buttons=["download", "fullscreen"], visible=name in report.plots,
                    elem_id=f"report-{name.removesuffix('.png')}")  # fmt: skip

"""The Findings view of the side-by-side tab: the Findings button asks every model for its findings, and under each
pane its report's observations show as chips (`app_lib.findings_html`), with the observations where the reports
disagree marked and named in one line; the `/findings` API gives the same as data.

    view = FindingsView(handlers)
    view.ask(film, question, chats, *sliders)   # Handlers.ask's frames + one chips HTML per pane + the summary line
    view.ask_findings(film, *sliders)            # the button: FINDINGS_QUESTION, in a fresh conversation
    view.findings("film.png")                    # /findings: {model: {"text": ..., "labels": {...}}}

Chips come for any findings question (`cxr_vqa.findings.is_findings_question`), typed or from the button, once the
models have finished: a report half written would flicker through readings. A findings question gets at least
FINDINGS_MIN_NEW_TOKENS new tokens whatever the slider says (160, evaluation's `--findings-max-new-tokens` default: a
findings section is 40 to 120 words, and a report cut mid-sentence loses the observations at its end, so the app
would not show what the evaluation scores); the slider still raises it. The button starts a new conversation: a
findings turn is trained and evaluated as the first turn with the film, nothing before it.
"""

from __future__ import annotations

from dataclasses import replace

import gradio as gr

from app_lib.findings_html import chips_html, disagreement_notes, read_report, summary_html
from app_lib.handlers import Handlers, chat_messages
from app_lib.tables import answer_text
from cxr_vqa.findings import FINDINGS_QUESTION, disagreements, is_findings_question, label_reports

FINDINGS_MIN_NEW_TOKENS = 160
WAITING = '<p class="fx-summary">Each report\'s findings show here as chips once the models have written them…</p>'
NO_ANSWER = "the model gave no answer (see its pane)"


def findings_tokens(max_new_tokens) -> int:
    """The length cap of a findings report: the slider's, and at least FINDINGS_MIN_NEW_TOKENS. A value that is no
    number is passed on as it is, for the settings check to name it."""
    try:
        return max(int(max_new_tokens), FINDINGS_MIN_NEW_TOKENS)
    except (TypeError, ValueError):
        return max_new_tokens


class FindingsView:
    """The chips' events over the side-by-side `Handlers` (the same models, settings and notes)."""

    def __init__(self, h: Handlers):
        self.h = h

    def clear(self) -> tuple[str, ...]:
        """No chips, no summary: a new film, a cleared conversation."""
        return ("",) * (len(self.h.panes) + 1)

    def ask(self, film, question: str, chats: dict | None, max_new_tokens, temperature, top_p):
        """`Handlers.ask`'s frames, each followed by one chips HTML per pane and the summary line: cleared with the
        first frame, filled after the last when the question asks for findings."""
        findings = is_findings_question(question)
        if findings:
            max_new_tokens = findings_tokens(max_new_tokens)
        before = {m: len(c or []) for m, c in (chats or {}).items()}
        last, keep = None, [gr.skip()] * (len(self.h.panes) + 1)
        for frame in self.h.ask(film, question, chats, max_new_tokens, temperature, top_p):
            yield *frame, *(keep if last is not None else [*self.clear()[:-1], WAITING if findings else ""])
            last = frame
        if findings and last is not None:
            chats = last[2 * len(self.h.panes)]  # frame: panes, stats, chats state, question box
            yield *[gr.skip()] * len(last), *self.read(chats, before)

    def ask_findings(self, film, max_new_tokens, temperature, top_p):
        """The Findings button: every model writes its findings for the film, in a new conversation. The question box
        keeps what the person was typing."""
        box = 2 * len(self.h.panes) + 1
        for frame in self.ask(film, FINDINGS_QUESTION, None, max_new_tokens, temperature, top_p):
            yield *frame[:box], *frame[box + 1 :]

    def read(self, chats: dict, before: dict[str, int]) -> list[str]:
        """One chips HTML per pane and the summary, from the reports the models have just written (a model that gave
        no answer kept its conversation as it was: it has no new turn, and no report)."""
        texts = {m: chat_messages(c)[-1]["content"] for m, c in chats.items() if len(c) > before.get(m, 0)}
        reports = {m: read_report(text) for m, text in texts.items()}
        labels = {m: r.labels for m, r in reports.items()}
        disagree = disagreements(labels)
        notes = disagreement_notes(labels, disagree)
        chips = []
        for model in self.h.panes:
            if model in reports:
                chips.append(chips_html(reports[model], disagree, notes, name=f"the {model} report"))
            else:  # a model that failed says so; a pane without a model (no adapter, a demo in training) stays empty
                chips.append(chips_html(None, why=NO_ANSWER) if model in chats else "")
        return [*chips, summary_html(disagree, len(reports))]

    def findings(self, path: str | None) -> dict[str, dict]:
        """`/findings`: {model: {"text": its findings, "labels": {observation: 1 | 0 | -1}}} for every model, remote
        ones included, as the Findings button asks them (FINDINGS_QUESTION, at least FINDINGS_MIN_NEW_TOKENS new
        tokens). A model that did not answer gives {"text": "error: <why>", "labels": None}: None, not {}, which is the
        labels of a report naming only abnormalities outside the 14 ("Emphysema.")."""
        h = self.h
        settings = replace(h.settings, max_new_tokens=findings_tokens(h.settings.max_new_tokens))
        answers = h._answers(path, FINDINGS_QUESTION, h.vqa.model_names, settings)
        reports = label_reports({m: a.text for m, a in answers.items() if not a.error})
        return {m: reports.get(m) or {"text": answer_text(a), "labels": None} for m, a in answers.items()}

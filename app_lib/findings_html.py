"""What a findings report asserts, as chips: one per observation the project's labeler (`cxr_vqa.labeler`) read in it,
present / uncertain / absent, each saying why when hovered (the phrase that matched, the trigger that applied, the
sentence), and the observations where the models' reports disagree marked. Pure functions from text to HTML: the
side-by-side panes and the Explore tab both show these.

    report = read_report("The heart is enlarged. No pleural effusion.")   # Report(text, labels, decisions)
    chips_html(report, disagree=["Cardiomegaly"], notes={"Cardiomegaly": "base: present · tuned: absent"})
    summary_html(["Cardiomegaly", "No Finding"], reports=2)   # "≠ Models disagree on: Cardiomegaly, No Finding" + key
    compact(report.labels)                                     # "+ Cardiomegaly" (what a table cell shows)

A report is model output: every piece of text that reaches the HTML (the report's words in a tooltip, a model's name)
is escaped here, so no report can add markup to the page. Colour is never the only signal: each chip says its reading
in words and with a sign (+ ? −), a disagreement with ≠ and in words for screen readers; a chip reached with the
keyboard (Tab) shows its tooltip's words beneath it, as hovering shows them.
"""

from __future__ import annotations

import html
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from cxr_vqa.findings import ABSENT, NOT_MENTIONED, PRESENT, UNCERTAIN, reading
from cxr_vqa.labeler import NO_FINDING, OBSERVATIONS, Decision, explain_report, labels_of

SIGN = {PRESENT: "+", UNCERTAIN: "?", ABSENT: "−", NOT_MENTIONED: "∅"}
ORDER = (PRESENT, UNCERTAIN, ABSENT, NOT_MENTIONED)  # what a report claims first, then what it rules out
SHOWN_DECISIONS = 3  # mentions quoted in one tooltip; more are counted
QUOTED_CHARS = 160  # of a sentence in a tooltip
PLAIN_RULES = ("mention", "negation", "uncertainty")  # rules the trigger explains by itself
KEY = (
    "+ present · ? uncertain · − absent · ∅ not mentioned · ≠ the reports disagree (as F1-CheXbert compares them: "
    "present, uncertain, or not claimed). Hover a chip (or reach it with Tab) for the words that decided it. Read by "
    "the project's rule-based labeler: a research aid, not a diagnosis."
)
CSS = """
.fx-chips {display: flex; flex-wrap: wrap; gap: 6px; margin: 6px 0 2px; padding: 0; list-style: none}
.fx-chip {display: inline-flex; align-items: center; gap: 5px; padding: 2px 10px 2px 7px; border-radius: 999px;
  border: 1px solid; font-size: 13px; line-height: 20px; cursor: help; white-space: nowrap; position: relative}
.fx-chip .fx-sign {font-weight: 700; width: 1em; text-align: center}
.fx-chip .fx-reading {font-size: 11px; text-transform: uppercase; letter-spacing: .04em; opacity: .85}
.fx-present {background: #fee2e2; border-color: #f87171; color: #7f1d1d}
.fx-normal {background: #dcfce7; border-color: #4ade80; color: #14532d}
.fx-uncertain {background: #fef3c7; border-color: #f59e0b; color: #78350f}
.fx-absent {background: #f1f5f9; border-color: #cbd5e1; color: #334155}
.fx-not-mentioned {background: #ffffff; border: 1px dashed #94a3b8; color: #475569}
.fx-chip.fx-disagree {outline: 2px solid #6d28d9; outline-offset: 1px}
.fx-chip:focus-visible {box-shadow: 0 0 0 4px #93c5fd}
.fx-chip:focus-visible::after {content: attr(title); position: absolute; top: calc(100% + 6px); left: 0; z-index: 20;
  width: max-content; max-width: 380px; white-space: pre-wrap; background: #1e293b; color: #f8fafc; padding: 6px 9px;
  border-radius: 6px; font-size: 12px; line-height: 17px; text-transform: none; letter-spacing: normal}
.fx-flag {background: #6d28d9; color: #ffffff; border-radius: 999px; padding: 0 6px; font-weight: 700}
.fx-none {font-size: 13px; color: #64748b; margin: 6px 0}
.fx-summary {margin: 4px 0; font-size: 14px}
.fx-summary .fx-flag {margin-right: 4px}
.fx-key {font-size: 12px; color: #64748b; margin: 2px 0 6px}
.fx-report {margin: 10px 0}
.fx-report h4 {margin: 0 0 2px; font-size: 14px}
.fx-report p.fx-text {margin: 0; font-size: 13px; white-space: pre-wrap}
.fx-sr {position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap}
"""


@dataclass(frozen=True)
class Report:
    """A report's text, its labels ({observation: 1 | 0 | -1}) and the labeler's decisions behind them."""

    text: str
    labels: dict[str, int]
    decisions: tuple[Decision, ...]


def read_report(text: str) -> Report:
    decisions = explain_report(text or "")
    return Report(text or "", labels_of(decisions), tuple(decisions))


def esc(text: str) -> str:
    return html.escape(text, quote=True)


def _quote(sentence: str) -> str:
    sentence = " ".join(sentence.split())
    return sentence if len(sentence) <= QUOTED_CHARS else sentence[: QUOTED_CHARS - 1] + "…"


def because(d: Decision) -> str:
    """One decision in words: the phrase, the trigger that made it negative or uncertain, the sentence."""
    if not d.phrase:  # "No Finding": decided from the other labels, not from a phrase
        return d.rule
    how = {0: "negated by", -1: "made uncertain by"}.get(d.value) if d.trigger else None
    trigger = f", {how} “{d.trigger}”" if how else ""
    rule = "" if d.rule in PLAIN_RULES else f" ({d.rule}{f': “{d.trigger}”' if d.trigger and not how else ''})"
    return f"matched “{d.phrase}”{trigger}{rule} in “{_quote(d.sentence)}”"


def evidence(report: Report, observation: str) -> str:
    """A chip's tooltip: its reading, then the decisions that gave it (the strongest reading of the report's
    mentions wins, so those are the ones quoted)."""
    value = report.labels.get(observation)
    lines = [f"{observation}: {reading(value)}"]
    deciding = [d for d in report.decisions if d.observation == observation and d.value == value]
    lines += [because(d) for d in deciding[:SHOWN_DECISIONS]]
    if len(deciding) > SHOWN_DECISIONS:
        lines.append(f"… and {len(deciding) - SHOWN_DECISIONS} more mentions")
    return "\n".join(lines)


def unclaimed(report: Report, observation: str, name: str) -> str:
    """The tooltip of an observation a report does not mention; "No Finding" is not claimed once the report asserts
    any abnormality (one outside the 14 too: emphysema, scoliosis ...)."""
    if observation == NO_FINDING:
        claim = next((d for d in report.decisions if d.observation != NO_FINDING and d.value in (1, -1)), None)
        if claim is not None:
            return f"{NO_FINDING}: not claimed: {name} asserts an abnormality ({because(claim)})"
    return f"{observation}: not mentioned in {name}"


def chip(observation: str, found: str, title: str, disagree: bool = False) -> str:
    """One chip: sign, name and reading in words (never colour alone), the tooltip, the disagreement mark."""
    kind = "normal" if observation == NO_FINDING and found == PRESENT else found.replace(" ", "-")
    classes = f"fx-chip fx-{kind}" + (" fx-disagree" if disagree else "")
    flag = '<span class="fx-flag" aria-hidden="true">≠</span>' if disagree else ""
    said = '<span class="fx-sr">, the reports disagree</span>' if disagree else ""
    return (f'<li class="{classes}" title="{esc(title)}" tabindex="0" data-observation="{esc(observation)}" '
            f'data-reading="{esc(found)}">{flag}<span class="fx-sign" aria-hidden="true">{SIGN[found]}</span>'
            f'<span class="fx-name">{esc(observation)}</span><span class="fx-reading">{esc(found)}</span>{said}'
            "</li>")  # fmt: skip


def chips_html(report: Report | None, disagree: Collection[str] = (), notes: Mapping[str, str] | None = None,
               name: str = "this report", why: str = "") -> str:  # fmt: skip
    """The chips of one report: every observation its labels hold, grouped present, uncertain, absent (each group
    in OBSERVATIONS order), then a "not mentioned" chip for each disagreement it does not mention, so the mark shows
    in every pane. `notes`: {observation: how each model reads it}, added to a disagreement's tooltip. None: no report
    (`why` says why)."""
    if report is None:
        return f'<p class="fx-none">No report to read{": " + esc(why) if why else ""}.</p>'
    notes = notes or {}
    found = {o: reading(report.labels.get(o)) for o in OBSERVATIONS if o in report.labels or o in disagree}
    items = []
    for group in ORDER:
        for observation in (o for o in OBSERVATIONS if found.get(o) == group):
            title = evidence(report, observation)
            if group == NOT_MENTIONED:
                title = unclaimed(report, observation, name)
            if observation in disagree:
                title += "\n≠ the reports disagree" + (f": {notes[observation]}" if observation in notes else "")
            items.append(chip(observation, group, title, observation in disagree))
    if not items:
        return '<p class="fx-none">The labeler found none of the 14 observations in this report.</p>'
    return f'<ul class="fx-chips" aria-label="Findings of {esc(name)}">{"".join(items)}</ul>'


def disagreement_notes(labels: Mapping[str, Mapping[str, int]], observations: Collection[str]) -> dict[str, str]:
    """{observation: "base: present · tuned: absent"} for each observation given: how each model's report reads it."""
    return {o: " · ".join(f"{m}: {reading(found.get(o))}" for m, found in labels.items()) for o in observations}


def summary_html(disagree: list[str], reports: int) -> str:
    """The line over the panes: where the reports disagree (or that they agree), and the chips' key."""
    if reports == 0:
        return '<p class="fx-summary">No model wrote a report.</p>'
    if reports == 1:
        line = "One report: nothing to compare it with."
    elif disagree:
        line = ('<span class="fx-flag" aria-hidden="true">≠</span><strong>Models disagree on:</strong> '
                + esc(", ".join(disagree)))  # fmt: skip
    else:
        line = "The reports agree on all 14 observations."
    return f'<p class="fx-summary">{line}</p><p class="fx-key">{esc(KEY)}</p>'


def compact(labels: Mapping[str, int] | None) -> str:
    """What a table cell shows of a report's labels: the observations it claims, "+" present and "?" uncertain."""
    if labels is None:
        return "no report"
    present = [o for o in OBSERVATIONS if labels.get(o) == 1]
    uncertain = [o for o in OBSERVATIONS if labels.get(o) == -1]
    parts = ([f"+ {', '.join(present)}"] if present else []) + ([f"? {', '.join(uncertain)}"] if uncertain else [])
    return " · ".join(parts) or "nothing claimed"

"""Findings as a task: the questions that ask a model to write a film's findings, and what its report asserts,
model by model, as the field scores it (the 14 CheXpert observations of `cxr_vqa.labeler`). Pure functions: the
dataset's generators, the evaluation and the app's Findings view share them.

    FINDINGS_QUESTION                              # "Describe the findings.": the app's Findings button asks this
    is_findings_question("describe the findings")  # True: any of FINDINGS_QUESTIONS, case and punctuation aside
    reports = label_reports({"base": "No acute abnormality.", "tuned": "The heart is enlarged."})
    # {"base": {"text": ..., "labels": {"No Finding": 1}}, "tuned": {"text": ..., "labels": {"Cardiomegaly": 1}}}
    disagreements({m: r["labels"] for m, r in reports.items()})  # ["Cardiomegaly", "No Finding"]
    reading(1), reading(0), reading(-1), reading(None)  # "present", "absent", "uncertain", "not mentioned"

A dataset's QA pair of kind FINDINGS_KIND ("findings") asks one of FINDINGS_QUESTIONS and is answered with the
study's cleaned findings section (its impression where it has none). It is the first turn of a study's conversation,
with the film: trained exactly as the evaluation and the app ask it (the film and this question, nothing before).

Disagreement is read the way F1-CheXbert scores: an observation counts as claimed when a report says it is present
(1) or uncertain (-1); negated (0) and not mentioned are both "not claimed" (a report need not list every negative).
Models disagree on an observation when their readings among present / uncertain / not claimed differ.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from cxr_vqa.labeler import OBSERVATIONS, label_report

FINDINGS_KIND = "findings"
FINDINGS_QUESTION = "Describe the findings."
# Phrasings apart from the open question templates ("What are the findings on this chest X-ray?" asks for the list of
# abnormalities, answered in a few words): a findings question asks for the findings section, in sentences. None
# names the report ("report", "the findings section"): dataprep filters text that cites the report.
FINDINGS_QUESTIONS = (
    FINDINGS_QUESTION,
    "Describe the findings of this chest X-ray.",
    "Write the findings for this film.",
    "Give the findings of this radiograph.",
)
PRESENT, ABSENT, UNCERTAIN, NOT_MENTIONED = "present", "absent", "uncertain", "not mentioned"
_READINGS = {1: PRESENT, 0: ABSENT, -1: UNCERTAIN}


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


_KNOWN = {_normalise(q) for q in FINDINGS_QUESTIONS}


def is_findings_question(text: str | None) -> bool:
    """Whether `text` is one of FINDINGS_QUESTIONS (case, spacing and punctuation aside)."""
    return _normalise(text or "") in _KNOWN


def reading(value: int | None) -> str:
    """What a label value says about its observation: present, absent, uncertain or not mentioned."""
    return _READINGS.get(value, NOT_MENTIONED)


def label_reports(
    texts: Mapping[str, str], labeler: Callable[[str], dict[str, int]] = label_report
) -> dict[str, dict]:
    """{model: {"text": its report, "labels": {observation: 1 | 0 | -1}}} (an observation not mentioned is absent),
    in the order given."""
    return {name: {"text": text, "labels": labeler(text or "")} for name, text in texts.items()}


def claimed(value: int | None) -> str:
    """The reading two reports are compared on: present and uncertain kept apart, negated and unmentioned merged."""
    return {1: PRESENT, -1: UNCERTAIN}.get(value, "not claimed")


def disagreements(labels: Mapping[str, Mapping[str, int]]) -> list[str]:
    """The observations, in OBSERVATIONS order, on which the models' reports disagree (see the module's docstring);
    [] for fewer than two models."""
    if len(labels) < 2:
        return []
    return [o for o in OBSERVATIONS if len({claimed(found.get(o)) for found in labels.values()}) > 1]

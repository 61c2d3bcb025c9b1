"""What both QA generators (`labels`, `llm`) promise, and the checks every generated pair must pass.

A generator maps studies to QA pairs `{question, answer, kind, finding, label}` or to a reject reason:

    results = generator.generate(studies)          # {study_id: QAResult}
    generator.stats                                # counts for stats.json (filtered pairs, tokens, cost ...)

A closed pair's label is `cxr_vqa.answers.parse_yes_no` of its answer, the evaluation's own strict reading: an
answer it cannot read ("Yes-ish", "Yes/No") is no closed pair, so the labels and the scorer agree by construction.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cxr_vqa.answers import parse_yes_no
from cxr_vqa.template import CONTROL_TEXTS
from dataprep.clean import cites_text, mentions_prior
from dataprep.releases.study import LABELS, Study

KINDS = ("closed", "open")
LABEL_BY_LOWER = {label.lower(): label for label in LABELS}


@dataclass
class QAResult:
    pairs: list[dict] | None  # None: the study is rejected
    reason: str = ""
    detail: str = ""


class QAGenerator(Protocol):
    source: str  # the dataset's `source` column: "labels" or "llm:<model>"
    stats: dict

    def generate(self, studies: Sequence[Study]) -> dict[str, QAResult]: ...


def make_pair(question: str, answer: str, kind: str, finding: str | None = None) -> dict:
    label = parse_yes_no(answer) if kind == "closed" else None
    return {"question": question, "answer": answer, "kind": kind, "finding": finding, "label": label}


def check_pair(pair: object) -> str | None:
    """The reason a pair is unusable, or None when it is fine."""
    if not isinstance(pair, dict):
        return "schema"
    question, answer, kind = pair.get("question"), pair.get("answer"), pair.get("kind")
    if not (isinstance(question, str) and question.strip() and isinstance(answer, str) and answer.strip()):
        return "schema"
    if kind not in KINDS or not isinstance(pair.get("finding"), (str, type(None))):
        return "schema"
    if any(token in text for token in CONTROL_TEXTS for text in (question, answer)):
        return "control_token"  # first: "No.</s>USER: ..." would otherwise pass as a mere unreadable answer
    if kind == "closed" and parse_yes_no(answer) is None:
        return "closed_not_yes_no"
    if cites_text(question) or cites_text(answer):
        return "cites_text"
    if mentions_prior(question) or mentions_prior(answer):
        return "needs_prior"
    return None


def normalise_finding(finding: str | None) -> str | None:
    """The CheXbert label a free-text finding names ("pleural effusion" -> "Pleural Effusion"), else None."""
    return LABEL_BY_LOWER.get(finding.strip().lower()) if finding else None


def _normalise(question: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", question.lower()).split())


def filter_pairs(pairs: Sequence[object], limit: int, filtered: Counter) -> list[dict]:
    """Valid, distinct pairs (at most `limit`), normalised by `make_pair`; `filtered` counts what was dropped."""
    kept: list[dict] = []
    seen: set[str] = set()
    for pair in pairs:
        reason = check_pair(pair)
        if reason is None and _normalise(pair["question"]) in seen:
            reason = "duplicate"
        if reason is None and len(kept) >= limit:
            reason = "over_limit"
        if reason is not None:
            filtered[reason] += 1
            continue
        seen.add(_normalise(pair["question"]))
        finding = normalise_finding(pair.get("finding"))
        kept.append(make_pair(pair["question"].strip(), pair["answer"].strip(), pair["kind"], finding))
    return kept

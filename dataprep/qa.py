"""What both QA generators (`labels`, `llm`) promise, and the checks every generated pair must pass.

A generator maps studies to QA pairs `{question, answer, kind, finding, label}` or to a reject reason:

    results = generator.generate(studies)          # {study_id: QAResult}
    generator.stats                                # counts for stats.json (filtered pairs, tokens, cost ...)

A closed pair's label is `cxr_vqa.answers.parse_yes_no` of its answer, the evaluation's own strict reading: an
answer it cannot read ("Yes-ish", "Yes/No") is no closed pair, so the labels and the scorer agree by construction.

Both generators also open each conversation with a findings turn (`add_findings`, kind "findings", see
`cxr_vqa.findings`): one of FINDINGS_QUESTIONS, chosen per study from the seed, answered with the study's cleaned
findings section, its impression where it has none; the LLM is never asked for it. First, so that it is trained as it
is asked (the film and this question alone). The price: the turns after it can read their answers off the reference
findings in training, which the evaluation (each question alone with its film) never gives them; `--findings-share`
keeps the turn in a share of the studies only, so that every question is also trained with the film alone
(docs/findings.md: what each placement and share measured on the demo).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cxr_vqa.answers import parse_yes_no
from cxr_vqa.findings import FINDINGS_KIND, FINDINGS_QUESTIONS, is_findings_question
from cxr_vqa.template import CONTROL_TEXTS
from dataprep.clean import cites_text, mentions_prior
from dataprep.releases.study import LABELS, Study

KINDS = ("closed", "open")  # what a generator's own pairs may be; the findings turn is added by `add_findings`
# a findings section past this many words is left out rather than cut (its labels would change) or kept (it would
# crowd a conversation's answer tokens; MIMIC-CXR's run 50-60 words on average)
FINDINGS_MAX_WORDS = 150
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


def findings_pair(study: Study, seed: int = 0) -> tuple[dict | None, str | None]:
    """(the study's findings turn, None), or (None, why it has none): no text, too long, or text no answer may hold."""
    answer = (study.findings or study.impression).strip()
    if not answer:
        return None, "no_text"
    if len(answer.split()) > FINDINGS_MAX_WORDS:
        return None, "too_long"
    if any(token in answer for token in CONTROL_TEXTS) or cites_text(answer) or mentions_prior(answer):
        return None, "unusable_text"
    question = random.Random(f"{seed}:{study.study_id}:findings").choice(FINDINGS_QUESTIONS)
    return make_pair(question, answer, FINDINGS_KIND), None


def add_findings(pairs: Sequence[dict], study: Study, seed: int, counts: Counter, share: float = 1.0) -> list[dict]:
    """`pairs` behind the study's findings turn (none when `findings_pair` gives none, or for the studies outside
    `share`, drawn per study from the seed); a generated pair that asks a findings question itself is dropped.
    `counts` gets "findings" or "findings_<reason>" ("findings_share": left out by `share`)."""
    kept = [p for p in pairs if not is_findings_question(p["question"])]
    if share < 1 and random.Random(f"{seed}:{study.study_id}:findings-share").random() >= share:
        counts["findings_share"] += 1
        return kept
    pair, reason = findings_pair(study, seed)
    counts["findings" if pair else f"findings_{reason}"] += 1
    return [pair, *kept] if pair else kept


def findings_stats(counts: Counter) -> dict:
    """For a generator's stats: the findings turns written, and the studies left without one, by reason."""
    left_out = {k.removeprefix("findings_"): v for k, v in counts.items() if k.startswith("findings_")}
    return {"findings": counts["findings"], "findings_left_out": left_out}

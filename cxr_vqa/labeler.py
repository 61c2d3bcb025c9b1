"""The project's report labeler: a report's text -> the 14 CheXpert observations it asserts, each decision explained.

    from cxr_vqa.labeler import OBSERVATIONS, FIVE, label_report, explain_report
    label_report("Mild cardiomegaly. No pleural effusion.")   # {"Cardiomegaly": 1, "Pleural Effusion": 0}
    for d in explain_report("Opacity at the left base may represent atelectasis."):
        print(d.observation, d.value, d.phrase, d.trigger, d.rule)   # Atelectasis -1 atelectasis may uncertainty
    python -m evaluation.label IN.jsonl OUT.jsonl [--explain]        # the same over a JSON Lines file

Values: 1 positive, 0 negative, -1 uncertain; an observation the text does not mention is absent. Where sentences
disagree, positive beats uncertain beats negative (CheXpert's aggregation). "No Finding" is 1 when no pathology
(Support Devices does not count) and none of the other abnormalities CheXpert lists (emphysema, scoliosis,
degenerative change ...) is positive or uncertain; otherwise it is absent. An empty text is "No Finding" too.

How: the text's readable sections (`cxr_vqa.labeler_text`: not INDICATION, HISTORY, COMPARISON ...) are split
into sentences; in each, one scan finds the mentions of the lexicon (`cxr_vqa.labeler_lexicon`) and the triggers
(`cxr_vqa.labeler_rules`), and `cxr_vqa.labeler_scope` decides which trigger reaches which mention. Pure Python,
no weights, no download; some thousands of reports a second on one core (`python bench/labeler.py`).

Conventions and lists follow the CheXpert labeler (Irvin et al., AAAI 2019;
github.com/stanfordmlgroup/chexpert-labeler, MIT licence) and NegBio (Peng et al. 2018; github.com/ncbi-nlp/NegBio,
public domain), re-implemented as surface patterns; docs/labeler.md lists them and where this labeler departs.
Its figures are not on CheXbert's scale: compare models with one labeler, never a number from this one with a
paper's CheXbert number.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cxr_vqa.labeler_lexicon import CARDIO, DEVICES, EDEMA, LESION, OTHER
from cxr_vqa.labeler_rules import scan
from cxr_vqa.labeler_scope import NEGATIVE, POSITIVE, UNCERTAIN, Found, classify
from cxr_vqa.labeler_text import sentence_spans

OBSERVATIONS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)
FIVE: tuple[str, ...] = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
NO_FINDING = "No Finding"
OTHER_FINDING = OTHER  # decisions about abnormalities outside the 14, which only rule out "No Finding"
__all__ = [
    "OBSERVATIONS",
    "FIVE",
    "NO_FINDING",
    "OTHER_FINDING",
    "POSITIVE",
    "NEGATIVE",
    "UNCERTAIN",
    "Decision",
    "label_report",
    "explain_report",
    "labels_of",
]
_RANK = {POSITIVE: 2, UNCERTAIN: 1, NEGATIVE: 0}
_PATHOLOGY = frozenset(OBSERVATIONS) - {NO_FINDING, DEVICES} | {OTHER}
_HEART_FAILURE = ("chf", "heart failure")
_LONGEST = 600  # characters of a sentence a decision quotes
_BENIGN = re.compile(r"nipple|bone island")
_NODULE = re.compile(r"\w*nodul")


@dataclass(frozen=True)
class Decision:
    """One decision: `observation` (one of OBSERVATIONS, or OTHER_FINDING) is `value` because of `phrase` (the
    mention as written, with its description for "heart size is enlarged") and `trigger` (the words that made it
    negative or uncertain; "" when none did), under `rule`. `sentence` is the sentence as written (the words around
    the phrase, between "…", when it runs past 600 characters); `start`, `end` locate `phrase` in the report's text."""

    observation: str
    value: int
    phrase: str
    trigger: str
    rule: str
    sentence: str
    start: int
    end: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def label_report(text: str) -> dict[str, int]:
    """For each observation the text mentions: 1, 0 or -1, in OBSERVATIONS order (see the module's docstring)."""
    best: dict[str, int] = {}
    for _, _, low, found in _found(text):
        for observation, value, _ in _values(low, found):
            old = best.get(observation)
            if old is None or _RANK[value] > _RANK[old]:
                best[observation] = value
    return _finish(best)


def explain_report(text: str) -> list[Decision]:
    """Every decision behind `label_report(text)`, in reading order, then "No Finding"'s when it is 1."""
    decisions = []
    for start, end, low, found in _found(text):
        a, b = found.phrase
        if end - start <= _LONGEST:
            sentence = " ".join(text[start:end].split())
        else:  # a run-on text: the words around the phrase, not all of it in every decision
            around = (max(start, start + a - _LONGEST // 2), min(end, start + b + _LONGEST // 2))
            sentence = "… " + " ".join(text[around[0] : around[1]].split()) + " …"
        for observation, value, rule in _values(low, found):
            trigger = text[start + found.trigger[0] : start + found.trigger[1]] if found.trigger else ""
            decisions.append(
                Decision(
                    observation,
                    value,
                    " ".join(text[start + a : start + b].split()),
                    " ".join(trigger.split()),
                    rule,
                    sentence,
                    start + a,
                    start + b,
                )
            )
    if labels_of(decisions).get(NO_FINDING) == POSITIVE:
        rule = "no pathology is positive or uncertain"
        decisions.append(Decision(NO_FINDING, POSITIVE, "", "", rule, "", 0, 0))
    return decisions


def labels_of(decisions: Iterable[Decision]) -> dict[str, int]:
    """The labels a list of decisions adds up to: positive beats uncertain beats negative, then "No Finding"."""
    best: dict[str, int] = {}
    for d in decisions:
        if d.observation == NO_FINDING:
            continue
        old = best.get(d.observation)
        if old is None or _RANK[d.value] > _RANK[old]:
            best[d.observation] = d.value
    return _finish(best)


def _finish(best: dict[str, int]) -> dict[str, int]:
    labels = {o: best[o] for o in OBSERVATIONS if o in best}
    if not any(best.get(o) in (POSITIVE, UNCERTAIN) for o in _PATHOLOGY):
        labels[NO_FINDING] = POSITIVE
    return labels


def _found(text: str) -> Iterator[tuple[int, int, str, Found]]:
    """(sentence start, end, lower-cased sentence, Found) for every mention of every sentence read."""
    for start, end in sentence_spans(text or ""):
        sentence = text[start:end]
        low = sentence.lower()
        if len(low) != len(sentence):  # a few characters lower-case to two ("İ"): keep offsets aligned
            low = "".join(c.lower() if len(c.lower()) == 1 else c for c in sentence)
        mentions, triggers = scan(low)
        if mentions:
            for found in classify(low, mentions, triggers):
                yield start, end, low, found


def _values(low: str, found: Found) -> Iterator[tuple[str, int, str]]:
    """(observation, value, rule) of one mention."""
    for observation in found.observations:
        near = (max(0, found.phrase[0] - _LONGEST), found.phrase[1] + _LONGEST)
        if observation == LESION and _NODULE.match(low, found.phrase[0]) and _BENIGN.search(low, *near):
            # a nodule the sentence explains as a nipple or a bone island is no lung lesion
            yield OTHER, found.value, "nodule explained as a nipple or a bone island"
        else:
            yield observation, found.value, found.rule
    # CheXpert's one cross-observation rule: heart failure, asserted or suspected, makes cardiomegaly uncertain
    if EDEMA in found.observations and found.value != NEGATIVE and low[slice(*found.phrase)] in _HEART_FAILURE:
        yield CARDIO, UNCERTAIN, "CheXpert: heart failure makes cardiomegaly uncertain"

"""How far a trigger reaches, and so what each mention in a sentence is: positive, negative or uncertain.

    mentions, triggers = scan(low)                      # cxr_vqa.labeler_rules
    for found in classify(low, mentions, triggers):     # Found(observations, value, phrase, trigger, rule)
        ...

A trigger reaches the mentions of its own clause (terminators and ; end one) up to its word limit, and no further
than where the sentence turns into another statement:
- past a comma or an "and" only inside a list ("no effusion, consolidation, or pneumothorax"), not into a new
  finding ("no pneumothorax, small left effusion"; "no effusion and mild atelectasis");
- a negation before the mention stops at a verb ("no pneumothorax is seen after removal of the chest tube");
- a trigger after the mention reaches back over a coordinated subject only ("effusion and pneumothorax are not
  seen"), never over a verb, "with" or another finding that is not coordinated with it;
- two mentions joined by "or", "versus", "and/or" or "/" are both uncertain ("atelectasis versus pneumonia").
Checked in CheXpert's order: pre-negation uncertainty, then negation, then uncertainty. An ATTRIBUTE mention (heart
size, mediastinal contours) takes its value from the description beside it (enlarged, normal, stable, borderline).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import NamedTuple

from cxr_vqa.labeler_lexicon import ATTRIBUTE, DEVICES, HEDGED, IGNORE
from cxr_vqa.labeler_rules import NEGATION, PRENEG, TERMINATOR, UNCERTAINTY, Hit

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
VALUE = {PRENEG: UNCERTAIN, NEGATION: NEGATIVE, UNCERTAINTY: UNCERTAIN}

_WORDS = re.compile(r"\w+")
# Finite verbs: a negation before a mention stops at one ("no pneumothorax is seen after removal of the tube");
# participles do not ("no visualized pneumothorax").
_VERB = re.compile(
    r"\b(?:is|are|was|were|has|have|had|remains?|persists?|appears?|shows?|reveals?|measures|projects|terminates|"
    r"overlies|extends|lies)\b"
)
_BACK_BREAK = re.compile(_VERB.pattern + r"|\b(?:with|without|there)\b")  # "effusion seen on the prior has resolved"
_SEPARATOR = re.compile(r",|\band\b")
_OR = re.compile(r"\b(?:or|nor)\b|/")
# After a comma or "and", words that open a new statement rather than continue a list of negated findings.
_OPENER = re.compile(
    r"\s*(?:there|the|this|these|those|it|its|a|an|is|are|was|were|with|small|moderate|large|mild|severe|trace|tiny|"
    r"minimal|new|increas\w*|persist\w*|stable|unchanged|residual|improv\w*|worsen\w*|slight\w*|extensive|patchy|"
    r"mildly|moderately|severely|markedly|interval|decreas\w*|enlarg\w*|low|lungs?|heart|bibasilar|bilateral|left|"
    r"right|\d)\b"
)
_COPULA_TAIL = re.compile(
    r"(?:\s+(?:is|are|was|were|has|have|had|been|be|being|appears?|appeared|seems?|remains?|remained|now|otherwise|"
    r"again|completely|entirely|essentially|totally|fully|since|also|both|all|still|largely|currently|to be|"
    r"interval|subsequently|already))*\s*\Z"
)
_CHAIN = re.compile(  # the rest of the first noun phrase, a comma or a coordinator, the start of the next; or
    # nothing but spaces: one mention modifies the next ("pneumonic consolidation"), unless a line ends between them
    r"[ \t]*|\s*(?:[\w'-]+\s+){0,2}?(?:,|/|(?:,\s*)?\b(?:and|or|nor|and/or|versus|vs|to suggest|suggesting|"
    r"suggestive of|to indicate|of|for|or other|such as|including|as)\b\.?)\s*(?:[\w'-]+\s+){0,4}"
)
_OR_PAIR = re.compile(r"\s*,?\s*(?:either\s+)?(?P<or>or|and/or|versus|vs\.?|/)\s*(?:[\w'-]+\s+){0,3}")
# The description an ATTRIBUTE mention takes its value from; the first alternatives win where two could match.
_CUE = re.compile(
    r"\b(?:(?P<range>(?:top|high|upper)[- ]normal(?: in size)? (?:to|or) (?:\w+ ){0,2}?(?:enlarged|large|prominent)"
    r"|normal (?:to|or) (?:\w+ ){0,2}?(?:enlarged|large|prominent)|(?:enlarged|prominent) or (?:\w+ )?normal)"
    r"|(?P<normal>(?:at |within )?(?:the )?upper limits? of normal|(?:top|high|upper|borderline)[- ]normal|normal|"
    r"unremarkable|within (?:normal )?limits|wnl|not (?:\w+ )?(?:enlarged|widened|prominent|large)|"
    r"no (?:\w+ )?(?:enlargement|widening|cardiomegaly))"
    r"|(?P<stable>stabl\w*|unchanged|similar|no (?:\w+ )?(?:change|increase)|not (?:\w+ )?changed|constant)"
    r"|(?P<borderline>borderline)|(?P<hedge>accentuat\w*|exaggerat\w*|magnif\w*|difficult to (?:assess|evaluate)|"
    r"(?:cannot|can not|could not) be (?:\w+ )?(?:assessed|evaluated)|not (?:well )?(?:assessed|evaluated)|"
    r"limited|limits? (?:the )?(?:assessment|evaluation)|poorly (?:assessed|evaluated|seen)|abnormal)"
    r"|(?P<abnormal>enlarg\w*|large|larger|prominen\w*|increas\w*|widen\w*|globular|big))\b"
)
_WINDOW = 400  # characters around a mention where its triggers and its description may be
_CHARS_A_WORD = 30  # a trigger that reaches N words reaches no further than 30 N characters
_CUE_STOP = re.compile(r"\b(?:with|without)\b")
_TECHNIQUE = re.compile(  # an enlargement the film's technique may explain
    r"\b(?:accentuat|exaggerat|magnif|overestimat)\w*|\b(?:due|secondary|related) to (?:the |an? )?(?:ap|portable|"
    r"supine|low (?:lung )?volumes?|technique|projection|rotation|patient rotation|positioning)\b"
)
_DESCRIBED = (  # a description without "enlarged": what it makes the mention, in order of precedence
    ("normal", NEGATIVE, "described normal"),
    ("stable", UNCERTAIN, "stable (CheXpert)"),
    ("hedge", UNCERTAIN, "hedged description"),
    ("borderline", UNCERTAIN, "borderline size"),
)


@dataclass(frozen=True)
class Found:
    """What one mention asserts: `phrase` and `trigger` are (start, end) in the sentence (trigger None when none
    applied); `rule` names the convention that decided."""

    observations: tuple[str, ...]
    value: int
    phrase: tuple[int, int]
    trigger: tuple[int, int] | None
    rule: str


class Clause(NamedTuple):
    """Where a mention's clause starts and ends, the triggers near enough to reach it, every mention of the
    sentence and their starts (sorted, for bisect)."""

    left: int
    right: int
    active: list[Hit]
    mentions: list[Hit]
    starts: list[int]

    def mentions_within(self, start: int, end: int) -> list[tuple[int, int]]:
        first, last = bisect_left(self.starts, start), bisect_right(self.starts, end)
        return [(m.start, m.end) for m in self.mentions[first:last] if m.end <= end]


def classify(low: str, mentions: list[Hit], triggers: list[Hit]) -> list[Found]:
    """Each mention of the sentence `low` with its value; ATTRIBUTE mentions without a description are left out.
    Every search is bounded by a window around the mention, so a run-on text without full stops (a model repeating
    itself) costs time in proportion to its length."""
    real = [m for m in mentions if m.entry.kind != IGNORE]
    starts = [m.start for m in real]
    ends = [t for t in triggers if t.entry.kind == TERMINATOR]
    end_starts, end_ends = [t.start for t in ends], [t.end for t in ends]
    active = [t for t in triggers if t.entry.kind in VALUE]
    active_starts = [t.start for t in active]
    paired = _or_pairs(low, real)
    out = []
    for mention in real:
        i, j = bisect_right(end_ends, mention.start), bisect_left(end_starts, mention.end)
        left, right = end_ends[i - 1] if i else 0, end_starts[j] if j < len(ends) else len(low)
        first = bisect_left(active_starts, max(left, mention.start - _WINDOW))
        last = bisect_right(active_starts, min(right, mention.end + _WINDOW))
        nearby = [t for t in active[first:last] if t.start >= left and t.end <= right]
        clause = Clause(left, right, nearby, real, starts)
        if mention.entry.kind == ATTRIBUTE:
            found = _attribute(low, mention, clause)
            if found is not None:
                out.append(found)
            continue
        value, trigger, rule = _triggered(low, (mention.start, mention.end), mention, clause)
        if value == POSITIVE and mention.entry.kind == HEDGED:
            value, trigger, rule = UNCERTAIN, None, "CheXpert counts it uncertain"
        elif value == POSITIVE and id(mention) in paired:
            value, trigger, rule = UNCERTAIN, paired[id(mention)], "or"
        out.append(Found(mention.entry.observations, value, (mention.start, mention.end), trigger, rule))
    return out


def _triggered(
    low: str, span: tuple[int, int], mention: Hit, clause: Clause
) -> tuple[int, tuple[int, int] | None, str]:
    """The value the clause's triggers give `span` (the mention, or an attribute with its description)."""
    for kind in (PRENEG, NEGATION, UNCERTAINTY):
        best, distance = None, None
        for t in clause.active:
            if t.entry.kind != kind:
                continue
            if span[0] <= t.start and t.end <= span[1]:
                if t.end <= mention.start or t.start >= mention.end:  # "heart is not enlarged"
                    best, distance = t, 0
                continue
            if t.end <= span[0] and t.entry.forward and _reaches_forward(low, t, span, clause):
                gap = span[0] - t.end
            elif t.start >= span[1] and t.entry.backward and _reaches_back(low, span, t, clause):
                gap = t.start - span[1]
            else:
                continue
            if distance is None or gap < distance:
                best, distance = t, gap
        if best is not None:
            return VALUE[kind], (best.start, best.end), kind
    return POSITIVE, None, "mention"


def _reaches_forward(low: str, t: Hit, span: tuple[int, int], clause: Clause) -> bool:
    if span[0] - t.end > _CHARS_A_WORD * t.entry.forward:
        return False
    between = low[t.end : span[0]]
    if len(_WORDS.findall(between)) > t.entry.forward:
        return False
    if t.entry.kind == NEGATION and _VERB.search(between) or t.entry.forward <= 3 and "," in between:
        return False  # a short reach ("normal heart size") is an adjective's: it ends at a comma
    for separator in _SEPARATOR.finditer(low, t.end, span[0]):
        # a new statement ("no pneumothorax, small left effusion"), unless a list goes on ("no effusion, small
        # pneumothorax, or consolidation")
        list_end = min(clause.right, separator.end() + _WINDOW)
        if _OPENER.match(low, separator.end()) and not _OR.search(low, separator.end(), list_end):
            return False
    return _chained(low, clause.mentions_within(t.end, span[0]) + [span])


def _reaches_back(low: str, span: tuple[int, int], t: Hit, clause: Clause) -> bool:
    if t.start - span[1] > _CHARS_A_WORD * t.entry.backward:
        return False
    between = _COPULA_TAIL.sub("", low[span[1] : t.start]).rstrip().removesuffix(",")  # "effusion, if present"
    if len(_WORDS.findall(between)) > t.entry.backward or _BACK_BREAK.search(between):
        return False
    if "," in between and not re.match(r"\s*(?:and|or|nor)\b", between[between.rfind(",") + 1 :]):
        return False
    return _chained(low, [span] + clause.mentions_within(span[1], t.start))


def _chained(low: str, spans: list[tuple[int, int]]) -> bool:
    """True when the mentions a trigger reaches over, and the one it reaches, are a list (commas, "and", "or",
    "of" between them): "effusion heart size is normal" does not negate the effusion."""
    return all(_CHAIN.fullmatch(low, a[1], b[0]) for a, b in zip(spans, spans[1:], strict=False))


def _or_pairs(low: str, mentions: list[Hit]) -> dict[int, tuple[int, int]]:
    """Mentions joined to a neighbour by "or", "versus" or "/": id -> the joining word's span."""
    paired = {}
    findings = [m for m in mentions if m.entry.kind != ATTRIBUTE]
    for a, b in zip(findings, findings[1:], strict=False):
        if DEVICES in a.entry.observations and DEVICES in b.entry.observations:
            continue  # "lines or tubes" doubts no device
        joined = _OR_PAIR.fullmatch(low, a.end, b.start)
        if joined:
            paired[id(a)] = paired[id(b)] = joined.span("or")
    return paired


def _attribute(low: str, mention: Hit, clause: Clause) -> Found | None:
    """An anatomical mention takes its value from the words around it: "enlarged" (or what negates or doubts that),
    "normal", "stable" (CheXpert: uncertain), "borderline" or "accentuated by low volumes" (uncertain)."""
    left, right = max(clause.left, mention.start - _WINDOW), min(clause.right, mention.end + _WINDOW)
    cues = []
    start = max(left, low.rfind(",", left, mention.start) + 1)  # "normal heart size, widened mediastinum"
    words_before = [m.start() for m in _WORDS.finditer(low, start, mention.start)][-4:]
    if words_before:
        cues += [c for c in _CUE.finditer(low, words_before[0], mention.start) if c.end() <= mention.start]
    stop = _CUE_STOP.search(low, mention.end, right)
    limit = stop.start() if stop else right
    for cue in _CUE.finditer(low, mention.end, limit):
        between = low[mention.end : cue.start()]
        if len(_WORDS.findall(between)) > 10 or _separated(between):
            break
        cues.append(cue)
        if cue.lastgroup in ("range", "normal", "abnormal"):
            break
    kinds = {c.lastgroup: c for c in cues}
    observations, phrase = mention.entry.observations, (mention.start, mention.end)
    if "range" in kinds:
        return Found(observations, UNCERTAIN, phrase, kinds["range"].span(), "range")
    if "abnormal" in kinds:
        cue = kinds["abnormal"]
        span = (min(mention.start, cue.start()), max(mention.end, cue.end()))
        value, trigger, rule = _triggered(low, span, mention, clause)
        # past the clause: "enlarged, though this may be exaggerated by low volumes"
        late = _TECHNIQUE.search(low, cue.end(), cue.end() + _WINDOW)
        if value == POSITIVE and ("hedge" in kinds or late):
            value, trigger, rule = UNCERTAIN, kinds.get("hedge", late).span(), "hedged description"
        return Found(observations, value, span, trigger or cue.span(), rule if trigger else "described abnormal")
    for kind, value, rule in _DESCRIBED:
        if kind in kinds:
            return Found(observations, value, phrase, kinds[kind].span(), rule)
    return None


def _separated(between: str) -> bool:
    """A comma that ends the description: only a list ("heart size, mediastinum, and hila are normal") goes on."""
    if "," not in between:
        return False
    return not re.search(r"\b(?:and|or)\b", between[between.rfind(",") :])

"""The labeler's triggers, and the scanner that finds them and the lexicon's mentions in one pass over a sentence.

A trigger is a phrase with a kind and a reach: NEGATION ("no", "without", "has resolved"), UNCERTAINTY ("may",
"possible", "versus"), PRENEG (uncertainty that wins over negation: "cannot be excluded", "no new"), PSEUDO (looks
like a negation and is not: "no change", "not only", "gram-negative", "partially resolved") and TERMINATOR (ends a
clause: "but", "however", "which", ";"). A trigger reaches some words forward ("no effusion"), backward ("effusion
has resolved") or both ("pneumothorax cannot be excluded", "cannot exclude pneumothorax"); how far inside its clause
is decided by `cxr_vqa.labeler_scope`.

The triggers follow the CheXpert labeler's patterns (patterns/negation.txt, pre_negation_uncertainty.txt,
post_negation_uncertainty.txt; github.com/stanfordmlgroup/chexpert-labeler, MIT licence), which refine NegBio's
(github.com/ncbi-nlp/NegBio, public domain), written here as surface phrases instead of dependency-graph patterns,
with the NegEx idea of pseudo-triggers and terminators (Chapman et al. 2001).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cxr_vqa.labeler_lexicon import LEXICON

NEGATION, UNCERTAINTY, PRENEG = "negation", "uncertainty", "pre-negation uncertainty"
PSEUDO, TERMINATOR = "pseudo", "end"

_SEEN = (
    "seen|identified|demonstrated|visualized|visible|evident|present|detected|appreciated|noted|apparent|observed|"
    "shown|found|depicted|elicited"
)
_CHANGE = "change|increase|decrease|worsening|improvement|progression|difference"
_ADJ = (
    "significant|appreciable|substantial|definite|major|real|marked|interval|gross|further|overall|acute|notable|"
    "relevant|meaningful|radiographic|convincing|obvious|short[- ]interval|clinically significant"
)
_PARTIAL = (
    "nearly|almost|partially|partial|mostly|largely|incompletely|incomplete|near[- ]complete|near[- ]total|slowly|"
    "not (?:yet )?(?:completely|entirely|fully)|not totally"
)
_HEDGE = (
    "likely|unlikely|less likely|possible|probable|suspected|questioned|questionable|favou?red|considered|equivocal|"
    "uncertain"
)

# (kind, words forward, words backward, "phrase; phrase; ..."): how far a trigger reaches after and before itself
# (0: not that way); the same phrase conventions as the lexicon's
# fmt: off
TRIGGERS: tuple[tuple[str, int, int, str], ...] = (
    (PSEUDO, 0, 0,
        f"no (?:(?:{_ADJ}) )*(?:{_CHANGE})s?; without (?:(?:{_ADJ}) )*(?:{_CHANGE})s?; "
        "not (?:significantly |substantially |appreciably |markedly |much |greatly )?"
        "(?:changed|increased|decreased|worsened|improved|different); "
        f"not only; gram[- ]negative; (?:{_PARTIAL}) (?:resolved|resolution|resolving|cleared|clearing); "
        "resolving; no doubt"),
    (PRENEG, 12, 12,  # "cannot exclude X", "X cannot be entirely excluded", "X is not ruled out"
        "(?:cannot|can ?not|can't|could not|couldn't|unable to|difficult to|hard to|not possible to|impossible to)"
        "(?: (?:entirely|completely|definitely|definitively|fully|totally|reliably|confidently|be|been))* "
        "(?:exclude[ds]?|rule[ds]? out); "
        "not (?:be |been )?(?:(?:entirely|completely|definitely|definitively|fully|totally|reliably) )?"
        "(?:excluded|ruled out)"),
    (PRENEG, 8, 0, "no new; no new or (?:increas\\w*|enlarg\\w*|worsen\\w*); without new"),
    (NEGATION, 16, 0,
        "no; not; without; w/o; nor; neither; never; lack of; absence of; "
        "no (?:\\w+ )?(?:evidence|signs?|findings?|features?) (?:of|for|to suggest|suggesting); "
        "without (?:\\w+ )?(?:evidence|signs?|findings?) (?:of|for|to suggest|suggesting); "
        "negative for; free of; clear of; clearing of; resolution of; removal of; disappearance of; drainage of; "
        "history of; hx of; h/o; rule out; rule-out; r/o; to exclude; exclude; mimic\\w*; simulat\\w*; "
        "(?:evaluate|evaluation|eval|assess|assessment) for"),
    (NEGATION, 3, 10, "normal; unremarkable"),
    (NEGATION, 12, 12, "resolved; resolution; cleared; removed; ruled out; absent; gone; none"),  # "devices: none"
    (NEGATION, 0, 10,
        f"not (?:be |been )?(?:{_SEEN}); no longer(?: (?:{_SEEN}))?; excluded; "
        "within (?:normal )?limits(?: of normal)?; wnl; (?:is|are) negative"),
    (UNCERTAINTY, 16, 0,  # "likely": uncertain, as the CheXpert annotation guidelines read it (docs/labeler.md)
        "may; might; could; would; maybe; perhaps; possibl[ey]; probabl[ey]; presum\\w*; likely; unlikely; "
        "less likely; suggest\\w*; concern(?:ing)?(?: for)?; worrisome(?: for)?; question(?:able|ed)?(?: of)?; "
        "query; equivocal; indeterminate; uncertain; unclear; not clear; potential(?:ly)?; favou?r(?:s|ed|ing)?; "
        "consider(?:ed|ation)?; "
        "differential(?: diagnosis)?; raises? (?:the )?(?:possibility|question|concern); possibility(?: of)?; "
        "correlat\\w* (?:clinically )?(?:for|to (?:exclude|rule out|assess for|evaluate for)); "
        "clinical correlation (?:for|to (?:exclude|rule out|assess for|evaluate for)); "
        "cannot be (?:distinguished|differentiated|separated); (?:difficult|hard) to (?:distinguish|differentiate); "
        "in the differential"),
    (UNCERTAINTY, 12, 12, "suspect\\w*; suspicio\\w*; if (?:any|present)"),
    (UNCERTAINTY, 16, 4, "versus; vs\\.?"),  # CheXpert: both sides of "X versus Y" are uncertain
    (UNCERTAINTY, 0, 10,
        f"(?:is|are|was|were|be|remains?|appears?|seems?) (?:\\w+ )?(?:{_HEDGE})"
        "(?=\\s*(?:$|[,\\x3b:.)]|present|seen)); "
        "(?:may|might|could|can) (?:also )?be (?:present|seen|noted|identified|developing|possible|considered); "
        "(?:may|might|could|can) (?:also )?have (?:this|a similar|the same|similar) appearance; "
        "(?:is|are|was|were) \\w+(?: \\w+)?,? if (?:any|present); "
        "not (?:well|clearly|definitely|convincingly|confidently|reliably)[- ]"
        "(?:seen|visualized|evaluated|assessed|identified|demonstrated); "
        "(?:poorly|incompletely|suboptimally) (?:seen|visualized|evaluated|assessed)"),
    (TERMINATOR, 0, 0,
        "but; however; although; though; whereas; while; yet; which; aside from; apart from; except(?: for)?; "
        "other than; besides; with the exception of; otherwise; "
        "there (?:is|are|was|were|has been|have been|remains?)"),
)
# fmt: on
# ";" and a free-standing dash end a clause (a colon does not: "heart size: normal", "devices: none"); "?" beside a
# mention ("pneumonia?", "? effusion") doubts it
_PUNCTUATION = re.compile(r";|\s-{1,2}\s|\?")


@dataclass(frozen=True)
class Entry:
    """One phrase of the lexicon (a mention: its observations and kind) or of the triggers (its kind and reach)."""

    pattern: re.Pattern
    trigger: bool
    kind: str
    observations: tuple[str, ...] = ()
    forward: int = 0  # words a trigger reaches after itself
    backward: int = 0  # and before itself


@dataclass(frozen=True)
class Hit:
    start: int
    end: int
    entry: Entry


def _literal_prefixes(phrase: str) -> list[str]:
    """The literal letters a phrase must start with (up to 3), one per alternative of a leading (?:a|b) group."""
    if phrase.startswith("(?:"):
        depth, alts, current = 0, [], ""
        for i, char in enumerate(phrase[3:], 3):
            if char == "(":
                depth += 1
            elif char == ")" and depth == 0:
                if phrase[i + 1 : i + 2] in ("?", "*"):
                    raise ValueError(f"an optional leading group cannot be looked up: {phrase!r}")
                alts.append(current)
                return [p for alt in alts for p in _literal_prefixes(alt + phrase[i + 1 :])]
            elif char == ")":
                depth -= 1
            elif char == "|" and depth == 0:
                alts.append(current)
                current = ""
                continue
            current += char
        raise ValueError(f"unbalanced group in {phrase!r}")
    prefix = ""
    for i, char in enumerate(phrase):
        if not (char.isalnum() or char in "/'") or phrase[i + 1 : i + 2] in ("?", "*", "{"):
            break
        prefix += char
        if len(prefix) == 3:
            break
    if not prefix or (len(prefix) < 2 and phrase[len(prefix) : len(prefix) + 1].isalnum()):
        raise ValueError(f"a phrase must start with literal letters: {phrase!r}")
    return [prefix]


def _compile(phrase: str) -> re.Pattern:
    return re.compile(phrase.replace(" ", r"\s+") + r"(?!\w)")


def _key(prefix: str) -> str:
    """Lookup key of a literal prefix: up to 3 letters, cut at the first non-word character ("r/o" -> "r")."""
    return re.match(r"\w*", prefix).group()[:3] or prefix[0]


def _phrases(text: str) -> list[str]:
    return [p.strip() for p in text.split(";") if p.strip()]


def _build() -> dict[str, list[Entry]]:
    table: dict[str, list[Entry]] = {}
    entries = [(p, Entry(_compile(p), False, kind, obs)) for obs, kind, ps in LEXICON for p in _phrases(ps)]
    entries += [
        (p, Entry(_compile(p), True, kind, (), forward, backward))
        for kind, forward, backward, ps in TRIGGERS
        for p in _phrases(ps)
    ]
    for phrase, entry in entries:
        for prefix in _literal_prefixes(phrase):
            table.setdefault(_key(prefix), []).append(entry)
    return table


TABLE = _build()
_WORD = re.compile(r"\w+")
_CANDIDATES: dict[str, tuple[Entry, ...]] = {}  # word -> the phrases that may start at it; reports reuse few words


def _candidates(word: str) -> tuple[Entry, ...]:
    keys = dict.fromkeys((word[:3], word[:2], word[:1]))
    found = tuple(entry for key in keys for entry in TABLE.get(key, ()))
    if len(_CANDIDATES) < 100_000:  # numbers and typos must not grow it without end
        _CANDIDATES[word] = found
    return found


def scan(low: str) -> tuple[list[Hit], list[Hit]]:
    """Mentions and triggers in a lower-cased sentence, each list left to right and without overlaps; where several
    phrases start at the same word the longest match wins."""
    mentions: list[Hit] = []
    triggers: list[Hit] = []
    mention_end = trigger_end = 0
    for word in _WORD.finditer(low):
        start = word.start()
        if start < mention_end and start < trigger_end:
            continue
        text = word.group()
        candidates = _CANDIDATES.get(text)
        if candidates is None:
            candidates = _candidates(text)
        if not candidates:
            continue
        best_mention = best_trigger = None
        for entry in candidates:
            if entry.trigger and start < trigger_end or not entry.trigger and start < mention_end:
                continue
            found = entry.pattern.match(low, start)
            if found is None:
                continue
            if entry.trigger:
                if best_trigger is None or found.end() > best_trigger.end:
                    best_trigger = Hit(start, found.end(), entry)
            elif best_mention is None or found.end() > best_mention.end:
                best_mention = Hit(start, found.end(), entry)
        if best_mention is not None:
            mentions.append(best_mention)
            mention_end = best_mention.end
        if best_trigger is not None:
            triggers.append(best_trigger)
            trigger_end = best_trigger.end
    if ";" in low or "?" in low or "-" in low:
        triggers = _with_punctuation(low, triggers)
    return mentions, triggers


_QUESTION = Entry(re.compile(r"\?"), True, UNCERTAINTY, (), 2, 2)
_STOP = Entry(re.compile(r";"), True, TERMINATOR)


def _with_punctuation(low: str, triggers: list[Hit]) -> list[Hit]:
    marks = [Hit(m.start(), m.end(), _QUESTION if m.group() == "?" else _STOP) for m in _PUNCTUATION.finditer(low)]
    return sorted(triggers + marks, key=lambda hit: hit.start) if marks else triggers

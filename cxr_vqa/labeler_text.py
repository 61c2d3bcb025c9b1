"""A report's text -> the sentences the labeler reads, as (start, end) offsets into the text.

    sentence_spans("FINDINGS: Small left effusion.\\nIMPRESSION: 1. Effusion. 2. No pneumothorax.")
    # -> spans of "Small left effusion.", "Effusion.", "No pneumothorax."

Headings decide what is read: under FINDINGS, IMPRESSION, CONCLUSION, SUMMARY, ADDENDUM and the like, and in text
without headings, everything; under INDICATION, HISTORY, REASON FOR EXAM, COMPARISON, TECHNIQUE, EXAMINATION,
NOTIFICATION, WET READ and RECOMMENDATION nothing, up to the next heading or blank line ("History: eval for
pneumonia" asserts no pneumonia). Sentences end at . ! ? before a space, at blank lines and before numbered items
("1. ... 2. ..."); a line break inside a sentence (wrapped dictation) does not end it, nor do "Dr.", "approx.",
"vs.", "e.g." or a decimal point. Enumerators ("1.", "-", "*") are left out of the spans.
"""

from __future__ import annotations

import re

# Headings whose section says why the film was taken, not what it shows.
SKIPPED = (
    "indications?",
    "history",
    "clinical history",
    "patient history",
    "medical history",
    "brief history",
    "reason for (?:the )?(?:exam|examination|study|request|this examination|referral)",
    "reason",
    "clinical (?:information|indication|data|details|notes?|question|statement)",
    "indication for (?:exam|study)",
    "comparisons?",
    "comparison (?:exam|film|study|studies)",
    "priors?",
    "techniques?",
    "examination",
    "exam",
    "type of (?:exam|examination)",
    "procedure(?: comments?)?",
    "notifications?",
    "wet read",
    "recommendations?(?:\\(s\\))?",
    "medical condition",
    "question",
    "accession(?: number)?",
    "dictated by",
    "signed by",
    "referring physician",
    "contrast",
    "iv contrast",
    "views?",
    "study",
)
READ = (
    "findings?",
    "impressions?",
    "conclusions?",
    "summary",
    "opinion",
    "interpretation",
    "report",
    "results?",
    "addendum",
    "findings and impression",
    "impression and findings",
    "findings/impression",
    "comments?",
    "final report",
)
_HEADING = re.compile(
    r"(?:^|(?<=[.!?])|(?<=\n))[ \t]*(?P<name>" + "|".join(SKIPPED + READ) + r")[ \t]*:",
    re.IGNORECASE | re.MULTILINE,
)
_SKIPPED = re.compile(r"(?:" + "|".join(SKIPPED) + r")\Z", re.IGNORECASE)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
# Where a sentence may end: after . ! ? before whitespace, at a blank line, or before an enumerator that opens a line
# or follows the end of a phrase ("IMPRESSION: 1. X 2. Y").
_BREAK = re.compile(
    r"(?<=\S)(?P<stop>[.!?]+)(?=\s|$)|\n[ \t]*\n\s*|\n(?=[ \t]*(?:\d{1,2}[.)]|[-*\u2022])\s)"
    r"|(?<=[a-z,])\s+(?=\d{1,2}[.)]\s+[a-z])",
    re.IGNORECASE,
)
_ABBREVIATION = re.compile(
    r"(?:\b(?:drs?|mrs?|ms|prof|approx|vs|v|e\.g|i\.e|st|fig|incl|resp|a\.m|p\.m|etc|cf|al))\Z", re.IGNORECASE
)
_ENUMERATOR = re.compile(r"(?:\d{1,2}[.)]|[-*\u2022])\s+|\s+")


def read_spans(text: str) -> list[tuple[int, int]]:
    """The parts of `text` the labeler reads: everything but the sections under a skipped heading (each up to the
    next heading or blank line). Headings themselves are left out."""
    headings = list(_HEADING.finditer(text))
    if not headings:
        return [(0, len(text))]
    spans, position = [], 0
    for i, heading in enumerate(headings):
        if heading.start() > position:
            spans.append((position, heading.start()))
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        if _SKIPPED.match(heading.group("name").strip()):
            blank = _BLANK_LINE.search(text, heading.end(), end)
            position = blank.end() if blank else end
        else:
            spans.append((heading.end(), end))
            position = end
    if position < len(text):
        spans.append((position, len(text)))
    return [(a, b) for a, b in spans if b > a]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence the labeler reads, enumerators and surrounding spaces left out."""
    out = []
    for first, last in read_spans(text):
        start = first
        for found in _BREAK.finditer(text, first, last):
            if found.group("stop") is not None and (
                _ABBREVIATION.search(text, max(first, found.start() - 6), found.start())
                or text[start : found.start()].strip().isdigit()  # the "1." that opens an item
            ):
                continue
            _add(text, start, found.end() if found.group("stop") else found.start(), out)
            start = found.end()
        _add(text, start, last, out)
    return out


def _add(text: str, start: int, end: int, out: list[tuple[int, int]]) -> None:
    while True:  # leading enumerators and spaces: "1. ", "- ", "2) "
        found = _ENUMERATOR.match(text, start, end)
        if not found or found.end() == start:
            break
        start = found.end()
    while end > start and text[end - 1].isspace():
        end -= 1
    if any(c.isalnum() for c in text[start:end]):
        out.append((start, end))


def named_sections(text: str) -> dict[str, str]:
    """The text under each heading, by the heading's name in lower case ("impression", "findings", "indication");
    where a name repeats, the last. For a reader that needs one section (MIMIC-CXR's labels come from the
    impression)."""
    headings = list(_HEADING.finditer(text))
    out = {}
    for i, heading in enumerate(headings):
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        out[" ".join(heading.group("name").lower().split())] = text[heading.end() : end].strip()
    return out

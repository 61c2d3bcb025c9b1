"""Report cleaning: keep what one film can show, drop what needs a prior study, a person or the paperwork.

Pure functions from strings to strings, no I/O:

    clean_report("FINDINGS: COMPARED TO PRIOR, UNCHANGED CARDIOMEGALY. SMALL LEFT EFFUSION.")
    # -> "Small left effusion."

The same predicates (`mentions_prior`, `cites_text`) filter generated QA pairs, so a sentence that is dropped
from a report can never come back through a question.
"""

from __future__ import annotations

import re

# Sentences about change over time: one image cannot show them. Deliberately broad; dropping a usable sentence
# costs little, keeping "unchanged effusion" teaches the model to hallucinate a comparison.
PRIOR_RE = re.compile(
    r"\b(?:compar\w*|prior|previous\w*|earlier|interval\w*|unchanged|no change|stable|stably|again|"
    r"redemonstrat\w*|re-demonstrat\w*|persist\w*|remain\w*|new|newly|since|improv\w*|worsen\w*|"
    r"increasing|decreasing|progress\w*|resolv\w*|resolution|recurr\w*|before|from last|last exam|"
    r"similar to|as before)\b",
    re.IGNORECASE,
)
# Answers must come from the image, never from the text the generator was shown.
CITES_RE = re.compile(
    r"\b(?:the (?:radiology |radiologist'?s? )?report\w*|report(?:s|ed)?|according to|as (?:mentioned|stated|"
    r"described|noted|documented|indicated)|the (?:findings|impression) (?:section|state|says|mention)\w*|"
    r"the text|the radiologist|is documented|are documented|dictat\w*|transcri\w*)\b",
    re.IGNORECASE,
)
# Paperwork and communication, not anatomy.
BOILERPLATE_RE = re.compile(
    r"\b(?:i have personally reviewed|i have reviewed the images|agree with the (?:report|findings|above)|"
    r"electronically signed|signed by|dictated by|attending|resident|accession|end of impression|"
    r"discussed with|communicated to|notified|called to|paged|read back|telephone|by phone|"
    r"this report|preliminary report|final report|critical result)\b",
    re.IGNORECASE,
)
# De-identification placeholders seen across releases: ___ (MIMIC), [**...**], [REDACTED], <NAME>, XXXX.
DEID_RE = re.compile(r"_{2,}|\[\*\*.*?\*\*\]|\[(?:redacted|removed|name|date)[^\]]*\]|<[A-Z_]{2,}>|\bX{3,}\b", re.I)
SECTION_HEADER_RE = re.compile(
    r"^\s*(?:findings|impression|summary|narrative|conclusion|comparison|technique|history|clinical history|"
    r"indication|procedure comments)\s*:\s*",
    re.IGNORECASE,
)
# Sentence ends: full stop, newline runs, or an enumerator like "2." that opens the next item.
SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?;])\s+|\n\s*\n|\s+(?=\d{1,2}[.)]\s)")
ENUMERATOR_RE = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*\u2022])\s*")
TIME_RE = re.compile(r"\b\d{1,2}:\d{2}\s*(?:[ap]\.?m\.?)?", re.IGNORECASE)
ABBREVIATION_RE = re.compile(r"\b(Drs?|Mrs?|Ms|approx|vs|e\.g|i\.e|St)\.", re.IGNORECASE)
# Abbreviations that must stay upper case when ALL-CAPS dictation is lowered.
ACRONYMS = ("AP", "PA", "IJ", "SVC", "PICC", "ET", "ETT", "NG", "OG", "ICD", "AICD", "CHF", "COPD", "CT", "ICU", "IVC")
ACRONYM_RE = re.compile(r"\b(" + "|".join(ACRONYMS) + r")\b", re.IGNORECASE)


def split_sentences(text: str) -> list[str]:
    """Split a report section into sentences, enumerators and section headers removed."""
    out = []
    text = ABBREVIATION_RE.sub(r"\1", text or "")  # "Dr." must not end a sentence
    for piece in SENTENCE_SPLIT_RE.split(text):
        piece = SECTION_HEADER_RE.sub("", ENUMERATOR_RE.sub("", piece))
        piece = " ".join(piece.split())
        if re.search(r"[A-Za-z]{2,}", piece):
            out.append(piece)
    return out


def mentions_prior(text: str) -> bool:
    """True when the text talks about a comparison or change over time."""
    return bool(PRIOR_RE.search(text))


def cites_text(text: str) -> bool:
    """True when the text refers to the report instead of the image."""
    return bool(CITES_RE.search(text))


def is_boilerplate(sentence: str) -> bool:
    return bool(BOILERPLATE_RE.search(sentence) or TIME_RE.search(sentence))


def sentence_case(sentence: str) -> str:
    """ALL-CAPS dictation becomes sentence case; mixed-case text is left alone."""
    if any(c.islower() for c in sentence):
        return sentence
    lower = ACRONYM_RE.sub(lambda m: m.group(1).upper(), sentence.lower())
    return lower[:1].upper() + lower[1:]


def clean_sentence(sentence: str) -> str:
    """Remove de-identification marks and tidy spacing and the final full stop."""
    sentence = DEID_RE.sub(" ", sentence)
    sentence = re.sub(r"\s+([,.;:])", r"\1", " ".join(sentence.split())).strip(" ,;:-")
    if not sentence:
        return ""
    sentence = sentence_case(sentence)
    return sentence if sentence[-1] in ".!?" else sentence + "."


def clean_report(text: str | None) -> str:
    """Clinical content of one section: no prior comparisons, de-id marks, boilerplate or headers."""
    kept = []
    for sentence in split_sentences(text or ""):
        if mentions_prior(sentence) or is_boilerplate(sentence):
            continue
        sentence = clean_sentence(sentence)
        if len(sentence.split()) >= 2 and sentence not in kept:
            kept.append(sentence)
    return " ".join(kept)


def word_count(text: str | None) -> int:
    return len((text or "").split())


def report_text(findings: str, impression: str) -> str:
    """The text a generator sees: the cleaned findings and impression under their own headings."""
    parts = [f"FINDINGS: {findings}" if findings else "", f"IMPRESSION: {impression}" if impression else ""]
    return "\n".join(part for part in parts if part)

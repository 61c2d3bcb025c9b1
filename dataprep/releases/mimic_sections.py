"""Split a MIMIC-CXR free-text report into its findings and impression (pure functions, no I/O).

    findings, impression, how = report_sections(text)   # how: "findings+impression", "impression", "findings",
                                                        # "last_paragraph" or "none"

A MIMIC-CXR report (`files/pNN/pNNNNNNNN/sNNNNNNNN.txt` in mimic-cxr-reports.zip) is a titled letter: "FINAL REPORT",
then headings in capitals ending in a colon at the start of a line (EXAMINATION:, INDICATION:, TECHNIQUE:,
COMPARISON:, FINDINGS:, IMPRESSION:, sometimes WET READ:, NOTIFICATION:, RECOMMENDATION(S):, ADDENDUM:), "___" where
PHI was removed. The rules follow those of MIMIC-CXR's own section splitter (github.com/MIT-LCP/mimic-cxr, txt/):
- headings are normalised: misspellings ("IMPRESSON", "FINDNGS"), CONCLUSION and "FINDINGS AND IMPRESSION" count as
  the impression, any heading naming the film itself ("CHEST, TWO VIEWS:", "PA AND LATERAL VIEWS OF THE CHEST:",
  "PORTABLE AP CHEST:") counts as the findings;
- a report with neither a findings nor an impression heading gives its last paragraph as the impression (the text
  after the last heading's first paragraph, or after the title when there is no heading at all), which is how many
  short portable reports are written;
- the "___" marks stay: dataprep.clean removes them, as it does in CheXpert Plus's sections.
"""

from __future__ import annotations

import re

# a heading: capitals (and the punctuation MIMIC's headings use) at the start of a line, ended by a colon
HEADING_RE = re.compile(r"^[ \t]*([A-Z][A-Z0-9 /(),&'-]*[A-Z)])[ \t]*:", re.MULTILINE)
PARAGRAPH_RE = re.compile(r"\n[ \t]*\n")
OTHER = "other"
NAMES = {
    "findings": "findings",
    "finding": "findings",
    "reference findings": "findings",
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "summary": "impression",
    "findings and impression": "impression",
    "impression and findings": "impression",
    "findings/impression": "impression",
    "findings / impression": "impression",
    # headings that are never the findings, though some contain the word "chest" ("REASON FOR EXAM: CHEST PAIN")
    "examination": OTHER,
    "exam": OTHER,
    "type of examination": OTHER,
    "indication": OTHER,
    "clinical indication": OTHER,
    "reason for examination": OTHER,
    "reason for exam": OTHER,
    "history": OTHER,
    "clinical history": OTHER,
    "clinical information": OTHER,
    "patient history": OTHER,
    "technique": OTHER,
    "comparison": OTHER,
    "comparisons": OTHER,
    "notification": OTHER,
    "recommendation": OTHER,
    "recommendations": OTHER,
    "recommendation(s)": OTHER,
    "addendum": OTHER,
    "wet read": OTHER,
    "final report": OTHER,
}
# misspelt headings seen in the release; fixed before lookup
MISSPELLINGS = re.compile(r"^(?:imp?r+e?s+s?i?o?n|impresion|impession|imoression|imperssion|impressoin|mpression)$")
MISSPELT_FINDINGS = re.compile(r"^(?:findins|findindgs|findgings|findngs|findnings|finidngs)$")
# a heading that names the film (its text is then the findings): "CHEST, PA AND LATERAL:", "PORTABLE AP CHEST:"
FILM_HEADING_RE = re.compile(
    r"chest|portable|pa and lat|lateral and pa|ap and lateral|lateral and ap|frontal and|two views|frontal view|"
    r"pa view|ap view|one view|lateral view|bone window|frontal upright|frontal semi-upright|ribs"
)


def section_name(heading: str) -> str:
    """The section ("findings", "impression" or "other") of a heading's text ("IMPRESSON" -> "impression")."""
    name = " ".join(heading.lower().split())
    if name in NAMES:
        return NAMES[name]
    if MISSPELLINGS.match(name) or "impression" in name:
        return "impression"
    if MISSPELT_FINDINGS.match(name) or "finding" in name:
        return "findings"
    return "findings" if FILM_HEADING_RE.search(name) else OTHER


def split_sections(text: str) -> list[tuple[str, str]]:
    """(name, body) per heading in reading order; the text before the first heading is ("preamble", ...)."""
    text = (text or "").replace("\r\n", "\n")
    headings = list(HEADING_RE.finditer(text))
    sections = [("preamble", text[: headings[0].start()] if headings else text)]
    for k, match in enumerate(headings):
        end = headings[k + 1].start() if k + 1 < len(headings) else len(text)
        sections.append((section_name(match.group(1)), text[match.end() : end]))
    return sections


def _paragraphs(body: str) -> list[str]:
    return [p.strip() for p in PARAGRAPH_RE.split(body) if p.strip()]


def report_sections(text: str) -> tuple[str, str, str]:
    """(findings, impression, how) of a report, raw (not yet cleaned); see the module's docstring."""
    sections = split_sections(text)
    findings = "\n\n".join(body.strip() for name, body in sections if name == "findings" and body.strip())
    impression = "\n\n".join(body.strip() for name, body in sections if name == "impression" and body.strip())
    if findings or impression:
        how = "findings+impression" if findings and impression else ("findings" if findings else "impression")
        return findings, impression, how
    paragraphs = _paragraphs(sections[-1][1])
    if len(paragraphs) >= 2:  # the first paragraph belongs to the heading (or is the title): the rest is the text
        return "", "\n\n".join(paragraphs[1:]), "last_paragraph"
    return "", "", "none"

"""The versioned prompt, the JSON schema of the answer, and its validation: everything the LLM is asked.

    body = request_body(model="gpt-4o-mini", report=study.report, qa_per_study=5)   # chat.completions kwargs
    raw_pairs = validate_content(reply.content, qa_per_study=5)                     # raises InvalidOutput

Bump PROMPT_VERSION whenever the prompt or schema changes: it is part of the cache key.
"""

from __future__ import annotations

import json
from collections import Counter

from dataprep.chexpert import LABELS
from dataprep.qa import filter_pairs

PROMPT_VERSION = "v1"

SYSTEM_PROMPT = """\
You write visual question-answer pairs to train a model that answers questions about ONE chest X-ray image.
You are given the findings and impression of the radiology report of that image.
Write exactly {n} question-answer pairs that a radiologist could answer by looking at this one image alone.

Rules:
- Mix closed questions (kind "closed"), whose answer begins with "Yes" or "No", and open questions (kind "open").
  Include at least one of each; ask closed questions answered "No" about findings the report says are absent.
- Ask only about what is visible: presence, side, location, size, and devices and their position.
- Never mention change over time, earlier studies or comparisons (no "new", "unchanged", "improved", "prior",
  "interval", "stable"): the model sees one image only.
- Answers state the findings directly, as read from the image. Never refer to the report, the text or the
  radiologist ("the report says", "as mentioned").
- Do not invent findings the report does not support. Do not repeat a question.
- "finding" is the label the question is about, one of: {labels}; or null.

Reply with JSON only, in this shape:
{{"pairs": [{{"question": "...", "answer": "...", "kind": "closed", "finding": "Pleural Effusion"}}]}}"""

RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {
        "pairs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "question": {"type": "string"},
                    "answer": {"type": "string"},
                    "kind": {"type": "string", "enum": ["closed", "open"]},
                    "finding": {"type": ["string", "null"], "enum": [*LABELS, None]},
                },
                "required": ["question", "answer", "kind", "finding"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["pairs"],
    "additionalProperties": False,
}


class InvalidOutput(ValueError):
    """The model's reply is not the JSON we asked for; str(err) names what is wrong, never the content."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # a short name to count by: empty, malformed_json, schema, no_usable_pair


def build_messages(report: str, qa_per_study: int) -> list[dict]:
    system = SYSTEM_PROMPT.format(n=qa_per_study, labels=", ".join(LABELS))
    return [{"role": "system", "content": system}, {"role": "user", "content": f"Report:\n{report}"}]


def request_body(*, model: str, report: str, qa_per_study: int) -> dict:
    """Keyword arguments of `chat.completions.create`, also the `body` of a Batch API line."""
    return {
        "model": model,
        "messages": build_messages(report, qa_per_study),
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "chest_xray_vqa", "schema": RESPONSE_SCHEMA, "strict": True},
        },
        "temperature": 0,
    }


def parse_content(content: str | None) -> list:
    """The list of raw pairs in a reply; the pairs themselves are checked one by one by `dataprep.qa.filter_pairs`."""
    if not content or not content.strip():
        raise InvalidOutput("empty", "empty reply")
    text = content.strip()
    if text.startswith("```"):  # some local servers wrap JSON in a fence despite response_format
        text = text.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidOutput("malformed_json", f"malformed JSON at character {exc.pos}") from None
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
        raise InvalidOutput("schema", 'expected an object with a "pairs" list')
    return data["pairs"]


def validate_content(content: str | None, qa_per_study: int) -> list:
    """Raw pairs of a reply that has at least one usable pair; raises InvalidOutput otherwise."""
    raw = parse_content(content)
    if not filter_pairs(raw, qa_per_study, Counter()):
        raise InvalidOutput("no_usable_pair", "no usable pair (schema, citations or priors)")
    return raw

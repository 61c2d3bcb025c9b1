"""The training examples a dataset's rows give: each row whole, or with `findings_alone` a row that opens with a
findings turn as two examples, that turn alone with its film and the rest of the conversation with the same film.

    examples = FindingsAlone(train_ds)      # len(examples) >= len(train_ds); examples[i] is a row of the contract

Why: in a row that opens with the study's findings, the yes/no turns after it can be answered from that text, which
training then rewards, and the evaluation and the app ask each question with the film alone (docs/findings.md: in
every study it cut the demo's held-out closed accuracy from 0.974 to 0.764). Alone, each turn is trained as it is
asked. The findings turn is found by its question (`cxr_vqa.findings.is_findings_question`), so a dataset without a
`qa` column splits too. Nothing is copied: an example is its row's index and which part of it to take.
"""

from __future__ import annotations

from collections.abc import Sequence

from cxr_vqa.findings import is_findings_question

WHOLE, FINDINGS, REST = "whole", "findings", "rest"


def _question(turn: dict) -> str:
    content = turn.get("content")
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content or [] if part.get("type") == "text")


def opens_with_findings(messages: Sequence[dict]) -> bool:
    """Whether the conversation's first question asks for the findings and other turns follow it."""
    return len(messages) > 2 and is_findings_question(_question(messages[0]))


def take(row: dict, part: str) -> dict:
    """`row` with the part of its conversation that `part` names (its `qa` cut to match, where it has one)."""
    if part == WHOLE:
        return row
    messages = list(row["messages"])
    qa = row.get("qa")
    if part == FINDINGS:
        return {**row, "messages": messages[:2], **({"qa": qa[:1]} if qa is not None else {})}
    first = messages[0]["content"]
    images = [p for p in first if p.get("type") == "image"] if isinstance(first, list) else []
    second = messages[2]
    content = second["content"]
    content = content if isinstance(content, list) else [{"type": "text", "text": content}]
    rest = [{**second, "content": images + list(content)}, *messages[3:]]
    return {**row, "messages": rest, **({"qa": qa[1:]} if qa is not None else {})}


class FindingsAlone:
    """A dataset's rows as training examples, a row that opens with a findings turn split in two (`take`)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.parts: list[tuple[int, str]] = []
        for i, messages in enumerate(dataset.select_columns(["messages"])["messages"]):
            if opens_with_findings(messages):
                self.parts += [(i, FINDINGS), (i, REST)]
            else:
                self.parts.append((i, WHOLE))
        self.split = sum(part == FINDINGS for _, part in self.parts)

    def __len__(self) -> int:
        return len(self.parts)

    def __getitem__(self, i: int) -> dict:
        row, part = self.parts[i]
        return take(self.dataset[row], part)


class RowsCollator:
    """For a trainer that draws example numbers (`{"row": i}`): the examples themselves, collated by `collate`. The
    evaluation split's rows, which are not numbered, pass through whole."""

    def __init__(self, examples, collate):
        self.examples, self.collate = examples, collate

    def __call__(self, batch: list[dict]):
        return self.collate([self.examples[int(item["row"])] if set(item) == {"row"} else item for item in batch])

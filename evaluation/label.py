"""Label report texts with the project's labeler (`cxr_vqa.labeler`): the 14 CheXpert observations of each report.

    python -m evaluation.label IN.jsonl OUT.jsonl              # {"id", "text"} a line -> {"id", "labels"} a line
    python -m evaluation.label IN.jsonl OUT.jsonl --explain    # + "explain": the decision behind each label

Each input line is a JSON object with an "id" (a string or an integer, unique in the file) and a "text" (the report,
raw with its headings or cleaned); blank lines are skipped. Each output line, in input order:
    {"id": "s1", "labels": {"Cardiomegaly": 1, "Edema": 0, "Atelectasis": -1, "No Finding": ...}}
1 positive, 0 negative, -1 uncertain; an observation the text does not mention is absent. With --explain each line
also holds "explain": [{"observation", "value", "phrase", "trigger", "rule", "sentence", "start", "end"}, ...], the
matched phrase, the trigger that made it negative or uncertain, and where the phrase is in the text.

The whole file is checked before anything is written: a line that is not JSON, has no id or no text, a text that is
not a string, or an id seen before stops the run with one line naming the line number, exit status 2. OUT is written
whole or not at all. Rule-based: its figures are not on CheXbert's scale (docs/labeler.md).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from cxr_vqa.cli import user_errors
from cxr_vqa.errors import UserError


def read_reports(path: Path) -> Iterator[tuple[int, str | int, str]]:
    """(line number, id, text) of each report in a JSON Lines file; a UserError naming the line for a bad one."""
    try:
        with open(path, "rb") as file:
            yield from _records(path, file)
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None


def _records(path: Path, file) -> Iterator[tuple[int, str | int, str]]:
    seen: dict[str | int, int] = {}
    for number, raw in enumerate(file, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{path} line {number}: not UTF-8 text") from None
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path} line {number}: not JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f'{path} line {number}: not a JSON object with "id" and "text"')
        report_id, text = record.get("id"), record.get("text")
        if isinstance(report_id, bool) or not isinstance(report_id, (str, int)):
            raise UserError(f'{path} line {number}: "id" must be a string or an integer, got {report_id!r}')
        if "text" not in record:
            raise UserError(f'{path} line {number}: no "text"')
        if not isinstance(text, str):
            raise UserError(f'{path} line {number}: "text" must be a string, got {type(text).__name__}')
        if report_id in seen:
            raise UserError(f"{path} line {number}: id {report_id!r} is already on line {seen[report_id]}")
        seen[report_id] = number
        yield number, report_id, text


def label_file(src: Path, out: Path, explain: bool = False, progress: bool = True) -> int:
    """Label every report of `src` into `out` (written atomically); the number of reports."""
    from tqdm import tqdm

    from cxr_vqa.files import write_text_atomic
    from cxr_vqa.labeler import explain_report, label_report, labels_of

    count = sum(1 for _ in read_reports(src))  # the whole file is checked before anything is labelled
    if count == 0:
        raise UserError(f'{src} holds no reports: expected one {{"id": ..., "text": ...}} object a line')
    if out.resolve() == src.resolve():
        raise UserError(f"OUT {out} is the input file; write the labels somewhere else")
    if not out.parent.is_dir():
        raise UserError(f"cannot write {out}: folder {out.parent} does not exist")
    lines = []
    for _, report_id, text in tqdm(
        read_reports(src), total=count, desc="labelling", unit="report", disable=not progress
    ):
        if explain:
            decisions = explain_report(text)
            record = {"id": report_id, "labels": labels_of(decisions), "explain": [d.as_dict() for d in decisions]}
        else:
            record = {"id": report_id, "labels": label_report(text)}
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    write_text_atomic(out, "".join(lines))
    return count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.label",
        description=__doc__.split("\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("src", metavar="IN.jsonl", help='one {"id": ..., "text": ...} object a line')
    parser.add_argument("out", metavar="OUT.jsonl", help='one {"id": ..., "labels": {...}} object a line')
    parser.add_argument("--explain", action="store_true", help="add each label's matched phrase and trigger")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_args(argv)
    with user_errors():  # one line on stderr, exit status 2
        count = label_file(Path(args.src), Path(args.out), explain=args.explain, progress=args.progress)
    print(f"labelled {count} reports -> {args.out}")


if __name__ == "__main__":
    main()

"""The Explore tab's findings reports (records of kind "findings"): each report read by the project's labeler on first
use and kept, the filters "a model claims X" and "the reports disagree on X", what a table cell shows of a report,
and the chips of a chosen row.

    index = FindingsIndex(records)
    index.claiming(keep, "Edema", ["tuned"])          # the records whose tuned report claims Edema
    index.disagreeing(keep, ANY, ["base", "tuned"])   # ... where those reports disagree on any observation
    index.cell(i, "tuned")                            # "[+ Edema · ? Atelectasis] The heart is ..."
    index.detail(i, ["base", "tuned"])                # the reference and each report, with their chips (HTML)

Definitions (`cxr_vqa.findings`, as F1-CheXbert reads reports): a report claims an observation when its label is
present (1) or uncertain (-1); reports disagree on it when their readings among present / uncertain / not claimed
differ. A model that gave no answer (an "errors" entry, or no answer at all) has no report: it claims nothing and
takes no part in a disagreement. The labels are the rule-based labeler's, computed once per record and model: it
reads a few thousand reports a second, so the first findings filter over a large report takes about a second.
"""

from __future__ import annotations

from app_lib.findings_html import Report, chips_html, compact, disagreement_notes, esc, read_report, summary_html
from cxr_vqa.findings import FINDINGS_KIND, disagreements
from cxr_vqa.labeler import label_report

ANY = "any observation"
REFERENCE = "(reference)"  # the record's reference report, kept beside the models' (no model name has parentheses)
_UNSET = object()


class FindingsIndex:
    """Labels of every findings record's reports, by record index and model (or REFERENCE), kept once read. Safe
    from several sessions at once: two threads reading the same report store the same labels."""

    def __init__(self, records: list[dict]):
        self.records = records
        self.rows = frozenset(i for i, r in enumerate(records) if r["kind"] == FINDINGS_KIND)
        self._labels: dict[tuple[int, str], dict | None] = {}

    def text(self, i: int, variant: str) -> str | None:
        """Record `i`'s report by `variant` (or its reference); None where that model gave none."""
        record = self.records[i]
        if variant == REFERENCE:
            return record.get("reference") or ""
        if (record.get("errors") or {}).get(variant) or variant not in record.get("answers", {}):
            return None
        return record["answers"][variant] or ""

    def labels(self, i: int, variant: str) -> dict[str, int] | None:
        found = self._labels.get((i, variant), _UNSET)
        if found is _UNSET:
            text = self.text(i, variant)
            found = self._labels[i, variant] = None if text is None else label_report(text)
        return found

    def _reports(self, i: int, variants: list[str]) -> dict[str, dict[str, int]]:
        return {v: found for v in variants if (found := self.labels(i, v)) is not None}

    def disagree(self, i: int, variants: list[str]) -> list[str]:
        """The observations record `i`'s reports by `variants` disagree on ([] for a record that is no findings)."""
        return disagreements(self._reports(i, variants)) if i in self.rows else []

    def claiming(self, keep, observation: str, variants: list[str]) -> list[int]:
        """The findings records of `keep` where a report of one of `variants` claims `observation`."""

        def claims(i: int) -> bool:  # present or uncertain in one of the reports
            return any(found.get(observation) in (1, -1) for found in self._reports(i, variants).values())

        return [i for i in keep if i in self.rows and claims(i)]

    def disagreeing(self, keep, observation: str, variants: list[str]) -> list[int]:
        """The findings records of `keep` where the reports of `variants` disagree on `observation` (ANY: on any)."""
        return [i for i in keep
                if (found := self.disagree(i, variants)) and (observation == ANY or observation in found)]  # fmt: skip

    def cell(self, i: int, variant: str) -> str:
        """What the table shows of a report: the observations it claims, in brackets, before its text."""
        text = self.text(i, variant)
        return f"[{compact(self.labels(i, variant))}] {text or ''}".rstrip()

    def detail(self, i: int, variants: list[str]) -> str:
        """Record `i`'s reference and each model's report with their chips, the disagreements marked (HTML)."""
        record = self.records[i]
        reports = {v: read_report(text) for v in variants if (text := self.text(i, v)) is not None}
        found = {v: r.labels for v, r in reports.items()}
        disagree = disagreements(found)
        notes = disagreement_notes(found, disagree)
        reference = read_report(self.text(i, REFERENCE))
        parts = [summary_html(disagree, len(reports)), _section("Reference (the dataset's findings)", reference)]
        parts += [_section(v, reports.get(v), disagree, notes, who=f"the {v} report") for v in variants]
        return f'<div class="fx-detail"><h3>Findings of {esc(record["id"])}</h3>{"".join(parts)}</div>'


def _section(title: str, report: Report | None, disagree=(), notes=None, who: str = "the reference") -> str:
    """One report: its title, its text (escaped: model output) and its chips; None: the model gave no answer."""
    chips = chips_html(report, disagree, notes, name=who, why="no answer")
    text = f'<p class="fx-text">{esc(report.text)}</p>' if report is not None else ""
    return f'<div class="fx-report"><h4>{esc(title)}</h4>{text}{chips}</div>'

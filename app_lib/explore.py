"""The Explore tab's table as plain functions over an evaluation report's records: what is right or wrong, where the
models disagree, how sure a wrong answer was, which rows a filter keeps and in what order, and one page of them.

    table = open_report("reports/test", dataset=None)          # predictions.jsonl + run.json + where the films are
    order = table.select(Query(finding="Edema", model="tuned", outcome="wrong", sort=CONFIDENTLY_WRONG))
    rows = table.page(order, page=0, shown=table.models)         # [[thumbnail, id, finding, ..., answers]]
    table.select(Query(kind="findings", model="tuned", claims="Edema"))   # findings reports: app_lib.explore_findings

Definitions (docs/app.md states them too):
- right / wrong: a closed question by the evaluation's strict score (`scores[variant]["correct"]`); an open one (and,
  for now, a findings report) by its recall, the share of the reference's words found in the answer, right from
  OPEN_RIGHT_RECALL up.
- disagree: a yes/no question where the compared variants' strict readings differ (an unparseable answer counts as
  its own reading: "yes" against no yes/no at all is a disagreement a reader wants to see).
- confidently wrong: a wrong yes/no answer ordered by the probability its model gave the wrong label (P(yes) when
  the truth is no, 1 - P(yes) when it is yes), highest first; other wrong answers follow, then the right ones.
- claims X / disagree on X: a findings report's labels, read by the project's labeler (app_lib.explore_findings):
  the chosen model's report (or any shown model's) claims X present or uncertain; the shown models' reports read X
  differently among present / uncertain / not claimed. A findings row's cells show what each report claims.
Everything is computed once when the report opens, so a filter over 20,000 questions is a pass over plain lists.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from app_lib.explore_findings import ANY, REFERENCE, FindingsIndex
from app_lib.report_films import ReportFilms, find_films
from app_lib.tables import answer_cell, thumbnail
from cxr_vqa.errors import UserError
from cxr_vqa.labeler import OBSERVATIONS
from cxr_vqa.reports import METRICS, PREDICTIONS, read_predictions, read_run, split_variant, with_image

logger = logging.getLogger(__name__)

OPEN_RIGHT_RECALL = 0.5
PAGE_SIZE = 20
THUMBS_KEPT = 2000  # thumbnails kept in memory (a few KB each)
UNREADABLE = "unreadable film"  # in place of the thumbnail of a film that cannot be decoded
REPORT_ORDER, P_YES_GAP, CONFIDENTLY_WRONG = "report order", "P(yes) gap", "confidently wrong"
SORTS = (REPORT_ORDER, P_YES_GAP, CONFIDENTLY_WRONG)
OUTCOMES, KINDS = ("right", "wrong"), ("closed", "open", "findings")
EXPLORE_MODES = ("off", "thumbnails", "full")  # what the Explore tab shows of the evaluated dataset (--explore-public)
FIXED_COLUMNS = ("film", "id", "finding", "kind", "question", "reference")


def outcome(record: dict, variant: str) -> bool | None:
    """Whether `variant` answered the record's question right (None: not scored)."""
    score = record.get("scores", {}).get(variant)
    if not score:
        return None
    if record["kind"] in ("open", "findings"):
        return score.get("recall", 0.0) >= OPEN_RIGHT_RECALL
    return bool(score.get("correct"))


def reading(record: dict, variant: str) -> str | None:
    """The strict yes/no reading of a yes/no question's answer; None for an unparseable one."""
    return (record.get("scores", {}).get(variant) or {}).get("parsed")


def is_yes_no(record: dict) -> bool:
    return record["kind"] == "closed" and any(s.get("yes_no") for s in record.get("scores", {}).values())


def wrong_confidence(record: dict, variant: str) -> float | None:
    """The probability `variant` gave the wrong label of a yes/no question; None without a label or a P(yes)."""
    p, label = record.get("p_yes", {}).get(variant), record.get("label")
    if p is None or label not in ("yes", "no"):
        return None
    return p if label == "no" else 1.0 - p


@dataclass(frozen=True)
class Query:
    """One view of the table. `model` and `outcome` go together; `blank` shows the blank-image variants as columns
    (and lets them be filtered, sorted and compared); `pair` names the two variants of the P(yes) gap sort;
    `claims` (an observation: `model`'s findings report, or any shown model's, claims it) and `disagree_on` (an
    observation or ANY) keep findings reports only."""

    finding: str = ""
    model: str = ""
    outcome: str = ""
    disagree: bool = False
    kind: str = ""
    blank: bool = False
    sort: str = REPORT_ORDER
    pair: tuple[str, str] | None = None
    claims: str = ""
    disagree_on: str = ""


class Table:
    """An evaluation report's questions, indexed for filtering; `films` finds each question's film. `complete`: the
    evaluation had written its metrics.json (last) before these records were read, so no more will come."""

    def __init__(self, records: list[dict], variants: list[str], films: ReportFilms, complete: bool = True):
        self.records, self.variants, self.films, self.complete = records, variants, films, complete
        self.models = with_image(variants)  # the models as evaluated, with their films
        self.findings = sorted({r["finding"] for r in records if r.get("finding")})
        self.ids = [r["id"] for r in records]
        self._by_id = {qid: i for i, qid in enumerate(self.ids)}
        self._finding = [r.get("finding") or "" for r in records]
        self._kind = [r["kind"] for r in records]
        self._yes_no = [is_yes_no(r) for r in records]
        self._outcome = {v: [outcome(r, v) for r in records] for v in variants}
        self._reading = {v: [reading(r, v) for r in records] for v in variants}
        self._p = {v: [r.get("p_yes", {}).get(v) for r in records] for v in variants}
        self._wrong_p = {v: [wrong_confidence(r, v) if self._yes_no[i] else None for i, r in enumerate(records)]
                         for v in variants}  # fmt: skip
        self.reports = FindingsIndex(records)  # findings reports' labels, read when a filter or a page needs them
        self._thumbs: dict = {}
        self._thumbs_lock = threading.Lock()  # pages of several sessions are built at once

    def __len__(self) -> int:
        return len(self.records)

    def shown(self, blank: bool) -> list[str]:
        """The variants a view shows: the models, and their blank-image runs when asked."""
        return list(self.variants) if blank else list(self.models)

    def index(self, question_id: str) -> int:
        if question_id not in self._by_id:
            raise UserError(f"no question {question_id!r} in this report")
        return self._by_id[question_id]

    def check(self, query: Query) -> None:
        """One line per mistake an API caller can make; the UI's choices never make them."""
        if query.finding and query.finding not in self.findings:
            raise UserError(f"unknown finding {query.finding!r}: this report has {', '.join(self.findings)}")
        if query.model and query.model not in self.variants:
            raise UserError(f"unknown model {query.model!r}: this report has {', '.join(self.variants)}")
        if query.outcome and query.outcome not in OUTCOMES:
            raise UserError(f"outcome must be 'right', 'wrong' or '', got {query.outcome!r}")
        if query.outcome and not query.model:
            raise UserError(f"{query.outcome} needs a model: choose whose answers")
        if query.claims not in ("", *OBSERVATIONS) or query.disagree_on not in ("", ANY, *OBSERVATIONS):
            raise UserError(f"claims and disagree_on take one of the observations ({', '.join(OBSERVATIONS)}), "
                            f"disagree_on also {ANY!r}; got {query.claims!r}, {query.disagree_on!r}")  # fmt: skip
        if query.kind not in ("", *KINDS) or query.sort not in SORTS:
            raise UserError(f"kind must be {', '.join(KINDS)} or '', sort one of {', '.join(SORTS)}")

    def select(self, query: Query) -> list[int]:
        """The indices of the records the query keeps, in its order."""
        self.check(query)
        keep = range(len(self.records))
        if query.finding:
            keep = [i for i in keep if self._finding[i] == query.finding]
        if query.kind:
            keep = [i for i in keep if self._kind[i] == query.kind]
        if query.outcome:
            wanted, scored = query.outcome == "right", self._outcome[query.model]
            keep = [i for i in keep if scored[i] is wanted]
        if query.disagree:
            readings = [self._reading[v] for v in self.shown(query.blank)]
            keep = [i for i in keep if self._yes_no[i] and len({r[i] for r in readings}) > 1]
        if query.claims:
            claimants = [query.model] if query.model else self.shown(query.blank)
            keep = self.reports.claiming(keep, query.claims, claimants)
        if query.disagree_on:
            keep = self.reports.disagreeing(keep, query.disagree_on, self.shown(query.blank))
        return self._sort(list(keep), query)

    def _sort(self, keep: list[int], query: Query) -> list[int]:
        if query.sort == P_YES_GAP:
            a, b = self._pair(query)
            pa, pb = self._p[a], self._p[b]
            # largest gap first; a question without both P(yes) goes last (sorted() is stable: report order inside)
            return sorted(keep, key=lambda i: -abs(pa[i] - pb[i]) if pa[i] is not None and pb[i] is not None else 1)
        if query.sort == CONFIDENTLY_WRONG:
            model = query.model or self._default_model()
            scored, sure = self._outcome[model], self._wrong_p[model]

            def rank(i):
                if scored[i] is not False:
                    return (2, 0.0)
                return (0, -sure[i]) if sure[i] is not None else (1, 0.0)

            return sorted(keep, key=rank)
        return keep

    def _default_model(self) -> str:
        """The model a sort uses when none is chosen: the last with its film (an adapter, when one was evaluated)."""
        return self.models[-1]

    def _pair(self, query: Query) -> tuple[str, str]:
        if query.pair and all(query.pair):
            a, b = query.pair
        else:
            a, b = self.models[0], self._default_model()
        for v in (a, b):
            if v not in self.variants:
                raise UserError(f"unknown model {v!r} for the P(yes) gap: this report has {', '.join(self.variants)}")
        return a, b

    def page(self, order: list[int], page: int, shown: list[str], size: int = PAGE_SIZE) -> list[list[str]]:
        """The table rows of page `page` (from 0) of `order`: only these rows' films are read."""
        rows = []
        for i in order[page * size : (page + 1) * size]:
            r = self.records[i]
            film = self._thumbnail(r) if self.films.available else ""
            finding, reference = r.get("finding") or "", r["reference"]
            texts = [r["answers"].get(v, "") for v in shown]
            if i in self.reports.rows:  # a findings report: what each claims, and where the shown ones disagree
                disagree = self.reports.disagree(i, shown)
                finding = f"≠ {', '.join(disagree)}" if disagree else "reports agree"
                reference, texts = self.reports.cell(i, REFERENCE), [self.reports.cell(i, v) for v in shown]
            cells = [answer_cell(text, r["p_yes"].get(v) if self._yes_no[i] else None, self._outcome[v][i])
                     for text, v in zip(texts, shown, strict=True)]  # fmt: skip
            rows.append([film, r["id"], finding, r["kind"], r["question"], reference, *cells])
        return rows

    def _thumbnail(self, record: dict) -> str:
        """The film's thumbnail, kept for the next page that shows it (a study's questions share one film); a film
        that cannot be decoded says so in its cell, and the rest of its row is shown."""
        key = record.get("film") or record["row"]
        with self._thumbs_lock:
            found = self._thumbs.get(key)
        if found is not None:
            return found
        try:
            found = thumbnail(self.films.image(record))  # outside the lock: other pages need not wait for this film
        except (UserError, OSError) as err:  # not kept: a film put right is shown on the next page that holds it
            logger.warning("Explore: the film of %s cannot be shown: %s", record["id"], err)
            return UNREADABLE
        with self._thumbs_lock:
            if len(self._thumbs) >= THUMBS_KEPT:
                self._thumbs.pop(next(iter(self._thumbs)), None)  # the oldest: dicts keep insertion order
            self._thumbs[key] = found
        return found

    @staticmethod
    def headers(shown: list[str]) -> list[str]:
        return [*FIXED_COLUMNS, *(_label(v) for v in shown)]


def _label(variant: str) -> str:
    model, blank = split_variant(variant)
    return f"{model} (blank image)" if blank else model


def open_report(report_dir: str | Path, dataset: str | None = None) -> Table:
    """The report in `report_dir` (the --out of `python -m evaluation`) as a Table, complete or as far as the running
    evaluation has written it (it appends predictions batch by batch and writes metrics.json last); UserError if it is
    none."""
    report_dir = Path(report_dir)
    run = read_run(report_dir)
    complete = (report_dir / METRICS).is_file()  # looked at first: predictions read after it are all there is
    path = report_dir / PREDICTIONS
    if not path.is_file():
        raise UserError(f"{path} not found: the evaluation has not answered anything yet")
    records = read_predictions(path)
    if not records:
        raise UserError(f"{path} holds no questions yet")
    variants = run.get("variants") or list(records[0]["answers"])
    return Table(records, variants, find_films(run, records, dataset), complete=complete)

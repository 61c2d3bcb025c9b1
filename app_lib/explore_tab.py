"""The Explore tab: an evaluation report's questions as a paged, filtered table (`app_lib.explore`), a row chosen
into the side-by-side view (and, for a findings report, every model's report with its chips below the table), and
the `/explore` API.

Paging happens on the server: the browser gets one page of rows (and their thumbnails) at a time, whatever the size
of the report, and the filtered order stays in the session's state on the server.

What it shows of the evaluated dataset is the operator's call (`--explore-public`): `full` (the table, and a row's
film into the side-by-side view), `thumbnails` (the table with its small thumbnails, no film loaded) or `off` (a note:
no film, question, answer or id of the dataset, on the page or over `/explore`). By default a Hugging Face Space shows
nothing of a dataset (CheXpert Plus's and MIMIC-CXR's agreements forbid republishing their films and reports) except
one built from `dataprep.synthetic`'s phantoms, the project's own; elsewhere everything.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from collections.abc import Callable
from functools import partial
from pathlib import Path

import gradio as gr

from app_lib.explore import (
    EXPLORE_MODES,
    PAGE_SIZE,
    REPORT_ORDER,
    Query,
    Table,
    open_report,
)
from app_lib.explore_controls import ALL, WIDTHS, explore_api, explore_body
from app_lib.handlers import ui_errors
from app_lib.tables import layout
from cxr_vqa.contract import is_synthetic
from cxr_vqa.errors import UserError
from cxr_vqa.reports import METRICS, PREDICTIONS

logger = logging.getLogger(__name__)

NO_REPORT = "No evaluation report: start the app with `--report R` (the --out of `python -m evaluation`) to see it."
OFF = (
    "**Explore is off here**: it would republish the evaluated dataset's films and the questions and answers drawn "
    "from its reports, which data-use agreements such as CheXpert Plus's and MIMIC-CXR's forbid on a public page. The "
    "evaluation's metrics are on the Results tab; where showing more is allowed, the operator starts the app with "
    "`--explore-public thumbnails` or `full`."
)
THUMBNAILS_ONLY = (
    "this deployment shows the evaluated dataset's films as thumbnails only (--explore-public thumbnails): a row's "
    "film is not loaded"
)
ID_COLUMN = 1  # the question id's place in a row (FIXED_COLUMNS)


class ExploreView:
    """The tab's events over a report's Table; without a report (or with one that cannot be read), a note."""

    def __init__(self, report_dir: str | Path | None, dataset: str | None = None, page_size: int = PAGE_SIZE, *,
                 public: str | None = None, on_space: bool = False, later: bool = False):  # fmt: skip
        if public is not None and public not in EXPLORE_MODES:
            raise ValueError(f"explore_public must be one of {', '.join(EXPLORE_MODES)}, got {public!r}")
        self.table: Table | None = None
        self.note, self.page_size = NO_REPORT, page_size
        self.report_dir, self.dataset = report_dir, dataset
        self.public, self.on_space = public, on_space
        self.later = later  # the report is written while the app serves (a demo's build): the tab fills itself then
        self.mode = public or "full"  # settled when the report opens: by default it depends on its dataset
        self._folder: Path | None = None
        self._seen: tuple[int, int] | None = None  # (size, mtime) of the predictions.jsonl the table was read from
        if report_dir is not None:
            self._open()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            found = (Path(self.report_dir) / PREDICTIONS).stat()
        except OSError:
            return None
        return found.st_size, found.st_mtime_ns

    def _open(self) -> None:
        if self.public == "off":  # nothing of the report is read, so nothing of it can be shown
            self.mode, self.note = "off", OFF
            return
        stamp = self._stamp()  # before reading: a line appended meanwhile makes the next look read it again
        try:
            table = open_report(self.report_dir, self.dataset)
            synthetic = is_synthetic(table.films.dataset)
            self.mode = self.public or ("off" if self.on_space and not synthetic else "full")
            if self.mode == "off":
                self.note = OFF
                return
            self.table, self._seen = table, stamp
            if self.mode == "thumbnails":
                self.note = f"{len(self.table):,} questions; {THUMBNAILS_ONLY}."
            elif self.table.complete:
                self.note = f"{len(self.table):,} questions from `{self.report_dir}`; {self.table.films.note}."
            else:
                self.note = (f"{len(self.table):,} questions so far from `{self.report_dir}`: no metrics.json yet, so "
                             "the evaluation is still writing this report (or stopped before its end), and each new "
                             f"page reads what it has added; {self.table.films.note}.")  # fmt: skip
        except UserError as err:
            if not Path(self.report_dir).exists():  # a demo's report comes when its build ends
                then = ("it shows here when the build has evaluated its models" if self.later
                        else "start the app again to browse it here")  # fmt: skip
                self.note = (f"The report in `{self.report_dir}` is not written yet: `/explore` answers as soon as it "
                             f"is; {then}.")  # fmt: skip
                return
            logger.warning("Explore tab: %s", err)
            self.note = f"The report in `{self.report_dir}` cannot be explored: {err}"

    def _stale(self) -> bool:
        if self.table is None:
            return True
        return not self.table.complete and (self._stamp() != self._seen or (Path(self.report_dir) / METRICS).is_file())

    def _table(self) -> Table:
        """The report's table: read once it is complete; while the evaluation writes it (the demo evaluates itself
        last, while its app serves), read again whenever predictions.jsonl has grown or metrics.json has come."""
        if self.mode == "off":
            raise UserError(OFF.replace("**", ""))
        if self.report_dir is not None and self._stale():
            self._open()
        if self.table is None:
            raise UserError(self.note)
        return self.table

    def current(self) -> Table | None:
        """The report's table as it can be read now (opened again if it was missing), or None: `note` says why."""
        try:
            return self._table()
        except UserError:
            return None

    def explore(self, finding: str | None, model: str | None, outcome: str | None, disagree,
                claims: str | None = None, disagree_on: str | None = None) -> dict:  # fmt: skip
        """`/explore`: {"total": n, "ids": question ids of predictions.jsonl in the table's order, "complete": false
        while the evaluation is still writing the report (then total and ids count what it has written so far)}.
        `claims` and `disagree_on` (optional, last: older callers pass four values) keep findings reports that the
        model (or any model) claims an observation in, and where the models' reports disagree on one (or ANY)."""
        with ui_errors():
            table = self._table()
            query = Query(finding=finding or ALL, model=model or ALL, outcome=outcome or ALL, disagree=bool(disagree),
                          claims=claims or ALL, disagree_on=disagree_on or ALL)  # fmt: skip
            if query.model and query.model not in table.models:  # the API compares the models with their films
                raise UserError(f"unknown model {query.model!r}: this report has {', '.join(table.models)}")
            order = table.select(query)
            return {"total": len(order), "ids": [table.ids[i] for i in order], "complete": table.complete}

    def show(self, finding, kind, model, outcome, disagree, blank, sort, gap_a, gap_b, claims, disagree_on, page):
        """(table, page line, page number, the page's question ids) of page `page` (from 1) of this view."""
        with ui_errors():
            query = Query(finding=finding or ALL, model=model or ALL, outcome=outcome or ALL, disagree=bool(disagree),
                          kind=kind or ALL, blank=bool(blank), sort=sort or REPORT_ORDER,
                          pair=(gap_a, gap_b) if gap_a and gap_b else None, claims=claims or ALL,
                          disagree_on=disagree_on or ALL)  # fmt: skip
            frame, columns, line, page, ids = self.page(query, page)
        return gr.Dataframe(value=frame, **columns), line, page, ids

    def page(self, query: Query, page: int | None):
        """(table value, column types and widths, page line, page number, question ids on it) of page `page`."""
        table = self._table()
        order = table.select(query)
        pages = max(1, -(-len(order) // self.page_size))
        page = min(max(1, int(page or 1)), pages)
        shown = table.shown(query.blank)
        rows = table.page(order, page - 1, shown, self.page_size)
        first = (page - 1) * self.page_size
        line = f"Page {page} of {pages} · rows {first + 1 if rows else 0}–{first + len(rows)} of {len(order):,}"
        line += "" if table.complete else " so far (the evaluation is still writing this report)"
        ids = [table.ids[i] for i in order[first : first + len(rows)]]
        return {"headers": table.headers(shown), "data": rows}, layout([*WIDTHS, *[240] * len(shown)]), line, page, ids

    def choose_id(self, question_id: str) -> tuple[str, str, str]:
        """(a file of the question's film for the upload box, its question, a status line)."""
        with ui_errors():
            table = self._table()
            if self.mode != "full":
                raise UserError(THUMBNAILS_ONLY)
            record = table.records[table.index(question_id)]
            if self._folder is None:  # a private folder, gone with the app; Gradio serves its own copy of each film
                self._folder = Path(tempfile.mkdtemp(prefix="explore-films-"))
                weakref.finalize(self, shutil.rmtree, self._folder, True)
            path = table.films.copy(record, self._folder)
        status = f"Loaded `{question_id}` into the side-by-side view above: press *Ask* to hear the live models."
        return str(path), record["question"], status

    def findings_of(self, question_id: str, blank: bool = False) -> str:
        """A findings report's row: the reference and each shown model's report with their chips (HTML); "" for
        another kind of question."""
        with ui_errors():
            table = self._table()
            i = table.index(question_id)
            return table.reports.detail(i, table.shown(bool(blank))) if i in table.reports.rows else ""

    @staticmethod
    def chosen(page_ids: list[str] | None, event: gr.SelectData) -> str:
        """The id of the row clicked. The row says its own id: its place on screen is not its place on the page once
        a header click has sorted the table in the browser."""
        if isinstance(event.row_value, (list, tuple)) and len(event.row_value) > ID_COLUMN:
            return str(event.row_value[ID_COLUMN])
        row = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        if not page_ids or not 0 <= row < len(page_ids):
            raise gr.Error("that row is no longer on the page: choose it again")
        return page_ids[row]

    def choose(self, page_ids: list[str] | None, event: gr.SelectData):
        """A click on a row of the page → its film and question into the side-by-side view."""
        return self.choose_id(self.chosen(page_ids, event))

    def choose_findings(self, page_ids: list[str] | None, blank, event: gr.SelectData) -> str:
        """A click on a row of the page → its reports' chips, under the table (a findings report; else nothing)."""
        return self.findings_of(self.chosen(page_ids, event), blank)


def explore_tab(view: ExploreView, film_file: gr.File, question: gr.Textbox, notice: str) -> tuple[list, Callable]:
    """The tab, inside the caller's Blocks and Tabs; a row goes to `film_file` and `question`. Returns (its views, a
    function giving their updates): a report written while the app serves (`view.later`, a demo's) fills the tab
    when the caller calls it."""
    with gr.Tab("Explore the evaluation", id="explore"):
        gr.Markdown(notice)
        views = [gr.Markdown(view.note, elem_id="explore-note")]
        if view.table is not None or view.later:  # the table and its controls, hidden until the report can be read
            with gr.Column(visible=view.table is not None) as body:
                views += [body, *explore_body(view, film_file, question)]
        explore_api(view)
    return views, partial(_filled, view, len(views))


def _filled(view: ExploreView, n_views: int) -> tuple:
    """Updates of the tab's views (`explore_tab`'s) as the report is now: the note, and once the report can be read
    its first page with the filters' choices (its findings, its models), the other filters left as they are. A page
    asks once, when the report has come (the demo's `Live.wire`): asked again, it would lose its filters."""
    table = view.current() if n_views > 1 else None
    if table is None:
        return view.note, *(gr.skip() for _ in range(n_views - 1))
    frame, columns, line, page, ids = view.page(Query(), 1)
    models = table.variants
    return (view.note, gr.Column(visible=True), gr.Dropdown([("All findings", ALL), *table.findings], value=ALL),
            gr.Dropdown([("any model", ALL), *models], value=ALL), gr.Dropdown(models, value=table.models[0]),
            gr.Dropdown(models, value=table.models[-1]), gr.Dataframe(value=frame, **columns), line, page,
            ids)  # fmt: skip

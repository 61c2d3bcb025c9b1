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
from pathlib import Path

import gradio as gr

from app_lib.explore import (
    CONFIDENTLY_WRONG,
    EXPLORE_MODES,
    KINDS,
    OUTCOMES,
    P_YES_GAP,
    PAGE_SIZE,
    REPORT_ORDER,
    Query,
    Table,
    open_report,
)
from app_lib.explore_findings import ANY
from app_lib.handlers import ui_errors
from app_lib.tables import layout
from cxr_vqa.contract import is_synthetic
from cxr_vqa.errors import UserError
from cxr_vqa.labeler import OBSERVATIONS
from cxr_vqa.reports import METRICS, PREDICTIONS

logger = logging.getLogger(__name__)

NO_REPORT = "No evaluation report: start the app with `--report R` (the --out of `python -m evaluation`) to see it."
HELP = (
    "Every question of the evaluation with every model's answer: ✓ right, ✗ wrong (closed: the strict score; open: "
    "half the reference's words or more), and P(yes) for yes/no questions. **Choose a row** to load its film and "
    "question into the side-by-side view above, then press *Ask* to have the live models answer it again. A findings "
    "report's cells start with what it claims ([+ present · ? uncertain], read by the project's rule-based labeler); "
    "choosing one shows every report with its chips below the table."
)
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
ALL = ""
ID_COLUMN = 1  # the question id's place in a row (FIXED_COLUMNS)
WIDTHS = (84, 160, 120, 70, 240, 220)  # px of film, id, finding, kind, question, reference; then 240 a model


class ExploreView:
    """The tab's events over a report's Table; without a report (or with one that cannot be read), a note."""

    def __init__(self, report_dir: str | Path | None, dataset: str | None = None, page_size: int = PAGE_SIZE, *,
                 public: str | None = None, on_space: bool = False):  # fmt: skip
        if public is not None and public not in EXPLORE_MODES:
            raise ValueError(f"explore_public must be one of {', '.join(EXPLORE_MODES)}, got {public!r}")
        self.table: Table | None = None
        self.note, self.page_size = NO_REPORT, page_size
        self.report_dir, self.dataset = report_dir, dataset
        self.public, self.on_space = public, on_space
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
                self.note = (f"The report in `{self.report_dir}` is not written yet: `/explore` answers as soon as it "
                             "is; start the app again to browse it here.")  # fmt: skip
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


def explore_tab(view: ExploreView, film_file: gr.File, question: gr.Textbox, notice: str) -> None:
    """The tab, inside the caller's Blocks and Tabs; a row goes to `film_file` and `question`."""
    with gr.Tab("Explore the evaluation", id="explore"):
        gr.Markdown(notice)
        gr.Markdown(view.note, elem_id="explore-note")
        table = view.table
        if table is not None:
            gr.Markdown(HELP)
            models = table.variants
            with gr.Row():
                finding = gr.Dropdown([("All findings", ALL), *table.findings], value=ALL, label="Finding",
                                      elem_id="explore-finding")  # fmt: skip
                kind = gr.Radio([("all", ALL), *KINDS], value=ALL, label="Question", elem_id="explore-kind")
                model = gr.Dropdown([("any model", ALL), *models], value=ALL, label="Model", elem_id="explore-model")
                outcome = gr.Radio([("any", ALL), *OUTCOMES], value=ALL, label="Its answer", elem_id="explore-outcome")
            with gr.Row():
                disagree = gr.Checkbox(label="Models disagree (yes/no)", elem_id="explore-disagree")
                blank = gr.Checkbox(label="Show the blank-image answers", elem_id="explore-blank")
                sort = gr.Radio([REPORT_ORDER, P_YES_GAP, CONFIDENTLY_WRONG], value=REPORT_ORDER, label="Sort",
                                elem_id="explore-sort")  # fmt: skip
                gap_a = gr.Dropdown(models, value=table.models[0], label="P(yes) gap between")
                gap_b = gr.Dropdown(models, value=table.models[-1], label="and")
            with gr.Row():  # findings reports, as the labeler reads them
                claims = gr.Dropdown([("—", ALL), *OBSERVATIONS], value=ALL, label="Findings report claims",
                                     info="present or uncertain, in the report of the model chosen above (or any)",
                                     elem_id="explore-claims")  # fmt: skip
                disagree_on = gr.Dropdown([("—", ALL), ANY, *OBSERVATIONS], value=ALL, label="Findings reports "
                                          "disagree on", info="the shown models' reports: present, uncertain or not "
                                          "claimed", elem_id="explore-disagree-on")  # fmt: skip
            frame, columns, line, _, ids = view.page(Query(), 1)  # the first page comes with the page itself
            grid = gr.Dataframe(frame, **columns, interactive=False, wrap=True, max_height=900,
                                elem_id="explore-table")  # fmt: skip
            with gr.Row():
                prev_btn = gr.Button("◀ Previous", size="sm", elem_id="explore-prev")
                page_line = gr.Markdown(line, elem_id="explore-page")
                next_btn = gr.Button("Next ▶", size="sm", elem_id="explore-next")
            status = gr.Markdown(elem_id="explore-status")
            detail = gr.HTML(elem_id="explore-findings")
            page, page_ids = gr.State(1), gr.State(ids)
            filters = [finding, kind, model, outcome, disagree, blank, sort, gap_a, gap_b, claims, disagree_on]
            outputs = [grid, page_line, page, page_ids]
            cheap = {"api_visibility": "private", "concurrency_limit": 4}
            for control in filters:
                control.change(lambda *a: view.show(*a, 1), filters, outputs, **cheap)
            prev_btn.click(lambda *a: view.show(*a[:-1], a[-1] - 1), [*filters, page], outputs, **cheap)
            next_btn.click(lambda *a: view.show(*a[:-1], a[-1] + 1), [*filters, page], outputs, **cheap)
            grid.select(view.choose_findings, [page_ids, blank], [detail], **cheap)  # kept while the view scrolls up
            grid.select(view.choose, [page_ids], [film_file, question, status], **cheap).then(
                None, js="() => window.scrollTo({top: 0, behavior: 'smooth'})"
            )
        api_inputs = [gr.Textbox(visible=False), gr.Textbox(visible=False), gr.Textbox(visible=False),
                      gr.Checkbox(visible=False), gr.Textbox(visible=False), gr.Textbox(visible=False)]  # fmt: skip
        gr.Button(visible=False).click(
            view.explore, api_inputs, [gr.JSON(visible=False)], api_name="explore", concurrency_limit=4,
            api_description='(finding or "", model or "", "right"/"wrong"/"", disagree, optional: claims an '
            f'observation or "", disagree_on an observation, "{ANY}" or "") → {{"total": n, "ids": [...], '
            '"complete": false while the report is still being written}',
        )  # fmt: skip

"""The Explore tab's controls: the filters, the table and its pages, and their events, over the handlers of an
`app_lib.explore_tab.ExploreView` (passed in: `view`), which places them in the page."""

from __future__ import annotations

import gradio as gr

from app_lib.explore import CONFIDENTLY_WRONG, FIXED_COLUMNS, KINDS, OUTCOMES, P_YES_GAP, REPORT_ORDER, Query
from app_lib.explore_findings import ANY
from app_lib.tables import layout
from cxr_vqa.labeler import OBSERVATIONS

ALL = ""
HELP = (
    "Every question of the evaluation with every model's answer: ✓ right, ✗ wrong (closed: the strict score; open: "
    "half the reference's words or more), and P(yes) for yes/no questions. **Choose a row** to load its film and "
    "question into the side-by-side view above, then press *Ask* to have the live models answer it again. A findings "
    "report's cells start with what it claims ([+ present · ? uncertain], read by the project's rule-based labeler); "
    "choosing one shows every report with its chips below the table."
)
WIDTHS = (84, 160, 120, 70, 240, 220)  # px of film, id, finding, kind, question, reference; then 240 a model


def explore_body(view, film_file: gr.File, question: gr.Textbox) -> list:
    """The table, its filters and pages, wired to `view`; returns the views that `explore_tab._filled` updates after
    the note and the body."""
    table = view.table  # None: a report to come, when `explore_tab._filled` gives the choices and the first page
    models = table.variants if table is not None else []
    gr.Markdown(HELP)
    with gr.Row():
        finding = gr.Dropdown([("All findings", ALL), *(table.findings if table else [])], value=ALL, label="Finding",
                              elem_id="explore-finding")  # fmt: skip
        kind = gr.Radio([("all", ALL), *KINDS], value=ALL, label="Question", elem_id="explore-kind")
        model = gr.Dropdown([("any model", ALL), *models], value=ALL, label="Model", elem_id="explore-model")
        outcome = gr.Radio([("any", ALL), *OUTCOMES], value=ALL, label="Its answer", elem_id="explore-outcome")
    with gr.Row():
        disagree = gr.Checkbox(label="Models disagree (yes/no)", elem_id="explore-disagree")
        blank = gr.Checkbox(label="Show the blank-image answers", elem_id="explore-blank")
        sort = gr.Radio([REPORT_ORDER, P_YES_GAP, CONFIDENTLY_WRONG], value=REPORT_ORDER, label="Sort",
                        elem_id="explore-sort")  # fmt: skip
        gap_a = gr.Dropdown(models, value=table.models[0] if table else None, label="P(yes) gap between")
        gap_b = gr.Dropdown(models, value=table.models[-1] if table else None, label="and")
    with gr.Row():  # findings reports, as the labeler reads them
        claims = gr.Dropdown([("—", ALL), *OBSERVATIONS], value=ALL, label="Findings report claims",
                             info="present or uncertain, in the report of the model chosen above (or any)",
                             elem_id="explore-claims")  # fmt: skip
        disagree_on = gr.Dropdown([("—", ALL), ANY, *OBSERVATIONS], value=ALL, label="Findings reports "
                                  "disagree on", info="the shown models' reports: present, uncertain or not "
                                  "claimed", elem_id="explore-disagree-on")  # fmt: skip
    if table is not None:  # the first page comes with the page itself
        frame, columns, line, _, ids = view.page(Query(), 1)
    else:
        frame, columns, line, ids = None, {"headers": list(FIXED_COLUMNS), **layout(list(WIDTHS))}, "", []
    grid = gr.Dataframe(frame, **columns, interactive=False, wrap=True, max_height=900, elem_id="explore-table")
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
    return [finding, model, gap_a, gap_b, *outputs]


def explore_api(view) -> None:
    """`/explore`, with or without a report (then it says why it has none)."""
    api_inputs = [gr.Textbox(visible=False), gr.Textbox(visible=False), gr.Textbox(visible=False),
                  gr.Checkbox(visible=False), gr.Textbox(visible=False), gr.Textbox(visible=False)]  # fmt: skip
    gr.Button(visible=False).click(
        view.explore, api_inputs, [gr.JSON(visible=False)], api_name="explore", concurrency_limit=4,
        api_description='(finding or "", model or "", "right"/"wrong"/"", disagree, optional: claims an '
        f'observation or "", disagree_on an observation, "{ANY}" or "") → {{"total": n, "ids": [...], '
        '"complete": false while the report is still being written}',
    )  # fmt: skip

"""The Batch tab: several films (files or a zip) and questions one a line; every model answers every (film, question),
the local ones in batched generates and the remote ones in concurrent requests, with a progress bar; a table with
thumbnails, a CSV, and the `/batch` API.

The batch runs as one event in the model worker's queue (the caller passes the app's GPU event settings), so it waits
its turn like a single question. The host's limits (`BatchLimits`) bound the answers each model gives a batch; a remote
model whose endpoint is down is skipped after its first failure, so it holds the queue for one timeout (and its
retries), not one a row.
"""

from __future__ import annotations

import gradio as gr

from app_lib.batch import (
    BatchLimits,
    LocalModels,
    RemoteModels,
    answer_rows,
    list_films,
    read_films,
    read_questions,
    write_csv,
)
from app_lib.handlers import Inputs, ui_errors
from app_lib.tables import answer_cell, export_folder, layout, thumbnail

HELP = (
    "Upload films (PNG, JPEG or DICOM; several files or one zip) and type questions, one a line: every model answers "
    "every film and question. A file that cannot be read is named below, and the others are answered."
)


class BatchView(Inputs):
    """The tab's and `/batch`'s handler: the same film and question rules as the single upload."""

    def __init__(self, vqa, votes, *, limits: BatchLimits = BatchLimits(), **kwargs):
        super().__init__(vqa, votes, **kwargs)
        self.limits = limits

    def sources(self, conversations: dict[str, list[dict]]) -> list:
        """Every kind of model that answers a batch, each with its own names: the local ones in batched generates, the
        remote ones concurrently."""
        local = [LocalModels(self.vqa.local, conversations)] if self.vqa.local is not None else []
        return local + ([RemoteModels(self.vqa.remotes, conversations)] if self.vqa.remotes else [])

    def run(self, files, questions: str | None, progress=None) -> tuple[dict, list[str], list]:
        """({"rows", "errors"} as `/batch` returns it, the model names in column order, the decoded films)."""
        with ui_errors():
            paths = [f if isinstance(f, str) else f.name for f in files or []]
            entries = list_films(paths, self.limits)
            asked = read_questions(questions, self.limits, len(entries))  # limits first: nothing decoded in vain
            films, errors = read_films(entries, self.limits, decode=self.vqa.prepare_film)
            cleaned = [self._clean(q) for q in asked]
            conversations = {q: self.vqa.conversation(None, q, self.settings.max_new_tokens) for q in cleaned}
            sources = self.sources(conversations)
            step = (lambda done, total: progress((done, total), desc="answering", unit="generate calls")) if progress \
                else None  # fmt: skip
            rows = answer_rows(films, cleaned, sources, self.settings, self.limits.batch_size, step)
        models = [name for source in sources for name in source.names]
        return {"rows": rows, "errors": errors}, models, films

    def batch(self, files, questions: str | None, progress=gr.Progress()) -> dict:
        """`/batch`: {"rows": [{"film", "question", "answers": {model: answer}, "p_yes": {model: p or null}}],
        "errors": [{"film", "error"}]}."""
        return self.run(files, questions, progress)[0]

    def batch_table(self, files, questions: str | None, progress=gr.Progress()):
        """(table, CSV file, status line)."""
        return self.present(*self.run(files, questions, progress))

    @staticmethod
    def present(result: dict, models: list[str], films: list):
        """The tab's (table with thumbnails, CSV file, status line) of a batch's result."""
        thumbs = {name: thumbnail(film.image) for name, film in films}  # names are unique: list_films numbers repeats
        data = [[thumbs[r["film"]], r["film"], r["question"],
                 *(answer_cell(r["answers"].get(m, ""), r["p_yes"].get(m)) for m in models)]
                for r in result["rows"]]  # fmt: skip
        table = gr.Dataframe(value={"headers": ["film", "name", "question", *models], "data": data},
                             **layout([84, 160, 240, *[260] * len(models)]))  # fmt: skip
        csv = write_csv(export_folder("batch") / "batch.csv", result["rows"], models)  # one batch at a time
        status = f"{len(result['rows'])} answers from each of {len(models)} models."
        if result["errors"]:
            status += " **Not answered:** " + "; ".join(f"`{e['film']}`: {e['error']}" for e in result["errors"])
        return table, str(csv), status


def batch_tab(view: BatchView, notice: str, gpu_event: dict, wrap=lambda fn: fn) -> None:
    """The tab, inside the caller's Blocks and Tabs; its events run with `gpu_event` (the model worker's queue),
    wrapped by `wrap` (spaces.GPU on ZeroGPU)."""
    limits = view.limits
    with gr.Tab("Batch", id="batch"):
        gr.Markdown(notice)
        gr.Markdown(f"{HELP} At most {limits.max_files} films, {limits.max_questions} questions and "
                    f"{limits.max_rows} film-question pairs a batch.")  # fmt: skip
        with gr.Row():
            files = gr.File(label="Films (PNG, JPEG, DICOM, or a zip)", file_count="multiple", type="filepath",
                            elem_id="batch-files")  # fmt: skip
            questions = gr.Textbox(label="Questions, one a line", lines=4, elem_id="batch-questions")
        run_btn = gr.Button("Answer all", variant="primary", elem_id="batch-run")
        status = gr.Markdown(elem_id="batch-status")
        table = gr.Dataframe(interactive=False, wrap=True, max_height=900, elem_id="batch-table")
        csv = gr.File(label="CSV", interactive=False, elem_id="batch-csv")
        outputs = [table, csv, status]
        run_btn.click(wrap(view.batch_table), [files, questions], outputs, api_visibility="private", **gpu_event)
        api_inputs = [gr.File(visible=False, file_count="multiple", type="filepath"), gr.Textbox(visible=False)]
        gr.Button(visible=False).click(
            wrap(view.batch), api_inputs, [gr.JSON(visible=False)], api_name="batch", **gpu_event,
            api_description='(files, questions one a line) → {"rows": [{"film", "question", "answers", "p_yes"}], '
            '"errors": [{"film", "error"}]}',
        )  # fmt: skip

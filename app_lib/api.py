"""The app's programmatic API, for `gradio_client`: the names scripts call, kept stable (new views add names, never
change these). Hidden components give the client plain strings and dicts; every call shares the model worker.

    register_api(handlers, maps, [film_file, question], wrap=on_gpu, gpu_event=GPU_EVENT)   # inside gr.Blocks
"""

from __future__ import annotations

import gradio as gr

from app_lib.findings_view import FindingsView


def register_api(h, maps, inputs: list, *, wrap=lambda fn: fn, gpu_event: dict) -> None:
    """`/compare`, `/compare_scores`, `/compare_all` and `/maps` over (film file, question), `/findings` over the film
    file; the Explore and Batch tabs and the demo register their own names (`/explore`, `/batch`, `/demo_status`)."""
    for name, fn, outputs, about in (
        ("compare", h.compare, [gr.Textbox(visible=False), gr.Textbox(visible=False)],
         '(film file, question) → (base answer, first adapter\'s answer; "" without an adapter)'),
        ("compare_scores", h.compare_scores, [gr.JSON(visible=False)],
         '(film file, question) → {"base": {"answer", "p_yes"}, "tuned": {...}}; p_yes null for open answers'),
        ("compare_all", h.compare_all, [gr.JSON(visible=False)],
         '(film file, question) → {model name: answer} for every model, remote ones included ("error: <why>" '
         "for one that did not answer)"),
        ("maps", maps.maps, [gr.JSON(visible=False)],
         "(film file, question) → {model name: {answer, map: side x side relevance in [0, 1] or null, sinks, "
         "available}}: where each model looked for its answer"),
    ):  # fmt: skip
        gr.Button(visible=False).click(wrap(fn), inputs, outputs, api_name=name, api_description=about, **gpu_event)
    about = (
        '(film file) → {model name: {"text": its findings, "labels": {observation: 1 present, 0 absent, -1 '
        'uncertain; not mentioned: left out}}} for every model, remote ones included ("text": "error: <why>", '
        '"labels": null for one that did not answer); labels from the project\'s rule-based labeler'
    )
    gr.Button(visible=False).click(wrap(FindingsView(h).findings), inputs[:1], [gr.JSON(visible=False)],
                                   api_name="findings", api_description=about, **gpu_event)  # fmt: skip

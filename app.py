"""Side-by-side chest X-ray VQA demo: the base LLaVA-1.5 and the fine-tuned adapter answer the same question, from
one 4-bit model in one batched generate. A research demo, not a medical device.

    python app.py --base llava-hf/llava-1.5-7b-hf --adapter runs/llava-cxr               # http://127.0.0.1:7860
    python app.py --base runs/tiny --adapter runs/tiny-adapter --no-4bit --port 7861     # CPU smoke run
    python app.py --adapter runs/llava-cxr --report reports/test --votes-db votes.sqlite
    BASE_MODEL=llava-hf/llava-1.5-7b-hf ADAPTER_MODEL=user/llava-cxr python app.py         # Hugging Face Spaces
    python app.py --config app.yaml --port 8080                                           # YAML gives defaults

Programmatic use: `gradio_client.Client(url).predict(handle_file("film.png"), "Is there cardiomegaly?",
api_name="/compare")` returns (base answer, fine-tuned answer); the second is "" without an adapter.
"""

from __future__ import annotations

import json
import logging
import signal
from functools import partial
from pathlib import Path

import gradio as gr

from app_lib.config import parse_config
from app_lib.handlers import NO_ADAPTER, NO_BLIND, Handlers
from app_lib.results import load_report
from app_lib.votes import VoteStore
from cxr_vqa.cli import user_errors
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.questions import MAX_QUESTION_CHARS

try:  # ZeroGPU on Hugging Face Spaces: a GPU is attached only while a decorated function runs
    import spaces
except ImportError:
    spaces = None

EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "examples"
NOTICE = (
    "⚠️ **Research demo, not a medical device. Not for diagnosis or treatment decisions.** Answers come from a "
    "language model and can be wrong with confidence. Do not upload images that identify a patient."
)
SUGGESTED_QUESTIONS = [
    "Is there cardiomegaly?",
    "Is there a pleural effusion?",
    "Is there a pneumothorax?",
    "Are there any support devices?",
    "What abnormalities are seen in this chest X-ray?",
]
BLIND_HELP = (
    "Both models answer; you see the answers as **A** and **B** in random order, vote, then the sides are revealed. "
    "Votes are stored with the question, both answers and a hash of the film, never the film itself."
)
CSS = "#notice {border: 2px solid #d97706; border-radius: 8px; padding: 4px 12px; background: #fffbeb}"
PANE = {"height": 320, "buttons": ["copy_all"]}  # no "share": films must not go to public Hub discussions
GPU_EVENT = {"concurrency_id": "gpu", "concurrency_limit": 1}  # every model call shares one worker


def on_gpu(fn):
    """`spaces.GPU(fn)` when the ZeroGPU package is installed, else `fn` unchanged."""
    return spaces.GPU(fn) if spaces is not None else fn


def film_examples() -> list[tuple[str, str, str]]:
    """(film path, suggested question, label) for each synthetic phantom in assets/examples/examples.json."""
    index_file = EXAMPLES_DIR / "examples.json"
    if not index_file.is_file():
        return []
    found = []
    for item in json.loads(index_file.read_text()):
        name = ", ".join(item["findings"]).lower() or "no finding"
        found.append((str(EXAMPLES_DIR / item["file"]), item["question"], f"Synthetic phantom: {name}"))
    return found


def create_demo(
    vqa,
    *,
    votes_db: str | Path = "votes.sqlite",
    report_dir: str | Path | None = None,
    settings: GenerationSettings = GenerationSettings(),
    rng=None,
) -> gr.Blocks:
    """The Blocks app around an already loaded `VQAModel`; nothing is loaded here. `settings` are the defaults of
    the sliders and what `/compare` uses."""
    h = Handlers(vqa, VoteStore(votes_db), settings=settings, rng=rng)
    report = load_report(report_dir)
    adapter = f"`{vqa.adapter_name}`" if vqa.has_adapter else "none (fine-tuned pane disabled)"
    quantized = "4-bit nf4" if vqa.is_4bit else "full precision"

    # delete_cache: uploaded films leave the server's disk after an hour or so, and all of them when it stops
    with gr.Blocks(title="Chest X-ray VQA: base vs fine-tuned", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# Chest X-ray VQA: base vs fine-tuned LLaVA-1.5")
        gr.Markdown(NOTICE, elem_id="notice")
        gr.Markdown(f"Base model: `{vqa.base_name}` ({quantized}) · Adapter: {adapter}", elem_id="models")
        film, chats, trial = gr.State(None), gr.State(None), gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                # gr.File, not gr.Image: browsers cannot decode DICOM, and the model-side loader decides what is valid
                film_file = gr.File(label="Chest X-ray (PNG, JPEG or DICOM)", type="filepath", elem_id="film-file")
                film_view = gr.Image(label="As the model sees it", interactive=False, height=300, elem_id="film-view")
                film_status = gr.Markdown(elem_id="film-status")
            with gr.Column(scale=2):
                question = gr.Textbox(
                    label="Question", placeholder="Ask about the film…", max_length=MAX_QUESTION_CHARS, lines=1,
                    elem_id="question",
                )  # fmt: skip
                gr.Examples([[q] for q in SUGGESTED_QUESTIONS], inputs=[question], label="Suggested questions")
                with gr.Tabs():
                    with gr.Tab("Side by side"):
                        with gr.Row():
                            ask_btn = gr.Button("Ask", variant="primary", elem_id="ask")
                            clear_btn = gr.Button("Clear conversation", elem_id="clear")
                        with gr.Row():
                            with gr.Column():
                                base_chat = gr.Chatbot(label="Base", elem_id="base-chat", **PANE)
                                base_stats = gr.Markdown(elem_id="base-stats")
                            with gr.Column():
                                tuned_chat = gr.Chatbot(
                                    label="Fine-tuned", elem_id="tuned-chat", **PANE,
                                    placeholder=None if vqa.has_adapter else NO_ADAPTER,
                                )  # fmt: skip
                                tuned_stats = gr.Markdown(elem_id="tuned-stats")
                    with gr.Tab("Blind A/B"):
                        gr.Markdown(BLIND_HELP + ("" if vqa.has_adapter else f"\n\n**Unavailable:** {NO_BLIND}."))
                        blind_btn = gr.Button(
                            "Answer blind", variant="primary", interactive=vqa.has_adapter, elem_id="blind"
                        )
                        with gr.Row():
                            answer_a = gr.Textbox(label="A", interactive=False, lines=4, elem_id="answer-a")
                            answer_b = gr.Textbox(label="B", interactive=False, lines=4, elem_id="answer-b")
                        with gr.Row():
                            votes = {
                                "A": gr.Button("A is better", elem_id="vote-a"),
                                "B": gr.Button("B is better", elem_id="vote-b"),
                                "tie": gr.Button("Tie", elem_id="vote-tie"),
                                "both_wrong": gr.Button("Both wrong", elem_id="vote-both-wrong"),
                            }
                        reveal = gr.Markdown(elem_id="reveal")
                    with gr.Tab("Results"):
                        results = gr.Markdown(elem_id="results")
                        refresh_btn = gr.Button("Refresh", size="sm")
                        gr.Markdown(report.note)
                        if report.metrics is not None:
                            gr.JSON(report.metrics, label="metrics.json")
                        if report.plot is not None:
                            gr.Image(report.plot, label="comparison.png", interactive=False)
                with gr.Accordion("Generation settings", open=False):
                    max_new = gr.Slider(1, 512, value=settings.max_new_tokens, step=1, label="Max new tokens")
                    temperature = gr.Slider(
                        0.0, 1.5, value=settings.temperature, step=0.05, label="Temperature (0 = greedy)"
                    )
                    top_p = gr.Slider(0.05, 1.0, value=settings.top_p, step=0.05, label="Top-p")
        examples = film_examples()
        if examples:
            gr.Examples(
                [[path, q] for path, q, _ in examples], inputs=[film_file, question],
                example_labels=[label for *_, label in examples], cache_examples=False,
                label="Examples: synthetic phantoms drawn by dataprep.synthetic, not patients",
            )  # fmt: skip
        # the API endpoint: two hidden boxes give gradio_client a (base, fine-tuned) pair of strings
        api_base, api_tuned = gr.Textbox(visible=False), gr.Textbox(visible=False)

        chat_outputs = [base_chat, tuned_chat, base_stats, tuned_stats, chats]
        private = {"api_visibility": "private"}
        film_file.change(
            h.load_film, [film_file], [film_view, film, film_status, *chat_outputs], concurrency_limit=4, **private
        )
        sliders = [max_new, temperature, top_p]
        ask = on_gpu(h.ask)
        for trigger in (ask_btn.click, question.submit):
            trigger(ask, [film, question, chats, *sliders], [*chat_outputs, question], **GPU_EVENT, **private)
        for clear in (clear_btn.click, base_chat.clear, tuned_chat.clear):  # a pane's trash icon clears both
            clear(h.clear, None, chat_outputs, queue=False, **private)
        blind_outputs = [answer_a, answer_b, trial, reveal]
        blind_btn.click(on_gpu(h.blind_answer), [film, question, *sliders], blind_outputs, **GPU_EVENT, **private)
        for choice, button in votes.items():
            button.click(partial(h.vote, choice), [trial], [reveal, trial], concurrency_limit=4, **private)
        refresh_btn.click(h.results, None, [results], queue=False, **private)
        demo.load(h.results, None, [results], queue=False, **private)
        api_btn = gr.Button(visible=False)
        api_btn.click(
            on_gpu(h.compare), [film_file, question], [api_base, api_tuned], api_name="compare", **GPU_EVENT,
            api_description="(film file, question) → (base answer, fine-tuned answer; \"\" without an adapter)",
        )  # fmt: skip
    return demo


def serve(demo: gr.Blocks, *, host: str, port: int, queue_size: int, max_file_size: str, **launch_kwargs):
    """Queue (bounded, one model worker) and launch; files are served only from Gradio's own upload/cache dirs."""
    demo.queue(max_size=queue_size, default_concurrency_limit=1)
    return demo.launch(
        server_name=host, server_port=port, max_file_size=max_file_size, css=CSS, show_error=False, **launch_kwargs
    )


def stop_on_sigterm() -> None:
    """`docker stop`, Kubernetes and systemd stop with SIGTERM. Python has no handler for it, and as a container's
    PID 1 the kernel gives it no default action either: the signal is dropped and the container is killed after its
    stop timeout. Treated as Ctrl-C, Gradio closes the server (votes need no flush: each is committed when cast)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv, description=__doc__)
    stop_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own startup requests, one line each
    from cxr_vqa.model import load_model

    print(f"loading {config.base}" + (f" + {config.adapter}" if config.adapter else " (no adapter)"))
    demo = None
    try:
        with user_errors():
            vqa = load_model(config.base, config.adapter, load_in_4bit=config.load_in_4bit, device=config.device)
            settings = GenerationSettings(max_new_tokens=config.max_new_tokens)
            demo = create_demo(vqa, votes_db=config.votes_db, report_dir=config.report, settings=settings)
        print(f"serving on http://{config.host}:{config.port} (votes: {config.votes_db})")
        serve(
            demo, host=config.host, port=config.port, queue_size=config.queue_size, max_file_size=config.max_file_size
        )
    except KeyboardInterrupt:  # stopped while loading or starting up (once serving, Gradio handles it): no traceback
        if demo is not None:
            demo.close()
        print("stopped before serving")
        return
    print("server closed")


if __name__ == "__main__":
    main()

"""Side-by-side chest X-ray VQA demo: the base LLaVA-1.5 and the fine-tuned adapter answer the same question, from
one 4-bit model in one batched generate. A research demo, not a medical device.

    python app.py --demo                 # offline: tiny demo models trained on synthetic phantoms (built on first use)
    python app.py --base llava-hf/llava-1.5-7b-hf --adapter runs/llava-cxr               # http://127.0.0.1:7860
    python app.py --base runs/tiny --adapter runs/tiny-adapter --no-4bit --port 7861     # CPU smoke run
    python app.py --adapter runs/llava-cxr --report reports/test --votes-db votes.sqlite
    python app.py --adapter labels=runs/a --adapter llm=runs/b       # several adapters: one pane each, one generate
    python app.py --adapter runs/a --remote gpt4o=https://api.openai.com/v1#gpt-4o    # + a remote model's pane
    python app.py --base none --remote tuned=http://127.0.0.1:8000/v1#cxr   # remote models only (vLLM): no download
    BASE_MODEL=llava-hf/llava-1.5-7b-hf ADAPTER_MODEL=user/llava-cxr python app.py         # Hugging Face Spaces
    python app.py --config app.yaml --port 8080                                           # YAML gives defaults

Programmatic use: `gradio_client.Client(url).predict(handle_file("film.png"), "Is there cardiomegaly?",
api_name="/compare")` returns (base answer, first adapter's answer; "" without an adapter); "/compare_scores" adds
P(yes) to each; "/compare_all" returns {model name: answer} for every model, remote ones included (a remote model
that did not answer gives "error: <why>"); "/maps" adds where each local model looked; "/explore" (with --report)
the question ids of the evaluation a filter keeps, "/batch" every model's answers to several films and questions.
"""

from __future__ import annotations

import logging
import signal
from functools import partial
from pathlib import Path

import gradio as gr

from app_lib import demo as demo_models
from app_lib.api import register_api
from app_lib.batch import BatchLimits
from app_lib.batch_tab import BatchView, batch_tab
from app_lib.blind import NO_BLIND, Blind
from app_lib.config import parse_config
from app_lib.explore_tab import ExploreView, explore_tab
from app_lib.handlers import NO_ADAPTER, Handlers, pane_label
from app_lib.maps import Maps
from app_lib.results import load_report, report_updates
from app_lib.tables import model_label
from app_lib.votes import VoteStore
from cxr_vqa.cli import user_errors
from cxr_vqa.contract import Example, read_examples
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.lineup import NO_BASE, Lineup
from cxr_vqa.questions import MAX_QUESTION_CHARS
from cxr_vqa.remote import RemoteModel, remote_specs
from cxr_vqa.vqa import BASE, TUNED

try:  # ZeroGPU on Hugging Face Spaces: a GPU is attached only while a decorated function runs
    import spaces
except ImportError:
    spaces = None

EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "examples"  # synthetic phantoms: the demo models'
REAL_EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "real"  # NIH ChestX-ray14 films: a real model's
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


def film_examples(folder: Path = REAL_EXAMPLES_DIR) -> list[Example]:
    """The example films of `folder` (its examples.json), with their suggested questions: real chest X-rays by
    default, the synthetic phantoms of assets/examples/ for the demo models."""
    return read_examples(folder) or []


def create_demo(
    vqa,
    *,
    remotes: list[RemoteModel] | tuple = (),
    votes_db: str | Path = "votes.sqlite",
    report_dir: str | Path | None = None,
    settings: GenerationSettings = GenerationSettings(),
    rng=None,
    header: str | None = None,
    examples: list[Example] | None = None,
    dataset: str | None = None,
    batch_limits: BatchLimits = BatchLimits(),
    live: demo_models.Live | None = None,
) -> gr.Blocks:
    """The Blocks app around an already loaded `VQAModel` (None: `remotes` only) and any remote models; nothing is
    loaded here. One pane per model (base first, remote last); `settings` are the defaults of the sliders and what the
    API uses; `header` and `examples` replace the standard ones (the demo's); `dataset` finds the Explore tab's films
    when the report's own path is gone; `live`, a demo still building, keeps its state on the page and at
    `/demo_status`."""
    models = Lineup(vqa, remotes)  # every model the panes, blind trials and /compare_all ask
    votes = VoteStore(votes_db)
    h = Handlers(models, votes, settings=settings, rng=rng, notes=live.notes if live else None)
    blind = Blind(models, votes, settings=settings, rng=rng, notes=live.notes if live else None)
    can_blind = len(models.model_names) > 1 or live is not None  # the demo's adapter comes with its first epoch
    maps = Maps(models, votes, settings=settings, rng=rng, names=live.names if live else None)
    report = load_report(report_dir)
    adapters = ", ".join(f"`{name}` = {model_label(source)}" for name, source in models.adapters.items())
    if live is not None:
        adapters = f"`{TUNED}` = `{live.demo.adapter}` (its newest checkpoint while it trains)"
    quantized = "4-bit nf4" if models.is_4bit else "full precision"
    remote = ", ".join(f"`{name}` = `{models.sources[name]}`" for name in models.remote_names)

    # delete_cache: uploaded films leave the server's disk after an hour or so, and all of them when it stops
    with gr.Blocks(title="Chest X-ray VQA: base vs fine-tuned", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# Chest X-ray VQA: base vs fine-tuned LLaVA-1.5")
        gr.Markdown(NOTICE, elem_id="notice")
        if header:
            gr.Markdown(header, elem_id="demo-header")
        status = gr.Markdown(live.markdown(), elem_id="demo-status") if live else None
        models_line = (
            f"Base model: {model_label(models.base_name)} ({quantized}) · Adapters: {adapters or 'none'}"
            if vqa is not None
            else "No local model (`--base none`)"
        ) + (f" · Remote: {remote}" if remote else "")
        gr.Markdown(models_line, elem_id="models")
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
                        panes, stats = [], []
                        with gr.Row():
                            for model in h.panes:
                                with gr.Column():
                                    waiting = live.notes()[TUNED].capitalize() if live else NO_ADAPTER
                                    placeholder = waiting if model not in models.model_names else None
                                    label = pane_label(model, remote=model in models.remotes)
                                    panes.append(gr.Chatbot(label=label, elem_id=f"{pane_id(model)}-chat",
                                                            placeholder=placeholder, **PANE))  # fmt: skip
                                    stats.append(gr.Markdown(elem_id=f"{pane_id(model)}-stats"))
                        map_view = maps.view(film, chats, len(h.panes), GPU_EVENT, on_gpu)
                    with gr.Tab("Blind A/B"):
                        gr.Markdown(BLIND_HELP + ("" if can_blind else f"\n\n**Unavailable:** {NO_BLIND}."))
                        blind_btn = gr.Button(
                            "Answer blind", variant="primary", interactive=can_blind, elem_id="blind"
                        )
                        with gr.Row():
                            answer_a = gr.Textbox(label="A", interactive=False, lines=4, elem_id="answer-a")
                            answer_b = gr.Textbox(label="B", interactive=False, lines=4, elem_id="answer-b")
                        with gr.Row():
                            vote_buttons = {
                                "A": gr.Button("A is better", elem_id="vote-a"),
                                "B": gr.Button("B is better", elem_id="vote-b"),
                                "tie": gr.Button("Tie", elem_id="vote-tie"),
                                "both_wrong": gr.Button("Both wrong", elem_id="vote-both-wrong"),
                            }
                        reveal = gr.Markdown(elem_id="reveal")
                    with gr.Tab("Results"):
                        results = gr.Markdown(elem_id="results")
                        with gr.Row():
                            refresh_btn = gr.Button("Refresh", size="sm")
                            export_btn = gr.DownloadButton("Export all votes (CSV)", size="sm", elem_id="export")
                        report_views = [
                            gr.Markdown(report.note, elem_id="report-note"),
                            gr.JSON(report.metrics, label="metrics.json", visible=report.metrics is not None),
                            gr.Image(report.plot, label="comparison.png", interactive=False,
                                     visible=report.plot is not None, elem_id="report-plot"),
                        ]  # fmt: skip
                with gr.Accordion("Generation settings", open=False):
                    longest = max(512, settings.max_new_tokens)  # --max-new-tokens may start it past 512
                    max_new = gr.Slider(1, longest, value=settings.max_new_tokens, step=1, label="Max new tokens")
                    temperature = gr.Slider(
                        0.0, 1.5, value=settings.temperature, step=0.05, label="Temperature (0 = greedy)"
                    )
                    top_p = gr.Slider(0.05, 1.0, value=settings.top_p, step=0.05, label="Top-p")
        examples = film_examples() if examples is None else examples
        if examples:
            gr.Examples(
                [[e.film, e.question] for e in examples], inputs=[film_file, question],
                example_labels=[e.label for e in examples], cache_examples=False,
                label="Examples (each says what it is: a real film, or a phantom drawn by dataprep.synthetic)",
            )  # fmt: skip
        with gr.Tabs():  # full width under the live models: the evaluation's questions, and batches of films
            explore_tab(ExploreView(report_dir, dataset), film_file, question, NOTICE)
            batch = BatchView(models, votes, limits=batch_limits, settings=settings, rng=rng)
            batch_tab(batch, NOTICE, GPU_EVENT, wrap=on_gpu)

        chat_outputs = [*panes, *stats, chats]
        private = {"api_visibility": "private"}
        film_file.change(
            h.load_film, [film_file], [film_view, film, film_status, *chat_outputs], concurrency_limit=4, **private
        )
        sliders = [max_new, temperature, top_p]
        ask = on_gpu(h.ask)
        for trigger in (ask_btn.click, question.submit):
            trigger(ask, [film, question, chats, *sliders], [*chat_outputs, question], **GPU_EVENT, **private)
        for clear in (clear_btn.click, *[pane.clear for pane in panes]):  # a pane's trash icon clears them all
            clear(h.clear, None, chat_outputs, queue=False, **private)
        map_view.clear_on(ask_btn.click, question.submit, clear_btn.click, film_file.change)  # maps of old answers
        blind_outputs = [answer_a, answer_b, trial, reveal]
        blind_btn.click(on_gpu(blind.answer), [film, question, *sliders], blind_outputs, **GPU_EVENT, **private)
        for choice, button in vote_buttons.items():
            button.click(partial(blind.vote, choice), [trial], [reveal, trial], concurrency_limit=4, **private)
        refresh_btn.click(blind.results, None, [results], queue=False, **private)
        export_btn.click(blind.export, None, [export_btn], queue=False, **private)
        demo.load(blind.results, None, [results], queue=False, **private)
        reload = partial(report_updates, report_dir)  # a report may be written while the app runs (the demo's)
        if report_dir is not None:
            for event in (demo.load, refresh_btn.click):
                event(reload, None, report_views, queue=False, **private)
        if live is not None:
            live.wire(demo, status, report_views, reload)
        register_api(h, maps, [film_file, question], wrap=on_gpu, gpu_event=GPU_EVENT)
    return demo


def pane_id(model: str) -> str:
    """The pane's element id: base-chat, tuned-chat, or model-<name>-chat."""
    return model if model in (BASE, TUNED) else f"model-{model}"


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

    demo = builder = None
    try:
        with user_errors():
            base, adapters, four_bit, report = config.base, config.adapter, config.load_in_4bit, config.report
            extra = {}
            if config.demo:  # tiny models: full precision (4-bit on a CPU only slows them down)
                built, builder = demo_models.start(config.demo_dir)  # serves once the base exists; training goes on
                base, adapters, four_bit, report = built.base, [], False, report or built.report
                extra = {"header": demo_models.HEADER, "examples": built.examples + film_examples(EXAMPLES_DIR)}
            # one retry: a person waits, and a dead endpoint must not hold the queue for minutes
            remotes = [RemoteModel(spec, timeout=config.remote_timeout, max_retries=1)
                       for spec in remote_specs(config.remote).values()]  # fmt: skip
            if base == NO_BASE:  # remote models only: nothing to load or download
                vqa = None
            else:
                print(f"loading {base}" + (f" + {', '.join(adapters)}" if adapters else " (no adapter)"))
                vqa = load_model(base, adapters, load_in_4bit=four_bit, device=config.device)
            if config.demo:  # the fine-tuned pane: the newest checkpoint now, newer ones as they come
                extra["live"] = demo_models.Live(built, vqa)
                extra["live"].refresh()
                extra["live"].watch()
            settings = GenerationSettings(max_new_tokens=config.max_new_tokens)
            extra |= {"dataset": config.dataset, "batch_limits": config.batch_limits()}
            demo = create_demo(vqa, remotes=remotes, votes_db=config.votes_db, report_dir=report, settings=settings,
                               **extra)  # fmt: skip
        print(f"serving on http://{config.host}:{config.port} (votes: {config.votes_db})")
        serve(
            demo, host=config.host, port=config.port, queue_size=config.queue_size, max_file_size=config.max_file_size
        )
    except KeyboardInterrupt:  # stopped while loading or starting up (once serving, Gradio handles it): no traceback
        if demo is not None:
            demo.close()
        print("stopped before serving")
        return
    finally:
        demo_models.stop(builder)  # a demo still building stops with the app; its next start continues it
    print("server closed")


if __name__ == "__main__":
    main()

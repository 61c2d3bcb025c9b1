"""Side-by-side chest X-ray VQA demo: the base LLaVA-1.5 and the fine-tuned adapter answer the same question, from
one 4-bit model in one batched generate. A research demo, not a medical device.

    python app.py --demo                 # offline: tiny demo models trained on synthetic phantoms (built on first use)
    python app.py --base llava-hf/llava-1.5-7b-hf --adapter runs/llava-cxr               # http://127.0.0.1:7860
    python app.py --base runs/tiny --adapter runs/tiny-adapter --no-4bit --port 7861     # CPU smoke run
    python app.py --adapter runs/llava-cxr --report reports/test --votes-db votes.sqlite
    python app.py --adapter labels=runs/a --adapter llm=runs/b       # several adapters: one pane each, one generate
    python app.py --adapter runs/a --remote gpt4o=https://api.openai.com/v1#gpt-4o    # + a remote model's pane
    python app.py --base none --remote tuned=http://127.0.0.1:8000/v1#cxr   # remote models only (vLLM): no download
    python app.py --base none --gguf base=runs/gguf-base --gguf tuned=runs/gguf-q4   # llama.cpp, no GPU (docs/gguf.md)
    BASE_MODEL=llava-hf/llava-1.5-7b-hf ADAPTER_MODEL=user/llava-cxr python app.py         # Hugging Face Spaces
    python app.py --config app.yaml --port 8080                                           # YAML gives defaults
    python app.py --host 0.0.0.0 --auth-file users.txt --ssl-certfile cert.pem --ssl-keyfile key.pem   # a LAN
    CXR_VQA_OPERATOR_TOKEN=... python app.py ...       # the operator may export the votes (page, or /export_votes)

docs/deploying.md: every setting for a public Space, a hospital LAN and Docker, and what each protects.

Programmatic use: `gradio_client.Client(url).predict(handle_file("film.png"), "Is there cardiomegaly?",
api_name="/compare")` returns (base answer, first adapter's answer; "" without an adapter); "/compare_scores" adds
P(yes) to each; "/compare_all" returns {model name: answer} for every model, remote ones included (a remote model
that did not answer gives "error: <why>"); "/findings" (film only) {model name: {"text": its findings, "labels":
{observation: 1 | 0 | -1}}} (docs/app-findings.md); "/maps" adds where each local model looked; "/explore" (with
--report) the question ids of the evaluation a filter keeps, "/batch" every model's answers to several films and
questions; "/export_votes" (operator token) the CSV of every vote. A client past its limits (one question in flight
per session, --client-in-flight per address, --rate-per-minute) gets HTTP 429 with "busy: ..." or "rate limit: ..."
at once.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

if __name__ == "__main__":  # `--demo`: its build starts before the imports below (seconds), which run beside it
    from app_lib.demo_early import start_early

    start_early(sys.argv[1:])

import gradio as gr

from app_lib import demo as demo_models
from app_lib import launch
from app_lib.access import read_users
from app_lib.api import register_api
from app_lib.batch import BatchLimits
from app_lib.batch_tab import BatchView, batch_tab
from app_lib.blind import Blind
from app_lib.config import on_space, parse_config
from app_lib.explore_tab import ExploreView, explore_tab
from app_lib.findings_html import CSS as FINDINGS_CSS
from app_lib.handlers import NO_ADAPTER, Handlers
from app_lib.maps import Maps
from app_lib.side_by_side import NO_SHARE, Page, models_line, remote_notice, side_by_side_tab
from app_lib.votes import VoteStore
from app_lib.votes_tab import Operator, blind_tab, operator_token, results_tab, wire_blind
from cxr_vqa.cli import user_errors
from cxr_vqa.contract import Example, read_examples
from cxr_vqa.findings import FINDINGS_QUESTION
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.lineup import NO_BASE, Lineup
from cxr_vqa.llama_server import LlamaServers
from cxr_vqa.questions import MAX_QUESTION_CHARS
from cxr_vqa.remote import RemoteModel
from cxr_vqa.vqa import TUNED

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
    FINDINGS_QUESTION,  # what the Findings button asks: every model writes its findings, read as chips
    "Is there cardiomegaly?",
    "Is there a pleural effusion?",
    "Is there a pneumothorax?",
    "Are there any support devices?",
    "What abnormalities are seen in this chest X-ray?",
]
CSS = "#notice {border: 2px solid #d97706; border-radius: 8px; padding: 4px 12px; background: #fffbeb}" + FINDINGS_CSS
# every model call shares one worker; the visitor limits (app_lib.visitors) apply to this group: every event that
# runs a model (Ask, Findings, /findings ...) joins it with **GPU_EVENT and is limited with the others
GPU_EVENT = {"concurrency_id": "gpu", "concurrency_limit": 1}


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
    operator: Operator = Operator(),
    votes_retention_days: int | None = None,
    explore_public: str | None = None,
) -> gr.Blocks:
    """The Blocks app around an already loaded `VQAModel` (None: `remotes` only) and any remote models; nothing is
    loaded here. One pane per model (base first, remote last); `settings` are the defaults of the sliders and what the
    API uses; `header` and `examples` replace the standard ones (the demo's); `dataset` finds the Explore tab's films
    when the report's own path is gone; `live`, a demo still building, keeps its state on the page and at
    `/demo_status`; `operator` may export the votes (nobody by default); `explore_public` is what Explore shows of
    the evaluated dataset (None: `ExploreView`'s default for this host)."""
    models = Lineup(vqa, remotes)  # every model the panes, blind trials and /compare_all ask
    votes = VoteStore(votes_db, retention_days=votes_retention_days)
    notes = live.notes if live else None
    h = Handlers(models, votes, settings=settings, rng=rng, notes=notes)
    blind = Blind(models, votes, settings=settings, rng=rng, notes=notes)
    maps = Maps(models, votes, settings=settings, rng=rng, names=live.names if live else None)

    # delete_cache: uploaded films leave the server's disk after an hour or so, and all of them when it stops
    with gr.Blocks(title="Chest X-ray VQA: base vs fine-tuned", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# Chest X-ray VQA: base vs fine-tuned LLaVA-1.5")
        gr.Markdown(NOTICE, elem_id="notice")
        if header:
            gr.Markdown(header, elem_id="demo-header")
        status = gr.Markdown(live.markdown(), elem_id="demo-status") if live else None
        gr.Markdown(models_line(models, live.demo.adapter if live else None), elem_id="models")
        if remote_notice(models):
            gr.Markdown(remote_notice(models), elem_id="remote-notice")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                # gr.File, not gr.Image: browsers cannot decode DICOM, and the model-side loader decides what is valid
                film_file = gr.File(label="Chest X-ray (PNG, JPEG or DICOM)", type="filepath", elem_id="film-file")
                film_view = gr.Image(label="As the model sees it", interactive=False, height=300, buttons=NO_SHARE,
                                     elem_id="film-view")  # fmt: skip
                film_status = gr.Markdown(elem_id="film-status")
            with gr.Column(scale=2):
                question = gr.Textbox(label="Question", placeholder="Ask about the film…", lines=1,
                                      max_length=MAX_QUESTION_CHARS, elem_id="question")  # fmt: skip
                page = Page(film_file, film_view, film_status, gr.State(None), gr.State(None), question)
                gr.Examples([[q] for q in SUGGESTED_QUESTIONS], inputs=[page.question], label="Suggested questions")
                with gr.Tabs():
                    waiting = live.notes()[TUNED].capitalize() if live else NO_ADAPTER
                    side = side_by_side_tab(h, maps, page, waiting=waiting, gpu_event=GPU_EVENT, wrap=on_gpu)
                    can_blind = len(models.model_names) > 1 or live is not None  # the demo's adapter trains first
                    blind_parts = blind_tab(available=can_blind, retention_days=votes.retention_days)
                    report_views, reload = results_tab(demo, blind, operator, votes.retention_days, report_dir)
                with gr.Accordion("Generation settings", open=False):
                    longest = max(512, settings.max_new_tokens)  # --max-new-tokens may start it past 512
                    sliders = [
                        gr.Slider(1, longest, value=settings.max_new_tokens, step=1, label="Max new tokens"),
                        gr.Slider(0.0, 1.5, value=settings.temperature, step=0.05, label="Temperature (0 = greedy)"),
                        gr.Slider(0.05, 1.0, value=settings.top_p, step=0.05, label="Top-p"),
                    ]
        examples = film_examples() if examples is None else examples
        if examples:
            gr.Examples(
                [[e.film, e.question] for e in examples], inputs=[film_file, page.question],
                example_labels=[e.label for e in examples], cache_examples=False,
                label="Examples (each says what it is: a real film, or a phantom drawn by dataprep.synthetic)",
            )  # fmt: skip
        with gr.Tabs():  # full width under the live models: the evaluation's questions, and batches of films
            later = live is not None  # a demo's report is written while it serves: the tab fills itself then
            explore = ExploreView(report_dir, dataset, public=explore_public, on_space=on_space(), later=later)
            explore_views, fill_explore = explore_tab(explore, film_file, page.question, NOTICE)
            batch = BatchView(models, votes, limits=batch_limits, settings=settings, rng=rng)
            batch_tab(batch, NOTICE, GPU_EVENT, wrap=on_gpu)

        side.wire(h, page, sliders, gpu_event=GPU_EVENT, wrap=on_gpu)
        wire_blind(blind, *blind_parts, film=page.film, question=page.question, trial=gr.State(None),
                   sliders=sliders, gpu_event=GPU_EVENT, wrap=on_gpu)  # fmt: skip
        if live is not None:  # the build's report fills Results and Explore when it comes
            live.wire(demo, status, [*report_views, *explore_views], lambda: (*reload(), *fill_explore()))
        register_api(h, maps, [film_file, page.question], wrap=on_gpu, gpu_event=GPU_EVENT)
    return demo


def serve(demo: gr.Blocks, **options):
    """`app_lib.launch.serve` with this page's CSS: the bounded queue, the visitor limits, then Gradio's launch."""
    return launch.serve(demo, css=CSS, **options)


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv, description=__doc__)
    launch.stop_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own startup requests, one line each
    from cxr_vqa.model import load_model

    demo = builder = servers = None
    try:
        with user_errors():
            users, operator = read_users(config.auth_file), Operator(operator_token())  # secrets: before any load
            base, adapters, four_bit, report = config.base, config.adapter, config.load_in_4bit, config.report
            extra = {}
            if config.demo:  # tiny models: full precision (4-bit on a CPU only slows them down)
                built, builder = demo_models.start(config.demo_dir)  # serves once the base exists; training goes on
                base, adapters, four_bit, report = built.base, [], False, report or built.report
                extra = {"header": demo_models.HEADER, "examples": built.examples + film_examples(EXAMPLES_DIR)}
            remotes = config.remote_models()  # keys checked here, before any model loads
            if config.gguf:  # exported GGUF folders: llama.cpp servers on loopback ports, stopped with the app
                servers = LlamaServers.start(config.gguf, timeout=config.remote_timeout * 3)
                remotes += servers.models(timeout=config.remote_timeout, max_retries=1)
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
            demo = create_demo(
                vqa, remotes=remotes, votes_db=config.votes_db, report_dir=report, settings=settings,
                operator=operator, dataset=config.dataset, batch_limits=config.batch_limits(),
                explore_public=config.explore_public, votes_retention_days=config.votes_retention_days, **extra,
            )  # fmt: skip
        scheme = "https" if config.ssl_certfile else "http"
        print(f"serving on {scheme}://{config.host}:{config.port} (votes: {config.votes_db})")
        serve(
            demo, host=config.host, port=config.port, queue_size=config.queue_size, max_file_size=config.max_file_size,
            limits=config.visitor_limits(), trusted_proxy=config.trusted_proxy, auth=users,
            ssl_certfile=config.ssl_certfile, ssl_keyfile=config.ssl_keyfile,
        )  # fmt: skip
    except KeyboardInterrupt:  # stopped while loading or starting up (once serving, Gradio handles it): no traceback
        if demo is not None:
            demo.close()
        print("stopped before serving")
        return
    finally:
        demo_models.stop(builder)  # a demo still building stops with the app; its next start continues it
        if servers is not None:
            servers.stop()
    print("server closed")


if __name__ == "__main__":
    main()

"""The app's options: a typed dataclass with environment defaults for Spaces and Docker, parsed the project's one
way (`cxr_vqa.cli`).

Precedence: dataclass defaults (which read BASE_MODEL, ADAPTER_MODEL, GRADIO_SERVER_NAME, GRADIO_SERVER_PORT) <
YAML `--config` < command-line flags. Unknown flags or YAML keys and out-of-range values exit 2 with one line.
Secrets never come from a flag or the YAML (both end up in shell histories, `ps` and repositories): API keys, the
operator token ($CXR_VQA_OPERATOR_TOKEN) and inline users ($CXR_VQA_AUTH) are read from the environment, users also
from a file (`--auth-file`). docs/deploying.md says what each option protects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from app_lib.access import check_tls
from app_lib.batch import BatchLimits, size_in_bytes
from app_lib.demo import DEMO_DIR
from app_lib.explore import EXPLORE_MODES
from app_lib.visitors import VisitorLimits, trusted_proxies
from cxr_vqa.cli import REPEATABLE
from cxr_vqa.cli import parse_config as parse
from cxr_vqa.costs import Budget, price_of
from cxr_vqa.errors import UserError
from cxr_vqa.lineup import NO_BASE
from cxr_vqa.llama_server import GGUF_FORM, gguf_specs
from cxr_vqa.model import DEFAULT_BASE, adapter_specs
from cxr_vqa.remote import SPEC_FORM, RemoteModel, remote_specs
from cxr_vqa.vqa import BASE


def on_space() -> bool:
    """Whether the app runs as a Hugging Face Space (which sets SPACE_ID): public, behind Hugging Face's proxy."""
    return bool(os.environ.get("SPACE_ID"))


def _env_port() -> int:
    port = os.environ.get("GRADIO_SERVER_PORT", "7860")
    if not port.strip().isdigit():
        raise UserError(f"GRADIO_SERVER_PORT must be a port number, got {port!r}")
    return int(port)


@dataclass
class AppConfig:
    base: str = field(
        default_factory=lambda: os.environ.get("BASE_MODEL", DEFAULT_BASE),
        metadata={
            "help": "base LLaVA-1.5 checkpoint: Hub id (ID@REVISION pins a branch, tag or commit) or directory (env "
            "BASE_MODEL); none: remote models only, nothing loaded"
        },
    )
    adapter: list[str] | None = field(
        default_factory=lambda: [a.strip() for a in os.environ.get("ADAPTER_MODEL", "").split(",") if a.strip()]
        or None,
        metadata={"help": "LoRA adapter: a directory or Hub id (ID@REVISION to pin one), or NAME=PATH; again for "
                  "several, one pane each (env ADAPTER_MODEL, comma-separated); without one only the base answers",
                  **REPEATABLE},
    )  # fmt: skip
    remote: list[str] | None = field(
        default=None,
        metadata={"help": f"a model behind an OpenAI-compatible vision endpoint (vLLM, OpenAI, Ollama): {SPEC_FORM}; "
                  "again for several, one pane each; the key from the variable named after the second #, never a "
                  "flag ($OPENAI_API_KEY by default for api.openai.com only)", **REPEATABLE},
    )  # fmt: skip
    gguf: list[str] | None = field(
        default=None,
        metadata={"help": f"an export of python -m finetune.export_gguf, served by llama.cpp on a loopback port "
                  f"the app starts and stops: {GGUF_FORM}; again for several, one pane each", **REPEATABLE},
    )  # fmt: skip
    remote_timeout: float = field(
        default=60.0, metadata={"help": "seconds a remote model may take to reply (the app retries once)"}
    )
    load_in_4bit: bool = field(default=True, metadata={"help": "4-bit nf4 base; --no-4bit for full precision"})
    device: str | None = field(
        default=None, metadata={"help": "cuda, cuda:1, cpu, or mps (Apple silicon: 16-bit) (default: cuda if present)"}
    )
    host: str = field(
        default_factory=lambda: os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        metadata={"help": "interface to listen on (env GRADIO_SERVER_NAME; 0.0.0.0 in Docker)"},
    )
    port: int = field(
        default_factory=_env_port,
        metadata={"help": "port (env GRADIO_SERVER_PORT)"},
    )
    votes_db: str = field(default="votes.sqlite", metadata={"help": "SQLite file for blind A/B votes"})
    report: str | None = field(
        default=None, metadata={"help": "evaluation report directory (metrics, plot, questions to explore)"}
    )
    queue_size: int = field(default=16, metadata={"help": "requests waiting beyond this are told the queue is full"})
    max_new_tokens: int = field(default=128, metadata={"help": "answer length for /compare; the UI slider's start"})
    max_file_size: str = field(default="20mb", metadata={"help": "largest upload accepted, e.g. 20mb"})
    demo: bool = field(
        default=False,
        metadata={
            "help": "offline demo: tiny models trained on synthetic phantoms, built in --demo-dir on first use "
            "(replaces --base and --adapter)"
        },
    )
    demo_dir: str = field(default=DEMO_DIR, metadata={"help": "where --demo builds and finds its models"})
    # the Explore and Batch tabs
    dataset: str | None = field(
        default=None, metadata={"help": "the evaluated dataset: Explore's films, when the one --report names is gone"}
    )
    batch_max_files: int = field(default=20, metadata={"help": "Batch: most films a batch (zips unpacked)"})
    batch_max_questions: int = field(default=5, metadata={"help": "Batch: most questions a batch"})
    batch_max_rows: int = field(default=60, metadata={"help": "Batch: most film x question pairs a batch"})
    batch_size: int = field(default=16, metadata={"help": "Batch: generate rows per call (one per pair and model)"})
    # votes, visitors, access: docs/deploying.md
    votes_retention_days: int = field(
        default=90, metadata={"help": "votes older than this many days are deleted (at start and as votes come); 0 "
                              "keeps them until you delete them"},
    )  # fmt: skip
    client_in_flight: int = field(
        default=1, metadata={"help": "questions (answers, maps, batches) one client address may have waiting or "
                             "running; a browser session always 1. Raise it where many people share one address"},
    )  # fmt: skip
    rate_per_minute: int = field(
        default=20, metadata={"help": "questions admitted a minute per client address and per session; 0: no limit"}
    )
    trusted_proxy: str | None = field(
        default=None, metadata={"help": "the proxy in front of the app, whose X-Forwarded-For names the visitor: "
                                "addresses or networks (comma-separated), 'private' (any private network: a Space), "
                                "or 'none'; default private on a Space (SPACE_ID set), else none"},
    )  # fmt: skip
    auth_file: str | None = field(
        default=None, metadata={"help": "a file of user:password lines: the app asks for a login (or set "
                                "CXR_VQA_AUTH=user:password[,user2:password2])"},
    )  # fmt: skip
    ssl_certfile: str | None = field(default=None, metadata={"help": "TLS certificate (PEM): serve https"})
    ssl_keyfile: str | None = field(default=None, metadata={"help": "TLS private key (PEM, unencrypted)"})
    max_cost: float | None = field(
        default=None, metadata={"help": "USD the remote models may spend while the app runs; then their panes say "
                                "the cap is reached and the local models keep answering"},
    )  # fmt: skip
    price_input: float | None = field(
        default=None, metadata={"help": "USD per million input tokens of the remote models (default: list prices)"}
    )
    price_output: float | None = field(
        default=None, metadata={"help": "USD per million output tokens of the remote models"}
    )
    explore_public: str | None = field(
        default=None, metadata={"help": "what Explore shows of the evaluated dataset: off, thumbnails or full; "
                                "default off on a Space unless the dataset is synthetic, else full",
                                "choices": EXPLORE_MODES},
    )  # fmt: skip

    def __post_init__(self):
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        if not 1 <= self.max_new_tokens <= 4096:
            raise ValueError(f"max_new_tokens must be in 1..4096, got {self.max_new_tokens}")
        adapters = adapter_specs(self.adapter)  # names checked before any model is loaded
        remotes = remote_specs(self.remote, taken=[BASE, *adapters])
        gguf_specs(self.gguf, taken=[BASE, *adapters, *remotes])  # export folders checked before anything loads
        if self.base == NO_BASE and (adapters or self.demo or not (self.remote or self.gguf)):
            raise ValueError("--base none serves remote models only: give --remote or --gguf, and no --adapter or "
                             "--demo")  # fmt: skip
        if self.remote_timeout <= 0:
            raise ValueError(f"remote_timeout must be > 0, got {self.remote_timeout}")
        for name in ("batch_max_files", "batch_max_questions", "batch_max_rows", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        size_in_bytes(self.max_file_size)
        if self.votes_retention_days < 0:
            raise ValueError(f"votes_retention_days must be >= 0, got {self.votes_retention_days}")
        if self.client_in_flight < 1 or self.rate_per_minute < 0:
            raise ValueError(f"client_in_flight must be >= 1 and rate_per_minute >= 0, got {self.client_in_flight} "
                             f"and {self.rate_per_minute}")  # fmt: skip
        trusted_proxies(self.trusted_proxy, on_space())
        check_tls(self.ssl_certfile, self.ssl_keyfile)
        if self.max_cost is not None and self.max_cost < 0:
            raise ValueError(f"max_cost must be >= 0, got {self.max_cost}")
        if (self.price_input is None) != (self.price_output is None):
            raise ValueError("give both --price-input and --price-output, or neither (list prices)")
        if self.report is not None and not Path(self.report).is_dir():
            raise ValueError(f"report directory {self.report} not found: pass the --out of `python -m evaluation`")

    def batch_limits(self) -> BatchLimits:
        return BatchLimits(self.batch_max_files, self.batch_max_questions, self.batch_max_rows, self.batch_size,
                           max_file_bytes=size_in_bytes(self.max_file_size))  # fmt: skip

    def visitor_limits(self) -> VisitorLimits:
        return VisitorLimits(in_flight=self.client_in_flight, per_minute=self.rate_per_minute)

    def remote_models(self) -> list[RemoteModel]:
        """The --remote models (each key checked now), with one retry (a person waits, and a dead endpoint must not
        hold the queue for minutes) and one --max-cost for all of them, at --price-input/--price-output or list
        prices."""
        price = None if self.price_input is None else (self.price_input, self.price_output)
        specs = remote_specs(self.remote)
        budget = Budget({name: price_of(spec.model, price) for name, spec in specs.items()}, self.max_cost)
        return [RemoteModel(spec, timeout=self.remote_timeout, max_retries=1, budget=budget)
                for spec in specs.values()]  # fmt: skip


def parse_config(argv: list[str] | None = None, description: str | None = None) -> AppConfig:
    (config,) = parse([AppConfig], argv, prog="python app.py", description=description)
    return config

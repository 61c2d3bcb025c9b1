"""The app's options: a typed dataclass with environment defaults for Spaces and Docker, parsed the project's one
way (`cxr_vqa.cli`).

Precedence: dataclass defaults (which read BASE_MODEL, ADAPTER_MODEL, GRADIO_SERVER_NAME, GRADIO_SERVER_PORT) <
YAML `--config` < command-line flags. Unknown flags or YAML keys and out-of-range values exit 2 with one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from app_lib.batch import BatchLimits, size_in_bytes
from cxr_vqa.cli import REPEATABLE
from cxr_vqa.cli import parse_config as parse
from cxr_vqa.errors import UserError
from cxr_vqa.lineup import NO_BASE
from cxr_vqa.model import DEFAULT_BASE, adapter_specs
from cxr_vqa.remote import SPEC_FORM, remote_specs
from cxr_vqa.vqa import BASE


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
                  "again for several, one pane each; the key from $OPENAI_API_KEY or the variable named after the "
                  "second #, never from a flag", **REPEATABLE},
    )  # fmt: skip
    remote_timeout: float = field(
        default=60.0, metadata={"help": "seconds a remote model may take to reply (the app retries once)"}
    )
    load_in_4bit: bool = field(default=True, metadata={"help": "4-bit nf4 base; --no-4bit for full precision"})
    device: str | None = field(default=None, metadata={"help": "cuda, cuda:1 or cpu (default: cuda if present)"})
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
    demo_dir: str = field(default="runs/demo", metadata={"help": "where --demo builds and finds its models"})
    # the Explore and Batch tabs
    dataset: str | None = field(
        default=None, metadata={"help": "the evaluated dataset: Explore's films, when the one --report names is gone"}
    )
    batch_max_files: int = field(default=20, metadata={"help": "Batch: most films a batch (zips unpacked)"})
    batch_max_questions: int = field(default=5, metadata={"help": "Batch: most questions a batch"})
    batch_max_rows: int = field(default=60, metadata={"help": "Batch: most film x question pairs a batch"})
    batch_size: int = field(default=16, metadata={"help": "Batch: generate rows per call (one per pair and model)"})

    def __post_init__(self):
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        if not 1 <= self.max_new_tokens <= 4096:
            raise ValueError(f"max_new_tokens must be in 1..4096, got {self.max_new_tokens}")
        adapters = adapter_specs(self.adapter)  # names checked before any model is loaded
        remote_specs(self.remote, taken=[BASE, *adapters])
        if self.base == NO_BASE and (adapters or self.demo or not self.remote):
            raise ValueError("--base none serves remote models only: give --remote, and no --adapter or --demo")
        if self.remote_timeout <= 0:
            raise ValueError(f"remote_timeout must be > 0, got {self.remote_timeout}")
        for name in ("batch_max_files", "batch_max_questions", "batch_max_rows", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        size_in_bytes(self.max_file_size)
        if self.report is not None and not Path(self.report).is_dir():
            raise ValueError(f"report directory {self.report} not found: pass the --out of `python -m evaluation`")

    def batch_limits(self) -> BatchLimits:
        return BatchLimits(self.batch_max_files, self.batch_max_questions, self.batch_max_rows, self.batch_size,
                           max_file_bytes=size_in_bytes(self.max_file_size))  # fmt: skip


def parse_config(argv: list[str] | None = None, description: str | None = None) -> AppConfig:
    (config,) = parse([AppConfig], argv, prog="python app.py", description=description)
    return config

"""The app's options: a typed dataclass, environment defaults for Spaces and Docker, an optional YAML file, flags.

Precedence: dataclass defaults (which read BASE_MODEL, ADAPTER_MODEL, GRADIO_SERVER_NAME, GRADIO_SERVER_PORT) <
YAML `--config` < command-line flags. Unknown YAML keys and out-of-range values exit with one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class AppConfig:
    base: str = field(
        default_factory=lambda: os.environ.get("BASE_MODEL", "llava-hf/llava-1.5-7b-hf"),
        metadata={"help": "base LLaVA-1.5 checkpoint: Hub id or directory (env BASE_MODEL)"},
    )
    adapter: str | None = field(
        default_factory=lambda: os.environ.get("ADAPTER_MODEL") or None,
        metadata={"help": "LoRA adapter directory or Hub id (env ADAPTER_MODEL); without it only the base answers"},
    )
    load_in_4bit: bool = field(default=True, metadata={"help": "--no-4bit: full-precision base, not 4-bit nf4"})
    device: str | None = field(default=None, metadata={"help": "cuda, cuda:1 or cpu (default: cuda if present)"})
    host: str = field(
        default_factory=lambda: os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        metadata={"help": "interface to listen on (env GRADIO_SERVER_NAME; 0.0.0.0 in Docker)"},
    )
    port: int = field(
        default_factory=lambda: int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        metadata={"help": "port (env GRADIO_SERVER_PORT)"},
    )
    votes_db: str = field(default="votes.sqlite", metadata={"help": "SQLite file for blind A/B votes"})
    report: str | None = field(
        default=None, metadata={"help": "evaluation report directory (metrics.json, comparison.png) to show"}
    )
    queue_size: int = field(default=16, metadata={"help": "requests waiting beyond this are told the queue is full"})
    max_new_tokens: int = field(default=128, metadata={"help": "answer length for /compare; the UI slider's start"})
    max_file_size: str = field(default="20mb", metadata={"help": "largest upload accepted, e.g. 20mb"})

    def __post_init__(self):
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")
        if not 1 <= self.max_new_tokens <= 4096:
            raise ValueError(f"max_new_tokens must be in 1..4096, got {self.max_new_tokens}")
        if self.report is not None and not Path(self.report).is_dir():
            raise ValueError(f"report directory {self.report} not found: pass the --out of finetune.evaluate")


def parse_args(argv: list[str] | None = None, description: str | None = None) -> AppConfig:
    """Defaults (and env) < YAML `--config` < flags; unknown YAML keys and bad values exit with one line."""
    fields = {f.name: f for f in dataclasses.fields(AppConfig)}
    parser = argparse.ArgumentParser(
        prog="python app.py", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML file whose keys are the option names below (underscores)")
    for name, f in fields.items():
        if name == "load_in_4bit":
            parser.add_argument("--no-4bit", dest=name, action="store_const", const=False, help=f.metadata["help"])
            continue
        kind = int if f.type == "int" else str
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=f.metadata["help"])
    args = parser.parse_args(argv)
    values = {}
    if args.config:
        import yaml

        try:
            loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            parser.error(f"cannot read --config {args.config}: {str(err).splitlines()[0]}")
        unknown = sorted(set(loaded) - set(fields)) if isinstance(loaded, dict) else ["<not a mapping>"]
        if unknown:
            parser.error(f"unknown keys in {args.config}: {', '.join(map(str, unknown))}; known: {', '.join(fields)}")
        values.update(loaded)
    given = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    values.update(given)
    try:
        return AppConfig(**values)
    except (TypeError, ValueError) as err:
        parser.error(str(err))

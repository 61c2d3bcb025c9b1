"""Exported GGUF folders served by llama.cpp on this machine, as remote models: the app and the evaluation start one
server per folder on a loopback port of their own, wait until it answers, reach it through `cxr_vqa.remote` like any
OpenAI-compatible endpoint (P(yes) from its top_logprobs), and stop it when they stop.

    servers = LlamaServers.start(["q4=runs/gguf-q4", "base=runs/gguf-base"], timeout=120)   # UserError in one line
    remotes = servers.models(timeout=60)        # RemoteModel-like, one per folder; a dead server fails in one line
    servers.stop()                              # also at exit and on SIGTERM

An export folder (`python -m finetune.export_gguf`) holds `export.json` (written last: the folder is complete), the
language model GGUF, the mmproj GGUF (vision tower and projector), an Ollama Modelfile and the serving template.
Each server is `python -m cxr_vqa.gguf_serve DIR --port P` (llama-cpp-python's OpenAI server with the project's chat
template) in its own process group, its output in DIR/../<name>-server.log beside nothing else; nothing of llama.cpp
is imported here.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cxr_vqa.errors import UserError
from cxr_vqa.model import ADAPTER_NAME, NAME_RULE
from cxr_vqa.remote import RemoteError, RemoteModel, RemoteSpec

logger = logging.getLogger(__name__)

MANIFEST = "export.json"  # the export's last file: its presence says the folder is complete
EXPORT_FORMAT = 1
MEDIA_MARKER = "<__media__>"  # where llama.cpp's multimodal tokenizer puts an image (mtmd_default_marker)
# The project's template (cxr_vqa/template.py) for OpenAI chat messages, as llama.cpp renders them: each image where
# it goes (its URL, which llama-cpp-python's LLaVA handler swaps for the marker; or the marker, as llama-server puts
# it in a text part), then a line break and the question, so a served prompt is `USER: <image>\n{q} ASSISTANT:`,
# answers end in </s>, exactly the text the model was trained on. No system turn is added.
SERVE_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] ~ ' ' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'USER: ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image_url' -%}"
    "{{ (part['image_url']['url'] if part['image_url'] is mapping else part['image_url']) ~ '\\n' }}"
    "{%- elif part['type'] == 'text' and part['text'] == '" + MEDIA_MARKER + "' -%}{{ part['text'] ~ '\\n' }}"
    "{%- endif -%}{%- endfor -%}"
    "{{ message['content'] | selectattr('type', 'equalto', 'text') | rejectattr('text', 'equalto', '"
    + MEDIA_MARKER + "') | map(attribute='text') | join(' ') }}"
    "{%- endif -%}{{ ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT: ' ~ message['content'] ~ '</s>' }}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)
GGUF_FORM = "NAME=EXPORT_DIR"


@dataclass(frozen=True)
class GgufExport:
    """A complete export folder: its language model, its mmproj, and what they were made from."""

    folder: Path
    model: Path
    mmproj: Path
    quant: str
    source: str  # "base" or "base + adapter", as export_gguf was given them


def read_export(folder: str | Path) -> GgufExport:
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{folder} is not a finished GGUF export (no readable {MANIFEST}): run `python -m "
                        f"finetune.export_gguf --base B [--adapter A] --out {folder}`") from None  # fmt: skip
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise UserError(f"{folder}/{MANIFEST} is format {found}, this version reads {EXPORT_FORMAT}: export again")
    if not all(isinstance(manifest.get(key), str) and manifest[key] for key in ("model", "mmproj")):
        raise UserError(f"{folder}/{MANIFEST} does not name its model and mmproj files: export again")
    model, mmproj = folder / manifest["model"], folder / manifest["mmproj"]
    for file in (model, mmproj):
        if not file.is_file():
            raise UserError(f"{file} is missing: export the folder again")
    return GgufExport(folder, model, mmproj, manifest.get("quant", "?"), manifest.get("source", "?"))


def gguf_specs(items: Sequence[str] | None, taken: Sequence[str] = ()) -> dict[str, GgufExport]:
    """Model name -> export, from `--gguf NAME=DIR` values; names differ from each other and from `taken`."""
    specs: dict[str, GgufExport] = {}
    for item in items or []:
        name, sep, folder = item.partition("=")
        if not (sep and folder and ADAPTER_NAME.fullmatch(name)):
            raise UserError(f"--gguf: give {GGUF_FORM}, with a name of {NAME_RULE}")
        if name in specs or name in taken:
            raise UserError(f"--gguf {name}: that name is already a model's; give each model its own name")
        try:
            specs[name] = read_export(folder)
        except UserError as err:
            raise UserError(f"--gguf {name}: {err}") from None
    return specs


class LlamaServer:
    """One `python -m cxr_vqa.gguf_serve` process for one export, on 127.0.0.1:`port`."""

    def __init__(self, name: str, export: GgufExport, *, port: int | None = None, threads: int | None = None,
                 log: Path | None = None):  # fmt: skip
        self.name, self.export = name, export
        self.log = log or export.folder.parent / f"{export.folder.name}-{name}-server.log"
        # The port is bound here and the socket handed to the server: a port picked free and bound later by the
        # server could be taken in between (by another server, or by a connection's own port), and the server would
        # then exit while its readiness check reached whichever process had the port.
        with socket.socket() as listener, open(self.log, "ab") as sink:  # the log: the server's own output
            listener.bind(("127.0.0.1", port or 0))
            self.port = listener.getsockname()[1]
            command = [sys.executable, "-m", "cxr_vqa.gguf_serve", str(export.folder), "--fd", str(listener.fileno()),
                       "--name", name] + (["--threads", str(threads)] if threads else [])  # fmt: skip
            paths = [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}
            self.process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True, pass_fds=(listener.fileno(),))  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def exited(self) -> int | None:
        return self.process.poll()

    def wait_ready(self, timeout: float) -> None:
        """Until GET /v1/models answers; UserError in one line if the process ends or `timeout` passes."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (status := self.exited()) is not None:
                raise UserError(f"--gguf {self.name}: the llama.cpp server exited with status {status} while "
                                f"starting: {self.last_line()} (log: {self.log})")  # fmt: skip
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise UserError(f"--gguf {self.name}: the llama.cpp server did not answer within {timeout:g} s (log: "
                        f"{self.log})")  # fmt: skip

    def last_line(self) -> str:
        try:
            lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "no log"
        return lines[-1][:200] if lines else "no output"

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to its process group, SIGKILL after `grace` seconds."""
        if self.exited() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass


class ServedModel(RemoteModel):
    """A RemoteModel whose endpoint is one of our llama.cpp servers: if that process has died, every answer fails
    with one line that says so (its exit status and its log's last line), not a connection error."""

    def __init__(self, server: LlamaServer, **options):
        super().__init__(RemoteSpec(server.name, server.url, server.name, key_env=None), **options)
        self.server = server

    @property
    def source(self) -> str:
        """The served files, not the port (another each run): what votes and reports record."""
        return f"gguf:{self.server.export.model.resolve()}"

    @property
    def identity(self) -> str:
        return self.source

    async def send(self, client, body, on_text=None):
        if (status := self.server.exited()) is not None:
            raise RemoteError(f"{self.name}: its llama.cpp server exited (status {status}): "
                              f"{self.server.last_line()}", fatal=True)  # fmt: skip
        try:
            return await super().send(client, body, on_text)
        except RemoteError:
            if (status := self.server.exited()) is not None:
                raise RemoteError(f"{self.name}: its llama.cpp server exited (status {status}) while answering: "
                                  f"{self.server.last_line()}", fatal=True) from None  # fmt: skip
            raise


class LlamaServers:
    """The servers of one app or evaluation: started together, stopped together (at exit and on SIGTERM too)."""

    def __init__(self, servers: list[LlamaServer]):
        self.servers = servers
        atexit.register(self.stop)
        # Python's default SIGTERM ends the process without running atexit: the servers would outlive it (each
        # server also leaves when its parent is gone, but only after a second or so)
        main_thread = threading.current_thread() is threading.main_thread()
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and main_thread:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))

    @classmethod
    def start(cls, items: Sequence[str] | None, *, taken: Sequence[str] = (), timeout: float = 180.0,
              threads: int | None = None) -> LlamaServers:  # fmt: skip
        specs = gguf_specs(items, taken)
        servers = cls([])
        try:
            for name, export in specs.items():
                servers.servers.append(LlamaServer(name, export, threads=threads))
            for server in servers.servers:
                server.wait_ready(timeout)
                logger.info("%s: llama.cpp serves %s at %s", server.name, server.export.model.name, server.url)
        except BaseException:
            servers.stop()
            raise
        return servers

    def models(self, **options) -> list[ServedModel]:
        return [ServedModel(server, **options) for server in self.servers]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

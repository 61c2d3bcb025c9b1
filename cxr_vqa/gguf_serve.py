"""Serve one GGUF export (`python -m finetune.export_gguf`) behind an OpenAI-compatible API on this machine: llama.cpp
through llama-cpp-python's server, with the project's chat template, so the app and evaluation reach it as a remote
model (`--remote NAME=http://127.0.0.1:PORT/v1#NAME`, or `--gguf NAME=DIR`, which starts this for you).

    python -m cxr_vqa.gguf_serve runs/gguf-q4 --port 8081 --name tuned     # http://127.0.0.1:8081/v1, model "tuned"
    python -m cxr_vqa.gguf_serve runs/gguf-q4 --port 8081 --host 0.0.0.0   # other machines too (no key: trust the LAN)

Needs `pip install llama-cpp-python==0.3.36` (it compiles llama.cpp: minutes) and the server's extras (uvicorn,
fastapi, sse-starlette, starlette-context, pydantic-settings). What differs from `python -m llama_cpp.server
--chat_format llava-1-5`: that handler adds a system prompt ("A chat between a curious human ...") and writes
`\\nUSER: ` / `\\nASSISTANT: ` with other spaces, which is not the text the model was trained on; this one renders
`USER: <image>\\n{question} ASSISTANT:` with `</s>` after answers (cxr_vqa/template.py), and decodes as transformers
does (no repetition penalty, no top-k or min-p cut: llama-cpp-python's defaults are 1.1, 40 and 0.05), so greedy
answers and P(yes) (from `logprobs` / `top_logprobs`, computed on the raw logits) match the transformers model's.
The server leaves by itself when the process that started it is gone.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time

from cxr_vqa.cli import user_errors
from cxr_vqa.errors import UserError
from cxr_vqa.llama_server import SERVE_TEMPLATE, read_export

CHAT_FORMAT = "cxr-llava-1.5"
# Tokens of context: the film's 576, the question, the answer and any earlier turns. LLaVA-1.5 takes 4,096, but its
# KV cache alone is 2 GiB at the 7B's size; 2,048 (1 GiB) leaves about 1,400 tokens of conversation beside the film
# and the 7B q4_k_m server within 6 GiB (docs/gguf.md); the server refuses a longer conversation.
CONTEXT = 2048
MAP_WEIGHTS = os.environ.get("CXR_VQA_GGUF_MMAP") == "1"  # map the weights instead: how the two were compared
# transformers' decoding: what a request does not set must not change the answer
NEUTRAL = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0, "typical_p": 1.0, "presence_penalty": 0.0,
           "frequency_penalty": 0.0, "mirostat_mode": 0}  # fmt: skip


def project_handler(mmproj: str):
    """llama-cpp-python's LLaVA-1.5 handler (mtmd: the film through the mmproj) with the project's template."""
    from llama_cpp.llama_chat_format import Llava15ChatHandler

    class ProjectLlava15(Llava15ChatHandler):
        DEFAULT_SYSTEM_MESSAGE = None
        CHAT_FORMAT = SERVE_TEMPLATE

        def __call__(self, **kwargs):
            return super().__call__(**{**kwargs, **NEUTRAL})

    return ProjectLlava15(clip_model_path=mmproj, verbose=False)


def build_app(folder: str, name: str, *, host: str, port: int, threads: int | None, context: int = CONTEXT):
    """The FastAPI app, the model and its mmproj loaded (a broken file fails here, not at the first question)."""
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry
    from llama_cpp.server import app as server_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    export = read_export(folder)
    handler = project_handler(str(export.mmproj))
    LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(CHAT_FORMAT, handler, overwrite=True)
    threads = threads or max(1, os.cpu_count() or 1)
    # read, not mapped: llama.cpp repacks the quantized weights for the CPU, and a mapped file's pages stayed resident
    # beside the repacked copy (docs/gguf.md: the 7B server peaked at 9.71 GiB mapped, 6.89 read)
    model = ModelSettings(model=str(export.model), model_alias=name, chat_format=CHAT_FORMAT, n_ctx=context,
                          n_threads=threads, n_threads_batch=threads, logits_all=True, use_mmap=MAP_WEIGHTS,
                          verbose=False)  # fmt: skip
    app = server_app.create_app(server_settings=ServerSettings(host=host, port=port), model_settings=[model])
    handler._init_mtmd_context(server_app._llama_proxy(name))  # the mmproj now: its errors before "ready"
    return app


def leave_with_parent() -> None:
    """Exit when the process that started this one is gone (killed without stopping its servers)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cxr_vqa.gguf_serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("folder", help="an export folder written by python -m finetune.export_gguf")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: this machine only)")
    parser.add_argument("--name", help="the model id it answers to (default: the folder's name)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: every core)")
    parser.add_argument("--context", type=int, default=CONTEXT, help=f"tokens of context, the film's 576 included "
                        f"(default {CONTEXT}; LLaVA-1.5 takes up to 4096, at 1 GiB of the 7B's memory per 2048)")
    # a bound socket inherited from the process that started this one (cxr_vqa.llama_server), instead of --port/--host
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error("--port must be in 1..65535")
    if not 1024 <= args.context <= 4096:
        parser.error(f"--context must be in 1024..4096 (the film alone takes 576 tokens), got {args.context}")
    listener = None
    if args.fd is not None:
        try:
            listener = socket.socket(fileno=args.fd)
            args.host, args.port = listener.getsockname()[:2]
        except (OSError, ValueError):
            parser.error(f"--fd {args.fd} is not a bound socket of this process")
    with user_errors():
        try:
            import uvicorn
        except ImportError:
            raise UserError("serving GGUF needs llama-cpp-python's server: pip install 'llama-cpp-python[server]"
                            "==0.3.36' (it compiles llama.cpp, minutes)") from None  # fmt: skip
        try:
            app = build_app(args.folder, args.name or os.path.basename(os.path.abspath(args.folder)),
                            host=args.host, port=args.port, threads=args.threads, context=args.context)  # fmt: skip
        except ImportError:
            raise UserError("serving GGUF needs llama-cpp-python: pip install 'llama-cpp-python[server]==0.3.36' "
                            "(it compiles llama.cpp, minutes)") from None  # fmt: skip
        except (ValueError, RuntimeError) as err:  # llama.cpp could not load a file
            raise UserError(f"llama.cpp could not load {args.folder}: {str(err).splitlines()[0][:200]}") from None
    leave_with_parent()
    print(f"serving {args.folder} at http://{args.host}:{args.port}/v1", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
    server.run(sockets=[listener] if listener else None)
    sys.exit(0)


if __name__ == "__main__":
    main()

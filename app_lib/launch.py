"""How the app is served: Gradio's bounded queue with one model worker, the per-visitor limits in front of it, who the
client is (the TCP peer, or what a trusted proxy says), TLS and the login; and a clean stop on SIGTERM.

    serve(demo, host="0.0.0.0", port=7860, queue_size=16, max_file_size="20mb", limits=VisitorLimits(),
          trusted_proxy=None, auth=[("ana", "...")], ssl_certfile="cert.pem", ssl_keyfile="key.pem")
"""

from __future__ import annotations

import os
import signal

import gradio as gr

from app_lib.config import on_space
from app_lib.visitors import Admission, AdmissionMiddleware, VisitorLimits, trusted_proxies


def serve(demo: gr.Blocks, *, host: str, port: int, queue_size: int, max_file_size: str, css: str | None = None,
          limits: VisitorLimits | None = None, trusted_proxy: str | None = None, **launch_kwargs):  # fmt: skip
    """Queue (bounded, one model worker) and launch; files are served only from Gradio's own upload/cache dirs.
    `limits`: per-visitor limits on the model's events (None: none, as tests and benches serve; `python app.py` sets
    them); `trusted_proxy` as --trusted-proxy; `launch_kwargs` go to Gradio's `launch` (auth, TLS files, quiet...)."""
    # api_open=False: POST /gradio_api/run/<name> would run a queued event at once, around the queue and the limits
    demo.queue(max_size=queue_size, default_concurrency_limit=1, api_open=False)
    # who the client is: uvicorn reads X-Forwarded-For only from these proxies (its own default trusts any process
    # on this machine, which a tunnel or another user's script also is); read when the server starts, below
    os.environ["FORWARDED_ALLOW_IPS"] = trusted_proxies(trusted_proxy, on_space())
    middleware = []
    if limits is not None:
        from starlette.middleware import Middleware

        middleware = [Middleware(AdmissionMiddleware, admission=Admission(demo, limits))]
    if launch_kwargs.get("ssl_certfile"):  # Gradio's check of its own local URL: a LAN certificate names no 127.0.0.1
        launch_kwargs.setdefault("ssl_verify", False)
    # ssr_mode=False: server-side rendering puts a Node proxy in front, and every visitor would be 127.0.0.1
    return demo.launch(
        server_name=host, server_port=port, max_file_size=max_file_size, css=css, show_error=False,
        app_kwargs={"middleware": middleware}, ssr_mode=False, **launch_kwargs,
    )  # fmt: skip


def stop_on_sigterm() -> None:
    """`docker stop`, Kubernetes and systemd stop with SIGTERM. Python has no handler for it, and as a container's
    PID 1 the kernel gives it no default action either: the signal is dropped and the container is killed after its
    stop timeout. Treated as Ctrl-C, Gradio closes the server (votes need no flush: each is committed when cast)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)

"""A loopback OpenAI-compatible VISION server for tests and benchmarks: real HTTP (JSON and server-sent events), every
request checked strictly, answers read from the picture it was sent, scripted faults. No part of the installed
packages: pytest finds it on `tests/`, bench/remote.py adds `tests/` to its path.

    with VisionServer(models={"gpt-x"}) as server:
        remote = RemoteModel(parse_remote(f"x={server.url}#gpt-x"))
        server.fail("429")                 # the next chat request gets HTTP 429 (Retry-After: 0), then they pass
        server.fail("500", times=None)     # every request from now on
        server.fail("400")                 # refused for good (as a content refusal is)
        server.fail("hang")                # no reply until `hang_seconds` pass (or the server stops)
        server.fail("nologprobs")          # a reply without logprobs
        server.refuse(400, {"error": {"message": "max_tokens is not supported"}})   # the next request, unchecked
        server.requests, server.violations # what each request carried (film size, mean grey and pixel hash, the
                                           # questions, the answers before); what broke the rules (then HTTP 400)
        server.keys                        # the bearer key of each chat request, as sent
    VisionServer({"reader-a"}, findings={"reader-a": "The heart is enlarged. No pleural effusion."})

Checked on every request: the bearer key (when `api_key` is set: else 401), the model id (else 404), only known
fields, roles alternating user/assistant from a user turn to a user turn, exactly one image, in the first turn, as an
`image_url` part before the text, a data URL that decodes to an RGB PNG of `film_size` x `film_size`, `logprobs`
true with `top_logprobs` = `top_logprobs`, temperature, top_p and max_tokens in range, and `stream_options` only as
{"include_usage": bool} on a streamed request. A stream ends with a usage chunk only when it was asked for, as
OpenAI's does.

The answer depends on the picture: its mean grey m decides the verdict (Yes when m >= 127.5) and P(yes) = m / 255
(clipped to [0.02, 0.98]), given as the first token's top_logprobs over several spellings of yes and no plus one
unrelated token; the text names m, the film's size and the number of user turns ("Yes, mean grey 140.2 on a 336x336
film, turn 1."), cut to max_tokens tokens, so a test can tell which film and which conversation the model saw. A
findings question (`cxr_vqa.findings.is_findings_question`) to a model given a report in `findings` gets that report,
word by word (cut to max_tokens words), each word its own only candidate in the logprobs: so two model ids of one
server write two different reports for the same film.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler

import numpy as np
from llm_server import OpenAIServer
from PIL import Image

from cxr_vqa.findings import is_findings_question

FIELDS = {"model", "messages", "temperature", "top_p", "max_tokens", "logprobs", "top_logprobs", "stream",
          "stream_options"}  # fmt: skip
PNG_URL = "data:image/png;base64,"


class BadRequest(Exception):
    pass


def answer_tokens(mean: float, size: tuple[int, int], turns: int) -> tuple[list[str], float]:
    """(the answer's tokens, P(yes)) for a film of mean grey `mean` in a conversation of `turns` user turns."""
    p_yes = min(max(mean / 255, 0.02), 0.98)
    verdict = "Yes" if mean >= 127.5 else "No"
    words = ["mean", "grey", f"{mean:.1f}", "on", "a", f"{size[0]}x{size[1]}", "film,", "turn", f"{turns}."]
    return [verdict, ","] + [" " + w for w in words], p_yes


def report_tokens(report: str) -> list[str]:
    words = report.split()
    return words[:1] + [" " + w for w in words[1:]]


def first_candidates(p_yes: float) -> list[dict]:
    """Top candidates of the first token: yes and no spellings carry 0.9 of the mass, "The" the rest."""
    mass = {"Yes": 0.6 * p_yes, " yes": 0.3 * p_yes, "No": 0.6 * (1 - p_yes), " NO": 0.3 * (1 - p_yes), "The": 0.1}
    ranked = sorted(mass.items(), key=lambda kv: -kv[1])
    return [{"token": t, "logprob": math.log(m), "bytes": None} for t, m in ranked]


def token_logprobs(tokens: list[str], p_yes: float, top: int) -> list[dict]:
    out = []
    for i, token in enumerate(tokens):
        candidates = first_candidates(p_yes) if i == 0 else [{"token": token, "logprob": -0.01, "bytes": None}]
        chosen = next(c["logprob"] for c in candidates if c["token"] == token) if i == 0 else -0.01
        out.append({"token": token, "logprob": chosen, "bytes": None, "top_logprobs": candidates[:top]})
    return out


def report_logprobs(tokens: list[str]) -> list[dict]:
    return [{"token": t, "logprob": -0.01, "bytes": None, "top_logprobs": [{"token": t, "logprob": -0.01,
             "bytes": None}]} for t in tokens]  # fmt: skip


class VisionServer(OpenAIServer):
    """tests/llm_server.py's loopback server (its thread, counts and scripted failures) with a vision chat route."""

    def __init__(self, models=frozenset({"vision-test"}), *, api_key: str | None = None, film_size: int = 336,
                 top_logprobs: int = 20, latency: float = 0.0, hang_seconds: float = 30.0,
                 findings: dict[str, str] | None = None):  # fmt: skip
        self.models, self.api_key, self.film_size, self.top_logprobs = set(models), api_key, film_size, top_logprobs
        self.findings = dict(findings or {})  # model id -> the findings report it writes for any film
        self.hang_seconds = hang_seconds
        self.requests: list[dict] = []  # per chat request: model, film size, mean grey and pixels, questions, answers
        self.violations: list[str] = []
        self._release = threading.Event()
        self._refusals: list[tuple[int, dict]] = []
        self.keys: list[str | None] = []
        super().__init__(latency=latency)  # latency: seconds per answer, spread over its tokens when streamed

    def __exit__(self, *exc) -> None:
        self._release.set()  # hung requests return now
        super().__exit__(*exc)

    def reset(self) -> None:
        """No scripted failures left; counts and records kept."""
        with self._lock:
            self._failures.clear()
            self._refusals.clear()

    def refuse(self, status: int, body: dict) -> None:
        """The next chat request, whatever it holds, gets HTTP `status` with this JSON body: a server's own reason."""
        with self._lock:
            self._refusals.append((status, body))

    # -- the rules ---------------------------------------------------------------------------------------------

    def check(self, body: dict) -> dict:
        """What the request carried, or BadRequest naming the first rule it broke."""
        if not isinstance(body, dict) or not {"model", "messages"} <= body.keys() or body.keys() - FIELDS:
            raise BadRequest(f"fields: {sorted(body)} (model and messages required, known: {sorted(FIELDS)})")
        if body.get("logprobs") is not True or body.get("top_logprobs") != self.top_logprobs:
            raise BadRequest(f"logprobs must be true with top_logprobs {self.top_logprobs}")
        temperature, top_p, max_tokens = body.get("temperature"), body.get("top_p"), body.get("max_tokens")
        if not (isinstance(temperature, int | float) and 0 <= temperature <= 2 and isinstance(top_p, int | float)
                and 0 < top_p <= 1 and isinstance(max_tokens, int) and max_tokens >= 1):  # fmt: skip
            raise BadRequest(f"settings out of range: {temperature}, {top_p}, {max_tokens}")
        options = body.get("stream_options")
        if options is not None and not (body.get("stream") is True and isinstance(options, dict)
                                        and options.keys() == {"include_usage"}
                                        and isinstance(options["include_usage"], bool)):  # fmt: skip
            raise BadRequest(f"stream_options must be {{'include_usage': bool}} on a streamed request, got {options}")
        messages = body["messages"]
        roles = [m.get("role") for m in messages] if isinstance(messages, list) else []
        if not roles or roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
            raise BadRequest(f"roles must alternate user/assistant from user to user, got {roles}")
        first, *rest = messages
        parts = first["content"]
        if not (isinstance(parts, list) and [p.get("type") for p in parts] == ["image_url", "text"]):
            raise BadRequest("the first user turn must hold an image_url part, then a text part")
        if any(not isinstance(m["content"], str) or not m["content"].strip() for m in rest if m["role"] == "user"):
            raise BadRequest("later user turns must be non-empty text (one image per conversation)")
        if any(not isinstance(m["content"], str) for m in rest if m["role"] == "assistant"):
            raise BadRequest("assistant turns must be text")
        film = self._film(parts[0]["image_url"]["url"])
        grey = np.asarray(film.convert("L"), dtype=float)
        return {"model": body["model"], "size": film.size, "mean": float(grey.mean()), "turns": len(roles) // 2 + 1,
                "pixels": hashlib.sha256(film.tobytes()).hexdigest(),
                "questions": [parts[1]["text"]] + [m["content"] for m in rest if m["role"] == "user"],
                "history": [m["content"] for m in rest if m["role"] == "assistant"]}  # fmt: skip

    def _film(self, url: str) -> Image.Image:
        if not isinstance(url, str) or not url.startswith(PNG_URL):
            raise BadRequest("the image must be a data:image/png;base64 URL")
        data = base64.b64decode(url[len(PNG_URL) :], validate=True)
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise BadRequest("the data URL is not a PNG")
        film = Image.open(io.BytesIO(data))
        film.load()
        if film.format != "PNG" or film.mode != "RGB" or film.size != (self.film_size, self.film_size):
            raise BadRequest(f"film {film.format} {film.mode} {film.size}, want an RGB PNG of {self.film_size} px")
        return film

    # -- HTTP ---------------------------------------------------------------------------------------------------

    def _handler(server):  # noqa: N805 - the handler class closes over the server object
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args) -> None:
                pass

            def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                                   **(headers or {})}.items():  # fmt: skip
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, message: str, headers: dict | None = None) -> None:
                self._json(status, {"error": {"message": message, "type": "test", "code": str(status)}}, headers)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self.path.endswith("/chat/completions"):
                    return self._error(404, f"no route {self.path}")
                auth = self.headers.get("Authorization") or ""
                with server._lock:
                    server.count["chat"] += 1
                    server.keys.append(auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None)
                if server.api_key and auth != f"Bearer {server.api_key}":  # echoing the key, as OpenAI does (in part)
                    return self._error(401, f"Incorrect API key provided: {auth.removeprefix('Bearer ')}")
                with server._lock:
                    refusal = server._refusals.pop(0) if server._refusals else None
                if refusal:
                    return self._json(*refusal)
                try:
                    body = json.loads(raw)
                    seen = server.check(body)
                except (BadRequest, ValueError, KeyError, TypeError, AttributeError) as err:
                    with server._lock:
                        server.violations.append(f"{type(err).__name__}: {err}")
                    return self._error(400, str(err))
                if body["model"] not in server.models:
                    return self._error(404, f"the model {body['model']} does not exist")
                with server._lock:
                    server.requests.append(seen)
                mode = server._take_failure(body["model"])
                if mode in ("400", "429", "500", "503"):
                    return self._error(int(mode), f"scripted {mode}", {"Retry-After": "0"} if mode == "429" else None)
                if mode == "hang":
                    server._release.wait(server.hang_seconds)
                    return self._error(503, "hung")
                report = server.findings.get(body["model"]) if is_findings_question(seen["questions"][-1]) else None
                whole, p_yes = answer_tokens(seen["mean"], seen["size"], seen["turns"])
                whole = report_tokens(report) if report is not None else whole
                tokens = whole[: body["max_tokens"]]
                finish = "length" if len(tokens) < len(whole) else "stop"
                logprobs = (
                    report_logprobs(tokens)
                    if report is not None
                    else token_logprobs(tokens, p_yes, body["top_logprobs"])
                )
                logprobs = None if mode == "nologprobs" else logprobs
                usage = {"prompt_tokens": 576 + sum(len(q.split()) for q in seen["questions"]),
                         "completion_tokens": len(tokens)}  # fmt: skip
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                if body.get("stream"):
                    asked = (body.get("stream_options") or {}).get("include_usage")
                    return self._stream(body["model"], tokens, logprobs, finish, usage if asked else None)
                time.sleep(server.latency)
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(tokens)},
                    "logprobs": {"content": logprobs} if logprobs else None,
                    "finish_reason": finish,
                }
                self._json(200, {"id": "chatcmpl-vision", "object": "chat.completion", "created": 0,
                                 "model": body["model"], "choices": [choice], "usage": usage})  # fmt: skip

            def _stream(self, model: str, tokens: list[str], logprobs: list | None, finish: str,
                        usage: dict | None) -> None:  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")  # the body ends when the connection does
                self.end_headers()
                self.close_connection = True
                head = {"id": "chatcmpl-vision", "object": "chat.completion.chunk", "created": 0, "model": model}
                for i, token in enumerate(tokens):
                    time.sleep(server.latency / len(tokens))
                    choice = {"index": 0, "delta": {"role": "assistant", "content": token} if i == 0 else
                              {"content": token}, "finish_reason": None,
                              "logprobs": {"content": [logprobs[i]]} if logprobs else None}  # fmt: skip
                    self.wfile.write(f"data: {json.dumps({**head, 'choices': [choice]})}\n\n".encode())
                    self.wfile.flush()
                last = {"index": 0, "delta": {}, "finish_reason": finish, "logprobs": None}
                self.wfile.write(f"data: {json.dumps({**head, 'choices': [last]})}\n\n".encode())
                if usage:
                    self.wfile.write(f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        return Handler

"""A loopback OpenAI-compatible HTTP server for tests and benchmarks: real HTTP, scripted failures, counted requests.
It is no part of the installed packages: pytest finds it on `tests/`, bench/dataprep_llm.py adds `tests/` to its path.

    with OpenAIServer(latency=0.2) as server:
        client = openai.AsyncOpenAI(base_url=server.url, api_key="test")
        server.fail("429", times=2)                        # the next two chat requests get HTTP 429
        server.fail("malformed", match="pneumothorax")     # the next request whose report contains the text
        server.fail(["500", "malformed"], times=None)      # every request from now on, 500 and malformed in turn
        ...
        server.count["chat"], server.reports               # requests made, report text of each request
    studies = distinct_studies(small_release(tmp), 8)     # studies whose reports differ: one request each

Endpoints: POST /v1/chat/completions; for the Batch API POST /v1/files (multipart), POST /v1/batches,
GET /v1/batches/{id}, GET /v1/files/{id}/content; and GET /v1/_count, the request counts. Replies are
deterministic functions of the report, so two runs over the same reports build the same dataset. Failure modes:
  429, 500, 404, ...   that HTTP status (any three digits); a 429 carries Retry-After: `retry_after` when set
  malformed            200 with truncated JSON content
  leaky                200 with the good pairs plus one citing the report, one needing a prior, one duplicate and
                       one that breaks the schema
  all_leaky            200 whose every pair cites the report (no usable pair)
  slow                 a normal reply after `slow_seconds` (for client timeouts)
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dataprep.chexpert import read_release
from dataprep.synthetic import write_release

KEYWORDS = {  # finding -> (question, words that make it positive in the report)
    "Cardiomegaly": ("Is the heart enlarged?", ("heart is enlarged", "cardiomegaly.", "enlargement of the cardiac")),
    "Pleural Effusion": (
        "Is there a pleural effusion?",
        ("left pleural effusion", "right pleural effusion", "bilateral pleural effusion"),
    ),
    "Pneumothorax": ("Is there a pneumothorax?", ("left pneumothorax", "right pneumothorax")),
    "Consolidation": ("Is there consolidation?", ("lung consolidation", "consolidation in the")),
    "Support Devices": ("Is a support device present?", ("endotracheal tube", "catheter", "pacemaker")),
}


def small_release(root: Path) -> Path:
    """The synthetic release the LLM tests run on: 10 patients, 64 px films, a few defects to reject."""
    write_release(root, patients=10, seed=1, image_size=64)
    return root


def distinct_studies(root: Path, n: int) -> list:
    """The first n studies of a release whose reports differ (identical reports would share one request)."""
    seen, picked = set(), []
    for study in read_release(root)[0]:
        if study.report not in seen:
            seen.add(study.report)
            picked.append(study)
    return picked[:n]


def reply_pairs(report: str, n: int) -> list[dict]:
    """Deterministic QA pairs for a report: closed questions by keyword, then one open question."""
    text = report.lower()
    pairs, positives = [], []
    for finding, (question, words) in KEYWORDS.items():
        yes = any(w in text for w in words)
        positives += [finding.lower()] if yes else []
        answer = f"Yes, {finding.lower()} is visible." if yes else f"No, there is no {finding.lower()}."
        pairs.append({"question": question, "answer": answer, "kind": "closed", "finding": finding})
    open_answer = (", ".join(positives) + ".").capitalize() if positives else "No acute abnormality."
    pairs.insert(
        min(n - 1, len(pairs)),
        {"question": "What abnormalities are seen?", "answer": open_answer, "kind": "open", "finding": None},
    )
    return pairs[:n]


def completion(model: str, content: str, prompt: str) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": len(prompt) // 4,
            "completion_tokens": len(content) // 4,
            "total_tokens": len(prompt) // 4 + len(content) // 4,
        },
    }


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default 5 drops the SYNs of 16 clients connecting at once: a 1 s stall
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out and hung up is part of the tests, not a server error


class OpenAIServer:
    def __init__(self, latency: float = 0.0, batch_polls: int = 1) -> None:
        self.latency = latency
        self.batch_polls = batch_polls  # polls a batch answers "in_progress" before it completes
        self.hold_batches = False  # batches never complete while True
        self.slow_seconds = 2.0
        self.retry_after: str | None = None  # the Retry-After header of a scripted 429
        self.count: Counter = Counter()
        self.reports: list[str] = []  # the report of every chat request, in arrival order
        self.answered: list[str] = []  # reports that got a 200
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self._failures: list[list] = []  # [modes, times left (None: forever), match, requests failed]
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> OpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def fail(self, mode: str | list[str], times: int | None = 1, match: str | None = None) -> None:
        """Fail the next `times` matching requests (None: all of them); a list of modes is used in turn."""
        with self._lock:
            self._failures.append([[mode] if isinstance(mode, str) else list(mode), times, match, 0])

    def _take_failure(self, report: str) -> str | None:
        with self._lock:
            for failure in self._failures:
                modes, times, match, used = failure
                if (times is None or times > used) and (match is None or match in report):
                    failure[3] += 1
                    return modes[used % len(modes)]
        return None

    def respond(self, body: dict) -> tuple[int, dict]:
        """Status and JSON for one chat request (also used for each line of a batch)."""
        messages = body.get("messages", [])
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        user = next((m["content"] for m in messages if m["role"] == "user"), "")
        report = user.split("Report:\n", 1)[-1]
        n = int(m.group(1)) if (m := re.search(r"exactly (\d+)", system)) else 5
        with self._lock:
            self.count["chat"] += 1
            self.reports.append(report)
        mode = self._take_failure(report)
        if mode and mode.isdigit():
            return int(mode), {"error": {"message": f"scripted {mode}", "type": "test", "code": mode}}
        if mode == "slow":
            time.sleep(self.slow_seconds)
        pairs = reply_pairs(report, n)
        if mode == "leaky":
            pairs += [
                {
                    "question": "Is there an effusion?",
                    "answer": "Yes, the report says so.",
                    "kind": "closed",
                    "finding": "Pleural Effusion",
                },
                {
                    "question": "Is the effusion new?",
                    "answer": "No, it is unchanged from the prior study.",
                    "kind": "closed",
                    "finding": "Pleural Effusion",
                },
                dict(pairs[0]),
                {"question": "Is it bad?", "answer": "Maybe.", "kind": "other", "finding": None},
            ]
        if mode == "all_leaky":
            pairs = [{**p, "answer": "Yes, according to the report."} for p in pairs]
        content = json.dumps({"pairs": pairs})
        if mode == "malformed":
            content = content[: len(content) // 2]
        with self._lock:
            self.answered.append(report)
        return 200, completion(body.get("model", "test"), content, system + user)

    def _run_batch(self, batch: dict) -> None:
        lines = []
        for line in self.files[batch["input_file_id"]].decode().splitlines():
            request = json.loads(line)
            status, reply = self.respond(request["body"])
            response = {"status_code": status, "request_id": "req", "body": reply}
            lines.append(
                json.dumps({"id": "batch_req", "custom_id": request["custom_id"], "response": response, "error": None})
            )
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = ("\n".join(lines) + "\n").encode()
        batch.update(status="completed", output_file_id=file_id)

    def _handler(server):  # noqa: N805 - the handler class closes over the server object
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real API

            def setup(self) -> None:
                super().setup()
                # headers and body go out in two writes: without NODELAY, Nagle + delayed ACK add ~40 ms each
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: dict | bytes) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                if status == 429 and server.retry_after is not None:
                    self.send_header("Retry-After", server.retry_after)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path.endswith("/chat/completions"):
                    if server.latency:
                        time.sleep(server.latency)
                    self._send(*server.respond(json.loads(raw)))
                elif self.path.endswith("/files"):
                    server.count["file_upload"] += 1
                    message = email.message_from_bytes(
                        b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw,
                        policy=email.policy.HTTP,
                    )
                    part = next(
                        p for p in message.iter_parts() if p.get_param("name", header="content-disposition") == "file"
                    )
                    file_id = f"file-{len(server.files) + 1}"
                    server.files[file_id] = part.get_payload(decode=True)
                    self._send(
                        200,
                        {
                            "id": file_id,
                            "object": "file",
                            "bytes": len(server.files[file_id]),
                            "created_at": 0,
                            "filename": "batch.jsonl",
                            "purpose": "batch",
                            "status": "processed",
                        },
                    )
                elif self.path.endswith("/batches"):
                    server.count["batch_create"] += 1
                    request = json.loads(raw)
                    batch_id = f"batch_{len(server.batches) + 1}"
                    server.batches[batch_id] = {
                        "id": batch_id,
                        "object": "batch",
                        "endpoint": request["endpoint"],
                        "input_file_id": request["input_file_id"],
                        "completion_window": "24h",
                        "status": "in_progress",
                        "created_at": 0,
                        "polls": 0,
                    }
                    self._send(200, server.batches[batch_id])
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_GET(self) -> None:
                if self.path.endswith("/_count"):  # for a benchmark that runs the server in another process
                    self._send(200, dict(server.count))
                elif m := re.search(r"/batches/([\w-]+)$", self.path):
                    server.count["batch_poll"] += 1
                    batch = server.batches[m.group(1)]
                    batch["polls"] += 1
                    due = batch["polls"] > server.batch_polls and not server.hold_batches
                    if batch["status"] == "in_progress" and due:
                        server._run_batch(batch)
                    self._send(200, {k: v for k, v in batch.items() if k != "polls"})
                elif m := re.search(r"/files/([\w-]+)/content$", self.path):
                    server.count["file_content"] += 1
                    self._send(200, server.files[m.group(1)])
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

        return Handler

"""The core's one mechanism for OpenAI-compatible endpoints (cxr_vqa.endpoint): which failures may be sent again,
which stop the caller, the backoff between sends, and where the key comes from. Through the real `openai` client
against tests/llm_server.py, no mocks."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from llm_server import OpenAIServer
from vision_server import VisionServer

from cxr_vqa.endpoint import Backoff, EndpointSetupError, Reply, open_client, read_api_key, send_chat
from cxr_vqa.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
BODY = {"model": "m", "messages": [{"role": "user", "content": "Report:\nA left pleural effusion."}]}


@pytest.fixture
def server():
    with OpenAIServer() as server:
        yield server


def send(url: str, timeout: float = 5.0, api_key_env: str = "OPENAI_API_KEY") -> Reply:
    client = open_client(url, api_key_env=api_key_env, timeout=timeout)

    async def run() -> Reply:
        try:
            return await send_chat(client, BODY)
        finally:
            await client.close()

    return asyncio.run(run())


def test_a_reply_carries_the_content_and_the_usage(server):
    reply = send(server.url)
    answers = {pair["finding"]: pair["answer"] for pair in json.loads(reply.content)["pairs"]}
    assert reply.failure is None and answers["Pleural Effusion"].startswith("Yes")  # an answer to what was sent
    assert reply.usage["prompt_tokens"] > 0 and reply.usage["completion_tokens"] > 0


@pytest.mark.parametrize("status", ["408", "409", "425", "429", "500", "502", "503"])
def test_busy_or_failing_servers_are_free_to_retry_and_the_client_does_not_retry_itself(server, status):
    server.fail(status)
    reply = send(server.url)
    why = f": scripted {status}" if status.startswith("4") else ""  # the server's reason, for a 4xx
    assert reply.failure == ("unavailable", f"HTTP {status}{why}") and reply.retryable and reply.content is None
    assert reply.status == int(status)
    assert server.count["chat"] == 1  # one send is one request: every retry is the caller's, and counted


@pytest.mark.parametrize("status", ["400", "422"])
def test_a_request_the_server_cannot_take_is_not_retried_and_says_why(server, status):
    server.fail(status)
    reply = send(server.url)
    assert reply == Reply(failure=("error", f"HTTP {status}: scripted {status}"), retryable=False, status=int(status))


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model."}},
         ": Unsupported parameter: 'max_tokens' is not supported with this model."),
        ({"object": "error", "message": "top_logprobs must be\nat most 5", "code": 400},  # vLLM's form, two lines
         ": top_logprobs must be at most 5"),
        ({"error": "model 'llava' not found"}, ": model 'llava' not found"),  # Ollama's
        ({"detail": "data:image/png;base64," + "iVBORw0KGgo" * 40}, ": data:image/png;base64,..."),  # an echoed film
        ({"error": {"message": "long " + "y " * 150}}, ": " + ("long " + "y " * 150)[:197] + "..."),  # 200 chars
        ({}, ""),
    ],
)  # fmt: skip
def test_the_servers_reason_for_a_4xx_is_one_short_line(body, why):
    with VisionServer() as server:
        server.refuse(400, body)
        assert send(server.url) == Reply(failure=("error", f"HTTP 400{why}"), retryable=False, status=400)


def test_a_4xx_reason_never_holds_the_key_and_a_refused_key_gives_none(monkeypatch):
    monkeypatch.setenv("MY_KEY", "short-key")
    with VisionServer(api_key="short-key") as server:
        server.refuse(422, {"error": {"message": "bad request from short-key, or sk-" + "A1b2C3" * 10}})
        assert send(server.url, api_key_env="MY_KEY").failure == ("error", "HTTP 422: bad request from ***, or ...")
        server.refuse(404, {"error": {"message": "The model `gpt-x` does not exist"}})
        with pytest.raises(EndpointSetupError, match=r"^HTTP 404 .*: unknown model or endpoint: The model `gpt-x`"):
            send(server.url, api_key_env="MY_KEY")
        monkeypatch.setenv("MY_KEY", "sk-wrong-key")  # the server echoes a refused key (OpenAI does, in part)
        with pytest.raises(EndpointSetupError) as err:
            send(server.url, api_key_env="MY_KEY")
    assert str(err.value) == "HTTP 401 from the endpoint: the API key was refused"


@pytest.mark.parametrize(
    ("status", "says"), [("401", "the API key was refused"), ("403", "permission denied"), ("404", "unknown model")]
)
def test_setup_errors_stop_the_caller_with_one_line_that_never_holds_the_key(server, monkeypatch, status, says):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-printed")
    server.fail(status)
    with pytest.raises(EndpointSetupError, match=says) as err:
        send(server.url)
    assert isinstance(err.value, UserError) and "sk-never" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), ("0.25", 0.25), ("Wed, 21 Oct 2015 07:28:00 GMT", None)])
def test_retry_after_of_a_429_is_read_when_it_is_seconds(server, header, seconds):
    server.retry_after = header
    server.fail("429")
    assert send(server.url).retry_after == seconds


def test_timeouts_and_refused_connections_are_free_to_retry(server):
    server.slow_seconds = 1.0
    server.fail("slow")
    assert send(server.url, timeout=0.2) == Reply(failure=("unavailable", "APITimeoutError"), retryable=True)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = send(f"http://127.0.0.1:{port}/v1")
    assert refused == Reply(failure=("unavailable", "APIConnectionError"), retryable=True)


def test_backoff_doubles_up_to_its_cap_jitters_and_honours_retry_after_up_to_the_cap():
    backoff = Backoff(base=0.5, cap=3.0)
    for attempt, ceiling in enumerate([0.5, 1.0, 2.0, 3.0, 3.0]):
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # jittered: workers that failed together spread out
    assert backoff.delay(4, retry_after=1.5) == 1.5 and backoff.delay(0, retry_after=600) == 3.0
    assert backoff.delay(0, retry_after=-1) == 0.0


def test_the_key_comes_from_the_environment_and_a_local_server_needs_none(monkeypatch):
    monkeypatch.setenv("MY_ENDPOINT_KEY", "sk-from-env")
    assert read_api_key("MY_ENDPOINT_KEY", "https://api.example.com/v1") == "sk-from-env"
    monkeypatch.delenv("MY_ENDPOINT_KEY")
    with pytest.raises(UserError, match=r"^\$MY_ENDPOINT_KEY is not set: export the API key for api\.example\.com"):
        read_api_key("MY_ENDPOINT_KEY", "https://api.example.com/v1")
    for local in ("http://127.0.0.1:8000/v1", "http://localhost:11434/v1"):
        assert read_api_key("MY_ENDPOINT_KEY", local) == "unused"  # vLLM and Ollama take any key
    assert read_api_key("MY_ENDPOINT_KEY", "https://api.example.com/v1", required=False) == "unused"


def test_a_key_never_travels_in_clear_and_none_is_sent_where_none_is_named(monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret")
    assert read_api_key("OPENAI_API_KEY", "https://api.example.com/v1") == "sk-openai-secret"
    assert read_api_key("OPENAI_API_KEY", None) == "sk-openai-secret"  # OpenAI itself
    assert read_api_key("OPENAI_API_KEY", "http://127.0.0.1:8000/v1") == "sk-openai-secret"  # named, on this machine
    assert read_api_key(None, "http://127.0.0.1:8000/v1") == "unused" == read_api_key(None, "https://h.example/v1")
    assert read_api_key("OPENAI_API_KEY", "http://gpu-box:8000/v1") == "unused"  # plain http to another machine
    assert open_client("http://gpu-box:8000/v1").api_key == "unused"
    assert "not sent to gpu-box" in caplog.text and "sk-openai" not in caplog.text


def test_importing_the_endpoint_does_not_import_openai(tmp_path):
    code = "import sys, cxr_vqa.endpoint; print('openai' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]

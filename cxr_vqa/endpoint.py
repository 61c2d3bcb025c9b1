"""OpenAI-compatible endpoints (OpenAI, Azure, vLLM, Ollama): the key, one send, and how long to wait before the next.

    client = open_client("http://127.0.0.1:8000/v1", api_key_env="OPENAI_API_KEY", timeout=120)
    backoff = Backoff(base=1.0)
    for attempt in range(1 + max_retries):
        reply = await send_chat(client, body)          # never raises for a failed request, but EndpointSetupError
        if not (reply.failure and reply.retryable):
            break
        await backoff.wait(attempt, reply.retry_after)
    reply.content, reply.usage                         # a reply arrived (whether it is usable is the caller's call)
    reply.logprobs                                     # per answer token, its top candidates' log-probabilities
    reply.failure, reply.retryable                     # none did: (code, detail), and whether a later send may pass
    await send_chat(client, body, on_text=print)       # streamed: on_text gets the answer so far as it grows

The one retry mechanism of the project: what may be sent again (408, 409, 425, 429, 5xx, timeouts, refused
connections: nothing was billed and a later send may pass), what never passes (401, 403, 404: a setup error that
stops the caller instead of failing every request), and the jittered backoff between sends. Callers keep their own
loop, because what they count differs (dataprep also retries billed, malformed replies). The client's own retries
are switched off, so that every send is counted here. `openai` is imported only when a client is made or used.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from cxr_vqa.errors import UserError

if TYPE_CHECKING:
    import openai

RETRY_STATUS = {408, 409, 425, 429}  # and every 5xx
SETUP_STATUS = {401: "the API key was refused", 403: "permission denied", 404: "unknown model or endpoint"}
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0")


class EndpointSetupError(UserError):
    """The endpoint refuses every request (key, permission, model name): stop instead of failing each request."""


@dataclass(frozen=True)
class Reply:
    """One send of one request: the model's raw content and token usage, or why no reply came."""

    content: str | None = None
    usage: dict | None = None
    # (code, detail): code "unavailable" (retryable) or "error"; the detail is a status or an exception's name,
    # never the request, the reply or the key
    failure: tuple[str, str] | None = None
    retryable: bool = False  # a failure that costs nothing and may pass later: 429, 5xx, timeouts, connections
    retry_after: float | None = None  # seconds the server asked us to wait
    # one {token text: logprob} per answer token, the chosen token first, then its top candidates; where the body
    # asked for `logprobs` and the server returned them
    logprobs: tuple[dict[str, float], ...] | None = None


def _seconds(header: str | None) -> float | None:
    try:
        return float(header) if header else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


async def send_chat(client: openai.AsyncOpenAI, body: dict, on_text: Callable[[str], None] | None = None) -> Reply:
    """Send `body` (chat.completions keyword arguments) once; raises only EndpointSetupError, when no request can
    ever pass. Give it a client without retries of its own (`open_client`, or `client.with_options(max_retries=0)`).
    With `on_text` the answer is streamed, and `on_text` gets the whole text so far after each piece."""
    import httpx
    import openai

    try:
        if on_text is None:
            response = await client.chat.completions.create(**body)
            choice = response.choices[0] if response.choices else None
            usage = response.usage.model_dump() if response.usage else None
            content = choice.message.content if choice else None
            return Reply(content, usage, logprobs=_logprobs([choice.logprobs] if choice else []))
        return await _stream(client, body, on_text)
    except openai.APIStatusError as exc:
        status = exc.status_code
        if status in SETUP_STATUS:
            raise EndpointSetupError(f"HTTP {status} from the endpoint: {SETUP_STATUS[status]}") from None
        retryable = status in RETRY_STATUS or status >= 500
        return Reply(
            failure=("unavailable" if retryable else "error", f"HTTP {status}"),
            retryable=retryable,
            retry_after=_seconds(exc.response.headers.get("retry-after")),
        )
    except (openai.APIError, httpx.HTTPError) as exc:  # timeouts, refused connections, unparsable or cut-off bodies
        return Reply(failure=("unavailable", type(exc).__name__), retryable=True)


async def _stream(client: openai.AsyncOpenAI, body: dict, on_text: Callable[[str], None]) -> Reply:
    parts, logprobs, usage = [], [], None
    stream = await client.chat.completions.create(**body, stream=True)
    async for chunk in stream:
        usage = chunk.usage.model_dump() if chunk.usage else usage
        for choice in chunk.choices[:1]:
            logprobs.append(choice.logprobs)
            if choice.delta.content:
                parts.append(choice.delta.content)
                on_text("".join(parts))
    return Reply("".join(parts), usage, logprobs=_logprobs(logprobs))


def _logprobs(per_choice: list) -> tuple[dict[str, float], ...] | None:
    """The answer's tokens as {token text: logprob} of their candidates; None when the server sent none."""
    tokens = [token for lp in per_choice if lp is not None for token in (lp.content or [])]
    if not tokens:
        return None
    return tuple({t.token: t.logprob} | {top.token: top.logprob for top in t.top_logprobs or []} for t in tokens)


@dataclass(frozen=True)
class Backoff:
    """How long to wait before send `attempt + 1` after a free failure: exponential from `base`, capped, jittered
    over its upper half so that workers that failed together do not retry together; a server's Retry-After is
    honoured up to `cap`."""

    base: float = 1.0
    cap: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap)
        return random.uniform(0.5, 1.0) * min(self.base * 2**attempt, self.cap)

    async def wait(self, attempt: int, retry_after: float | None = None) -> None:
        await asyncio.sleep(self.delay(attempt, retry_after))


def is_local(base_url: str | None) -> bool:
    """A server on this machine (vLLM, Ollama), which accepts any key."""
    return urlparse(base_url or "").hostname in LOCAL_HOSTS


def read_api_key(env_var: str = "OPENAI_API_KEY", base_url: str | None = None, *, required: bool = True) -> str:
    """The key in $env_var: from the environment only, never a flag or a file, so it never reaches a config, a log
    or a shell history. A local server gets a placeholder (the client insists on a key); a missing key for any other
    endpoint is a UserError, unless not `required` (a dry run that sends nothing)."""
    key = os.environ.get(env_var)
    if key:
        return key
    if required and not is_local(base_url):
        where = urlparse(base_url).hostname if base_url else "api.openai.com"
        raise UserError(
            f"${env_var} is not set: export the API key for {where} (keys are read from the environment only), "
            "or use a local OpenAI-compatible server"
        )
    return "unused"


def open_client(
    base_url: str | None = None,
    *,
    api_key_env: str = "OPENAI_API_KEY",
    timeout: float = 120.0,
    require_key: bool = True,
) -> openai.AsyncOpenAI:
    """An async client for `base_url` (default $OPENAI_BASE_URL, else OpenAI) with its own retries off: callers
    retry through `send_chat` and `Backoff`, and count every send."""
    import openai

    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    key = read_api_key(api_key_env, base_url, required=require_key)
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=timeout)

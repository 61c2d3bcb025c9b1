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
are switched off, so that every send is counted here. A key never travels in clear: plain http to another machine
gets none. A default key goes only to the host it belongs to (`key_env_for`): $OPENAI_API_KEY to api.openai.com; a
server on this machine or over plain http gets none unless one is named; any other https host must name the variable
that holds its key, so that OpenAI's key never reaches a third party by default. `openai` is imported only when a
client is made or used.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from cxr_vqa.errors import UserError

if TYPE_CHECKING:
    import openai

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429}  # and every 5xx
SETUP_STATUS = {401: "the API key was refused", 403: "permission denied", 404: "unknown model or endpoint"}
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "0.0.0.0")
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_KEY_HOST = "api.openai.com"  # the one host $OPENAI_API_KEY goes to unless a caller names it
NO_KEY = "unused"  # what a server that gets no key is sent: the client insists on one
REASON_CHARS = 200  # of a server's reason for a refused request: enough for "max_tokens is not supported ..."
# long runs of key or base64 characters: an API key or a film that a server echoed into its reason
SECRET_LIKE = re.compile(r"[A-Za-z0-9+/=_-]{32,}")


class EndpointSetupError(UserError):
    """The endpoint refuses every request (key, permission, model name): stop instead of failing each request."""


@dataclass(frozen=True)
class Reply:
    """One send of one request: the model's raw content and token usage, or why no reply came."""

    content: str | None = None
    usage: dict | None = None
    # (code, detail): code "unavailable" (retryable) or "error"; the detail is a status (with the server's reason
    # for a refused request, one line, long tokens cut out) or an exception's name, never the request or the key
    failure: tuple[str, str] | None = None
    retryable: bool = False  # a failure that costs nothing and may pass later: 429, 5xx, timeouts, connections
    retry_after: float | None = None  # seconds the server asked us to wait
    status: int | None = None  # the HTTP status of a failure the server answered; None for timeouts, connections
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
        # a 4xx says why (a model that takes no `logprobs`, an unknown model); a refused key's reason may echo it
        why = _reason(exc.body, client.api_key) if 400 <= status < 500 and status not in (401, 403) else ""
        if status in SETUP_STATUS:
            raise EndpointSetupError(f"HTTP {status} from the endpoint: {SETUP_STATUS[status]}{why}") from None
        retryable = status in RETRY_STATUS or status >= 500
        return Reply(
            failure=("unavailable" if retryable else "error", f"HTTP {status}{why}"),
            retryable=retryable,
            retry_after=_seconds(exc.response.headers.get("retry-after")),
            status=status,
        )
    except (openai.APIError, httpx.HTTPError) as exc:  # timeouts, refused connections, unparsable or cut-off bodies
        return Reply(failure=("unavailable", type(exc).__name__), retryable=True)


async def _stream(client: openai.AsyncOpenAI, body: dict, on_text: Callable[[str], None]) -> Reply:
    parts, logprobs, usage = [], [], None
    # usage comes as a last chunk only when asked for (OpenAI, vLLM): without it the ledger would only estimate
    stream = await client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        usage = chunk.usage.model_dump() if chunk.usage else usage
        for choice in chunk.choices[:1]:
            logprobs.append(choice.logprobs)
            if choice.delta.content:
                parts.append(choice.delta.content)
                on_text("".join(parts))
    return Reply("".join(parts), usage, logprobs=_logprobs(logprobs))


def _reason(body: object, key: str | None) -> str:
    """The server's reason for refusing a request as ": <one line>", or "" when it gave none; never the key."""
    if isinstance(body, dict):
        body = body.get("message") or body.get("detail") or ""
    text = " ".join(str(body or "").split())
    if key and key != NO_KEY:
        text = text.replace(key, "***")
    text = SECRET_LIKE.sub("...", text)
    if len(text) > REASON_CHARS:
        text = text[: REASON_CHARS - 3] + "..."
    return f": {text}" if text else ""


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


def in_clear(base_url: str | None) -> bool:
    """Plain http to another machine: whatever is sent, a key included, can be read on the way."""
    return urlparse(base_url or "").scheme == "http" and not is_local(base_url)


def key_env_for(base_url: str | None, named: str | None, *, how: str) -> str | None:
    """The environment variable whose key goes to `base_url` (None: OpenAI's API): the `named` one if any, else
    $OPENAI_API_KEY for api.openai.com only, none for a server on this machine or over plain http, and for any other
    https host a UserError that says how to name one (`how`, e.g. "with --api-key-env VAR")."""
    if named:
        return named
    host = urlparse(base_url).hostname if base_url else DEFAULT_KEY_HOST
    if is_local(base_url) or in_clear(base_url):
        return None
    if host == DEFAULT_KEY_HOST:
        return DEFAULT_KEY_ENV
    raise UserError(f"{host} gets no key by default (${DEFAULT_KEY_ENV} goes only to {DEFAULT_KEY_HOST}): name the "
                    f"environment variable that holds {host}'s key {how}")  # fmt: skip


def read_api_key(env_var: str | None = DEFAULT_KEY_ENV, base_url: str | None = None, *, required: bool = True) -> str:
    """The key in $env_var: from the environment only, never a flag or a file, so it never reaches a config, a log
    or a shell history. No key (a placeholder: the client insists on one) when `env_var` is None, for a plain-http
    server on another machine (it would travel in clear) and for a local server whose variable is not set; a
    missing key for any other endpoint is a UserError, unless not `required` (a dry run that sends nothing)."""
    if env_var is None:
        return NO_KEY
    key = os.environ.get(env_var)
    if in_clear(base_url):
        if key:
            logger.warning("$%s is not sent to %s: plain http would carry it in clear (use https)", env_var,
                           urlparse(base_url).hostname)  # fmt: skip
        return NO_KEY
    if key:
        return key
    if required and not is_local(base_url):
        where = urlparse(base_url).hostname if base_url else DEFAULT_KEY_HOST
        raise UserError(
            f"${env_var} is not set: export the API key for {where} (keys are read from the environment only), "
            "or use a local OpenAI-compatible server"
        )
    return NO_KEY


def open_client(
    base_url: str | None = None,
    *,
    api_key_env: str | None = None,
    timeout: float = 120.0,
    require_key: bool = True,
    how: str = "with --api-key-env VAR",
) -> openai.AsyncOpenAI:
    """An async client for `base_url` (default $OPENAI_BASE_URL, else OpenAI) with its own retries off: callers
    retry through `send_chat` and `Backoff`, and count every send. The key of `api_key_env`, or where none is named
    the host's default (`key_env_for`), as `read_api_key` gives it."""
    import openai

    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    key = read_api_key(key_env_for(base_url, api_key_env, how=how), base_url, required=require_key)
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=timeout)

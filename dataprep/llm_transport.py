"""What a transport hands back to the LLM generator (`Reply`), and the online transport: one chat request.

    reply = await send_chat(client.with_options(max_retries=0), body)   # never raises for a failed request
    reply.content, reply.usage        # a reply arrived (valid or not is the generator's business)
    reply.failure, reply.retryable    # none did: (reject reason, detail), and whether a later send may pass

A transport only carries requests and replies: the generator (dataprep.qa_llm) records the cost, validates,
caches and decides what to send again. The other transport is the Batch API (dataprep.batch_api).
"""

from __future__ import annotations

from dataclasses import dataclass

import openai

from cxr_vqa.errors import UserError

RETRY_STATUS = {408, 409, 425, 429}
SETUP_STATUS = {401: "the API key was refused", 403: "permission denied", 404: "unknown model or endpoint"}


class LLMSetupError(UserError):
    """The endpoint refuses every request (key, permission, model name): stop instead of rejecting each study."""


@dataclass(frozen=True)
class Reply:
    """One send of one request: the model's raw content and token usage, or why no reply came."""

    content: str | None = None
    usage: dict | None = None
    failure: tuple[str, str] | None = None  # (reject reason, detail); never the report or the key
    retryable: bool = False  # a failure that costs nothing and may pass later: 429, 5xx, timeouts, connections
    retry_after: float | None = None  # seconds the server asked us to wait


def _seconds(header: str | None) -> float | None:
    try:
        return float(header) if header else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


async def send_chat(client: openai.AsyncOpenAI, body: dict) -> Reply:
    """Send `body` once with chat.completions; raises only LLMSetupError, when no request can ever pass."""
    try:
        response = await client.chat.completions.create(**body)
    except openai.APIStatusError as exc:
        status = exc.status_code
        if status in SETUP_STATUS:
            raise LLMSetupError(f"HTTP {status} from the endpoint: {SETUP_STATUS[status]}") from None
        retryable = status in RETRY_STATUS or status >= 500
        reason = "llm_unavailable" if retryable else "llm_error"
        return Reply(
            failure=(reason, f"HTTP {status}"),
            retryable=retryable,
            retry_after=_seconds(exc.response.headers.get("retry-after")),
        )
    except openai.APIError as exc:  # timeouts, refused connections, unparsable HTTP bodies
        return Reply(failure=("llm_unavailable", type(exc).__name__), retryable=True)
    usage = response.usage.model_dump() if response.usage else None
    content = response.choices[0].message.content if response.choices else None
    return Reply(content, usage)

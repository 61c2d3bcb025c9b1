"""A model behind any OpenAI-compatible vision endpoint (vLLM serving LLaVA-1.5 and its adapters, OpenAI, Ollama),
answering like a local one: the same conversation, the film as the exact letterboxed picture the local models see,
the app's or the evaluation's decoding settings, and P(yes) from the first answer token's `top_logprobs`.

    specs = remote_specs(["gpt4o=https://api.openai.com/v1#gpt-4o", "vllm=http://127.0.0.1:8000/v1#tuned#VLLM_KEY"])
    remote = RemoteModel(specs["gpt4o"], timeout=60)       # fails here, in one line, if its key is not set
    answer = remote.answer(film.image, conversation, settings, on_text=print)   # streamed; Answer(text, p_yes)
    RemoteModel(spec, budget=Budget({"gpt4o": (2.5, 10.0)}, max_cost=5.0))     # refuses to send past 5 USD

`--remote NAME=BASE_URL#MODEL[#KEY_VARIABLE]`: the model's name in panes, votes and reports; the endpoint's base URL
(ending in /v1, no query string); the model id the endpoint serves (for vLLM, the base or a `--lora-modules` name);
and, optionally, the environment variable that holds its API key (upper-case letters, digits and _). Which key goes
where (`cxr_vqa.endpoint.key_env_for`): api.openai.com gets $OPENAI_API_KEY unless the entry names another variable;
any other https endpoint must name its variable (OpenAI's key never goes to a third party by default); a server on
this machine gets a key only from a variable the entry names; plain http to another machine never gets one (naming a
variable for it is refused: the key would travel in clear). The key itself is read from the environment only, never
from a flag, a file or the URL. Sends go through the core's one retry mechanism (`cxr_vqa.endpoint`): 429, 5xx,
timeouts and refused connections are retried with backoff, a refused key stops at once, and what is left is one line
(RemoteError). Nothing of the key or the film is logged.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

from PIL import Image

from cxr_vqa import endpoint
from cxr_vqa.answers import WORD_START, Answer, p_yes_of_candidates
from cxr_vqa.costs import Budget, request_tokens
from cxr_vqa.endpoint import (
    DEFAULT_KEY_ENV,
    Backoff,
    EndpointSetupError,
    Reply,
    is_local,
    key_env_for,
    open_client,
    read_api_key,
    send_chat,
)
from cxr_vqa.errors import UserError
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.model import ADAPTER_NAME, NAME_RULE

TOP_LOGPROBS = 20  # OpenAI's maximum and vLLM's default --max-logprobs: the yes/no spellings are all among them
MAX_RETRIES = 3
SETTINGS = GenerationSettings()
KEY_ENV = re.compile(r"[A-Z_][A-Z0-9_]*")  # upper case only: a pasted key (mixed case) is refused, never echoed
SPEC_FORM = "NAME=BASE_URL#MODEL[#KEY_VARIABLE]"


class RemoteError(UserError):
    """A remote model gave no answer: why, in one line. `fatal` when no later request can pass (key, model name);
    `retryable` when a later try may pass (429, 5xx, timeouts, no connection), so neither means the endpoint refused
    this one request for good; `status` the last HTTP status the endpoint answered with (None: no answer at all)."""

    def __init__(self, message: str, *, fatal: bool = False, retryable: bool = False, status: int | None = None):
        super().__init__(message)
        self.fatal, self.retryable, self.status = fatal, retryable, status

    @property
    def down(self) -> bool:
        """Whether no later request is likely to do better soon: no reply in time, no connection, the endpoint
        unavailable (HTTP 502-504 after the retries), or never passing (fatal)."""
        return self.fatal or (self.retryable and self.status in (None, 502, 503, 504))


@dataclass(frozen=True)
class RemoteSpec:
    name: str
    base_url: str
    model: str
    key_env: str | None = DEFAULT_KEY_ENV  # None: no key is sent

    @property
    def source(self) -> str:
        """Where it answers from, as votes and reports record it: BASE_URL#MODEL (never the key)."""
        return f"{self.base_url}#{self.model}"


def parse_remote(item: str) -> RemoteSpec:
    """One `--remote` value; messages name the entry by its name only, so a key pasted into it is never printed."""
    name, sep, rest = item.partition("=")
    if not (sep and ADAPTER_NAME.fullmatch(name)):
        raise UserError(f"--remote: give {SPEC_FORM}, with a name of {NAME_RULE}")
    url, _, tail = rest.partition("#")
    model, _, key_env = tail.partition("#")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"--remote {name}: the base URL must be http(s)://host[:port]/v1 ({SPEC_FORM})")
    if parsed.username or parsed.password:
        raise UserError(f"--remote {name}: no credentials in the URL; put the key in an environment variable")
    if parsed.query:  # Azure's ?api-key=: the URL reaches votes and reports (a "#" starts MODEL)
        raise UserError(f"--remote {name}: no query string in the base URL; put a key in an environment variable")
    if not model:
        raise UserError(f"--remote {name}: name the model after the URL ({SPEC_FORM})")
    if key_env and not KEY_ENV.fullmatch(key_env):
        raise UserError(f"--remote {name}: the part after the second # names an environment variable (A-Z, 0-9, _) "
                        "that holds the key, never the key itself")  # fmt: skip
    if key_env and endpoint.in_clear(url):
        raise UserError(f"--remote {name}: ${key_env} would travel in clear over http to {parsed.hostname}: "
                        "use https, or no key")  # fmt: skip
    try:
        key_env = key_env_for(url, key_env or None, how=f"after the second # ({name}={url}#{model}#VARIABLE)")
    except UserError as err:
        raise UserError(f"--remote {name}: {err}") from None
    return RemoteSpec(name, url.rstrip("/"), model, key_env)


def remote_specs(items: Sequence[str] | None, taken: Sequence[str] = ()) -> dict[str, RemoteSpec]:
    """Model name -> RemoteSpec from `--remote` values; names must differ from each other and from `taken`."""
    specs: dict[str, RemoteSpec] = {}
    for item in items or []:
        spec = parse_remote(item)
        if spec.name in specs or spec.name in taken:
            raise UserError(f"--remote {spec.name}: that name is already a model's; give each model its own name")
        specs[spec.name] = spec
    return specs


def png_data_url(image: Image.Image) -> str:
    """The picture as a PNG data URL, pixel for pixel (PNG is lossless): what the local models see."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def openai_messages(conversation: Sequence[dict], data_url: str) -> list[dict]:
    """The project's conversation (typed parts, the image in the first user turn) as chat-completions messages."""
    messages = []
    for turn in conversation:
        content = turn["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        text = " ".join(p["text"] for p in parts if p["type"] == "text")
        if turn["role"] == "user" and any(p["type"] == "image" for p in parts):
            messages.append({"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_url}}, {"type": "text", "text": text}]})  # fmt: skip
        else:
            messages.append({"role": turn["role"], "content": text})
    return messages


def answer_of(reply: Reply) -> Answer:
    return Answer((reply.content or "").strip(), p_yes_of(reply))


def p_yes_of(reply: Reply) -> float | None:
    """P(yes) from the first answer token that is not blank, where the endpoint returned logprobs."""
    for candidates in reply.logprobs or ():
        if next(iter(candidates), "").strip(WORD_START):
            return p_yes_of_candidates(candidates)
    return None


class RemoteModel:
    """One model behind an OpenAI-compatible endpoint; safe to call from several threads (each call its own loop)."""

    def __init__(self, spec: RemoteSpec, *, timeout: float = 60.0, max_retries: int = MAX_RETRIES,
                 backoff: Backoff = Backoff(), budget: Budget | None = None):  # fmt: skip
        read_api_key(spec.key_env, spec.base_url)  # a missing key fails at start, not at the first question
        self.spec, self.timeout, self.max_retries, self.backoff = spec, timeout, max_retries, backoff
        self.budget = budget  # `answer` spends from it, and sends nothing once its cap is reached

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def source(self) -> str:
        """Where it answers from, as votes and reports record it (never the key)."""
        return self.spec.source

    @property
    def identity(self) -> str:
        """What a cached answer of it is keyed on besides the request: its endpoint (a served export: its files)."""
        return self.spec.base_url

    def client(self):
        return open_client(self.spec.base_url, api_key_env=self.spec.key_env, timeout=self.timeout)

    def body(self, data_url: str, conversation: Sequence[dict], settings: GenerationSettings) -> dict:
        return {
            "model": self.spec.model, "messages": openai_messages(conversation, data_url),
            "temperature": settings.temperature, "top_p": settings.top_p, "max_tokens": settings.max_new_tokens,
            "logprobs": True, "top_logprobs": TOP_LOGPROBS,
        }  # fmt: skip

    async def send(self, client, body: dict, on_text: Callable[[str], None] | None = None) -> Reply:
        """One answer, with bounded retries of what may pass later; RemoteError when none came."""
        for attempt in range(1 + self.max_retries):
            try:
                reply = await send_chat(client, body, on_text)
            except EndpointSetupError as err:
                key = f"key from ${self.spec.key_env}" if self.spec.key_env else "no key sent"
                raise RemoteError(f"{self.name}: {err} ({key})", fatal=True) from None
            if not (reply.failure and reply.retryable) or attempt == self.max_retries:
                break
            await self.backoff.wait(attempt, reply.retry_after)
        if reply.failure:
            detail, _, reason = reply.failure[1].partition(": ")  # "HTTP 400: the server's reason"
            raise RemoteError(f"{self.name} did not answer: {self._why(detail)} after {attempt + 1} "
                              f"attempt{'s' if attempt else ''}" + (f": {reason}" if reason else ""),
                              retryable=reply.retryable, status=reply.status)  # fmt: skip
        return reply

    def _why(self, detail: str) -> str:
        where = urlparse(self.spec.base_url).netloc
        if detail == "APITimeoutError":
            return f"no reply from {where} within {self.timeout:g} s"
        if detail == "APIConnectionError":
            return f"cannot connect to {where}" + ("" if is_local(self.spec.base_url) else " (network or URL)")
        return f"{detail} from {where}"

    async def aanswer(self, client, image: Image.Image, conversation: Sequence[dict], settings: GenerationSettings,
                      on_text: Callable[[str], None] | None = None) -> tuple[Answer, dict | None]:  # fmt: skip
        """(the answer with its P(yes), the token usage) for the last question of `conversation` about `image`."""
        relay = (lambda text: on_text(text.lstrip())) if on_text else None
        reply = await self.send(client, self.body(png_data_url(image), conversation, settings), relay)
        return answer_of(reply), reply.usage

    def answer(self, image: Image.Image, conversation: Sequence[dict], settings: GenerationSettings = SETTINGS,
               on_text: Callable[[str], None] | None = None) -> Answer:  # fmt: skip
        """`aanswer` in a fresh event loop, for a thread of the app; streamed when `on_text` is given. With a budget,
        the request's most it may cost is held before it is sent, and a request past the cap is not sent."""
        tokens = request_tokens(conversation, settings.max_new_tokens)
        held = self.budget.reserve(self.name, tokens) if self.budget is not None else 0.0
        if held is None:
            raise RemoteError(f"{self.name} answers no more: the remote models' spending cap of "
                              f"{self.budget.max_cost:g} USD (--max-cost) is reached", fatal=True)  # fmt: skip
        usage, answered = None, False

        async def run() -> tuple[Answer, dict | None]:
            client = self.client()
            try:
                return await self.aanswer(client, image, conversation, settings, on_text)
            finally:
                await client.close()

        try:
            answer, usage = asyncio.run(run())
            answered = True
            return answer
        finally:
            if self.budget is not None:
                self.budget.settle(self.name, held, usage, tokens, answered)

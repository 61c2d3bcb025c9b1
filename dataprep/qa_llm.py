"""QA pairs from report text by an LLM behind any OpenAI-compatible endpoint (OpenAI, Azure, vLLM, Ollama).

    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:8000/v1", api_key=os.environ["OPENAI_API_KEY"])
    generator = LLMGenerator(client, "gpt-4o-mini", cache_dir=out / "cache", concurrency=16, max_cost=5.0)
    results = generator.generate(studies)           # {study_id: QAResult}; generator.stats for stats.json

The client is passed in (tests point a real one at a loopback server). Every valid reply is cached on disk under a
hash of (model, prompt version, pairs per study, report), so identical reports cost one request, a rerun costs
none and a killed run resumes where it stopped. The client's own retries are switched off: this module retries
429, 5xx, timeouts and invalid JSON itself, with backoff, and counts every attempt.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import openai
from tqdm.auto import tqdm

from cxr_vqa.errors import UserError
from dataprep.cache import DiskCache, cache_key
from dataprep.chexpert import Study
from dataprep.llm_prompt import PROMPT_VERSION, InvalidOutput, parse_content, request_body
from dataprep.qa import QAResult, filter_pairs

logger = logging.getLogger(__name__)

# USD per million (input, output) tokens, list prices when written; --price-input/--price-output override.
# Unknown models (a local vLLM or Ollama) cost 0.
PRICES_PER_MTOK = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
}
RETRY_STATUS = {408, 409, 425, 429}
SETUP_STATUS = {401: "the API key was refused", 403: "permission denied", 404: "unknown model or endpoint"}
OUTPUT_TOKENS_PER_PAIR = 40  # for estimates only


class LLMSetupError(UserError):
    """The endpoint refuses every request (key, permission, model name): stop instead of rejecting each study."""


def estimate_tokens(text: str) -> int:
    return len(text) // 4 + 1  # ~4 characters a token for English; good enough for a budget


class Ledger:
    """Tokens and dollars, and a budget that requests reserve before they are sent (concurrency overshoots)."""

    def __init__(self, price: tuple[float, float], max_cost: float | None = None) -> None:
        self.price, self.max_cost = price, max_cost
        self.prompt_tokens = self.completion_tokens = 0
        self.spent = self.reserved = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int, discount: float = 1.0) -> float:
        return discount * (prompt_tokens * self.price[0] + completion_tokens * self.price[1]) / 1e6

    def reserve(self, amount: float) -> bool:
        if self.max_cost is not None and self.spent + self.reserved + amount > self.max_cost:
            return False
        self.reserved += amount
        return True

    def release(self, amount: float) -> None:
        self.reserved -= amount

    def record(self, usage: dict | None, estimate: tuple[int, int], discount: float = 1.0) -> float:
        """Add one reply's tokens (the estimate where the server reports none); return its cost."""
        usage = usage or {}
        prompt = usage.get("prompt_tokens") or estimate[0]
        completion = usage.get("completion_tokens") or estimate[1]
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        cost = self.cost(prompt, completion, discount)
        self.spent += cost
        return cost


def validate_content(content: str | None, qa_per_study: int) -> list:
    """Raw pairs of a reply that has at least one usable pair; raises InvalidOutput otherwise."""
    raw = parse_content(content)
    if not filter_pairs(raw, qa_per_study, Counter()):
        raise InvalidOutput("no_usable_pair", "no usable pair (schema, citations or priors)")
    return raw


class LLMGenerator:
    """The `llm` QA generator (see the module docstring); `stats` counts since it was made."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        model: str,
        cache_dir: str | Path,
        *,
        qa_per_study: int = 5,
        concurrency: int = 8,
        max_retries: int = 5,
        backoff: float = 1.0,
        timeout: float = 120.0,
        max_cost: float | None = None,
        price: tuple[float, float] | None = None,
        batch_api: bool = False,
        poll_interval: float = 30.0,
        progress: bool = True,
    ) -> None:
        self.client, self.model, self.cache = client, model, DiskCache(cache_dir)
        self.qa_per_study, self.concurrency, self.max_retries = qa_per_study, max(concurrency, 1), max_retries
        self.backoff, self.timeout, self.batch_api, self.poll_interval = backoff, timeout, batch_api, poll_interval
        self.progress = progress
        self.ledger = Ledger(price or PRICES_PER_MTOK.get(model, (0.0, 0.0)), max_cost)
        self.source = f"llm:{model}"
        self.counts: Counter = Counter()
        self.stats: dict = {}

    def key(self, study: Study) -> str:
        return cache_key(
            model=self.model, prompt_version=PROMPT_VERSION, qa_per_study=self.qa_per_study, report=study.report
        )

    def body(self, report: str) -> dict:
        return request_body(model=self.model, report=report, qa_per_study=self.qa_per_study)

    def estimate_tokens(self, body: dict) -> tuple[int, int]:
        """(input, output) tokens one request is expected to use, before it is sent."""
        return estimate_tokens(json.dumps(body["messages"])), self.qa_per_study * OUTPUT_TOKENS_PER_PAIR

    def estimate(self, studies: Sequence[Study]) -> dict:
        """What a run would send and cost (--dry-run): no request is made."""
        reports = {self.key(s): s.report for s in studies}
        pending = [k for k in reports if k not in self.cache]
        tokens = [self.estimate_tokens(self.body(reports[k])) for k in pending]
        prompt, completion = sum(t[0] for t in tokens), sum(t[1] for t in tokens)
        cost = self.ledger.cost(prompt, completion)
        return {
            "model": self.model,
            "requests": len(pending),
            "cached": len(reports) - len(pending),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cost_usd": round(cost, 4),
            "batch_cost_usd": round(cost / 2, 4),
        }

    def generate(self, studies: Sequence[Study]) -> dict[str, QAResult]:
        """Run `agenerate` in a fresh event loop; the client is closed after: its connections die with the loop.

        To reuse one client across calls, `await agenerate(...)` inside your own loop instead.
        """

        async def run() -> dict[str, QAResult]:
            try:
                return await self.agenerate(studies)
            finally:
                await self.client.close()

        return asyncio.run(run())

    async def agenerate(self, studies: Sequence[Study]) -> dict[str, QAResult]:
        keys = {s.study_id: self.key(s) for s in studies}
        reports = {keys[s.study_id]: s.report for s in studies}  # identical reports share one request
        pending = [k for k in reports if k not in self.cache]
        self.counts["cache_hits"] += len(reports) - len(pending)
        if pending and self.batch_api:
            from dataprep.batch_api import run_batches  # only batch runs need it

            bodies = {k: self.body(reports[k]) for k in pending}
            failures = await run_batches(self, bodies)
        else:
            failures = await self._run_online(pending, reports) if pending else {}
        return self._assemble(studies, keys, failures)

    async def _run_online(self, pending: list[str], reports: dict[str, str]) -> dict[str, tuple[str, str]]:
        client = self.client.with_options(max_retries=0, timeout=self.timeout)
        failures: dict[str, tuple[str, str]] = {}
        todo = iter(pending)
        fatal: list[LLMSetupError] = []
        bar = tqdm(total=len(pending), desc=f"llm {self.model}", unit="report", disable=not self.progress)

        async def worker() -> None:
            for key in todo:  # one shared iterator: each key goes to exactly one worker
                if fatal:
                    return
                try:
                    failure = await self._request(client, key, self.body(reports[key]))
                except LLMSetupError as exc:
                    fatal.append(exc)
                    return
                if failure:
                    failures[key] = failure
                bar.update()

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(pending)))))
        bar.close()
        if fatal:
            raise fatal[0]
        return failures

    async def _request(self, client: openai.AsyncOpenAI, key: str, body: dict) -> tuple[str, str] | None:
        """Send one report until a valid reply is cached; the reject reason if that never happens."""
        tokens = self.estimate_tokens(body)
        estimate = self.ledger.cost(*tokens)
        if not self.ledger.reserve(estimate):
            return "max_cost_reached", f"--max-cost {self.ledger.max_cost} would be exceeded"
        failure = ("llm_unavailable", "no attempt")
        try:
            for attempt in range(self.max_retries + 1):
                if attempt:
                    self.counts["retries"] += 1
                self.counts["requests"] += 1
                try:
                    response = await client.chat.completions.create(**body)
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    if status in SETUP_STATUS:
                        raise LLMSetupError(f"HTTP {status} from the endpoint: {SETUP_STATUS[status]}") from None
                    if status not in RETRY_STATUS and status < 500:
                        return "llm_error", f"HTTP {status}"
                    failure = ("llm_unavailable", f"HTTP {status}")
                    await self._sleep(attempt, exc.response.headers.get("retry-after"))
                    continue
                except openai.APIError as exc:  # timeouts, refused connections, unparsable HTTP bodies
                    failure = ("llm_unavailable", type(exc).__name__)
                    await self._sleep(attempt)
                    continue
                cost = self.ledger.record(response.usage.model_dump() if response.usage else None, tokens)
                content = response.choices[0].message.content if response.choices else None
                try:
                    validate_content(content, self.qa_per_study)
                except InvalidOutput as exc:
                    self.counts[f"invalid_output:{exc.code}"] += 1
                    failure = ("llm_invalid_output", str(exc))
                    await self._sleep(attempt)
                    continue
                self.cache.put(key, {"content": content, "model": self.model, "cost_usd": cost})
                return None
            return failure[0], f"{failure[1]} after {self.max_retries + 1} attempts"
        finally:
            self.ledger.release(estimate)

    async def _sleep(self, attempt: int, retry_after: str | None = None) -> None:
        if attempt >= self.max_retries:
            return
        try:
            delay = min(float(retry_after), 60.0) if retry_after else None
        except ValueError:
            delay = None
        if delay is None:  # full jitter keeps 16 workers that failed together from retrying together
            delay = random.uniform(0.5, 1.0) * min(self.backoff * 2**attempt, 60.0)
        await asyncio.sleep(delay)

    def _assemble(self, studies: Sequence[Study], keys: dict, failures: dict) -> dict[str, QAResult]:
        results, filtered, costs = {}, Counter(), {}
        for study in studies:
            key = keys[study.study_id]
            entry = self.cache.get(key)
            if entry is None:
                reason, detail = failures.get(key, ("llm_not_sent", "run stopped before this report"))
                results[study.study_id] = QAResult(None, reason, detail)
                continue
            try:
                pairs = filter_pairs(parse_content(entry["content"]), self.qa_per_study, filtered)
            except InvalidOutput:
                pairs = []
            results[study.study_id] = QAResult(pairs) if pairs else QAResult(None, "llm_invalid_output", "cached")
            costs[key] = entry.get("cost_usd", 0.0)
        self.stats = {
            "model": self.model,
            "prompt_version": PROMPT_VERSION,
            "requests": self.counts["requests"],
            "retries": self.counts["retries"],
            "batch_requests": self.counts["batch_requests"],
            "cache_hits": self.counts["cache_hits"],
            "invalid_outputs": {k.split(":", 1)[1]: v for k, v in self.counts.items() if k.startswith("invalid_")},
            "filtered_pairs": dict(filtered),
            "prompt_tokens": self.ledger.prompt_tokens,
            "completion_tokens": self.ledger.completion_tokens,
            "cost_usd": round(self.ledger.spent, 6),
            "dataset_cost_usd": round(sum(costs.values()), 6),  # includes replies paid for by earlier runs
        }
        return results

"""QA pairs from report text by an LLM behind any OpenAI-compatible endpoint (OpenAI, Azure, vLLM, Ollama).

    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:8000/v1", api_key=os.environ["OPENAI_API_KEY"])
    generator = LLMGenerator(client, "gpt-4o-mini", cache_dir=out / "cache", concurrency=16, max_cost=5.0)
    results = generator.generate(studies)           # {study_id: QAResult}; generator.stats for stats.json

The client is passed in (tests point a real one at a loopback server). Every valid reply is cached on disk under a
hash of (model, prompt version, pairs per study, report), so identical reports cost one request, a rerun costs
none and a killed run resumes where it stopped. The client's own retries are switched off: this module retries
429, 5xx, timeouts (with backoff) and invalid replies itself, each within its own budget and never more than
MAX_SENDS_PER_REPORT sends in all (dataprep.llm_retry), and counts every attempt.

Replies come from one of two transports, concurrent chat requests (dataprep.llm_transport) or the Batch API
(dataprep.batch_api); they only carry data. This module alone reserves the budget, pays for, validates, counts
and caches a reply, and decides what to send again.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import openai
from tqdm.auto import tqdm

from dataprep.batch_api import DISCOUNT, BatchTransport
from dataprep.cache import DiskCache, cache_key
from dataprep.chexpert import Study
from dataprep.llm_cost import PRICES_PER_MTOK, Ledger, estimate_tokens
from dataprep.llm_prompt import PROMPT_VERSION, InvalidOutput, parse_content, request_body
from dataprep.llm_retry import MAX_SENDS_PER_REPORT, check_retry_options
from dataprep.llm_transport import LLMSetupError, Reply, send_chat
from dataprep.qa import QAResult, filter_pairs

OUTPUT_TOKENS_PER_PAIR = 40  # for estimates only


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
        max_retries: int = 4,
        max_invalid_retries: int = 2,
        backoff: float = 1.0,
        timeout: float = 120.0,
        max_cost: float | None = None,
        price: tuple[float, float] | None = None,
        batch_api: bool = False,
        poll_interval: float = 30.0,
        progress: bool = True,
    ) -> None:
        check_retry_options(max_retries, max_invalid_retries)
        self.client, self.model, self.cache = client, model, DiskCache(cache_dir)
        self.qa_per_study, self.concurrency = qa_per_study, max(concurrency, 1)
        self.max_retries, self.max_invalid_retries = max_retries, max_invalid_retries
        self.backoff, self.timeout, self.batch_api, self.poll_interval = backoff, timeout, batch_api, poll_interval
        self.progress = progress
        self.ledger = Ledger(price or PRICES_PER_MTOK.get(model, (0.0, 0.0)), max_cost)
        self.source = f"llm:{model}"
        self.counts: Counter = Counter()
        self.invalid_outputs: Counter = Counter()  # by InvalidOutput.code
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
            "batch_cost_usd": round(cost * DISCOUNT, 4),
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
        bodies = {k: self.body(reports[k]) for k in pending}
        if pending and self.batch_api:
            failures = await self._run_batches(bodies)
        else:
            failures = await self._run_online(bodies) if pending else {}
        return self._assemble(studies, keys, failures)

    def _reserve(self, tokens: tuple[int, int], discount: float = 1.0) -> float | None:
        """Reserve one request's estimated cost before it is sent; None when --max-cost would be exceeded."""
        estimate = self.ledger.cost(*tokens, discount)
        return estimate if self.ledger.reserve(estimate) else None

    def _over_budget(self) -> tuple[str, str]:
        return "max_cost_reached", f"--max-cost {self.ledger.max_cost} would be exceeded"

    def _accept(
        self, key: str, reply: Reply, tokens: tuple[int, int], discount: float = 1.0
    ) -> tuple[str, str] | None:
        """Pay for, validate, count and cache one reply from any transport; why it is unusable, or None."""
        if reply.failure:
            return reply.failure
        cost = self.ledger.record(reply.usage, tokens, discount)  # an invalid reply is billed too
        try:
            validate_content(reply.content, self.qa_per_study)
        except InvalidOutput as exc:
            self.invalid_outputs[exc.code] += 1
            return "llm_invalid_output", str(exc)
        self.cache.put(key, {"content": reply.content, "model": self.model, "cost_usd": cost})
        return None

    async def _run_batches(self, bodies: dict[str, dict]) -> dict[str, tuple[str, str]]:
        """One round of the Batch API: a retry would wait another batch window, so the next run resubmits."""
        transport = BatchTransport(
            self.client, self.cache.root / "batches", poll_interval=self.poll_interval, progress=self.progress
        )
        in_flight = transport.in_flight()
        failures: dict[str, tuple[str, str]] = {}
        new: dict[str, dict] = {}
        reserved = 0.0
        for key, body in bodies.items():
            if key in in_flight:
                continue
            estimate = self._reserve(self.estimate_tokens(body), DISCOUNT)
            if estimate is None:
                failures[key] = self._over_budget()
            else:
                new[key], reserved = body, reserved + estimate
        try:
            self.counts["batch_requests"] += await transport.submit(new)
            async for key, reply in transport.replies():
                tokens = self.estimate_tokens(bodies[key]) if key in bodies else (0, 0)
                failure = self._accept(key, reply, tokens, DISCOUNT)
                if failure:
                    failures[key] = failure
                else:  # the error file may name a key the output file answered
                    failures.pop(key, None)
        finally:
            self.ledger.release(reserved)
        for key in bodies:
            if key not in self.cache and key not in failures:
                failures[key] = ("llm_batch_failed", "the batch returned no reply for this request")
        return failures

    async def _run_online(self, bodies: dict[str, dict]) -> dict[str, tuple[str, str]]:
        client = self.client.with_options(max_retries=0, timeout=self.timeout)
        failures: dict[str, tuple[str, str]] = {}
        todo = iter(bodies.items())
        fatal: list[LLMSetupError] = []
        bar = tqdm(total=len(bodies), desc=f"llm {self.model}", unit="report", disable=not self.progress)

        async def worker() -> None:
            for key, body in todo:  # one shared iterator: each key goes to exactly one worker
                if fatal:
                    return
                try:
                    failure = await self._request(client, key, body)
                except LLMSetupError as exc:
                    fatal.append(exc)
                    return
                if failure:
                    failures[key] = failure
                bar.update()

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(bodies)))))
        bar.close()
        if fatal:
            raise fatal[0]
        return failures

    async def _request(self, client: openai.AsyncOpenAI, key: str, body: dict) -> tuple[str, str] | None:
        """Send one report until a valid reply is cached; the reject reason if that never happens."""
        tokens = self.estimate_tokens(body)
        sends = free = billed = 0
        while True:  # the sends >= MAX_SENDS_PER_REPORT check below ends it whatever the faults
            sends += 1
            estimate = self._reserve(tokens)  # per send: a retried invalid reply is paid for again
            if estimate is None:
                return self._over_budget()
            self.counts["requests"] += 1
            try:
                reply = await send_chat(client, body)
            finally:
                self.ledger.release(estimate)
            failure = self._accept(key, reply, tokens)
            if failure is None:
                return None
            if reply.failure and not reply.retryable:
                return failure
            paid = reply.failure is None  # a reply came back, and it was invalid
            free, billed = free + (not paid), billed + paid
            if free > self.max_retries or billed > self.max_invalid_retries or sends >= MAX_SENDS_PER_REPORT:
                return failure[0], f"{failure[1]} after {sends} attempts"
            self.counts["retries"] += 1
            self.counts["invalid_retries" if paid else "free_retries"] += 1
            if not paid:  # waiting cannot change a reply at temperature 0, only a busy server
                await self._sleep(free - 1, reply.retry_after)

    async def _sleep(self, attempt: int, retry_after: float | None = None) -> None:
        delay = min(retry_after, 60.0) if retry_after is not None else None
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
            "retries": self.counts["retries"],  # all of them: free_retries + invalid_retries
            "free_retries": self.counts["free_retries"],  # 429, 5xx, timeouts, connections: nothing billed
            "invalid_retries": self.counts["invalid_retries"],  # after a billed, invalid reply
            "batch_requests": self.counts["batch_requests"],
            "cache_hits": self.counts["cache_hits"],
            "invalid_outputs": dict(self.invalid_outputs),
            "filtered_pairs": dict(filtered),
            "prompt_tokens": self.ledger.prompt_tokens,
            "completion_tokens": self.ledger.completion_tokens,
            "cost_usd": round(self.ledger.spent, 6),
            "dataset_cost_usd": round(sum(costs.values()), 6),  # includes replies paid for by earlier runs
        }
        return results

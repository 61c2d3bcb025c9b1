"""QA pairs from report text by an LLM behind any OpenAI-compatible endpoint (OpenAI, Azure, vLLM, Ollama).

    client = cxr_vqa.endpoint.open_client("http://127.0.0.1:8000/v1")      # the key from $OPENAI_API_KEY
    generator = LLMGenerator(client, "gpt-4o-mini", cache_dir=out / "cache", concurrency=16, max_cost=5.0)
    results = generator.generate(studies)           # {study_id: QAResult}; generator.stats for stats.json

The client is passed in (tests point a real one at a loopback server). Every valid reply is cached on disk under a
hash of (model, prompt version, pairs per study, report), so identical reports cost one request, a rerun costs
none and a killed run resumes where it stopped. The client's own retries are switched off: this module retries
429, 5xx, timeouts (with the backoff of cxr_vqa.endpoint) and invalid replies itself, each within its own budget
and never more than MAX_SENDS_PER_REPORT sends in all (dataprep.llm.budget), and counts every attempt. A report
whose replies stayed malformed through its billed sends is remembered as rejected in the cache: a rerun rejects it
again without a request, unless `retry_rejected` (--retry-rejected) asks it again. Each conversation then opens with
the study's findings turn, taken from the report by `dataprep.qa.add_findings`, not asked of the LLM, in a share of the
studies (`findings_share`; 0: none); the cache holds the LLM's pairs only, so the turn costs nothing and changes no
cache key.

Replies come from one of two transports, concurrent chat requests (cxr_vqa.endpoint.send_chat) or the Batch API
(dataprep.llm.batch_api); they only carry data. This module alone reserves the budget, pays for, validates, counts
and caches a reply, and decides what to send again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import openai
from tqdm.auto import tqdm

from cxr_vqa.costs import Ledger, price_of
from cxr_vqa.endpoint import Backoff, EndpointSetupError, Reply, send_chat
from dataprep.chexpert import Study
from dataprep.llm.batch_api import DISCOUNT, BatchTransport
from dataprep.llm.budget import MAX_SENDS_PER_REPORT, check_retry_options, request_tokens
from dataprep.llm.cache import ReplyCache, cache_key
from dataprep.llm.prompt import PROMPT_VERSION, InvalidOutput, parse_content, request_body, validate_content
from dataprep.qa import QAResult, add_findings, filter_pairs, findings_stats

INVALID = "llm_invalid_output"  # the one reject reason that was billed: remembered, not paid for again
COUNTS = (  # what stats.json counts for this run
    "requests",
    "retries",  # all of them: free_retries + invalid_retries
    "free_retries",  # 429, 5xx, timeouts, connections: nothing billed
    "invalid_retries",  # after a billed, invalid reply
    "batch_requests",
    "cache_hits",
    "remembered_rejections",  # rejected from the cache, not sent
    "retried_rejections",  # remembered, and sent again under --retry-rejected
)


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
        retry_rejected: bool = False,
        progress: bool = True,
        findings_share: float = 1.0,
    ) -> None:
        check_retry_options(max_retries, max_invalid_retries)
        self.client, self.model, self.cache = client, model, ReplyCache(cache_dir)
        self.qa_per_study, self.concurrency = qa_per_study, max(concurrency, 1)
        self.max_retries, self.max_invalid_retries = max_retries, max_invalid_retries
        self.backoff, self.timeout, self.batch_api = Backoff(base=backoff), timeout, batch_api
        self.poll_interval, self.retry_rejected, self.progress = poll_interval, retry_rejected, progress
        self.findings_share = findings_share
        self.ledger = Ledger(price_of(model, price), max_cost)
        self.source = f"llm:{model}"
        self.counts: Counter = Counter()
        self.invalid_outputs: Counter = Counter()  # by InvalidOutput.code
        self.invalid_sends: Counter = Counter()  # by key: billed, malformed replies, earlier runs' included
        self.stats: dict = {}

    def key(self, study: Study) -> str:
        return cache_key(
            model=self.model, prompt_version=PROMPT_VERSION, qa_per_study=self.qa_per_study, report=study.report
        )

    def body(self, report: str) -> dict:
        return request_body(model=self.model, report=report, qa_per_study=self.qa_per_study)

    def plan(self, keys: Sequence[str]) -> tuple[list[str], Counter]:
        """The keys to send and the counts of those not sent (dataprep.llm.cache): the same for a run and --dry-run."""
        pending, counts, billed = self.cache.plan(keys, self.max_invalid_retries, retry_rejected=self.retry_rejected)
        self.invalid_sends.update(billed)
        return pending, counts

    def estimate(self, studies: Sequence[Study]) -> dict:
        """What a run would send and cost (--dry-run): no request is made."""
        reports = {self.key(s): s.report for s in studies}
        pending, counts = self.plan(list(reports))
        tokens = [request_tokens(self.body(reports[k]), self.qa_per_study) for k in pending]
        prompt, completion = sum(t[0] for t in tokens), sum(t[1] for t in tokens)
        cost = self.ledger.cost(prompt, completion)
        return {
            "model": self.model,
            "requests": len(pending),
            "cached": counts["cache_hits"],
            "remembered_rejections": counts["remembered_rejections"],
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
        pending, counts = self.plan(list(reports))
        self.counts.update(counts)
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
            return f"llm_{reply.failure[0]}", reply.failure[1]  # llm_unavailable, llm_error, llm_batch_failed
        cost = self.ledger.record(reply.usage, tokens, discount)  # an invalid reply is billed too
        try:
            validate_content(reply.content, self.qa_per_study)
        except InvalidOutput as exc:
            self.invalid_outputs[exc.code] += 1
            self.invalid_sends[key] += 1
            return INVALID, str(exc)
        self.cache.put_reply(key, reply.content, model=self.model, cost=cost)
        return None

    def _reject(self, key: str, failure: tuple[str, str]) -> tuple[str, str]:
        """A report's reject reason for this run; one billed for malformed replies is remembered in the cache."""
        if failure[0] == INVALID:  # the reason and a count, never the report or the reply
            self.cache.put_rejection(key, *failure, invalid_sends=self.invalid_sends[key], model=self.model)
        return failure

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
            estimate = self._reserve(request_tokens(body, self.qa_per_study), DISCOUNT)
            if estimate is None:
                failures[key] = self._over_budget()
            else:
                new[key], reserved = body, reserved + estimate
        try:
            self.counts["batch_requests"] += await transport.submit(new)
            async for key, reply in transport.replies():
                tokens = request_tokens(bodies[key], self.qa_per_study) if key in bodies else (0, 0)
                failure = self._accept(key, reply, tokens, DISCOUNT)
                if failure:
                    failures[key] = failure
                else:  # the error file may name a key the output file answered
                    failures.pop(key, None)
        finally:
            self.ledger.release(reserved)
        for key in bodies:
            if self.cache.reply(key) is None and key not in failures:
                failures[key] = ("llm_batch_failed", "the batch returned no reply for this request")
        return {key: self._reject(key, failure) for key, failure in failures.items()}

    async def _run_online(self, bodies: dict[str, dict]) -> dict[str, tuple[str, str]]:
        client = self.client.with_options(max_retries=0, timeout=self.timeout)
        failures: dict[str, tuple[str, str]] = {}
        todo = iter(bodies.items())
        fatal: list[EndpointSetupError] = []
        bar = tqdm(total=len(bodies), desc=f"llm {self.model}", unit="report", disable=not self.progress)

        async def worker() -> None:
            for key, body in todo:  # one shared iterator: each key goes to exactly one worker
                if fatal:
                    return
                try:
                    failure = await self._request(client, key, body)
                except EndpointSetupError as exc:
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
        tokens = request_tokens(body, self.qa_per_study)
        sends = free = 0
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
            free += not paid
            billed = self.invalid_sends[key]  # an earlier batch run's malformed replies count too
            if free > self.max_retries or billed > self.max_invalid_retries or sends >= MAX_SENDS_PER_REPORT:
                return self._reject(key, (failure[0], f"{failure[1]} after {sends} attempts"))
            self.counts["retries"] += 1
            self.counts["invalid_retries" if paid else "free_retries"] += 1
            if not paid:  # waiting cannot change a reply at temperature 0, only a busy server
                await self.backoff.wait(free - 1, reply.retry_after)

    def _remembered(self, key: str) -> tuple[str, str]:
        """Why a report this run did not send is rejected: an earlier run's rejection, or the run stopped first."""
        if rejection := self.cache.rejection(key):
            return rejection["rejected"], f"{rejection['detail']} (remembered: --retry-rejected asks again)"
        return "llm_not_sent", "run stopped before this report"

    def _assemble(self, studies: Sequence[Study], keys: dict, failures: dict) -> dict[str, QAResult]:
        results, filtered, costs = {}, Counter(), {}
        for study in studies:
            key = keys[study.study_id]
            entry = self.cache.reply(key)
            if entry is None:
                reason, detail = failures.get(key) or self._remembered(key)
                results[study.study_id] = QAResult(None, reason, detail)
                continue
            try:
                pairs = filter_pairs(parse_content(entry["content"]), self.qa_per_study, filtered)
            except InvalidOutput:
                pairs = []
            if pairs and self.findings_share > 0:
                pairs = add_findings(pairs, study, 0, filtered, self.findings_share)
            results[study.study_id] = QAResult(pairs) if pairs else QAResult(None, INVALID, "cached")
            costs[key] = entry.get("cost_usd", 0.0)
        self.stats = {
            "model": self.model,
            "prompt_version": PROMPT_VERSION,
            **{name: self.counts[name] for name in COUNTS},
            "invalid_outputs": dict(self.invalid_outputs),
            "filtered_pairs": {k: v for k, v in filtered.items() if not k.startswith("findings")},
            **(findings_stats(filtered) if self.findings_share > 0 else {}),
            "prompt_tokens": self.ledger.prompt_tokens,
            "completion_tokens": self.ledger.completion_tokens,
            "cost_usd": round(self.ledger.spent, 6),
            "dataset_cost_usd": round(sum(costs.values()), 6),  # includes replies paid for by earlier runs
        }
        return results

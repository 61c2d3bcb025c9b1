"""OpenAI Batch API mode for `LLMGenerator`: write the requests as JSONL, upload, submit, poll, ingest into the cache.

    python -m dataprep --chexpert-root ROOT --out DATA --generator llm --batch-api   # half price, within 24 h

What was submitted is recorded in CACHE/batches/state.json before anything else happens, so a run killed while
waiting polls its batches again instead of paying twice. Replies land in the same cache as online replies; what a
batch could not answer is rejected for this run and resubmitted by the next.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import openai
from tqdm.auto import tqdm

from dataprep.llm_prompt import InvalidOutput
from dataprep.qa_llm import validate_content

if TYPE_CHECKING:
    from dataprep.qa_llm import LLMGenerator

logger = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS_PER_FILE = 50_000  # the API's limits: 50k requests and 200 MB a file
MAX_BYTES_PER_FILE = 190 * 2**20
TERMINAL = ("completed", "failed", "expired", "cancelled")
DISCOUNT = 0.5  # batch requests cost half


def _load_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"batches": []}


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def batch_lines(bodies: dict[str, dict]) -> Iterator[list[str]]:
    """JSONL request lines, chunked to the per-file limits; custom_id is the cache key."""
    chunk: list[str] = []
    size = 0
    for key, body in bodies.items():
        line = json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}, ensure_ascii=False)
        if chunk and (len(chunk) >= MAX_REQUESTS_PER_FILE or size + len(line) + 1 > MAX_BYTES_PER_FILE):
            yield chunk
            chunk, size = [], 0
        chunk.append(line)
        size += len(line.encode("utf-8")) + 1
    if chunk:
        yield chunk


async def run_batches(gen: LLMGenerator, bodies: dict[str, dict]) -> dict[str, tuple[str, str]]:
    """Get replies for `bodies` (cache key -> request) through the Batch API; the failures by key."""
    folder = gen.cache.root / "batches"
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / "state.json"
    state = _load_state(state_path)
    submitted = {key for batch in state["batches"] if not batch["ingested"] for key in batch["keys"]}
    failures: dict[str, tuple[str, str]] = {}
    new: dict[str, dict] = {}
    reserved = 0.0
    for key, body in bodies.items():
        if key in submitted:
            continue
        estimate = gen.ledger.cost(*gen.estimate_tokens(body), DISCOUNT)
        if gen.ledger.reserve(estimate):
            new[key] = body
            reserved += estimate
        else:
            failures[key] = ("max_cost_reached", f"--max-cost {gen.ledger.max_cost} would be exceeded")
    for lines in batch_lines(new):
        path = folder / f"input-{len(state['batches']):04d}.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        uploaded = await gen.client.files.create(file=path, purpose="batch")
        batch = await gen.client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h")
        keys = [json.loads(line)["custom_id"] for line in lines]
        state["batches"].append({"id": batch.id, "keys": keys, "ingested": False})
        _save_state(state_path, state)
        gen.counts["batch_requests"] += len(keys)
        logger.info("submitted batch %s with %d requests", batch.id, len(keys))
    await _poll(gen, state, state_path, failures, bodies)
    gen.ledger.release(reserved)
    for key in bodies:
        if key not in gen.cache and key not in failures:
            failures[key] = ("llm_batch_failed", "the batch returned no reply for this request")
    return failures


async def _poll(gen: LLMGenerator, state: dict, state_path: Path, failures: dict, bodies: dict) -> None:
    waiting = [batch for batch in state["batches"] if not batch["ingested"]]
    bar = tqdm(total=sum(len(b["keys"]) for b in waiting), desc="batch", unit="report", disable=not gen.progress)
    while waiting:
        for entry in list(waiting):
            try:
                batch = await gen.client.batches.retrieve(entry["id"])
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
                # a flaky network or a busy API must not lose a paid batch: ask again at the next poll
                logger.warning("polling batch %s failed (%s); trying again", entry["id"], type(exc).__name__)
                continue
            if batch.status not in TERMINAL:
                continue
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    content = await gen.client.files.content(file_id)
                    _ingest(gen, content.text, failures, bodies)
            entry.update(ingested=True, status=batch.status)
            _save_state(state_path, state)
            waiting.remove(entry)
            bar.update(len(entry["keys"]))
            if batch.status != "completed":
                logger.warning("batch %s ended %s", entry["id"], batch.status)
        if waiting:
            await asyncio.sleep(gen.poll_interval)
    bar.close()


def _ingest(gen: LLMGenerator, text: str, failures: dict, bodies: dict) -> None:
    """Cache every valid reply of a batch output (or error) file; record why the others failed."""
    for line in text.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        key, response, error = record.get("custom_id"), record.get("response") or {}, record.get("error")
        status = response.get("status_code")
        if error or status != 200:
            code = (error or {}).get("code") or f"HTTP {status}"
            failures[key] = ("llm_batch_failed", str(code))
            continue
        reply = response.get("body") or {}
        estimate = gen.estimate_tokens(bodies[key]) if key in bodies else (0, 0)
        cost = gen.ledger.record(reply.get("usage"), estimate, DISCOUNT)
        try:
            choices = reply.get("choices") or [{}]
            content = (choices[0].get("message") or {}).get("content")
            validate_content(content, gen.qa_per_study)
        except InvalidOutput as exc:
            gen.counts[f"invalid_output:{exc.code}"] += 1
            failures[key] = ("llm_invalid_output", str(exc))
            continue
        gen.cache.put(key, {"content": content, "model": gen.model, "cost_usd": cost})
        failures.pop(key, None)

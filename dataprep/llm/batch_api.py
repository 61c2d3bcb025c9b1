"""The OpenAI Batch API as a transport for `LLMGenerator`: requests go out as JSONL files, replies come back.

    python -m dataprep --root ROOT --out DATA --generator llm --batch-api   # half price, within 24 h

    transport = BatchTransport(client, CACHE / "batches")
    await transport.submit({key: body, ...})          # keys in transport.in_flight() are already submitted
    async for key, reply in transport.replies(): ...  # cxr_vqa.endpoint.Reply, as each batch ends

Each submitted batch is recorded in CACHE/batches/state.json as soon as it exists, so a run killed while waiting
polls its batches again instead of paying twice. The generator validates and caches the replies; what a batch
could not answer is rejected for that run and submitted again by the next (a malformed reply, until it has had as
many billed sends as an online run gives it; then it is remembered as rejected).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import openai
from tqdm.auto import tqdm

from cxr_vqa.endpoint import Reply
from cxr_vqa.files import write_text_atomic

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
    write_text_atomic(path, json.dumps(state, indent=1))


def batch_lines(
    bodies: dict[str, dict], max_requests: int = MAX_REQUESTS_PER_FILE, max_bytes: int = MAX_BYTES_PER_FILE
) -> Iterator[list[str]]:
    """JSONL request lines, chunked to the per-file limits (counted in UTF-8 bytes, newline included, since reports
    are not ASCII); custom_id is the cache key."""
    chunk: list[str] = []
    size = 0
    for key, body in bodies.items():
        line = json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}, ensure_ascii=False)
        n_bytes = len(line.encode("utf-8")) + 1
        if chunk and (len(chunk) >= max_requests or size + n_bytes > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(line)
        size += n_bytes
    if chunk:
        yield chunk


def parse_line(record: dict) -> tuple[str, Reply]:
    """The cache key and reply of one line of a batch output or error file."""
    key, response, error = record.get("custom_id"), record.get("response") or {}, record.get("error")
    status = response.get("status_code")
    if error or status != 200:
        code = (error or {}).get("code") or f"HTTP {status}"
        return key, Reply(failure=("batch_failed", str(code)))
    reply = response.get("body") or {}
    choices = reply.get("choices") or [{}]
    return key, Reply((choices[0].get("message") or {}).get("content"), reply.get("usage"))


class BatchTransport:
    """Batches of one cache folder: submit requests, then hand back every reply as its batch ends."""

    def __init__(
        self, client: openai.AsyncOpenAI, folder: Path, *, poll_interval: float = 30.0, progress: bool = True
    ) -> None:
        self.client, self.folder, self.poll_interval, self.progress = client, folder, poll_interval, progress
        folder.mkdir(parents=True, exist_ok=True)
        self.state_path = folder / "state.json"
        self.state = _load_state(self.state_path)

    def in_flight(self) -> set[str]:
        """Keys an earlier run submitted whose replies were never taken: they are polled, not sent again."""
        return {key for batch in self.state["batches"] if not batch["ingested"] for key in batch["keys"]}

    async def submit(self, bodies: dict[str, dict]) -> int:
        """Upload and start batches for `bodies` (cache key -> request); the number of requests submitted."""
        submitted = 0
        for lines in batch_lines(bodies):
            path = self.folder / f"input-{len(self.state['batches']):04d}.jsonl"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
            uploaded = await self.client.files.create(file=path, purpose="batch")
            batch = await self.client.batches.create(
                input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h"
            )
            keys = [json.loads(line)["custom_id"] for line in lines]
            self.state["batches"].append({"id": batch.id, "keys": keys, "ingested": False})
            _save_state(self.state_path, self.state)
            submitted += len(keys)
            logger.info("submitted batch %s with %d requests", batch.id, len(keys))
        return submitted

    async def replies(self) -> AsyncIterator[tuple[str, Reply]]:
        """Poll until every batch has ended, yielding (key, reply) for each line of its output and error files.

        A batch is marked ingested only once the caller has taken all its replies: a run killed in between reads
        that batch again next time instead of losing replies already paid for.
        """
        waiting = [batch for batch in self.state["batches"] if not batch["ingested"]]
        bar = tqdm(total=sum(len(b["keys"]) for b in waiting), desc="batch", unit="report", disable=not self.progress)
        while waiting:
            for entry in list(waiting):
                try:
                    batch = await self.client.batches.retrieve(entry["id"])
                except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
                    # a flaky network or a busy API must not lose a paid batch: ask again at the next poll
                    logger.warning("polling batch %s failed (%s); trying again", entry["id"], type(exc).__name__)
                    continue
                if batch.status not in TERMINAL:
                    continue
                for file_id in (batch.output_file_id, batch.error_file_id):
                    if file_id:
                        content = await self.client.files.content(file_id)
                        for line in content.text.splitlines():
                            if line.strip():
                                yield parse_line(json.loads(line))
                entry.update(ingested=True, status=batch.status)
                _save_state(self.state_path, self.state)
                waiting.remove(entry)
                bar.update(len(entry["keys"]))
                if batch.status != "completed":
                    logger.warning("batch %s ended %s", entry["id"], batch.status)
            if waiting:
                await asyncio.sleep(self.poll_interval)
        bar.close()

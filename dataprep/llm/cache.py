"""A content-addressed cache of LLM outputs on disk: one JSON file per request, written atomically.

    cache = ReplyCache(out / "cache")
    key = cache_key(model="gpt-4o-mini", prompt_version="v1", qa_per_study=5, report=study.report)
    cache.reply(key) or cache.put_reply(key, content, model="gpt-4o-mini", cost=0.0001)
    cache.rejection(key)     # {"rejected", "detail", "invalid_sends"}: replies that stayed malformed
    pending, counts, billed = cache.plan(keys, max_invalid_retries=2)    # what a run sends

The key hashes everything that shapes the answer, so a changed prompt or model never serves a stale entry, and a
killed run loses at most the requests in flight: every finished one is already a complete file. A report whose
replies were all malformed is remembered too (the reason and the number of billed sends, never the report or the
reply), so that rerunning the same command does not pay for it again: once it has had 1 + --max-invalid-retries
billed sends (one online run, or that many batch runs), it is not sent again unless --retry-rejected.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from cxr_vqa.files import write_text_atomic


def cache_key(*, model: str, prompt_version: str, qa_per_study: int, report: str) -> str:
    payload = json.dumps([model, prompt_version, qa_per_study, report], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class DiskCache:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"  # 256 folders keep 200k files listable

    def get(self, key: str) -> dict | None:
        try:
            with open(self.path(key), encoding="utf-8") as file:
                return json.load(file)
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None  # a file cut short is a miss, so its request is sent again

    def put(self, key: str, value: dict) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # a killed run leaves the old file or the new one, never half of one; a file truncated by a power cut (no
        # fsync: it would cost ~10 ms on the event loop) reads as a miss (see get): one repeated request
        write_text_atomic(path, json.dumps(value, ensure_ascii=False))


class ReplyCache(DiskCache):
    """The generator's entries: a valid reply, or a rejection after billed, malformed replies (the key's last word)."""

    def reply(self, key: str) -> dict | None:
        entry = self.get(key)
        return entry if entry is not None and "content" in entry else None

    def rejection(self, key: str) -> dict | None:
        entry = self.get(key)
        return entry if entry is not None and "rejected" in entry else None

    def put_reply(self, key: str, content: str, *, model: str, cost: float) -> None:
        self.put(key, {"content": content, "model": model, "cost_usd": cost})

    def put_rejection(self, key: str, reason: str, detail: str, *, invalid_sends: int, model: str) -> None:
        self.put(key, {"rejected": reason, "detail": detail, "invalid_sends": invalid_sends, "model": model})

    def plan(
        self, keys: Sequence[str], max_invalid_retries: int, *, retry_rejected: bool = False
    ) -> tuple[list[str], Counter, dict[str, int]]:
        """The keys to send, counts of those not sent (cache_hits, remembered_rejections) or sent again
        (retried_rejections), and the billed sends already used by keys with sends left."""
        pending, counts, billed = [], Counter(), {}
        for key in keys:
            entry = self.get(key) or {}
            if "content" in entry:
                counts["cache_hits"] += 1
            elif "rejected" not in entry:
                pending.append(key)
            elif entry["invalid_sends"] <= max_invalid_retries:  # sends left: a batch run's, or the ceiling stopped it
                pending.append(key)
                billed[key] = entry["invalid_sends"]
            elif retry_rejected:  # asked again from zero
                pending.append(key)
                counts["retried_rejections"] += 1
            else:
                counts["remembered_rejections"] += 1
        return pending, counts, billed

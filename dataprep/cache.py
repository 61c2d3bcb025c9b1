"""A content-addressed cache of LLM outputs on disk: one JSON file per request, written atomically.

    cache = DiskCache(out / "cache")
    key = cache_key(model="gpt-4o-mini", prompt_version="v1", qa_per_study=5, report=study.report)
    cache.get(key) or cache.put(key, {"content": ..., "usage": ...})

The key hashes everything that shapes the answer, so a changed prompt or model never serves a stale entry, and a
killed run loses at most the requests in flight: every finished one is already a complete file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from cxr_vqa.files import share


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
            return None

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None  # a file cut short is a miss, so its request is sent again

    def put(self, key: str, value: dict) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # write beside the target and rename: os.replace is atomic, so a killed run leaves the old file or the new
        # one, never half of one. No fsync: it costs ~10 ms on the event loop, and a file truncated by a power cut
        # reads as a miss (see get), which costs one repeated request, not a wrong answer.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(value, file, ensure_ascii=False)
            share(tmp)  # mkstemp creates 0600
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

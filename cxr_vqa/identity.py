"""What a model is, by content rather than by where it lies: so that an evaluation resumes into its report folder
only with the weights that wrote the answers there (`evaluation.predictions.resume`).

    model_identity("runs/llava-cxr", ADAPTER)        # {"files": {"adapter_model.safetensors": "<size>:<sha256>",
                                                     #            "adapter_config.json": "<size>:<sha256>"}}
    model_identity("runs/tiny")                      # a local base: every top-level file (weights, config, tokenizer)
    model_identity("llava-hf/llava-1.5-7b-hf@main")  # a Hub model: {"hub": id, "revision": "main", "commit": sha}
    identity_change(earlier, now)                    # None, or what differs in a few words: "adapter_model.safetensors
                                                     # differs", "commit a272c74 -> 0e1f2a3"

A local model is its files' sizes and SHA-256 digests. Reading a 7B base's 13.5 GB costs seconds to minutes
(SHA-256 runs at 1-1.5 GB/s of one core here, from the page cache: bench/model_identity.py), so digests are kept in
a per-user cache keyed by each file's path, size, mtime, ctime and inode: a file is read again only when one of
those changed (a retrained adapter is rewritten, so its times change). A file changed in the last few seconds is
hashed but not cached: a second write within the filesystem's timestamp granularity would leave the same stamp
(git's "racy clean" rule). A Hub model is the commit its revision resolved to, read from the Hub cache that loading
it filled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from cxr_vqa.files import write_text_atomic
from cxr_vqa.sources import ADAPTER, MODEL, ModelLoadError, Source, resolve

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")  # what PEFT loads
SKIPPED_SUFFIXES = (".md",)  # a base folder's documentation is no part of what it answers
RACY_SECONDS = 3.0  # a file changed this recently is not cached: its stamp may not yet tell two writes apart
CACHE_ENV = "CXR_VQA_CACHE_DIR"  # where the digest cache lives (default ~/.cache/cxr-vqa)
MAX_CACHED = 2000  # digests kept; the oldest go first
BAR_BYTES = 256 << 20  # a progress bar where this much or more is to be read: an adapter is read in a blink
CHUNK = 8 << 20


def cache_file() -> Path:
    root = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cxr-vqa"
    return Path(root) / "file_digests.json"


class DigestCache:
    """SHA-256 digests of files by (path, size, mtime_ns, ctime_ns, inode), in one JSON file written atomically.
    Two processes writing at once lose at most each other's new entries: those files are hashed again next time."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_file()
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none yet, or unreadable: start empty, it only costs time
            loaded = {}
        self.entries: dict[str, dict] = loaded if isinstance(loaded, dict) else {}
        self.dirty = False

    def digest(self, file: Path, bar=None) -> str:
        """`file`'s "<size>:<sha256>", read only when its stamp is not cached."""
        file = file.resolve()  # a Hub snapshot's files are links to its blobs
        before = os.stat(file)
        key, stamp = str(file), _stamp(before)
        cached = self.entries.get(key)
        if isinstance(cached, dict) and cached.get("stamp") == stamp:
            if bar is not None:
                bar.update(before.st_size)
            return f"{before.st_size}:{cached['sha256']}"
        sha = hashlib.sha256()
        with open(file, "rb") as stream:
            while chunk := stream.read(CHUNK):
                sha.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        after = os.stat(file)
        settled = time.time_ns() - max(after.st_mtime_ns, after.st_ctime_ns) > RACY_SECONDS * 1e9
        if _stamp(after) == stamp and settled:  # not written to while read, nor too recently to tell writes apart
            self.entries.pop(key, None)
            self.entries[key] = {"stamp": stamp, "sha256": sha.hexdigest()}  # newest last: the cap drops the oldest
            self.dirty = True
        return f"{after.st_size}:{sha.hexdigest()}"

    def save(self) -> None:
        if not self.dirty:
            return
        kept = dict(list(self.entries.items())[-MAX_CACHED:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(kept) + "\n")
        except OSError as err:  # a read-only home: digests are recomputed next time, nothing is wrong
            logger.warning("cannot keep file digests in %s (%s): files are hashed again next time", self.path, err)
        self.dirty = False


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def model_files(folder: Path, kind: str) -> list[Path]:
    """The files of a local model that decide its answers: an adapter's config and weights; every top-level file of
    a base folder (weights, shards' index, config, tokenizer and processor files) but documentation and dotfiles."""
    if kind == ADAPTER:
        return [folder / name for name in ADAPTER_FILES if (folder / name).is_file()]
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(SKIPPED_SUFFIXES)
    )  # fmt: skip


def model_identity(spec: str, kind: str = MODEL, cache: DigestCache | None = None, progress: bool = True) -> dict:
    """The content identity of a `--base` (kind MODEL) or `--adapter` (ADAPTER) value; ModelLoadError in one line
    when it cannot be found. Hashes with a progress bar (bytes) where files are not in the digest cache."""
    source = resolve(spec, kind)  # one line if it is none: no such folder, no config, a revision the Hub lacks
    if not source.local:
        return {"hub": source.name, "revision": source.revision, "commit": hub_commit(source, kind)}
    folder = Path(source.name)
    files = model_files(folder, kind)
    from tqdm import tqdm

    own = cache is None
    cache = cache or DigestCache()
    try:
        total = sum(f.stat().st_size for f in files)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"hashing {folder.name}", leave=False,
                  disable=not progress or total < BAR_BYTES) as bar:  # fmt: skip
            return {"files": {f.name: cache.digest(f, bar) for f in files}}
    except OSError as err:  # unreadable, or removed while read
        raise ModelLoadError(f"cannot read the files of {spec}: {err}") from None
    finally:
        if own:
            cache.save()


def hub_commit(source: Source, kind: str) -> str | None:
    """The commit a Hub model's revision resolved to when its config was fetched (the snapshot folder holding it in
    the Hub cache); None when the cache does not say."""
    from huggingface_hub import try_to_load_from_cache

    config = "adapter_config.json" if kind == ADAPTER else "config.json"
    found = try_to_load_from_cache(source.name, config, revision=source.revision)
    return Path(found).parent.name if isinstance(found, str) else None


def identity_change(earlier: dict | None, now: dict | None) -> str | None:
    """None when `earlier` and `now` are the same model's content; otherwise what differs, in a few words."""
    if earlier == now:
        return None
    if not isinstance(earlier, dict) or not isinstance(now, dict):
        return "it was not recorded" if not earlier else "it is no longer given"
    if "files" in earlier and "files" in now:
        old, new = earlier["files"], now["files"]
        differs = sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))
        more = " and more" if len(differs) > 3 else ""
        return ", ".join(differs[:3]) + more + (" differs" if len(differs) == 1 else " differ")
    if "commit" in earlier and "commit" in now and earlier.get("hub") == now.get("hub"):
        if earlier["commit"] and now["commit"]:
            return None if earlier["commit"] == now["commit"] else f"commit {earlier['commit']} -> {now['commit']}"
        if earlier.get("revision") == now.get("revision"):
            return None  # the cache did not say: the same revision is the best the names can tell
    if ("files" in earlier) != ("files" in now):
        return "a local folder then, a Hub model now" if "files" in earlier else "a Hub model then, a local folder now"
    return "another Hub model"

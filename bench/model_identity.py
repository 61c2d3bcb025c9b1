"""What checking a model's content costs an evaluation (`cxr_vqa.identity`, the check behind a resume into the same
--out): hashing its files the first time, reading their digests from the cache on every later run, and hashing again
after the weights were rewritten in place. On one weights file of the size given (LLaVA-1.5-7B's fp16 shards are 13.5
GiB in all), in an adapter-shaped folder, through the same `model_identity` the evaluation calls.

    python bench/model_identity.py                  # a 3 GiB file in a temporary folder
    python bench/model_identity.py --gib 13.5 --dir /data/tmp
    python bench/model_identity.py --smoke          # 16 MiB: the plumbing only

The file is written first and left to settle (the cache does not trust a stamp younger than
cxr_vqa.identity.RACY_SECONDS), so its pages are in memory: the first hash is SHA-256's speed, not the disk's (a base
read cold from disk adds its read time once). Last line: `RESULT gib=<size> hash_s=<first hash> gib_per_s=<its
rate> cached_ms=<a later run's check> rehash_s=<after a rewrite>`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from cxr_vqa import identity
from cxr_vqa.identity import DigestCache, model_identity
from cxr_vqa.sources import ADAPTER, resolve

BLOCK = 64 << 20


def write(file: Path, size: int, seed: int) -> None:
    """`size` bytes: one random block repeated (SHA-256 runs at the same speed on any bytes), another per seed."""
    block = (seed.to_bytes(8, "little") + os.urandom(BLOCK - 8))[:BLOCK]
    with open(file, "r+b" if file.exists() else "wb") as out:  # in place: the same inode, as a retrain's save
        left = size
        while left > 0:
            left -= out.write(block[: min(left, BLOCK)])
        out.truncate(size)


def settle(file: Path) -> None:
    """Wait until the file's stamp is old enough for the digest cache to keep it."""
    changed = max(file.stat().st_mtime_ns, file.stat().st_ctime_ns) / 1e9
    time.sleep(max(0.0, changed + identity.RACY_SECONDS + 0.1 - time.time()))


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=3.0, help="size of the weights file, GiB")
    parser.add_argument("--dir", help="where to write it (default: the system's temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="a 16 MiB file: the plumbing only")
    args = parser.parse_args(argv)
    gib = 1 / 64 if args.smoke else args.gib
    if gib <= 0:
        parser.error("--gib must be positive")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder, size = Path(tmp) / "adapter", int(gib * 2**30)
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 64}))
        weights = folder / "adapter_model.safetensors"
        write(weights, size, seed=0)
        settle(weights)
        cache = DigestCache(Path(tmp) / "digests.json")
        resolve(str(folder), ADAPTER)  # imports (huggingface_hub) outside the timed checks
        check = lambda: model_identity(str(folder), ADAPTER, cache, progress=sys.stderr.isatty())  # noqa: E731
        hash_s, first = timed(check)
        cache.save()
        cache = DigestCache(cache.path)  # a later run: a new process reading the saved digests
        cached_s, again = timed(check)
        assert again == first, "the digest cache gave another identity for the same file"
        write(weights, size, seed=1)  # retrained in place: same size, other bytes
        rehash_s, changed = timed(check)
        assert changed != first and weights.stat().st_size == size, "a rewrite in place was not seen"
    rate = gib / hash_s
    print(f"{gib:.3g} GiB weights file, SHA-256: first check {hash_s:.2f} s ({rate:.2f} GiB/s), a later run's check "
          f"{cached_s * 1000:.1f} ms (digest cache), after a rewrite in place {rehash_s:.2f} s")  # fmt: skip
    print(f"a 13.5 GiB 7B base at this rate: {13.5 / rate:.0f} s once, then {cached_s * 1000:.0f} ms a run")
    print(f"RESULT gib={gib:.3g} hash_s={hash_s:.2f} gib_per_s={rate:.2f} cached_ms={cached_s * 1000:.1f} "
          f"rehash_s={rehash_s:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

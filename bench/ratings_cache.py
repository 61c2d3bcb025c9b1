"""What a page load costs the Results tab: the ratings of N blind votes (Bradley-Terry with 200 bootstrap resamples,
win rates per pair), computed on every load as before, against `Blind.results()`, which computes them once per change
of the votes and then answers from its cache (a query of the votes' count and newest id).

    python bench/ratings_cache.py                  # 5,000 votes among three models
    python bench/ratings_cache.py --smoke          # 100 votes (tests/test_ratings_cache_bench.py)

Last line: `RESULT votes=N uncached_s=<one computation> cached_s=<one load after the first> speedup=<ratio>
after_vote_s=<the first load after a new vote>` (medians of --repeats loads; CPU seconds of this process).
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {"base": "llava-hf/llava-1.5-7b-hf", "labels": "runs/labels", "llm": "runs/llm"}
STRENGTH = {"base": 0.0, "labels": 0.4, "llm": 0.7}


class Models:  # what Blind reads of the lineup: the base model's name, the adapters
    base_name, adapters = MODELS["base"], {"labels": MODELS["labels"], "llm": MODELS["llm"]}


def fill(path: Path, n: int, seed: int = 0) -> None:
    """`n` votes between random pairs, the stronger model winning more often, in one transaction."""
    from app_lib.votes import COLUMNS

    rng = random.Random(seed)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = []
    for i in range(n):
        a, b = rng.sample(sorted(MODELS), 2)
        p_a = 1 / (1 + 10 ** (STRENGTH[b] - STRENGTH[a]))
        vote = rng.choices(["A", "B", "tie", "both_wrong"], [0.8 * p_a, 0.8 * (1 - p_a), 0.1, 0.1])[0]
        winner = {"A": a, "B": b}.get(vote, vote)
        rows.append((now, f"question {i}?", a, MODELS[a], b, MODELS[b], "Yes.", "No.", vote, winner, "ab" * 32,
                     MODELS["base"]))  # fmt: skip
    with sqlite3.connect(path) as con:
        con.executemany(f"INSERT INTO ab_votes ({', '.join(COLUMNS[1:])}) VALUES ({', '.join('?' * 12)})", rows)


def cpu(fn) -> float:
    began = time.process_time()
    fn()
    return time.process_time() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--votes", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3, help="loads timed per way (median)")
    parser.add_argument("--smoke", action="store_true", help="100 votes, one repeat")
    args = parser.parse_args()
    if args.smoke:
        args.votes, args.repeats = 100, 1

    from app_lib.blind import Blind
    from app_lib.ratings import results_markdown
    from app_lib.votes import Trial, VoteStore

    with tempfile.TemporaryDirectory() as tmp:
        store = VoteStore(Path(tmp) / "votes.sqlite")
        fill(store.path, args.votes)
        blind = Blind(Models(), store)
        uncached = statistics.median(cpu(lambda: results_markdown(store.all(base_model=Models.base_name)))
                                     for _ in range(args.repeats))  # fmt: skip
        blind.results()  # the first load computes
        cached = statistics.median(cpu(blind.results) for _ in range(max(args.repeats, 5)))
        trial = Trial("one more?", "base", "llm", "No.", "Yes.", "cd" * 32)
        store.add(trial, "B", sources=MODELS, base_model=Models.base_name)
        after_vote = cpu(blind.results)
        assert "votes in all" in blind.results() and f"{args.votes + 1} votes" in blind.results()
    print(f"RESULT votes={args.votes} uncached_s={uncached:.3f} cached_s={cached:.5f} "
          f"speedup={uncached / max(cached, 1e-6):.0f} after_vote_s={after_vote:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()

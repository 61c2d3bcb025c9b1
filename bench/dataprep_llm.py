"""How much concurrency and the cache buy the LLM generator, against a loopback server with 200 ms per request.

    python bench/dataprep_llm.py [--reports 64] [--latency 0.2] [--concurrency 16]

Runs the same distinct reports (from a synthetic release) at concurrency 1 and at 16, each with an empty cache,
then once more at 16 over the warm cache. The concurrent run lasts ~1 s, so one busy moment on a shared machine
skews it: it is repeated (--repeats, fresh caches) and the median taken. The server (tests/llm_server.py, the tests'
loopback endpoint) runs in its own process, as a real endpoint would, so its work does not count against the client.
Goals: speedup >= 12x, 0 requests on the rerun.
Last line:
    RESULT speedup=<x> cached_requests=<n>
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

from dataprep.llm.generator import LLMGenerator
from dataprep.synthetic import write_release

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the loopback server is a test helper, not part of the packages
from llm_server import OpenAIServer, distinct_studies  # noqa: E402


def serve(latency: float, conn) -> None:
    """Child process: run the server until the parent says stop."""
    with OpenAIServer(latency=latency) as server:
        conn.send(server.url)
        conn.recv()


def timed_run(url: str, studies: list, cache: Path, concurrency: int) -> tuple[float, int]:
    """Seconds for one generator run and the requests the server saw during it."""
    before = httpx.get(f"{url}/_count").json().get("chat", 0)
    client = openai.AsyncOpenAI(base_url=url, api_key="bench", max_retries=0)
    generator = LLMGenerator(client, "bench-model", cache, concurrency=concurrency, progress=False)
    start = time.perf_counter()
    results = generator.generate(studies)
    elapsed = time.perf_counter() - start
    assert all(r.pairs for r in results.values()), "every report should give pairs"
    return elapsed, httpx.get(f"{url}/_count").json().get("chat", 0) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reports", type=int, default=64, help="distinct reports per run")
    parser.add_argument("--patients", type=int, default=80, help="patients in the synthetic release")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per request")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="concurrent runs to take the median of")
    args = parser.parse_args()
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.Process(target=serve, args=(args.latency, child), daemon=True)
    process.start()
    url = parent.recv()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            write_release(tmp / "release", patients=args.patients, seed=0, image_size=64, defects=False)
            studies = distinct_studies(tmp / "release", args.reports)
            if len(studies) < args.reports:
                raise SystemExit(f"only {len(studies)} distinct reports; raise --patients")
            serial, n_serial = timed_run(url, studies, tmp / "cache-1", 1)
            runs = [timed_run(url, studies, tmp / f"cache-n{i}", args.concurrency) for i in range(args.repeats)]
            parallel, n_parallel = sorted(runs)[len(runs) // 2]
            cached, n_cached = timed_run(url, studies, tmp / "cache-n0", args.concurrency)
    finally:
        parent.send("stop")
        process.join(timeout=5)
    print(f"{len(studies)} reports, {args.latency * 1000:.0f} ms per request")
    print(f"concurrency 1:  {serial:6.2f} s  {n_serial / serial:6.1f} req/s  ({n_serial} requests)")
    rate = n_parallel / parallel
    print(
        f"concurrency {args.concurrency}: {parallel:6.2f} s  {rate:6.1f} req/s  ({n_parallel} requests; median of "
        f"{', '.join(f'{t:.2f}' for t, _ in runs)} s)"
    )
    print(f"rerun, cached:  {cached:6.2f} s  ({n_cached} requests)")
    print(f"RESULT speedup={serial / parallel:.1f} cached_requests={n_cached}")


if __name__ == "__main__":
    main()

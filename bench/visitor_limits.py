"""Can one client hold the model for everyone? A load test of the per-visitor limits on loopback: the real app
(`python app.py` on a tiny LLaVA built here, behind a pretend proxy on 127.0.0.1 so that two clients have two
addresses) while the first client fires a burst of concurrent `/compare_all` requests (50 at once, over the REST API,
each from its own session: a script needs no browser; with --waves N, a burst every --interval s until the second
client is answered) and a second client asks one question --delay s after the first burst (or half an answer's
time, if shorter: it then comes while the first client's admitted question is being answered), with gradio_client as
a script would.

The first client runs in its own process, one event loop sending each burst together. What a refusal costs the app
alone is `--refusal-cost`'s: its CPU time per refused request, against a GET of /gradio_api/info.

    python bench/visitor_limits.py                 # the load test; goal: the second client within 2x one answer
    python bench/visitor_limits.py --smoke         # fewer, shorter requests (tests/test_visitor_limits_bench.py)
    python bench/visitor_limits.py --no-limits     # the same load on the app without per-address limits: baseline
    python bench/visitor_limits.py --waves 10      # a flood: a burst of 50 every second until the second is answered
    python bench/visitor_limits.py --model vision  # a loopback model of 2 s an answer: the queue alone, no CPU noise
    python bench/visitor_limits.py --model vision --no-limits     # its baseline
    python bench/visitor_limits.py --refusal-cost  # the app's CPU per "busy" (RESULT refusal_cpu_ms=...)

--trials times (after a warm-up): one answer of the second client alone, then the load; the trial whose ratio is the
median is reported (the JSON line before it holds every trial). Last line:
`RESULT single_s=... second_client_s=... ratio=... first_client_answered=... first_client_busy=... errors=0
refusal_ms=... refusal_cpu_ms=...` (`second_client_s=refused` when the second client was turned away; refusal_ms:
the median time the first client waited for a "busy"; refusal_cpu_ms: the app's CPU per refusal, estimated as above).
Loopback only, every loop bounded (--waves).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FILM = ROOT / "assets" / "examples" / "cardiomegaly.png"
QUESTION = "Is there cardiomegaly?"
FIRST, SECOND = "198.51.100.1", "198.51.100.2"  # the two clients' addresses, as the pretend proxy forwards them
HEADERS = {"X-Forwarded-For": FIRST}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(model: list[str], workdir: Path, args) -> tuple[subprocess.Popen, str, Path]:
    """`python app.py` serving `model` (its flags) on a free port, behind a pretend proxy on 127.0.0.1; (process, URL,
    its log file)."""
    port = free_port()
    limits = ["--client-in-flight", "1000", "--rate-per-minute", "0"] if args.no_limits else []
    command = [sys.executable, str(ROOT / "app.py"), *model, "--port", str(port), "--votes-db",
               str(workdir / "votes.sqlite"), "--max-new-tokens", str(args.new_tokens), "--trusted-proxy", "127.0.0.1",
               "--queue-size", "16", *limits]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
    env.pop("SPACE_ID", None)
    log = workdir / "app.log"
    with log.open("w") as out:  # a file, not a pipe nobody reads until the end: a full pipe would block the app
        app = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(1200):  # bounded: 10 minutes at most on a busy machine
        if app.poll() is not None:
            raise SystemExit(f"the app stopped before serving:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return app, url, log
        except httpx.HTTPError:
            time.sleep(0.5)
    app.terminate()
    raise SystemExit("the app did not serve within 10 minutes")


class FirstClient:
    """Bursts of `n` concurrent REST calls, each its own session, sent together from one event loop (as a script's
    asyncio.gather sends them), every `interval` s until `stop` exists or `waves` bursts are out."""

    def __init__(self, url: str, n: int, interval: float, waves: int, stop: Path):
        self.url, self.n, self.interval, self.waves, self.stop = url, n, interval, waves, stop
        self.answered = self.busy = self.full = self.errors = 0
        self.notes: list[str] = []
        self.joined_at: list[float] = []  # when each admitted request was in the queue (time.time)
        self.refusal_s: list[float] = []
        with FILM.open("rb") as file:
            path = httpx.post(f"{url}gradio_api/upload", files={"files": file}, headers=HEADERS).json()[0]
        self.body = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, QUESTION]}

    async def one(self, client: httpx.AsyncClient) -> None:
        try:
            began = time.perf_counter()
            joined = await client.post(f"{self.url}gradio_api/call/compare_all", json=self.body)
            if joined.status_code in (429, 503):  # refused at the door: busy / rate limit; the queue full (baseline)
                self.refusal_s.append(time.perf_counter() - began)
                self.busy += joined.status_code == 429
                self.full += joined.status_code == 503
                self.notes.append(joined.json().get("detail", "")[:60])
                return
            joined.raise_for_status()
            self.joined_at.append(time.time())
            result = f"{self.url}gradio_api/call/compare_all/{joined.json()['event_id']}"
            async with client.stream("GET", result, timeout=600) as stream:
                kinds = [line.split(":", 1)[1].strip() async for line in stream.aiter_lines()
                         if line.startswith("event:")]  # fmt: skip
            if kinds and kinds[-1] == "complete":
                self.answered += 1
            else:
                self.errors += 1
                self.notes.append(f"events {kinds[-3:]}")
        except httpx.HTTPError as err:
            self.errors += 1
            self.notes.append(type(err).__name__)

    async def run(self) -> None:
        limits = httpx.Limits(max_connections=self.n * self.waves)
        async with httpx.AsyncClient(headers=HEADERS, timeout=600, limits=limits) as client:
            tasks = []
            for wave in range(self.waves):
                tasks += [asyncio.create_task(self.one(client)) for _ in range(self.n)]
                if wave == 0:
                    await asyncio.sleep(0)  # the burst is on its way: the second client's clock starts now
                    Path(f"{self.stop}.started").touch()
                await asyncio.sleep(self.interval)
                if self.stop.exists():
                    break
            await asyncio.gather(*tasks)

    def report(self) -> dict:
        return {"answered": self.answered, "busy": self.busy, "full": self.full, "errors": self.errors,
                "notes": sorted(set(self.notes))[:4], "joined_at": self.joined_at,
                "refusal_ms": 1000 * statistics.median(self.refusal_s) if self.refusal_s else None}  # fmt: skip


def first_client(args) -> None:
    """`--first-client URL`: the first client's process; its report as one JSON line."""
    first = FirstClient(args.first_client, args.requests, args.interval, args.waves, Path(args.stop_file))
    asyncio.run(first.run())
    print(json.dumps(first.report()))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def refusal_cost(n: int) -> None:
    """`--refusal-cost`: the app's CPU per refused request, alone: `--base none` with a loopback vision model that
    holds one request for a minute (a remote answer waits without CPU), then `n` more requests from the same address,
    one after another on one connection, against `n` GET /gradio_api/info (about the cheapest route Gradio has)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from vision_server import VisionServer

    with VisionServer({"vision-test"}, latency=60) as vision, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        command = [sys.executable, str(ROOT / "app.py"), "--base", "none", "--remote", f"vis={vision.url}#vision-test",
                   "--remote-timeout", "120", "--port", str(port), "--votes-db", str(Path(tmp) / "v.sqlite"),
                   "--trusted-proxy", "127.0.0.1", "--rate-per-minute", "0"]  # fmt: skip
        app = subprocess.Popen(command, cwd=tmp, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        url = f"http://127.0.0.1:{port}/"
        try:
            for _ in range(1200):
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.25)
            first = FirstClient(url, 1, 0, 1, Path(tmp) / "stop")
            with httpx.Client(headers=HEADERS, timeout=30) as client:
                held = client.post(f"{url}gradio_api/call/compare_all", json=first.body)
                assert held.status_code == 200, held.text
                time.sleep(1.0)
                costs = {}
                for name, send in (("refusal", lambda: client.post(f"{url}gradio_api/call/compare_all",
                                                                   json=first.body)),
                                   ("info", lambda: client.get(f"{url}gradio_api/info"))):  # fmt: skip
                    cpu, began = cpu_seconds(app.pid), time.perf_counter()
                    codes = {send().status_code for _ in range(n)}
                    costs[name] = (cpu_seconds(app.pid) - cpu) / n * 1000, (time.perf_counter() - began) / n * 1000
                    assert codes == ({429} if name == "refusal" else {200}), codes
        finally:
            app.terminate()
            app.wait(timeout=60)
    print(f"RESULT refusal_cpu_ms={costs['refusal'][0]:.2f} refusal_wall_ms={costs['refusal'][1]:.2f} "
          f"info_get_cpu_ms={costs['info'][0]:.2f} requests={n}")  # fmt: skip


def ask(client) -> float:
    from gradio_client import handle_file

    began = time.perf_counter()
    answers = client.predict(handle_file(str(FILM)), QUESTION, api_name="/compare_all")
    if not all(answers.values()) or any(a.startswith("error:") for a in answers.values()):
        raise RuntimeError(f"no answer: {answers}")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a small run: a burst of 20, 16-token answers")
    parser.add_argument("--no-limits", action="store_true", help="baseline: no per-address limits (a session's stay)")
    parser.add_argument("--requests", type=int, default=50, help="concurrent requests in each burst of the first")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between the first client's bursts")
    parser.add_argument(
        "--waves",
        type=int,
        default=1,
        help="bursts of the first client, --interval s apart, until "
        "the second is answered (1: the one burst of the goal; more: a sustained flood)",
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=1.0,
        help="seconds after the first burst the second asks (at most half an answer's time)",
    )
    parser.add_argument(
        "--model",
        choices=["tiny", "vision"],
        default="tiny",
        help="tiny: a tiny LLaVA on this CPU; vision: a loopback model taking --latency s an answer",
    )
    parser.add_argument("--latency", type=float, default=2.0, help="--model vision: seconds per answer")
    parser.add_argument("--new-tokens", type=int, default=96, help="max new tokens of an answer (its length)")
    parser.add_argument("--trials", type=int, default=3, help="load trials, each after one answer alone (median)")
    parser.add_argument("--refusal-cost", action="store_true", help="measure only the app's CPU per refusal")
    parser.add_argument("--first-client", metavar="URL", help=argparse.SUPPRESS)  # the first client's process
    parser.add_argument("--stop-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.first_client:
        return first_client(args)
    if args.refusal_cost:
        return refusal_cost(60 if args.smoke else 500)
    if args.smoke:
        args.requests, args.new_tokens, args.trials, args.delay = 20, 16, 1, 0.5

    from gradio_client import Client
    from gradio_client.utils import QueueError

    from finetune.tiny_model import build_tiny_llava

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if args.model == "tiny":
            model = ["--base", str(build_tiny_llava(Path(tmp) / "tiny")), "--no-4bit", "--device", "cpu"]
        else:  # an answer that takes --latency s whatever else the machine runs: the queue's behaviour alone
            sys.path.insert(0, str(ROOT / "tests"))
            from vision_server import VisionServer

            vision = stack.enter_context(VisionServer({"vision-test"}, latency=args.latency))
            model = ["--base", "none", "--remote", f"vis={vision.url}#vision-test", "--remote-timeout", "600"]
        app, url, log = start_app(model, Path(tmp), args)
        trials = []
        try:
            second = Client(url, verbose=False, headers={"X-Forwarded-For": SECOND})
            ask(second)  # warm-up: the first answer pays for lazy initialisation
            for trial in range(args.trials):
                trials.append(load_trial(url, second, Path(tmp) / f"trial-{trial}", args, QueueError))
            alive = app.poll() is None
        finally:
            app.terminate()
            app.wait(timeout=60)
        errors_logged = "Traceback" in log.read_text()
    # each trial's ratio is against one answer alone measured just before it: this machine is shared, and an answer's
    # time moves with what else runs; the medians over the trials are reported
    ratios = [t["second_s"] / t["single_s"] if isinstance(t["second_s"], float) else float("inf") for t in trials]
    middle = sorted(range(len(trials)), key=lambda i: ratios[i])[len(trials) // 2]
    errors = sum(t["first"]["errors"] for t in trials) + (0 if alive else 1) + errors_logged
    refusals = [t["first"]["refusal_ms"] for t in trials if t["first"]["refusal_ms"] is not None]
    print(json.dumps([{k: v for k, v in t.items() if k != "first"} | {"first_client": {
        k: t["first"][k] for k in ("answered", "busy", "full", "notes")}} for t in trials]))  # fmt: skip
    shown = trials[middle]["second_s"]
    shown = f"{shown:.2f}" if isinstance(shown, float) else shown
    refusal = f"{statistics.median(refusals):.0f}" if refusals else "none"
    print(f"RESULT single_s={trials[middle]['single_s']:.2f} second_client_s={shown} ratio={ratios[middle]:.2f} "
          f"first_client_answered={sum(t['first']['answered'] for t in trials)} "
          f"first_client_busy={sum(t['first']['busy'] for t in trials)} errors={errors} "
          f"refusal_ms={refusal}")  # fmt: skip


def load_trial(url: str, second, stop: Path, args, queue_error) -> dict:
    """One answer of the second client alone, then the first client's burst(s) and the second's question --delay s
    after the first burst; the first client's process is waited for, so that the next trial starts on an idle app."""
    single_s = ask(second)
    command = [sys.executable, __file__, "--first-client", url, "--stop-file", str(stop), "--requests",
               str(args.requests), "--interval", str(args.interval), "--waves", str(args.waves)]  # fmt: skip
    first_client = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ})
    for _ in range(600):  # bounded: until its first burst is out
        if Path(f"{stop}.started").exists() or first_client.poll() is not None:
            break
        time.sleep(0.05)
    # the second asks while the first client's admitted question is being answered (the worst moment to come): --delay
    # after the burst, or sooner when one answer takes less than twice that
    time.sleep(min(args.delay, single_s / 2))
    asked_at = time.time()
    try:
        second_s: float | str = ask(second)
    except queue_error:  # the baseline: the first client filled the queue
        second_s = "refused"
    stop.touch()
    first = json.loads(first_client.communicate(timeout=1800)[0].strip().splitlines()[-1])
    ahead = sum(t < asked_at for t in first.pop("joined_at"))  # the first client's requests queued before the second
    return {"single_s": single_s, "second_s": second_s, "first_queued_before_second": ahead, "first": first}


if __name__ == "__main__":
    main()

"""How long the Explore tab takes to open and to filter a large evaluation report, and how much one page sends to the
browser against what the whole table would. CPU, offline.

    python app.py --demo      # or python -m finetune.demo: the demo build ends with its report, runs/demo/report
    python bench/explore.py --report runs/demo/report                         # 20,000 questions
    python bench/explore.py --report runs/demo/report --base runs/demo/speaking-base/merged   # + HTTP /explore

The large report is NOT a larger evaluation: it repeats the real records of `--report` under new ids (`<id>~<k>`),
with their films, answers and scores, until it holds `--questions` questions (the output says how many are real).
Timed, each the median of `--repeats` runs, on the server side of each event: opening (read predictions.jsonl,
index it, find the films in the dataset), and each filter or sort with its first page (thumbnails included), as the
tab's events run them; with `--base`, also `/explore` over HTTP (gradio_client), which returns every matching id.
Last line: `RESULT questions=N open_s=... select_ms_max=... filter_ms_max=... page_kb=... table_kb=... page_share=...`
(select: the filter and sort alone; filter: the whole event, first page and its thumbnails included).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from app_lib.explore import CONFIDENTLY_WRONG, P_YES_GAP, Query  # noqa: E402
from app_lib.explore_tab import ExploreView  # noqa: E402
from cxr_vqa.reports import METRICS, PREDICTIONS, RUN, iter_predictions  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def grow(report: Path, out: Path, questions: int) -> int:
    """Write a report of `questions` questions into `out` from the real records of `report`; returns how many real."""
    real = list(iter_predictions(report / PREDICTIONS))
    shutil.copy(report / RUN, out / RUN)
    with open(out / PREDICTIONS, "w", encoding="utf-8") as sink:
        for n in range(questions):
            record = dict(real[n % len(real)])
            record["id"] = f"{record['id']}~{n // len(real)}"
            sink.write(json.dumps(record) + "\n")
    if (report / METRICS).is_file():  # last, as evaluation writes it: the mark of a finished report
        shutil.copy(report / METRICS, out / METRICS)
    return len(real)


def queries(view: ExploreView) -> dict[str, Query]:
    table = view.table
    finding, model = table.findings[0], table.models[-1]
    return {
        "all (first page)": Query(),
        f"finding={finding}": Query(finding=finding),
        f"{model} wrong": Query(model=model, outcome="wrong"),
        "models disagree": Query(disagree=True),
        "closed, blank shown": Query(kind="closed", blank=True),
        "sort P(yes) gap": Query(sort=P_YES_GAP),
        f"sort confidently wrong ({model})": Query(model=model, sort=CONFIDENTLY_WRONG),
    }


def http_explore(view_report: Path, base: str, repeats: int) -> float:
    """Median seconds of `/explore` (every id of every question) through gradio_client against the served app."""
    from gradio_client import Client

    import app
    from cxr_vqa.model import load_model

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    vqa = load_model(base, load_in_4bit=False, device="cpu")
    with tempfile.TemporaryDirectory() as votes:
        demo = app.create_demo(vqa, votes_db=Path(votes) / "votes.sqlite", report_dir=view_report)
        _, url, _ = app.serve(demo, host="127.0.0.1", port=port, queue_size=8, max_file_size="5mb",
                              prevent_thread_lock=True, quiet=True)  # fmt: skip
        try:
            client = Client(url, verbose=False)
            seconds, result = timed(lambda: client.predict("", "", "", False, api_name="/explore"), repeats)
            print(f"  HTTP /explore, all {result['total']:,} ids: {seconds * 1000:.0f} ms")
        finally:
            demo.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", required=True, help="a real report: the --out of `python -m evaluation`")
    parser.add_argument("--questions", type=int, default=20_000, help="size of the report to time")
    parser.add_argument("--dataset", help="the evaluated dataset, if the report's recorded path is gone")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each step (median)")
    parser.add_argument("--base", help="a LLaVA checkpoint to serve the app with, to time /explore over HTTP")
    args = parser.parse_args()
    if not (Path(args.report) / PREDICTIONS).is_file():
        sys.exit(f"{args.report}/{PREDICTIONS} not found: run `python -m evaluation ... --out {args.report}` first")

    with tempfile.TemporaryDirectory() as folder:
        big = Path(folder)
        real = grow(Path(args.report), big, args.questions)
        print(f"report: {args.questions:,} questions = the {real:,} real records of {args.report} repeated under new "
              "ids (not a larger evaluation)")  # fmt: skip
        open_s, view = timed(lambda: ExploreView(big, args.dataset), args.repeats)
        if view.table is None or not view.table.films.available:
            sys.exit(f"cannot explore it: {view.note}")
        print(f"open (read, index, find the films): {open_s:.2f} s")
        filter_ms, select_ms = {}, {}
        print(f"  {'view':<38} {'rows':>24}  filter+sort  with its first page (thumbnails)")
        for name, query in queries(view).items():
            select_ms[name] = timed(lambda q=query: view.table.select(q), args.repeats)[0] * 1000
            cold = lambda q=query: (view.table._thumbs.clear(), view.page(q, 1))[1]  # noqa: E731 no thumbnail kept
            seconds, (frame, _, line, _, _) = timed(cold, args.repeats)
            filter_ms[name] = seconds * 1000
            print(f"  {name:<38} {line.split(' · ')[-1]:>24}  {select_ms[name]:8.1f} ms  {filter_ms[name]:8.1f} ms")
        frame, *_ = view.page(Query(blank=True), 1)
        page_kb = len(json.dumps(frame).encode()) / 1024
        rows = [[r["id"], r.get("finding") or "", r["kind"], r["question"], r["reference"],
                 *(r["answers"][v] for v in view.table.variants)] for r in view.table.records]  # fmt: skip
        table_kb = len(json.dumps({"headers": frame["headers"], "data": rows}).encode()) / 1024
        print(
            f"one page to the browser: {page_kb:.0f} KB (20 rows with thumbnails); the whole table as text, no "
            f"thumbnails: {table_kb:,.0f} KB; the page is {page_kb / table_kb:.4f} of it"
        )
        if args.base:
            http_explore(big, args.base, args.repeats)
    print(
        f"RESULT questions={args.questions} open_s={open_s:.2f} select_ms_max={max(select_ms.values()):.0f} "
        f"filter_ms_max={max(filter_ms.values()):.0f} "
        f"page_kb={page_kb:.0f} table_kb={table_kb:.0f} page_share={page_kb / table_kb:.4f}"
    )


if __name__ == "__main__":
    main()

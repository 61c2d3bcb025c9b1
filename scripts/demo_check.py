"""`python app.py --demo` as a newcomer meets it, timed: start it, time the first page, ask the demo's questions over
HTTP while the adapter trains (each newly served checkpoint answers them), time until the final adapter serves and
until the build's own report is there, then score the final answers, on the held-out films and on the committed
examples of assets/examples/.

    python scripts/demo_check.py --fresh                  # empty runs/demo first: the first start, port 7861
    python scripts/demo_check.py                          # whatever runs/demo holds (a built one: the cached start)
    python scripts/demo_check.py --screenshots runs/screens   # also the docs' pictures (scripts/screenshots.py)
    python scripts/demo_check.py --first-pages 3          # only the first page, of 3 fresh starts (each emptied)

The questions: each held-out example film's suggested question (yes), the same questions on its normal film (no),
and the same for the committed phantoms of assets/examples/. Then the findings: "Describe the findings." on every
example film, held-out and committed; a report is right when the observations it asserts present (`cxr_vqa.labeler`)
are exactly what was drawn (the normal film: No Finding). Then the build's report: findings micro-F1-14 of base and
tuned with their intervals, the paired bootstrap p (and Holm's), and the drop on blank films. Prints the machine's
load, each stage's wall and CPU seconds (CPU seconds are what an idle machine would take, for the stages that run on
one core), the answers, and last `RESULT first_page_s=.. final_adapter_s=.. report_s=.. questions=.. tuned_right=..
base_right=.. committed_questions=.. committed_right=.. base_parsed=.. findings_films=.. findings_right=..
base_findings_right=.. tuned_f1_14=.. base_f1_14=.. f1_p=.. f1_p_holm=.. blank_f1_14=.. blank_f1_p=.. load=..`.
Exits 1 when a final fine-tuned answer or report is wrong. With --first-pages N: N fresh starts, each stopped at its
first page, each with the first page's stages, and last `RESULT first_pages=N first_page_median_s=..
first_page_min_s=.. first_page_max_s=.. load=..`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app_page import start_demo, stop, wait_for_page, wait_until  # noqa: E402

from cxr_vqa.answers import parse_yes_no  # noqa: E402
from cxr_vqa.findings import FINDINGS_QUESTION  # noqa: E402
from cxr_vqa.labeler import NO_FINDING, label_report  # noqa: E402


def questions(folder: Path) -> list[tuple[Path, str, str]]:
    """(film, question, expected yes/no): each film's suggested question, and the same ones on its normal film."""
    examples = json.loads((folder / "examples.json").read_text())
    asked = [(folder / e["file"], e["question"], parse_yes_no(e["answer"])) for e in examples]
    normal = next((folder / e["file"] for e in examples if not e["findings"]), None)
    return asked + [(normal, e["question"], "no") for e in examples if e["findings"] and normal]


def ask_all(client, asked, show: bool = False) -> tuple[int, int, int]:
    """(fine-tuned right, base right, base answers that parse as yes/no) over `asked`."""
    from gradio_client import handle_file

    tuned_right = base_right = parsed = 0
    for film, question, expected in asked:
        base, tuned = client.predict(handle_file(str(film)), question, api_name="/compare")
        tuned_ok, base_ok = parse_yes_no(tuned) == expected, parse_yes_no(base) == expected
        tuned_right, base_right = tuned_right + tuned_ok, base_right + base_ok
        parsed += parse_yes_no(base) is not None
        if show:
            print(f"  {film.name:<22} {question!r} expected {expected}\n"
                  f"      base  {'right' if base_ok else 'wrong'}: {base[:70]!r}\n"
                  f"      tuned {'right' if tuned_ok else 'wrong'}: {tuned[:70]!r}")  # fmt: skip
    return tuned_right, base_right, parsed


def asserted(report: str) -> set[str]:
    """The observations a report asserts present; a normal report: {"No Finding"}."""
    return {name for name, value in label_report(report).items() if value == 1}


def expected(drawn: list[str]) -> set[str]:
    """What a right report asserts of a film with `drawn` findings: those, and No Finding where none is a pathology
    (a device alone leaves the film normal, as CheXpert labels it)."""
    return set(drawn) | ({NO_FINDING} if not set(drawn) - {"Support Devices"} else set())


def ask_findings(client, folders: list[Path]) -> tuple[int, int, int]:
    """(films, tuned reports right, base reports right): FINDINGS_QUESTION on every example film of `folders`."""
    from gradio_client import handle_file

    films = tuned_right = base_right = 0
    for folder in folders:
        for example in json.loads((folder / "examples.json").read_text()):
            drawn = expected(example["findings"])
            base, tuned = client.predict(handle_file(str(folder / example["file"])), FINDINGS_QUESTION,
                                         api_name="/compare")  # fmt: skip
            films, tuned_ok, base_ok = films + 1, asserted(tuned) == drawn, asserted(base) == drawn
            tuned_right, base_right = tuned_right + tuned_ok, base_right + base_ok
            print(f"  {folder.name}/{example['file']:<22} drawn: {', '.join(sorted(drawn))}\n"
                  f"      base  {'right' if base_ok else 'wrong'}: {base[:110]!r}\n"
                  f"      tuned {'right' if tuned_ok else 'wrong'}: {tuned[:110]!r}")  # fmt: skip
    return films, tuned_right, base_right


def report_findings(report: Path) -> dict:
    """The build's report, findings part: micro-F1-14 of base, tuned and tuned on blank films, with the tests."""
    block = json.loads((report / "metrics.json").read_text())["findings"]
    for name, summary in block["models"].items():
        cells = "  ".join(f"{k} {summary[k]['value']:.3f} [{summary[k]['ci'][0]:.3f}, {summary[k]['ci'][1]:.3f}]"
                          for k in ("micro_f1_14", "micro_f1_5", "macro_f1_14", "macro_f1_5"))  # fmt: skip
        print(f"  {name:<12} {cells}")
    diff, drop = block["difference"]["tuned_minus_base"]["micro_f1_14"], block["ablation"]["tuned"]["micro_f1_14"]
    print(f"  tuned - base micro-F1-14 {diff['value']:+.3f} [{diff['ci'][0]:+.3f}, {diff['ci'][1]:+.3f}] "
          f"p={diff['p_value']:.4f} Holm p={diff.get('p_holm', diff['p_value']):.4f}; blank-film drop "
          f"{drop['value']:+.3f} [{drop['ci'][0]:+.3f}, {drop['ci'][1]:+.3f}] p={drop['p_value']:.4f} "
          f"({block['reports']} reports, {block['bootstrap']['resamples']} resamples)")  # fmt: skip
    return {"tuned_f1_14": block["models"]["tuned"]["micro_f1_14"]["value"],
            "base_f1_14": block["models"]["base"]["micro_f1_14"]["value"], "f1_p": diff["p_value"],
            "f1_p_holm": diff.get("p_holm", diff["p_value"]),
            "blank_f1_14": block["models"]["tuned_blank"]["micro_f1_14"]["value"], "blank_f1_p": drop["p_value"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", default="runs/demo", help="the demo's cache (built on first use)")
    parser.add_argument("--fresh", action="store_true", help="delete the demo's cache first: the first start")
    parser.add_argument("--port", type=int, default=7861)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for each milestone")
    parser.add_argument("--screenshots", metavar="DIR", help="also take the docs' screenshots of the page into DIR "
                        "(scripts/screenshots.py: Playwright and /usr/bin/chromium)")  # fmt: skip
    parser.add_argument("--first-pages", type=int, metavar="N", help="only time the first page, of N fresh starts")
    args = parser.parse_args(argv)
    if args.first_pages is not None:
        if args.first_pages < 1:
            parser.error(f"--first-pages must be >= 1, got {args.first_pages}")
        first_pages(Path(args.demo_dir).resolve(), args.port, args.timeout, args.first_pages)
        return

    from gradio_client import Client

    demo_dir = Path(args.demo_dir).resolve()
    if args.fresh and demo_dir.exists():
        shutil.rmtree(demo_dir)
    log = demo_dir.parent / f"{demo_dir.name}-app.log"
    load = os.getloadavg()[0]
    print(f"load average (1 min) at the start: {load:.2f} on {os.cpu_count()} cores")
    app = start_demo(demo_dir, args.port, log)
    start = time.monotonic()
    try:
        url = f"http://127.0.0.1:{args.port}/"
        first_page = wait_for_page(url, app, args.timeout)
        print(f"first page after {first_page:.1f} s (app output: {log})")
        client = Client(url, verbose=False)
        asked = questions(demo_dir / "examples")
        seen = []

        def probe(state: dict) -> None:  # every newly served checkpoint answers the demo's questions
            if seen and state["serving"] == seen[-1]:
                return
            seen.append(state["serving"])
            t = time.monotonic() - start
            tuned, base, parsed = ask_all(client, asked)
            epoch = "" if state["epoch"] is None else f", epoch {state['epoch']:.2f}"
            print(f"t={t:5.0f} s  {state['stage']}{epoch}: fine-tuned pane "
                  f"({state['serving'] or 'no checkpoint yet'}) {tuned}/{len(asked)} right; base {base}/{len(asked)} "
                  f"right, {parsed} answers in yes/no")  # fmt: skip

        wait_until(client, app, "final", start, args.timeout, probe)
        final_adapter = time.monotonic() - start
        print(f"final adapter serves after {final_adapter:.1f} s")
        print("the held-out films (examples of the demo):")
        tuned_right, base_right, base_parsed = ask_all(client, asked, show=True)
        committed = questions(ROOT / "assets" / "examples")
        print("the committed phantoms of assets/examples/:")
        committed_right, _, _ = ask_all(client, committed, show=True)
        print(f"findings ({FINDINGS_QUESTION!r}) on every example film:")
        films, findings_right, base_findings_right = ask_findings(client, [demo_dir / "examples",
                                                                           ROOT / "assets" / "examples"])  # fmt: skip
        wait_until(client, app, "report", start, args.timeout)
        report = time.monotonic() - start
        print(f"report after {report:.1f} s; its findings reports:")
        f1 = report_findings(demo_dir / "report")
        if args.screenshots:  # the docs' pictures of this very app (scripts/screenshots.py)
            from screenshots import take

            for name, size in take(url, demo_dir, Path(args.screenshots)).items():
                print(f"screenshot {Path(args.screenshots) / name} ({size / 1024:.0f} KB)")
    finally:
        stop(app)
    print_stages(demo_dir)
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    print(f"RESULT first_page_s={first_page:.1f} final_adapter_s={final_adapter:.1f} report_s={report:.1f} "
          f"questions={len(asked)} tuned_right={tuned_right} base_right={base_right} "
          f"committed_questions={len(committed)} committed_right={committed_right} base_parsed={base_parsed} "
          f"findings_films={films} findings_right={findings_right} base_findings_right={base_findings_right} "
          + " ".join(f"{k}={v:.4g}" for k, v in f1.items()) + f" load={load:.2f}")  # fmt: skip
    right = tuned_right == len(asked) and committed_right == len(committed) and findings_right == films
    sys.exit(0 if right else 1)


def print_stages(demo_dir: Path) -> None:
    for record in sorted((demo_dir / "stages").glob("*.json")):
        r = json.loads(record.read_text())
        print(f"  stage {record.stem:<22} {r['seconds']:7.1f} s wall, {r.get('cpu_seconds', 0):7.1f} CPU-seconds")


def first_pages(demo_dir: Path, port: int, timeout: float, runs: int) -> None:
    """`runs` fresh starts (`demo_dir` emptied before each), each stopped once its first page answers."""
    load, seconds = os.getloadavg()[0], []
    print(f"load average (1 min) at the start: {load:.2f} on {os.cpu_count()} cores")
    for run in range(1, runs + 1):
        shutil.rmtree(demo_dir, ignore_errors=True)
        app = start_demo(demo_dir, port, demo_dir.parent / f"{demo_dir.name}-app.log")
        try:
            seconds.append(wait_for_page(f"http://127.0.0.1:{port}/", app, timeout))
        finally:
            stop(app)  # it stops the build it started
        print(f"start {run}: first page after {seconds[-1]:.1f} s; the stages that had finished:")
        print_stages(demo_dir)
    median = statistics.median(seconds)
    print(f"RESULT first_pages={runs} first_page_median_s={median:.1f} first_page_min_s={min(seconds):.1f} "
          f"first_page_max_s={max(seconds):.1f} load={load:.2f}")


if __name__ == "__main__":
    main()

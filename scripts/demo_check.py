"""`python app.py --demo` as a newcomer meets it: start it, time the first page, then ask `/compare` every example
film's suggested question over HTTP, then the same questions on the normal film (expected: no), and score both
answers (yes/no parsed as the evaluation parses it). The first start builds the demo (minutes); a built cache is
reused.

    python scripts/demo_check.py                          # cache runs/demo, port 7861
    python scripts/demo_check.py --demo-dir /tmp/demo --port 7870

Prints the start's last lines, each question with the expected, base and tuned answers, and last
`RESULT first_page_s=.. examples=.. questions=.. expected_no=.. tuned_right=.. base_right=..`. Exits 1 when a
fine-tuned answer is wrong, so it doubles as a check.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxr_vqa.answers import parse_yes_no  # noqa: E402


def wait_for_page(url: str, app: subprocess.Popen, timeout: float) -> float:
    """Seconds until `url` answers 200; exits if the app dies or the timeout passes."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if app.poll() is not None:
            sys.exit(f"the app exited with {app.returncode} before serving")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit(f"no page at {url} after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", default="runs/demo", help="the demo's cache (built on first use)")
    parser.add_argument("--port", type=int, default=7861)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the first page")
    args = parser.parse_args(argv)

    from gradio_client import Client, handle_file

    demo_dir = Path(args.demo_dir).resolve()
    log = demo_dir.parent / f"{demo_dir.name}-app.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "app.py", "--demo", "--demo-dir", str(demo_dir), "--port", str(args.port),
               "--votes-db", str(demo_dir.parent / f"{demo_dir.name}-votes.sqlite")]  # fmt: skip
    with open(log, "w") as sink:
        app = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{args.port}/"
        first_page = wait_for_page(url, app, args.timeout)
        print(f"first page after {first_page:.1f} s (app output: {log})")
        print("\n".join("  | " + line for line in log.read_text(errors="replace").splitlines()[-4:]))
        examples = json.loads((demo_dir / "examples" / "examples.json").read_text())
        client = Client(url, verbose=False)
        # every suggested question is answered yes on its own film; the same questions on the normal film are the
        # no's, so a model that always says yes cannot pass
        asked = [(e["file"], e["question"], parse_yes_no(e["answer"])) for e in examples]
        normal = next((e["file"] for e in examples if not e["findings"]), None)
        asked += [(normal, e["question"], "no") for e in examples if e["findings"] and normal]
        tuned_right = base_right = 0
        for file, question, expected in asked:
            start = time.monotonic()
            base, tuned = client.predict(handle_file(str(demo_dir / "examples" / file)), question, api_name="/compare")
            seconds = time.monotonic() - start
            tuned_ok, base_ok = parse_yes_no(tuned) == expected, parse_yes_no(base) == expected
            tuned_right, base_right = tuned_right + tuned_ok, base_right + base_ok
            print(f"{file:<22} {question!r} expected {expected}  ({seconds:.1f} s)\n"
                  f"    base  {'right' if base_ok else 'wrong'}: {base[:70]!r}\n"
                  f"    tuned {'right' if tuned_ok else 'wrong'}: {tuned[:70]!r}")  # fmt: skip
    finally:
        app.terminate()
        app.wait(timeout=60)
    expected_no = sum(e == "no" for *_, e in asked)
    print(f"RESULT first_page_s={first_page:.1f} examples={len(examples)} questions={len(asked)} "
          f"expected_no={expected_no} tuned_right={tuned_right} base_right={base_right}")  # fmt: skip
    sys.exit(0 if tuned_right == len(asked) else 1)


if __name__ == "__main__":
    main()

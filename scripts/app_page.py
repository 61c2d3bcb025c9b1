"""What scripts/demo_check.py and scripts/screenshots.py share: start `python app.py --demo` as a newcomer does, wait
for its first page and for its build's milestones, and open the page in headless Chromium (Playwright for Python,
driving Debian's /usr/bin/chromium: Playwright's own browser download is not used).

    app = start_demo(Path("runs/demo"), port=7861, log=Path("runs/demo-app.log"))
    seconds = wait_for_page("http://127.0.0.1:7861/", app, timeout=1800)   # exits if the app dies first
    state = wait_until(client, app, "report", start, timeout=1800)        # /demo_status, polled every 2 s
    with browser_page("http://127.0.0.1:7861/", width=1280, height=1000) as page: ...
    stop(app)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
# headless on a server: no sandbox (root in a container), no GPU, nothing fetched in the background
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip


def start_demo(demo_dir: Path, port: int, log: Path) -> subprocess.Popen:
    """`python app.py --demo` on `demo_dir` (built or continued if it is not complete), offline, its output in `log`.
    One client on loopback asks a few dozen questions a minute on purpose: no per-visitor rate limit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    votes = demo_dir.parent / f"{demo_dir.name}-votes.sqlite"
    command = [sys.executable, "app.py", "--demo", "--demo-dir", str(demo_dir), "--port", str(port), "--votes-db",
               str(votes), "--rate-per-minute", "0"]  # fmt: skip
    with open(log, "w") as sink:
        return subprocess.Popen(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=sink,
                                stderr=subprocess.STDOUT)  # fmt: skip


def stop(app: subprocess.Popen) -> None:
    """End the app (it ends a build it started; the next start continues it)."""
    app.terminate()
    try:
        app.wait(timeout=90)
    except subprocess.TimeoutExpired:
        app.kill()
        app.wait()


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


def wait_until(client, app: subprocess.Popen, key: str, start: float, timeout: float, on_state=None) -> dict:
    """`/demo_status` once its `key` is true, polled every 2 s (`on_state` sees each); exits on a timeout."""
    while not (state := client.predict(api_name="/demo_status"))[key]:
        if on_state:
            on_state(state)
        if time.monotonic() - start > timeout or app.poll() is not None:
            sys.exit(f"no {key} after {time.monotonic() - start:.0f} s: {state}")
        time.sleep(2)
    return state


@contextmanager
def browser_page(url: str, *, width: int = 1280, height: int = 1000, scale: float = 1.0,
                 timeout_ms: int = 120_000) -> Iterator:  # fmt: skip
    """A Playwright page of `url` in headless Chromium, `width` x `height` CSS pixels drawn `scale` device pixels
    each (a screenshot is `scale` times as wide); closed on leaving."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        sys.exit(f"{CHROMIUM} not found: apt-get install chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=scale)
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            yield page
        finally:
            browser.close()

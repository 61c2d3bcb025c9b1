"""The pictures of the app that the docs show, taken from the offline demo in headless Chromium, so they are made again
when the UI changes instead of drifting:

    python scripts/screenshots.py                  # runs/demo as it is (built first if it is not), into docs/images/
    python scripts/screenshots.py --fresh          # empty runs/demo first: built from nothing (~8 min on 2 idle cores)
    python scripts/screenshots.py --demo-dir runs/demo --out /tmp/shots --port 7862

It starts `python app.py --demo` (scripts/app_page.py, shared with scripts/demo_check.py, whose `--screenshots DIR`
takes the same pictures), waits until the build has trained its final adapter and written its report (a fresh clone
builds it first), then drives the page as a visitor would, 1280 px wide, and writes:

- side-by-side.png: a held-out example film of the demo and its suggested question, the base and fine-tuned answers
  with their P(yes); under them, the same panes after the Findings button, each report's findings as chips (two
  moments of one page, stacked: a findings report starts a new conversation, so both never show at once)
- maps.png: "Where did it look?" after that question: each model's relevance map over the film
- explore.png: the Explore tab over the build's evaluation, the questions where the two models disagree
- results.png: the Results tab: the report's figures, then report.md down to its headline table (each model's
  accuracy and AUROC with 95% intervals, the paired tests)

Each is reduced to a 256-colour palette and saved optimised (60-130 KB each for the committed ones). Needs
Playwright for Python and Debian's /usr/bin/chromium; the page's ⚠️ and 🧪 need an emoji font (apt-get install
fonts-noto-color-emoji), or they show as boxes. Usage errors exit 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import shutil
import sys
import time
from pathlib import Path

from app_page import CHROMIUM, ROOT, browser_page, start_demo, stop, wait_for_page, wait_until

WIDTH = 1280  # CSS pixels of the viewport, and of the pictures
# the Explore table's columns (84 + 160 + 120 + 70 + 240 + 220 px, 240 a model) fit side by side in the page's widest
# layout (1536 px from 1536 px up): laid out 1600 px wide, drawn at 0.8, the picture is 1280 px wide like the others
EXPLORE_WIDTH, EXPLORE_SCALE = 1600, 0.8
MARGIN = 8  # px around a clipped region
FINDINGS_CAPTION = "\n".join(["Then the Findings button:", "each model writes the", "film's findings, read as",
                              "chips (marked where the", "models disagree)"])  # fmt: skip


def optimise(png: bytes, path: Path) -> int:
    """Write `png` to `path` as a 256-colour palette PNG, optimised; returns its size in bytes. Screenshots of a page
    hold a few dozen flat colours and anti-aliased text: a palette keeps them readable at a third of the size."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        small = image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    path.parent.mkdir(parents=True, exist_ok=True)
    small.save(path, optimize=True)
    return path.stat().st_size


def stack(top: bytes, bottom: bytes, left: int, caption: str, gap: int = 24) -> bytes:
    """`bottom` under `top` on white, `left` px in (where it was on the page), `caption` in the space beside it."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(io.BytesIO(top)) as a, Image.open(io.BytesIO(bottom)) as b:
        both = Image.new("RGB", (max(a.width, left + b.width), a.height + gap + b.height), "white")
        both.paste(a.convert("RGB"), (0, 0))
        both.paste(b.convert("RGB"), (left, a.height + gap))
    draw = ImageDraw.Draw(both)
    draw.line([(MARGIN, a.height + gap // 2), (both.width - MARGIN, a.height + gap // 2)], fill="#d1d5db", width=1)
    font = ImageFont.load_default(size=17)
    draw.multiline_text((3 * MARGIN, a.height + 2 * gap), caption, fill="#374151", font=font, spacing=6)
    out = io.BytesIO()
    both.save(out, "PNG")
    return out.getvalue()


def region(page, top: str, bottom: str, side: str | None = None) -> dict:
    """The page's area from the top of `top` to the bottom of `bottom` (CSS selectors), as wide as `side` (None: the
    page), in page coordinates: a clip for `page.screenshot(full_page=True, clip=...)`."""
    box = page.evaluate(
        """([top, bottom, side]) => {
            const t = document.querySelector(top).getBoundingClientRect();
            const b = document.querySelector(bottom).getBoundingClientRect();
            const s = side ? document.querySelector(side).getBoundingClientRect() : {left: 0, right: innerWidth};
            return {y: t.top + scrollY, bottom: b.bottom + scrollY, left: s.left + scrollX, right: s.right + scrollX};
        }""",
        [top, bottom, side],
    )
    x, y = max(0, box["left"] - MARGIN), max(0, box["y"] - MARGIN)
    width = min(box["right"] + MARGIN, page.viewport_size["width"]) - x
    return {"x": x, "y": y, "width": width, "height": box["bottom"] + MARGIN - y}


def example(demo_dir: Path) -> tuple[Path, str]:
    """(film, question) of the demo's first held-out example that shows a finding: a question whose answer is yes."""
    examples = json.loads((demo_dir / "examples" / "examples.json").read_text())
    chosen = next((e for e in examples if e["findings"]), examples[0])
    return demo_dir / "examples" / chosen["file"], chosen["question"]


def take(url: str, demo_dir: Path, out: Path) -> dict[str, int]:
    """The four pictures of the page at `url` (a demo whose build is complete) into `out`; {file name: bytes}."""
    from playwright.sync_api import expect

    film, question = example(demo_dir)
    sizes = {}
    with browser_page(url, width=WIDTH, height=1000) as page:
        page.locator("#film-file input[type=file]").set_input_files(str(film))
        expect(page.locator("#film-status")).to_contain_text("letterboxed")
        page.locator("#question textarea").fill(question)
        page.locator("#ask").click()
        for pane in ("base", "tuned"):
            expect(page.locator(f"#{pane}-stats")).to_contain_text("P(yes)")
        page.mouse.move(0, 0)  # no hover highlight in the picture
        answers = page.screenshot(full_page=True, clip=region(page, "h1", "#panes"))

        page.locator("#maps-button").click()
        expect(page.locator("#maps img").first).to_be_visible()
        expect(page.locator("#maps img")).to_have_count(2)
        clip = region(page, "#maps-button", "#maps-status", side="#panes")
        sizes["maps.png"] = optimise(page.screenshot(full_page=True, clip=clip), out / "maps.png")

        page.locator("#findings").click()
        expect(page.locator("#tuned-findings .fx-chip").first).to_be_visible()
        expect(page.locator("#base-findings .fx-chip").first).to_be_visible()
        clip = region(page, "#findings-summary", "#panes", side="#panes")
        chips = page.screenshot(full_page=True, clip=clip)
        both = stack(answers, chips, round(clip["x"]), FINDINGS_CAPTION)
        sizes["side-by-side.png"] = optimise(both, out / "side-by-side.png")

        page.get_by_role("tab", name="Results").click()
        expect(page.locator("#report-md")).to_contain_text("Headline metrics")
        for name in ("comparison", "findings", "confidence"):  # images load lazily: scrolled to, they load
            page.locator(f"#report-{name} img").scroll_into_view_if_needed()
            expect(page.locator(f"#report-{name} img")).to_be_visible()
        clip = region(page, "#report-note", "#report-md table", side="#report-md")  # to the headline table's end
        sizes["results.png"] = optimise(page.screenshot(full_page=True, clip=clip), out / "results.png")
    with browser_page(url, width=EXPLORE_WIDTH, height=1200, scale=EXPLORE_SCALE) as page:
        page.get_by_role("tab", name="Explore the evaluation").click()
        expect(page.locator("#explore-page")).to_contain_text("Page 1 of")
        page.locator("#explore-disagree input").check()  # where a reader looks first
        expect(page.locator("#explore-table .virtual-row").first.locator("img")).to_be_visible()
        time.sleep(1)  # the thumbnails of the other rows
        clip = region(page, "#explore-note", "#explore-page", side="#explore-table")
        sizes["explore.png"] = optimise(page.screenshot(full_page=True, clip=clip), out / "explore.png")
    return sizes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", default="runs/demo", help="the demo's cache: used as it is, built if it is not")
    parser.add_argument("--fresh", action="store_true", help="delete the demo's cache first: a build from nothing")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="where the PNGs go (docs/images)")
    parser.add_argument("--port", type=int, default=7862)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the build's report")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be between 1 and 65535, got {args.port}")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    out, demo_dir = Path(args.out), Path(args.demo_dir).resolve()
    for flag, folder in (("--out", out), ("--demo-dir", demo_dir)):
        if folder.exists() and not folder.is_dir():
            parser.error(f"{flag} {folder} is a file, not a folder")
    if importlib.util.find_spec("playwright") is None or not Path(CHROMIUM).exists():  # before a build of minutes
        sys.exit(f"error: the pictures need Playwright for Python (pip install -r requirements-dev.txt) and "
                 f"{CHROMIUM} (apt-get install chromium fonts-noto-color-emoji)")  # fmt: skip

    from gradio_client import Client

    if args.fresh and demo_dir.exists():
        shutil.rmtree(demo_dir)
    log = demo_dir.parent / f"{demo_dir.name}-app.log"
    app = start_demo(demo_dir, args.port, log)
    start = time.monotonic()
    try:
        url = f"http://127.0.0.1:{args.port}/"
        print(f"first page after {wait_for_page(url, app, args.timeout):.0f} s (app output: {log})", flush=True)
        wait_until(Client(url, verbose=False), app, "report", start, args.timeout)
        print(f"the demo is complete after {time.monotonic() - start:.0f} s: taking the pictures", flush=True)
        sizes = take(url, demo_dir, out)
    finally:
        stop(app)
    for name, size in sizes.items():
        print(f"  {out / name}  {size / 1024:.0f} KB")


if __name__ == "__main__":
    sys.exit(main())

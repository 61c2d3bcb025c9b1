"""scripts/screenshots.py without a built demo: its help, its usage errors (exit 2, one line, before any build or
browser), and the picture steps it applies to every capture (the 256-colour palette; two moments stacked). The full
run (a built demo, Chromium) is `python scripts/screenshots.py`, not a test. scripts/demo_check.py shares its start-up
code (scripts/app_page.py): its help must still load."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPTS / script), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


@pytest.fixture(scope="module")
def screenshots():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import screenshots

        yield screenshots
    finally:
        sys.path.remove(str(SCRIPTS))


def test_help_names_the_pictures_and_exits_0():
    out = run("screenshots.py", "--help")
    assert out.returncode == 0, out.stderr
    for name in ("side-by-side.png", "maps.png", "explore.png", "results.png", "--fresh", "--out"):
        assert name in out.stdout
    checked = run("demo_check.py", "--help")
    assert checked.returncode == 0 and "--screenshots DIR" in checked.stdout, checked.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "0"], "--port must be between 1 and 65535, got 0"),
        (["--timeout", "-5"], "--timeout must be positive"),
        (["--out", "README.md"], "is a file, not a folder"),
        (["--demo-dir", "README.md"], "is a file, not a folder"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_usage_errors_exit_2_in_one_line(args, message):
    out = run("screenshots.py", *args)
    assert out.returncode == 2 and message in out.stderr.strip().splitlines()[-1], out.stderr
    assert "Traceback" not in out.stderr


def page_like(width: int = 640, height: int = 400) -> Image.Image:
    """A stand-in for a screenshot: flat panels, lines of dark text-like strokes, an orange button."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([20, 20, width - 20, 80], fill=(255, 251, 235), outline=(217, 119, 6), width=2)
    draw.rectangle([20, 100, 200, 140], fill=(249, 115, 22))
    for y in range(160, height - 20, 18):
        draw.text((24, y), "closed accuracy 0.957 [0.945, 0.968] p=0.0000", fill=(31, 41, 55))
    return image


def test_each_picture_is_saved_as_an_optimised_palette_png(screenshots, tmp_path):
    page = page_like()
    plain = io.BytesIO()
    page.save(plain, "PNG")
    size = screenshots.optimise(plain.getvalue(), tmp_path / "shot.png")
    with Image.open(tmp_path / "shot.png") as saved:
        assert saved.mode == "P" and saved.size == page.size
        assert saved.convert("RGB").getpixel((100, 50)) == (255, 251, 235)  # flat colours kept exactly
        assert saved.convert("RGB").getpixel((100, 120)) == (249, 115, 22)
    assert size == (tmp_path / "shot.png").stat().st_size < len(plain.getvalue())


def test_two_moments_are_stacked_with_the_second_where_it_was_on_the_page(screenshots):
    top, bottom = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (300, 100), (10, 20, 30)).save(top, "PNG")
    Image.new("RGB", (200, 50), (200, 0, 0)).save(bottom, "PNG")
    both = Image.open(io.BytesIO(screenshots.stack(top.getvalue(), bottom.getvalue(), 100, "then", gap=24)))
    assert both.size == (300, 100 + 24 + 50)
    assert both.getpixel((150, 50)) == (10, 20, 30) and both.getpixel((150, 150)) == (200, 0, 0)
    assert both.getpixel((50, 170)) == (255, 255, 255)  # beside the second: white, for the caption

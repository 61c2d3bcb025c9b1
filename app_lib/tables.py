"""Cells shared by the app's panes and tables: a film's thumbnail, inline, one model's answer, and a CSV cell a
spreadsheet will not run.

Thumbnails go inline as data URLs in a markdown cell: a page of the table carries its own small pictures, so no
film is written to the server's disk to show it, and only the rows of the page on screen are ever encoded.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import functools
import io
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from cxr_vqa.answers import Answer
from cxr_vqa.sources import split_revision

THUMB_PX = 64  # the side of a thumbnail: enough to tell films apart, a few KB each


def model_label(spec: str) -> str:
    """Where a model came from, as markdown: its path or Hub id, and the revision it is pinned to (`ID@REVISION`)."""
    name, revision = split_revision(spec)
    return f"`{name}` at revision `{revision}`" if revision else f"`{name}`"


def thumbnail(image: Image.Image, size: int = THUMB_PX) -> str:
    """A markdown image of `image` shrunk to fit `size` px, as a PNG data URL."""
    small = image.convert("L")  # chest films are grey: one channel is a third of the bytes
    small.thumbnail((size, size))
    buffer = io.BytesIO()
    small.save(buffer, "PNG", optimize=True)
    return f"![film](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')})"


def answer_text(answer: Answer) -> str:
    """What a pane, a table or /compare_all shows: the answer, or why a remote model gave none (one line)."""
    return f"error: {answer.error}" if answer.error else answer.text


def answer_cell(text: str, p_yes: float | None, right: bool | None = None) -> str:
    """One model's answer as the tables show it: ✓/✗ when it was scored, then the text, then P(yes) if any."""
    mark = "" if right is None else "✓ " if right else "✗ "
    return mark + text + ("" if p_yes is None else f"  · P(yes) {p_yes:.2f}")


def layout(widths: list[int]) -> dict:
    """`gr.Dataframe`'s column types and widths (px) for a table whose first column holds the thumbnails."""
    return {"datatype": ["markdown"] + ["str"] * (len(widths) - 1), "column_widths": [f"{w}px" for w in widths]}


def spreadsheet_safe(text: str) -> str:
    """A CSV cell a spreadsheet would run as a formula (=, +, -, @ first) gets a leading quote: questions, model output
    and file names are not trusted. Every CSV the app writes (a batch, the votes) goes through here."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


EXPORT_KEEP_SECONDS = 600  # Gradio copies a download into its own cache (emptied hourly) as the click returns


@functools.cache
def _exports() -> Path:
    """This process's private folder of downloads, deleted when it ends."""
    folder = Path(tempfile.mkdtemp(prefix="cxr-vqa-exports-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def export_folder(kind: str) -> Path:
    """A new private folder for one download of `kind` ("votes", "batch"): a folder per click, so that two visitors'
    downloads never overwrite each other before Gradio has copied them. Those of earlier clicks are deleted once
    older than EXPORT_KEEP_SECONDS, and all of them when the app ends: no copy of the votes outlives its use."""
    parent = _exports()
    for old in parent.iterdir():
        with contextlib.suppress(OSError):  # another click deleted it already
            if time.time() - old.stat().st_mtime > EXPORT_KEEP_SECONDS:
                shutil.rmtree(old)
    return Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=parent))

"""The results tab's pieces: the Wilson interval of a win rate, and the offline evaluation report as a person reads
it: report.md's tables (each model's accuracy and AUROC, the paired tests with their intervals, the findings reports'
F1s), its figures as images, and metrics.json one click away.

Wilson score intervals, unlike the normal approximation, stay inside [0, 1] and behave with the handful of votes a
demo collects (0 of 3 gives [0, 0.56], not [0, 0]).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from cxr_vqa.reports import COMPARISON_PNG, CONFIDENCE_PNG, FINDINGS_PNG, METRICS, REPORT_MD

PLOTS = {  # the figures a report may hold, with report.md's words for them, in the order shown
    COMPARISON_PNG: "headline metrics with 95% intervals",
    FINDINGS_PNG: "findings F1s with 95% intervals",
    CONFIDENCE_PNG: "per-finding AUROC and reliability diagram",
}
IMAGE_LINE = re.compile(r"^!\[[^\]]*\]\([^)\s]+\)[ \t]*\n?", re.MULTILINE)  # report.md's own figure lines
HEADING = re.compile(r"^(#{1,5}) ", re.MULTILINE)


def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (scipy's); (0, 1) when there is no data."""
    from scipy.stats import binomtest

    if not 0 <= successes <= total:
        raise ValueError(f"need 0 <= successes <= total, got {successes} of {total}")
    if total == 0:
        return 0.0, 1.0
    ci = binomtest(successes, total).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass(frozen=True)
class Report:
    """The offline evaluation report written by `python -m evaluation --out R`."""

    metrics: dict | None
    markdown: str | None  # report.md as the tab shows it: its figure lines left out (the figures are images beside)
    plots: dict[str, str]  # {file name: path} of the figures of PLOTS that exist
    note: str  # what was found, or why something is missing


def page_markdown(text: str) -> str:
    """report.md inside the page: its `![..](x.png)` lines out (a relative path means nothing to the browser; the
    figures are shown as images) and its headings one level down, under the page's own title."""
    return HEADING.sub(r"#\1 ", IMAGE_LINE.sub("", text)).strip()


def load_report(report_dir: str | Path | None) -> Report:
    """Read metrics.json and report.md and find the figures; a missing or broken file becomes a note, not a crash."""
    if report_dir is None:
        return Report(None, None, {}, "No evaluation report given: start the app with `--report R` to show one.")
    root = Path(report_dir)
    notes, metrics, markdown = [], None, None
    try:
        metrics = json.loads((root / METRICS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        notes.append(f"{root / METRICS} not found")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        notes.append(f"{root / METRICS} could not be read ({type(err).__name__})")
    try:
        markdown = page_markdown((root / REPORT_MD).read_text(encoding="utf-8"))
    except FileNotFoundError:
        notes.append(f"{root / REPORT_MD} not found")
    except (OSError, UnicodeDecodeError) as err:
        notes.append(f"{root / REPORT_MD} could not be read ({type(err).__name__})")
    plots = {name: str(root / name) for name in PLOTS if (root / name).is_file()}
    if COMPARISON_PNG not in plots:  # confidence.png comes with it; findings.png only where findings were asked
        notes.append(f"{root / COMPARISON_PNG} not found")
    note = f"Offline evaluation report from `{root}`." + (" " + "; ".join(notes) + "." if notes else "")
    return Report(metrics, markdown, plots, note)


def report_updates(report_dir) -> tuple:
    """The Results tab's report views as the report folder holds them now: (note, report.md, one image per figure of
    PLOTS, the metrics.json accordion, its JSON)."""
    import gradio as gr
    from PIL import Image, UnidentifiedImageError

    report = load_report(report_dir)
    note, images = report.note, []
    for name in PLOTS:
        image = None  # an image, not a path: no file outside Gradio's to serve
        if name in report.plots:
            try:
                with Image.open(report.plots[name]) as found:
                    image = found.copy()  # decoded now: a figure still being written fails here, in one line
            except (OSError, UnidentifiedImageError, SyntaxError):  # PIL: cut in its data, its header, between chunks
                note += f" {report.plots[name]} could not be read: press Refresh once the evaluation has written it."
        images.append(gr.Image(image, visible=image is not None))
    shown = report.metrics is not None
    return (note, gr.Markdown(report.markdown or "", visible=report.markdown is not None), *images,
            gr.Accordion(visible=shown), gr.JSON(report.metrics, visible=shown))  # fmt: skip

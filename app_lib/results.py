"""The results tab's pieces: the Wilson interval of a win rate, and the offline evaluation report.

Wilson score intervals, unlike the normal approximation, stay inside [0, 1] and behave with the handful of votes a
demo collects (0 of 3 gives [0, 0.56], not [0, 0]).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


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
    plot: str | None  # path of comparison.png
    note: str  # what was found, or why something is missing


def load_report(report_dir: str | Path | None) -> Report:
    """Read `metrics.json` and find `comparison.png`; a missing or broken file becomes a note, not a crash."""
    if report_dir is None:
        return Report(None, None, "No evaluation report given: start the app with `--report R` to show one.")
    root = Path(report_dir)
    notes, metrics = [], None
    metrics_file, plot = root / "metrics.json", root / "comparison.png"
    try:
        metrics = json.loads(metrics_file.read_text())
    except FileNotFoundError:
        notes.append(f"{metrics_file} not found")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        notes.append(f"{metrics_file} could not be read ({type(err).__name__})")
    if not plot.is_file():
        notes.append(f"{plot} not found")
    note = f"Offline evaluation report from `{root}`." + (" " + "; ".join(notes) + "." if notes else "")
    return Report(metrics, str(plot) if plot.is_file() else None, note)


def report_updates(report_dir) -> tuple:
    """The Results tab's report views as the report folder holds them now."""
    import gradio as gr
    from PIL import Image, UnidentifiedImageError

    report = load_report(report_dir)
    note, plot = report.note, None  # an image, not a path: no file outside Gradio's to serve
    if report.plot:
        try:
            with Image.open(report.plot) as image:
                plot = image.copy()  # decoded now: a comparison.png still being written fails here, in one line
        except (OSError, UnidentifiedImageError, SyntaxError):  # PIL: cut in its data, its header, between chunks
            note += f" {report.plot} could not be read: press Refresh once the evaluation has written it."
    return (note, gr.JSON(report.metrics, visible=report.metrics is not None),
            gr.Image(plot, visible=plot is not None))  # fmt: skip

"""The format of an evaluation report folder, shared by the part that writes it (`python -m evaluation --out R`) and
the app that reads it (`python app.py --report R`): its file names, how a model and image condition are named (a
"variant"), and the one reader of its predictions.

    R/run.json            the settings of the run (dataset, split, models ...), so a rerun resumes or refuses
    R/predictions.jsonl   one record a question: {"id", "row", "study_id", "patient_id", "question", "reference",
                          "kind", "finding", "label", "answers": {variant: text}, "p_yes": {variant: p or null},
                          "scores": {variant: {...}}, "usage": {remote variant: token usage} where remote models
                          answered}; `row` is the film's row in the dataset split (a dataprep dataset) or in the
                          film list; benchmark records also hold "film", the film's path in the release folder
                          (run.json's dataset)
    R/metrics.json, R/report.md, R/comparison.png, R/confidence.png, and R/findings.png where questions asked for
                          findings (kind "findings", metrics.json's "findings" block)
    R/remote_cache.jsonl  remote models' answers by request hash, so a rerun never asks again (no film, no key)

    variant_name("tuned", blank=True)     # "tuned_blank": the tuned model asked with a blank image
    split_variant("tuned_blank")          # ("tuned", True)
    records = read_predictions(R / PREDICTIONS)
    run = read_run(R)                     # run.json: {"dataset": resolved path, "split" or "benchmark", ...}
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from cxr_vqa.errors import UserError

RUN, PREDICTIONS, METRICS = "run.json", "predictions.jsonl", "metrics.json"
REPORT_MD, COMPARISON_PNG, CONFIDENCE_PNG = "report.md", "comparison.png", "confidence.png"
FINDINGS_PNG = "findings.png"
BLANK = "_blank"  # the image ablation: the same question with a blank film


def variant_name(model: str, blank: bool = False) -> str:
    return model + BLANK if blank else model


def split_variant(name: str) -> tuple[str, bool]:
    """(model name, asked with a blank image?) of a variant name."""
    return (name[: -len(BLANK)], True) if name.endswith(BLANK) else (name, False)


def with_image(names) -> list[str]:
    """The variants asked with their film (the models), in order."""
    return [n for n in names if not split_variant(n)[1]]


def iter_predictions(path: str | Path) -> Iterator[dict]:
    """The records of a JSON-lines file (predictions, the remote cache) in order. A last line that is no record is
    skipped: a killed run leaves one cut short. A bad line before the last is a UserError naming it: skipping it would
    silently drop an answer (an edited file, two runs writing at once)."""
    bad = None  # the number of a line that is no record: fatal once another line follows it
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if bad is not None:
                raise UserError(f"{path}: line {bad} is not a JSON record; repair or remove that line and run again")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict):
                yield record
            else:
                bad = number


def read_predictions(path: str | Path) -> list[dict]:
    return list(iter_predictions(path))


def read_run(report_dir: str | Path) -> dict:
    """run.json of the report in `report_dir`; UserError when the folder holds no finished evaluation's run."""
    path = Path(report_dir) / RUN
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} not found: pass the --out folder of `python -m evaluation`") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{path} cannot be read ({type(err).__name__}): run the evaluation again") from None
    if not isinstance(run, dict) or not isinstance(run.get("dataset"), str):
        raise UserError(f"{path} is not an evaluation's run.json (no dataset recorded)")
    return run

"""Where the films of an evaluation report are: the dataset split it evaluated (each record's `row`), or a public
benchmark's release folder (each record's `film`). The dataset path run.json recorded comes first; `--dataset` is
the fallback for a report that moved to another machine or a dataset that moved on disk.

    films = find_films(read_run(R), records, dataset=None)   # never raises: films.note says what is missing
    films.available, films.image(record), films.copy(record, folder)
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cxr_vqa.contract import open_splits, split_films
from cxr_vqa.errors import UserError
from cxr_vqa.images import load_image


@dataclass
class ReportFilms:
    """The films of a report's records, or a note on why there are none."""

    note: str
    _image: Callable[[dict], Image.Image] | None = None
    _path: Callable[[dict], Path] | None = None  # benchmarks: the release's own file
    dataset: str | None = None  # the dataset the films come from (None: a benchmark's release, or no films)

    @property
    def available(self) -> bool:
        return self._image is not None

    def image(self, record: dict) -> Image.Image:
        """The record's film as an RGB image (dataset films are letterboxed already)."""
        if self._image is None:
            raise UserError(f"the films of this report are not available: {self.note}")
        return self._image(record)

    def copy(self, record: dict, folder: Path) -> Path:
        """A file of the record's film in `folder`, for the upload box: the release's own file for a benchmark (its
        format, DICOM included), a PNG of the dataset's film otherwise."""
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(record.get("film") or record["study_id"]))  # no path tricks
        if self._path is None and not name.lower().endswith(".png"):
            name += ".png"  # not with_suffix: a dotted study id (a DICOM UID, 1.2.840...) would lose its last part
        target = folder / name
        # written aside, then renamed: two people choosing the same film never read a half-written file
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
        if self._path is not None:
            shutil.copyfile(self._path(record), partial)
        else:
            self.image(record).save(partial, "PNG")
        partial.replace(target)
        return target


def find_films(run: dict, records: list[dict], dataset: str | None = None) -> ReportFilms:
    """The films of `records` from the dataset run.json names, else from `dataset`; the first that holds every
    record's film wins. Checks each record against the dataset (a row holding another study means another dataset),
    so a rebuilt dataset never shows the wrong film."""
    places = [run["dataset"]] + ([dataset] if dataset and dataset != run["dataset"] else [])
    reasons = []
    for place in places:
        try:
            if run.get("benchmark"):
                return _benchmark(Path(place), records)
            return _split(place, run.get("split", "test"), records)
        except UserError as err:
            reasons.append(str(err))
    hint = "" if dataset else "; start the app with --dataset DIR pointing at the evaluated dataset"
    return ReportFilms("films not available: " + "; ".join(reasons) + hint)


def _split(place: str, split: str, records: list[dict]) -> ReportFilms:
    splits = open_splits(place)
    if split not in splits:
        raise UserError(f"{place} has no {split!r} split")
    data = splits[split]
    study_ids = data.select_columns(["study_id"]).to_dict()["study_id"]  # one column, as a list: fast to index
    wrong = [r["id"] for r in records if not 0 <= r.get("row", -1) < len(study_ids)
             or study_ids[r["row"]] != r["study_id"]]  # fmt: skip
    if wrong:
        raise UserError(f"{place} [{split}] is not the evaluated dataset ({len(wrong)} questions' films differ, "
                        f"e.g. {wrong[0]})")  # fmt: skip
    films = split_films(data)
    return ReportFilms(f"films from {place} [{split}]", lambda r: films(r["row"]), dataset=place)


def _benchmark(root: Path, records: list[dict]) -> ReportFilms:
    if any("film" not in r for r in records):
        raise UserError("this report records no film paths (it predates them): run the evaluation again")
    missing = sorted({r["film"] for r in records if not (root / r["film"]).is_file()})
    if missing:
        raise UserError(f"{len(missing)} films missing under {root}, e.g. {missing[0]}")
    return ReportFilms(f"films from {root}", lambda r: load_image(root / r["film"]), lambda r: root / r["film"])

"""Read the CheXpert Plus release as it ships: one `Study` per (patient, study), plus a reject for each one unusable.

    studies, rejects = read_release("/data/chexpert-plus")

The release: `df_chexpert_plus_240401.csv` (27 columns, multi-line quoted reports, one row per view),
`PNG/PNG/{train,valid}/patientN/studyM/viewK_*.png` (the CSV says `.jpg`) and
`chexbert_labels/{report,impression,findings}_fixed.json` (JSON Lines keyed by `path_to_image`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from cxr_vqa.errors import UserError
from dataprep.clean import clean_report, word_count

# shared by every reader; imported here too, so `from dataprep.chexpert import LABELS, Study` keeps working
from dataprep.releases.study import LABELS, MIN_WORDS, Labels, Study, reject

logger = logging.getLogger(__name__)

CSV_NAME = "df_chexpert_plus_240401.csv"
COLUMNS = tuple(
    "path_to_image path_to_dcm frontal_lateral ap_pa deid_patient_id patient_report_date_order report "
    "section_narrative section_clinical_history section_history section_comparison section_technique "
    "section_procedure_comments section_findings section_impression section_end_of_impression section_summary "
    "section_accession_number age sex race ethnicity interpreter_needed insurance_type recent_bmi deceased "
    "split".split()
)
REQUIRED_COLUMNS = ("path_to_image", "section_findings", "section_impression")
LABEL_DIR = "chexbert_labels"
# Labels of the whole report first; a study missing there falls back to its impression, then its findings.
LABEL_FILES = ("report_fixed.json", "impression_fixed.json", "findings_fixed.json")
IMAGE_ROOTS = ("PNG/PNG", "PNG", "")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIEW_ORDER = ("PA", "AP", "frontal", "lateral")  # preferred view first


def find_image(root: Path, path_to_image: str) -> str | None:
    """Path of the image relative to `root`, whichever of the known layouts and suffixes the release uses."""
    stem = os.path.splitext(path_to_image.strip().lstrip("/"))[0]
    for base in IMAGE_ROOTS:
        for suffix in IMAGE_SUFFIXES:
            rel = f"{base}/{stem}{suffix}" if base else f"{stem}{suffix}"
            if (root / rel).is_file():
                return rel
    return None


def view_of(row: dict) -> str:
    ap_pa = (row.get("ap_pa") or "").strip().upper()
    frontal_lateral = (row.get("frontal_lateral") or "").strip().lower()
    if frontal_lateral == "lateral" or (not frontal_lateral and "lateral" in row["path_to_image"].lower()):
        return "lateral"
    return ap_pa if ap_pa in ("PA", "AP") else "frontal"


def _label_key(path_to_image: str) -> str:
    return os.path.splitext(path_to_image.strip().lstrip("/"))[0]


def _label_value(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        return float(value) if value in (1, 0, -1) else None
    return None


def read_labels(root: Path, wanted: set[str]) -> dict[str, tuple[int, Labels]]:
    """CheXbert labels for the wanted image keys, with the rank of their file in LABEL_FILES (lower wins)."""
    found: dict[str, tuple[int, Labels]] = {}
    for rank, name in enumerate(LABEL_FILES):
        path = root / LABEL_DIR / name
        if not path.is_file():
            logger.warning("no %s: studies fall back to the other label files", path)
            continue
        with open(path, encoding="utf-8") as file:
            for line_no, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    key = _label_key(record["path_to_image"])
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    logger.warning("%s line %d is not a label record; skipped", name, line_no)
                    continue
                if key in wanted and key not in found:
                    found[key] = (rank, {label: _label_value(record.get(label)) for label in LABELS})
    return found


KEPT_COLUMNS = ("path_to_image", "frontal_lateral", "ap_pa", "deid_patient_id", "split")
TEXT_COLUMNS = ("section_findings", "section_impression")


def _read_rows(csv_path: Path) -> Iterator[dict]:
    """The CSV's rows, slimmed to what the reader uses: 200k rows of whole reports would not fit comfortably."""
    csv.field_size_limit(sys.maxsize)  # whole reports sit in single quoted fields
    with open(csv_path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{csv_path} lacks the columns {', '.join(missing)}; is it the CheXpert Plus CSV?")
        for row in reader:
            yield {column: row.get(column) or "" for column in (*KEPT_COLUMNS, *TEXT_COLUMNS)}


def read_release(root: str | os.PathLike, limit: int | None = None) -> tuple[list[Study], list[dict]]:
    """All studies of the release (the first `limit` if given, in CSV order) and the rejects among them."""
    root = Path(root)
    csv_path = root / CSV_NAME
    if not root.is_dir():
        raise UserError(f"--root {root} is not a directory")
    if not csv_path.is_file():
        raise UserError(f"no {CSV_NAME} in {root}; point --root at the unpacked CheXpert Plus release")
    groups: dict[str, list[dict]] = {}
    texts: dict[str, tuple[str, str]] = {}  # each view repeats the study's report: keep it once
    rejects = []
    for row_no, row in enumerate(_read_rows(csv_path), 2):
        parts = row["path_to_image"].strip().split("/")
        if len(parts) < 3:
            detail = f"CSV row {row_no}: path_to_image is not split/patient/study/view"
            rejects.append(reject(None, "bad_row", detail))
            continue
        key = f"{parts[-3]}/{parts[-2]}"
        text = tuple(row.pop(column) for column in TEXT_COLUMNS)
        if key not in texts or (not "".join(texts[key]).strip() and "".join(text).strip()):
            texts[key] = text
        groups.setdefault(key, []).append(row)
    keys = list(groups)[:limit] if limit is not None else list(groups)
    wanted = {_label_key(row["path_to_image"]) for key in keys for row in groups[key]}
    labels = read_labels(root, wanted)
    studies = []
    for key in keys:
        study = _make_study(root, key, groups[key], texts[key], labels)
        if word_count(study.findings) < MIN_WORDS and word_count(study.impression) < MIN_WORDS:
            rejects.append(reject(study, "no_report_text", "findings and impression have < 2 words after cleaning"))
        elif not study.images:
            expected = groups[key][0]["path_to_image"]
            rejects.append(reject(study, "image_missing", f"no image file for {expected} under {root}"))
        else:
            studies.append(study)
    return studies, rejects


def _make_study(
    root: Path, key: str, rows: list[dict], text: tuple[str, str], labels: dict[str, tuple[int, Labels]]
) -> Study:
    first = rows[0]
    split = (first.get("split") or first["path_to_image"].split("/")[0]).strip().lower()
    images = []
    for row in sorted(rows, key=lambda r: VIEW_ORDER.index(view_of(r))):  # stable: CSV order within a view
        rel = find_image(root, row["path_to_image"])
        if rel is not None:
            images.append((rel, view_of(row)))
    ranked = [labels[k] for k in (_label_key(r["path_to_image"]) for r in rows) if k in labels]
    return Study(
        study_id=key,
        patient_id=(first.get("deid_patient_id") or "").strip() or key.split("/")[0],
        official_split="valid" if split == "valid" else "train",
        findings=clean_report(text[0]),
        impression=clean_report(text[1]),
        images=images,
        labels=min(ranked, key=lambda pair: pair[0])[1] if ranked else None,
    )

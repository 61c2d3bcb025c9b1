"""Read MIMIC-CXR-JPG 2.x as it ships, with the reports of MIMIC-CXR, into studies and rejects.

    release = read_mimic("/data/mimic-cxr-jpg/2.1.0", labels="chexpert", reports=None, limit=None)

ROOT holds what PhysioNet's mimic-cxr-jpg project ships:
- `files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg`, one JPEG per image;
- `mimic-cxr-2.0.0-metadata.csv.gz` (dicom_id, subject_id, study_id, PerformedProcedureStepDescription, ViewPosition,
  Rows, Columns, StudyDate, StudyTime, ProcedureCodeSequence_CodeMeaning, ViewCodeSequence_CodeMeaning,
  PatientOrientationCodeSequence_CodeMeaning), `mimic-cxr-2.0.0-split.csv.gz` (dicom_id, study_id, subject_id,
  split: train / validate / test), `mimic-cxr-2.0.0-chexpert.csv.gz` and `-negbio.csv.gz` (subject_id, study_id and
  the 14 observations: 1.0, 0.0, -1.0 or empty);
and the reports, from the mimic-cxr project: `mimic-cxr-reports.zip`, read member by member without extracting it,
or its extracted `files/pNN/pNNNNNNNN/sNNNNNNNN.txt` (in ROOT, or wherever --mimic-reports points).

The official split is kept (validate -> validation). It is by subject already; a subject listed in two splits (never
in the real release) keeps its most held-out one (test, then validation) and its studies listed elsewhere are
rejected as `split_conflict`, so that the official test set stays whole and no test patient is trained on.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import zipfile
import zlib
from collections import Counter
from pathlib import Path

from cxr_vqa.errors import UserError
from dataprep.clean import clean_report, word_count
from dataprep.releases.mimic_sections import report_sections
from dataprep.releases.study import LABELS, MIN_WORDS, Labels, Study, reject

METADATA = "mimic-cxr-2.0.0-metadata.csv.gz"
SPLIT = "mimic-cxr-2.0.0-split.csv.gz"
LABEL_FILES = {"chexpert": "mimic-cxr-2.0.0-chexpert.csv.gz", "negbio": "mimic-cxr-2.0.0-negbio.csv.gz"}
REPORTS_ZIP = "mimic-cxr-reports.zip"
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
SPLITS = {"train": "train", "validate": "validation", "test": "test"}
HELD_OUT = ("test", "validation", "train")  # a subject in two splits keeps the first of these
# ViewPosition -> the view a row records, best first. AP AXIAL (a lordotic AP) is frontal; decubitus (AP/PA LLD, RLD),
# oblique (LAO, RAO, LPO) and swimmer's views are not the films a chest VQA model is asked about: not used.
VIEWS = {"PA": "PA", "AP": "AP", "AP AXIAL": "AP", "LATERAL": "lateral", "LL": "lateral", "XTABLE LATERAL": "lateral"}
RANK = {"PA": 0, "AP": 1, "AP AXIAL": 2, "LATERAL": 3, "LL": 3, "XTABLE LATERAL": 3}
# ViewPosition is empty for a few thousand images: DICOM's view code then says it
VIEW_CODES = {"postero-anterior": "PA", "antero-posterior": "AP", "lateral": "LATERAL", "left lateral": "LL",
              "right lateral": "LATERAL"}  # fmt: skip
REPORT_RE = re.compile(r"(?:^|/)p(\d\d)/p(\d+)/s(\d+)\.txt$")


def read_csv_gz(path: Path, columns: tuple[str, ...]):
    """Rows of a gzip CSV as dicts, after checking that it has `columns`."""
    if not path.is_file():
        raise UserError(f"no {path.name} in {path.parent}: point --root at the MIMIC-CXR-JPG release")
    try:
        with gzip.open(path, "rt", newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path} lacks the columns {', '.join(missing)}; is it MIMIC-CXR-JPG's {path.name}?")
            yield from reader
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path} is not a readable gzip CSV ({type(exc).__name__}); download it again") from None


def film_view(row: dict) -> str | None:
    """The ViewPosition a metadata row stands for (RANK's keys), or None when the view is not used."""
    position = " ".join((row.get("ViewPosition") or "").upper().split())
    if not position:
        position = VIEW_CODES.get((row.get("ViewCodeSequence_CodeMeaning") or "").strip().lower(), "")
    return position if position in RANK else None


class Reports:
    """Report text by study: from mimic-cxr-reports.zip (random access, nothing extracted) or an extracted tree."""

    def __init__(self, root: Path, where: str | None) -> None:
        place = Path(where) if where else root
        self.zip = None
        self.paths: dict[str, str] = {}
        if place.is_file() or (place / REPORTS_ZIP).is_file():
            self.name = str(place if place.is_file() else place / REPORTS_ZIP)
            try:
                self.zip = zipfile.ZipFile(self.name)
            except (OSError, zipfile.BadZipFile) as exc:
                raise UserError(f"{self.name} is not a readable zip ({exc}); download it again") from None
            names = self.zip.namelist()
        elif (place / "files").is_dir():
            self.name = str(place / "files")
            names = [os.path.join(d, f) for d, _, fs in os.walk(place / "files") for f in fs if f.endswith(".txt")]
        else:
            flag = "--mimic-reports" if where else "--root"
            raise UserError(f"no {REPORTS_ZIP} or extracted files/pNN/pNNNNNNNN/sNNNNNNNN.txt in {place} ({flag}); "
                            "download the reports from PhysioNet's mimic-cxr project")  # fmt: skip
        for name in names:
            match = REPORT_RE.search(name.replace(os.sep, "/"))
            if match:
                self.paths[match.group(3)] = name

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def text(self, study_id: str) -> str | None:
        name = self.paths.get(study_id)
        if name is None:
            return None
        data = self.zip.read(name) if self.zip else Path(name).read_bytes()
        return data.decode("utf-8", errors="replace")


def _label(value: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number in (1.0, 0.0, -1.0) else None


def read_labels(path: Path, wanted: set[str]) -> dict[str, Labels]:
    labels = {}
    for row in read_csv_gz(path, ("subject_id", "study_id")):
        if row["study_id"] in wanted:
            labels[row["study_id"]] = {label: _label(row.get(label, "")) for label in LABELS}
    return labels


def _splits(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(split by study, split by subject) from the split file, each the most held-out one listed for it."""
    by_study: dict[str, set[str]] = {}
    subject_of: dict[str, str] = {}
    for row in read_csv_gz(root / SPLIT, SPLIT_COLUMNS):
        split = SPLITS.get(row["split"].strip().lower())
        if split:
            by_study.setdefault(row["study_id"], set()).add(split)
            subject_of[row["study_id"]] = row["subject_id"]
    study_split = {study: next(s for s in HELD_OUT if s in splits) for study, splits in by_study.items()}
    subject_split: dict[str, str] = {}
    for study, split in study_split.items():
        current = subject_split.get(subject_of[study])
        if current is None or HELD_OUT.index(split) < HELD_OUT.index(current):
            subject_split[subject_of[study]] = split
    return study_split, subject_split


def read_mimic(
    root: str | os.PathLike, *, labels: str = "chexpert", reports: str | None = None, limit: int | None = None
) -> tuple[list[Study], list[dict], dict]:
    """Studies (the first `limit` of the metadata file, in its order), rejects, and what stats.json says of them."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--root {root} is not a directory")
    # study -> (dicom_id, RANK key or None, ViewPosition as written) per image, in file order: slim, as the real
    # file has 377,110 rows
    films: dict[str, list[tuple[str, str | None, str]]] = {}
    subject: dict[str, str] = {}
    for row in read_csv_gz(root / METADATA, METADATA_COLUMNS):
        films.setdefault(row["study_id"], []).append((row["dicom_id"], film_view(row), row["ViewPosition"]))
        subject[row["study_id"]] = row["subject_id"]
    study_split, subject_split = _splits(root)
    keys = list(films)[:limit] if limit is not None else list(films)
    label_rows = read_labels(root / LABEL_FILES[labels], set(keys))
    texts = Reports(root, reports)
    studies, rejects, info = [], [], Counter()
    try:
        for key in keys:
            sid, pid = f"p{subject[key]}/s{key}", f"p{subject[key]}"
            split, kept = study_split.get(key), subject_split.get(subject[key])
            if split is None:
                rejects.append(reject(None, "no_official_split", f"s{key} is not in {SPLIT}", study_id=sid,
                                      patient_id=pid))  # fmt: skip
                continue
            if split != kept:
                detail = f"{SPLIT} puts subject {pid} in {kept} and this study in {split}; the subject stays in {kept}"
                rejects.append(reject(None, "split_conflict", detail, study_id=sid, patient_id=pid))
                continue
            try:
                text = texts.text(key)
            except (zipfile.BadZipFile, OSError, zlib.error) as exc:  # a damaged member costs its study, not the run
                rejects.append(reject(None, "report_unreadable", f"s{key}.txt: {type(exc).__name__}", study_id=sid,
                                      patient_id=pid))  # fmt: skip
                continue
            if text is None:
                rejects.append(reject(None, "no_report", f"no s{key}.txt in {Path(texts.name).name}", study_id=sid,
                                      patient_id=pid))  # fmt: skip
                continue
            findings, impression, how = report_sections(text)
            info[f"sections:{how}"] += 1
            study = Study(study_id=sid, patient_id=pid, official_split="valid" if split == "validation" else "train",
                          findings=clean_report(findings), impression=clean_report(impression),
                          labels=label_rows.get(key), fixed_split=split)  # fmt: skip
            usable = sorted((f for f in films[key] if f[1]), key=lambda f: RANK[f[1]])  # stable: file order in a view
            for dicom_id, position, _ in usable:
                rel = f"files/p{subject[key][:2]}/p{subject[key]}/s{key}/{dicom_id}.jpg"
                if (root / rel).is_file():
                    study.images.append((rel, VIEWS[position]))
            if word_count(study.findings) < MIN_WORDS and word_count(study.impression) < MIN_WORDS:
                detail = "findings and impression have < 2 words after cleaning"
                rejects.append(reject(study, "no_report_text", detail))
            elif not usable:
                positions = sorted({written or "(empty)" for _, _, written in films[key]})
                rejects.append(reject(study, "no_standard_view", f"ViewPosition {', '.join(positions)}: no PA, AP or "
                                      "lateral film"))  # fmt: skip
            elif not study.images:
                detail = f"none of its {len(usable)} films is under {root}/files"
                rejects.append(reject(study, "image_missing", detail))
            else:
                studies.append(study)
    finally:  # an error half-way (Ctrl-C, a disk error) leaves no zip open
        texts.close()
    summary = {
        "source": "mimic-cxr",
        "labels": LABEL_FILES[labels],
        "reports": Path(texts.name).name,
        "split": f"official ({SPLIT}; validate -> validation)",
        "sections": {k.split(":", 1)[1]: v for k, v in sorted(info.items())},
    }
    return studies, rejects, summary

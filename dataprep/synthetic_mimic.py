"""Write a miniature MIMIC-CXR-JPG 2.x release (with MIMIC-CXR's reports) in the exact shipped layout, drawn films.

    python -m dataprep.synthetic S --layout mimic-cxr --patients 40 [--reports zip|files]

S/files/pNN/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg, S/mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv.gz with the
real columns, S/mimic-cxr-reports.zip (files/pNN/pNNNNNNNN/sNNNNNNNN.txt members; with --reports files, that tree
extracted under S/files instead). Reports are free text as MIMIC writes them (a FINAL REPORT title, EXAMINATION /
INDICATION / TECHNIQUE / COMPARISON headings, "___" for removed PHI, lines starting with a space): most have FINDINGS
and IMPRESSION, some only an IMPRESSION, some no heading for either (their last paragraph is the text). Subjects are
split train / validate / test by subject, as the official split is. A few studies are broken on purpose (DEFECTS).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import textwrap
import zipfile
from pathlib import Path

import numpy as np

from cxr_vqa.contract import SYNTHETIC_NOTE
from dataprep.releases.mimic import LABEL_FILES, METADATA, REPORTS_ZIP, SPLIT
from dataprep.releases.study import LABELS, SYNTHETIC_MARKER
from dataprep.synthetic_films import draw_film
from dataprep.synthetic_reports import sample_findings, write_report

METADATA_COLUMNS = ("dicom_id subject_id study_id PerformedProcedureStepDescription ViewPosition Rows Columns "
                    "StudyDate StudyTime ProcedureCodeSequence_CodeMeaning ViewCodeSequence_CodeMeaning "
                    "PatientOrientationCodeSequence_CodeMeaning").split()  # fmt: skip
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
LABEL_COLUMNS = ("subject_id", "study_id", *sorted(LABELS))  # the real files list the observations alphabetically
DEFECTS = ("no_text", "missing_image", "all_missing", "corrupt_image", "no_report", "no_labels", "split_conflict",
           "oblique_only")  # fmt: skip
VIEW_CODES = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral",
              "LAO": "left anterior oblique"}  # fmt: skip
PROCEDURES = {"PA": "CHEST (PA AND LAT)", "AP": "CHEST (PORTABLE AP)", "LATERAL": "CHEST (PA AND LAT)"}


def _views(rng: np.random.Generator, defect: str | None) -> list[str]:
    if defect == "missing_image":
        return ["PA", "LATERAL"]  # the PA is not written: the lateral is what is left
    if defect == "corrupt_image":
        return ["AP"]
    if defect == "oblique_only":
        return ["LAO"]
    r = rng.random()
    views = [["PA", "LATERAL"], ["AP"], ["PA"], ["AP", "LL"], ["LATERAL"]][
        int(np.searchsorted([0.5, 0.8, 0.9, 0.96], r, side="right"))
    ]
    return list(views) if rng.random() < 0.5 else list(reversed(views))  # file order is not view order


def _wrap(text: str) -> list[str]:
    return [f" {line}" for paragraph in text.split("\n") for line in textwrap.wrap(paragraph, 76)]


def mimic_report(sections: dict[str, str], style: str, rng: np.random.Generator) -> str:
    """A report in MIMIC-CXR's shape; style "full", "impression" (no FINDINGS heading), "bare" (neither heading:
    the text is the last paragraph) or "none" (only the paperwork headings)."""
    portable = rng.random() < 0.4
    exam, technique = ("CHEST (PORTABLE AP)", "Portable AP chest") if portable else \
        ("CHEST (PA AND LAT)", "Chest PA and lateral")  # fmt: skip
    lines = [" " * 33 + "FINAL REPORT", f" EXAMINATION:  {exam}", " ",
             f" INDICATION:  ___ year old {'woman' if rng.random() < 0.5 else 'man'} with dyspnea  // ? pna", " ",
             f" TECHNIQUE:  {technique}", " ", " COMPARISON:  ___", " "]  # fmt: skip
    findings, impression = sections["section_findings"], sections["section_impression"]
    if style == "full":
        lines += [" FINDINGS: ", " ", *_wrap(findings), " ", " IMPRESSION: ", " ", *_wrap(impression)]
    elif style == "impression":
        lines += [" IMPRESSION: ", " ", *_wrap(f"{findings}\n{impression}")]
    elif style == "bare":
        lines += [*_wrap(f"{findings} {impression}")]
    return "\n".join(lines) + "\n"


def _metadata_row(dicom: str, subject: str, study: str, position: str, view_code: str, size: tuple[int, int],
                  date: str, rng: np.random.Generator) -> dict:  # fmt: skip
    procedure = PROCEDURES.get(position, "CHEST (PA AND LAT)")
    hour, minute, second, ms = (int(x) for x in rng.integers(0, [24, 60, 60, 1000]))
    time = f"{hour:02d}{minute:02d}{second:02d}.{ms:03d}"
    return {"dicom_id": dicom, "subject_id": subject, "study_id": study,
            "PerformedProcedureStepDescription": procedure,
            "ViewPosition": position, "Rows": size[1], "Columns": size[0], "StudyDate": date, "StudyTime": time,
            "ProcedureCodeSequence_CodeMeaning": procedure, "ViewCodeSequence_CodeMeaning": view_code,
            "PatientOrientationCodeSequence_CodeMeaning": "Recumbent" if position == "AP" else "Erect"}  # fmt: skip


def _gzip_csv(path: Path, columns, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with gzip.open(path, "wt", encoding="utf-8", newline="") as file:
        file.write(buffer.getvalue())


def _label_cell(value) -> str:
    return "" if value is None else f"{float(value):.1f}"


def write_mimic_release(out: str | Path, patients: int = 40, seed: int = 0, image_size: int = 256,
                        defects: bool = True, reports: str = "zip") -> dict:  # fmt: skip
    """Write the release under `out`; return counts (patients, studies, images, defects by kind)."""
    out = Path(out)
    plan = np.random.default_rng([seed, 30])
    subjects = [f"{10 + k % 10}{k:06d}" for k in range(patients)]  # 8 digits: folders p10 ... p19
    official = ["test" if k % 10 == 9 else "validate" if k % 10 == 8 else "train" for k in range(patients)]
    studies = [(k, s) for k in range(patients) for s in range(int(plan.integers(1, 4)))]
    n_each = max(1, round(0.03 * len(studies))) if defects and len(studies) >= 2 * len(DEFECTS) else 0
    multi = [i for i, (k, s) in enumerate(studies) if s == 1]  # a second study: its subject has another one
    defect_of: dict[int, str] = {}
    if n_each:
        conflicts = plan.choice(multi, size=min(n_each, len(multi)), replace=False)
        defect_of.update({int(i): "split_conflict" for i in conflicts})
        rest = [i for i in range(len(studies)) if i not in defect_of]
        kinds = [d for d in DEFECTS if d != "split_conflict"]
        picked = plan.choice(rest, size=n_each * len(kinds), replace=False)
        defect_of.update({int(i): kinds[j // n_each] for j, i in enumerate(picked)})
    meta, split_rows, chexpert, negbio, texts = [], [], [], [], {}
    counts = {"patients": patients, "studies": len(studies), "images": 0, "defects": dict.fromkeys(DEFECTS, 0)}
    for i, (k, s) in enumerate(studies):
        rng = np.random.default_rng([seed, 31, k, s])
        subject, study, defect = subjects[k], f"5{k:04d}{s:03d}", defect_of.get(i)
        if defect:
            counts["defects"][defect] += 1
        found = sample_findings(rng)
        sections, labels, _ = write_report(found, rng)
        style = "none" if defect == "no_text" else str(rng.choice(["full", "impression", "bare"], p=[0.8, 0.15, 0.05]))
        if defect != "no_report":
            texts[f"files/p{subject[:2]}/p{subject}/s{study}.txt"] = mimic_report(sections, style, rng)
        row = {"subject_id": subject, "study_id": study, **{name: _label_cell(labels[name]) for name in LABELS}}
        negbio.append(row)
        if defect != "no_labels":
            chexpert.append(row)
        split = official[k]
        if defect == "split_conflict":  # listed apart from its subject's other studies
            split = "train" if split != "train" else "validate"
        date = f"21{int(rng.integers(10, 90))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
        for view in _views(rng, defect):
            dicom = "-".join(f"{int(x):08x}" for x in rng.integers(0, 2**32, 5))
            film = draw_film(found, "lateral" if view in ("LATERAL", "LL") else view, image_size, rng)
            rel = out / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
            written = not (defect == "all_missing" or (defect == "missing_image" and view == "PA"))
            if written:
                rel.parent.mkdir(parents=True, exist_ok=True)
                buffer = io.BytesIO()
                film.convert("L").save(buffer, format="JPEG", quality=90)
                rel.write_bytes(buffer.getvalue()[:200] if defect == "corrupt_image" else buffer.getvalue())
                counts["images"] += 1
            blank = rng.random() < 0.08  # ViewPosition is empty for some images; the view code still says it
            meta.append(_metadata_row(dicom, subject, study, "" if blank else view, VIEW_CODES[view], film.size,
                                      date, rng))  # fmt: skip
            split_rows.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split})
    out.mkdir(parents=True, exist_ok=True)
    _gzip_csv(out / METADATA, METADATA_COLUMNS, meta)
    _gzip_csv(out / SPLIT, SPLIT_COLUMNS, split_rows)
    _gzip_csv(out / LABEL_FILES["chexpert"], LABEL_COLUMNS, chexpert)
    _gzip_csv(out / LABEL_FILES["negbio"], LABEL_COLUMNS, negbio)
    if reports == "zip":
        with zipfile.ZipFile(out / REPORTS_ZIP, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, text in sorted(texts.items()):
                archive.writestr(name, text)
    else:
        for name, text in texts.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(text, encoding="utf-8")
    marker = {"generator": "dataprep.synthetic", "layout": "mimic-cxr", "patients": patients, "seed": seed,
              "note": SYNTHETIC_NOTE}  # fmt: skip
    (out / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    return counts

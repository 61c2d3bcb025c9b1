"""Read IU X-ray (Open-i, the Indiana University chest X-ray collection) as it ships, into studies and rejects.

    studies, rejects, summary, film_root = read_iu("/data/iu-xray", labels="labeler", spill=OUT/".release"/"films")

ROOT holds Open-i's files, as downloaded or extracted:
- `NLMCXR_reports.tgz` (or its extracted `ecgen-radiology/`): `ecgen-radiology/N.xml`, one report each: `eCitation`
  with `uId id="CXRN"`, `MedlineCitation/Article/Abstract/AbstractText Label="COMPARISON|INDICATION|FINDINGS|
  IMPRESSION"`, `MeSH/major` and `MeSH/automatic` terms, and a `parentImage id="CXRN_IM-XXXX-YYYY"` per film;
- `NLMCXR_png.tgz` (or the extracted PNGs anywhere under ROOT): `CXRN_IM-XXXX-YYYY.png`;
- optionally `NLMCXR_dcm.tgz`, whose DICOM ViewPosition then helps choose the frontal film (dataprep/releases/
  iu_films.py says how the frontal film is chosen).

There are no patient ids: each report is its own patient (patient_id = study_id = the uId), so splits are drawn from
a hash of the report. Labels: the project's labeler (cxr_vqa.labeler) over the findings and impression; a report
it finds nothing in, or every report with `--iu-labels mesh`, takes them from its MeSH major terms (MESH_LABELS).
"""

from __future__ import annotations

import os
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from cxr_vqa.errors import UserError
from cxr_vqa.labeler import label_report
from dataprep.clean import DEID_RE, clean_report, word_count
from dataprep.releases.iu_films import choose_film, dicom_views, drop_unchosen, scan_films
from dataprep.releases.study import MIN_WORDS, Labels, Study, full_labels, reject

REPORTS_TGZ = "NLMCXR_reports.tgz"
XML_DIR = "ecgen-radiology"
LABEL_SOURCES = ("labeler", "mesh")
PATIENTS_NOTE = "IU X-ray has no patient ids: each report is its own patient, and splits are seeded by report"
# MeSH major term (its heading, before the first "/") -> the CheXpert observation it asserts. MeSH gives no
# negatives: a report's other observations are "not mentioned". Unmapped on purpose: "Lung/hypoinflation" (low lung
# volumes, no CheXpert observation), "Calcified Granuloma", "Calcinosis", "Cicatrix", degenerative spine terms,
# "Surgical Instruments" (wires and clips are not support devices).
MESH_LABELS = {
    "normal": "No Finding",
    "cardiomegaly": "Cardiomegaly",
    "pleural effusion": "Pleural Effusion",
    "pneumothorax": "Pneumothorax",
    "pulmonary atelectasis": "Atelectasis",
    "consolidation": "Consolidation",
    "pulmonary edema": "Edema",
    "pulmonary congestion": "Edema",
    "pneumonia": "Pneumonia",
    "fractures, bone": "Fracture",
    "opacity": "Lung Opacity",
    "airspace disease": "Lung Opacity",
    "infiltrate": "Lung Opacity",
    "nodule": "Lung Lesion",
    "mass": "Lung Lesion",
    "catheters, indwelling": "Support Devices",
    "implanted medical device": "Support Devices",
    "medical device": "Support Devices",
    "tube, inserted": "Support Devices",
    "stents": "Support Devices",
    "pacemaker, artificial": "Support Devices",
}
# terms whose qualifier decides: "Thickening/pleura/right", "Mediastinum/prominent"
MESH_QUALIFIED = {"thickening/pleura": "Pleural Other", "mediastinum/prominent": "Enlarged Cardiomediastinum",
                  "mediastinum/widened": "Enlarged Cardiomediastinum"}  # fmt: skip


@dataclass
class Report:
    uid: str  # "CXR1"
    findings: str  # raw
    impression: str  # raw
    mesh: list[str]  # MeSH major terms
    images: list[str]  # parentImage ids, in the XML's order


def parse_report(data: bytes, name: str) -> Report:
    """One ecgen-radiology XML; ValueError when it is not one."""
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise ValueError(f"{name} is not well-formed XML ({exc})") from None
    uid = root.find("uId")
    sections = {node.get("Label", "").upper(): node.text or "" for node in root.iter("AbstractText")}
    return Report(
        uid=uid.get("id") if uid is not None and uid.get("id") else f"CXR{Path(name).stem}",
        findings=sections.get("FINDINGS", ""),
        impression=sections.get("IMPRESSION", ""),
        mesh=[(node.text or "").strip() for node in root.findall("MeSH/major")],
        images=[node.get("id") for node in root.findall("parentImage") if node.get("id")],
    )


def report_files(root: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each report XML: from NLMCXR_reports.tgz, streamed, or the extracted ecgen-radiology/."""
    archive = root / REPORTS_TGZ
    if archive.is_file():
        try:
            with tarfile.open(archive, mode="r|gz") as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".xml"):
                        yield member.name, tar.extractfile(member).read()
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise UserError(f"{archive} is cut short or corrupt ({type(exc).__name__}): download it again") from None
        return
    folder = root / XML_DIR
    if not folder.is_dir():
        raise UserError(f"no {REPORTS_TGZ} or {XML_DIR}/ in {root}: point --root at the IU X-ray (Open-i) files")
    for path in folder.glob("*.xml"):
        yield f"{XML_DIR}/{path.name}", path.read_bytes()


def mesh_labels(terms: list[str]) -> dict[str, int]:
    """The observations a report's MeSH major terms assert (MESH_LABELS); No Finding only with no pathology."""
    found = {}
    for term in terms:
        term = term.lower()
        label = MESH_LABELS.get(term.split("/")[0].strip()) or next(
            (v for k, v in MESH_QUALIFIED.items() if term.startswith(k)), None
        )
        if label:
            found[label] = 1
    if any(label not in ("No Finding", "Support Devices") for label in found):
        found.pop("No Finding", None)
    return found


def report_labels(report: Report, source: str) -> tuple[Labels | None, str]:
    """(labels, "labeler" | "mesh" | "none"): the labeler over findings + impression, else the MeSH terms."""
    if source == "labeler":
        text = DEID_RE.sub(" ", f"{report.findings}\n{report.impression}")  # "XXXX" marks are no words
        found = label_report(text) if text.strip() else {}
        if found:
            return full_labels(found), "labeler"
    found = mesh_labels(report.mesh)
    return (full_labels(found), "mesh") if found else (None, "none")


def _number(name: str) -> tuple[int, str]:
    digits = re.sub(r"\D", "", Path(name).stem)
    return (int(digits) if digits else 1 << 62, name)


def read_iu(root: str | os.PathLike, *, labels: str = "labeler", limit: int | None = None, spill: Path | None = None,
            films: bool = True, image_size: int = 336, workers: int = 8,
            progress: bool = True) -> tuple[list[Study], list[dict], dict, Path]:  # fmt: skip
    """Studies (the first `limit` reports by number), rejects, what stats.json says of them, and the folder the
    builder opens the chosen films in. Without `films` (a dry run) no film is read: each study lists its first."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--root {root} is not a directory")
    files = sorted(report_files(root), key=lambda item: _number(item[0]))
    files = files[:limit] if limit is not None else files
    candidates, rejects, used, seen = [], [], Counter(), set()
    for name, data in files:  # the text first: a report rejected for it needs none of its films decoded
        try:
            report = parse_report(data, name)
        except ValueError as exc:
            stem = f"CXR{Path(name).stem}"
            rejects.append(reject(None, "bad_xml", str(exc), study_id=stem, patient_id=stem))
            continue
        study = Study(study_id=report.uid, patient_id=report.uid, official_split="train",
                      findings=clean_report(report.findings), impression=clean_report(report.impression))  # fmt: skip
        if report.uid in seen:  # a study id must be unique (the builder names its staged film after it)
            rejects.append(reject(study, "duplicate_report", f"{name}: {report.uid} was read from an earlier XML"))
        elif word_count(study.findings) < MIN_WORDS and word_count(study.impression) < MIN_WORDS:
            rejects.append(reject(study, "no_report_text", "findings and impression have < 2 words after cleaning"))
        elif not report.images:
            rejects.append(reject(study, "no_images", "the XML lists no parentImage"))
        else:
            candidates.append((report, study))
        seen.add(report.uid)
    wanted = {i for report, _ in candidates for i in report.images}
    scanned = scan_films(root, wanted, spill=spill, image_size=image_size, workers=workers, progress=progress) \
        if films else None  # fmt: skip
    dicom = dicom_views(root, wanted) if films else {}
    studies, methods, chosen = [], Counter(), set()
    for report, study in candidates:
        study.labels, how = report_labels(report, labels)
        choice = choose_film(report.images, scanned, dicom) if scanned else None
        if isinstance(choice, tuple):
            rejects.append(reject(study, *choice))
            continue
        study.images = [(choice.rel, choice.view)] if choice else [(f"{report.images[0]}.png", "unknown")]
        if choice:
            methods[choice.method] += 1
            chosen.add(choice.film_id)
        used[how] += 1
        studies.append(study)
    if scanned:
        drop_unchosen(scanned, chosen)
    summary = {
        "source": "iu-xray",
        "patients": PATIENTS_NOTE,
        "labels": {"option": labels, "studies_by_source": dict(used)},
        "reports": REPORTS_TGZ if (root / REPORTS_TGZ).is_file() else f"{XML_DIR}/",
        "films": scanned.source if scanned else "not read (dry run)",
        "frontal_choice": dict(methods),
        "dicom_views": len(dicom),
    }
    return studies, rejects, summary, (scanned.root if scanned else root)

"""Write a miniature IU X-ray (Open-i) release in the exact shipped layout: report XMLs and PNG films in .tgz files.

    python -m dataprep.synthetic S --layout iu-xray --patients 40 [--dicom]

S/NLMCXR_reports.tgz (ecgen-radiology/N.xml in Open-i's schema: eCitation, uId, MedlineCitation/Article/Abstract/
AbstractText Label=COMPARISON|INDICATION|FINDINGS|IMPRESSION, MeSH major and automatic terms, parentImage per film)
and S/NLMCXR_png.tgz (CXRN_IM-XXXX-YYYY.png); with --dicom also S/NLMCXR_dcm.tgz (N_IM-XXXX-YYYY.dcm headers, whose
ViewPosition is as noisy as the real one: a quarter of the laterals say PA). A report is a patient (--patients is
the number of reports). Most list a frontal and a lateral film, in either order (the real XML's order is no label);
some one film, some three. The frontal film of each report is recorded in S/SYNTHETIC.json ("frontal"), so a test or
bench/read_releases.py can measure how often the reader chooses it. A few reports are broken on purpose (DEFECTS).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np

from cxr_vqa.contract import SYNTHETIC_NOTE
from dataprep.releases.iu_films import DCM_TGZ, PNG_TGZ
from dataprep.releases.iu_xray import REPORTS_TGZ, XML_DIR
from dataprep.releases.study import SYNTHETIC_MARKER
from dataprep.synthetic_films import draw_film
from dataprep.synthetic_reports import sample_findings, write_report

DEFECTS = ("no_images", "no_text", "corrupt_png", "corrupt_single", "missing_png", "bad_xml")
MESH = {"Cardiomegaly": "Cardiomegaly/mild", "Pleural Effusion": "Pleural Effusion/{side}",
        "Pneumothorax": "Pneumothorax/{side}", "Consolidation": "Consolidation/lung/{zone} lobe/{side}"}  # fmt: skip
DEVICE_MESH = {"endotracheal tube": "Tube, Inserted", "central line": "Catheters, Indwelling",
               "pacemaker": "Implanted Medical Device/left"}  # fmt: skip


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib) -> ET.Element:
    node = ET.SubElement(parent, tag, attrib)
    node.text = text
    return node


def report_xml(n: int, sections: dict[str, str], mesh: list[str], images: list[str]) -> bytes:
    """One ecgen-radiology/N.xml in Open-i's schema."""
    root = ET.Element("eCitation")
    _sub(root, "meta", type="rr")
    _sub(root, "uId", id=f"CXR{n}")
    _sub(root, "pmcId", id=str(n))
    _sub(root, "docSource", "CXR")
    _sub(root, "IUXRId", id=str(n))
    for tag, text in (("licenseType", "open-access"), ("licenseURL", "http://creativecommons.org/licenses/by-nc-nd/4.0/"),
                      ("ccLicense", "byncnd"), ("articleURL", None), ("articleDate", "2013-08-01"),
                      ("articleType", "XR"), ("publisher", "Indiana University"),
                      ("title", "Indiana University Chest X-ray Collection"),
                      ("note", "The data are drawn from multiple hospital systems."),
                      ("specialty", "pulmonary diseases"), ("subset", "CXR")):  # fmt: skip
        _sub(root, tag, text)
    citation = _sub(root, "MedlineCitation", Owner="Indiana University", Status="supplied by publisher")
    article = _sub(citation, "Article", PubModel="Electronic")
    date = _sub(_sub(_sub(article, "Journal"), "JournalIssue"), "PubDate")
    for tag, text in (("Year", "2013"), ("Month", "08"), ("Day", "01")):
        _sub(date, tag, text)
    _sub(article, "ArticleTitle", "Indiana University Chest X-ray Collection")
    abstract = _sub(article, "Abstract")
    for label in ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION"):
        _sub(abstract, "AbstractText", sections.get(label) or None, Label=label)
    _sub(article, "Affiliation", "Indiana University")
    _sub(article, "Language", "eng")
    _sub(_sub(article, "PublicationTypeList"), "PublicationType", "Radiology Report")
    terms = _sub(root, "MeSH")
    for term in mesh:
        _sub(terms, "major", term)
    for term in mesh:
        _sub(terms, "automatic", term.split("/")[0].lower())
    for k, image in enumerate(images, 1):
        parent = _sub(root, "parentImage", id=image)
        _sub(parent, "figureId", f"F{k}")
        _sub(parent, "caption", "PA and lateral chest x-XXXX XXXX. ")
        panel = _sub(parent, "panel", type="single")
        _sub(panel, "url", f"/hadoop/storage/radiology/extract/{image}.jpg")
        _sub(panel, "imgModality", "7")
    ET.indent(root, space="   ")
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8")


def _mesh(found: dict[str, dict], rng: np.random.Generator) -> list[str]:
    terms = [MESH[name].format(**{"side": "left", "zone": "upper", **details}) for name, details in found.items()
             if name in MESH]  # fmt: skip
    if "Support Devices" in found:
        terms.append(DEVICE_MESH[found["Support Devices"]["device"]])
    if rng.random() < 0.1:
        terms.append("Lung/hypoinflation/mild")  # frequent in the release; maps to no CheXpert observation
    return terms or ["normal"]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1454450000, 0o644
    tar.addfile(info, io.BytesIO(data))


def _dicom(view: str) -> bytes:
    """A header-only DICOM file with this ViewPosition (its pixels do not matter to the reader)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", view
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _films(rng: np.random.Generator, defect: str | None) -> list[str]:
    """The report's films as kinds ("frontal"/"lateral"), in the XML's order."""
    if defect == "no_images":
        return []
    if defect in ("corrupt_single", "missing_png"):
        return ["frontal"]
    r = rng.random()
    kinds = ["frontal", "lateral"] if r < 0.8 or defect == "corrupt_png" else \
        ["frontal"] if r < 0.9 else ["lateral"] if r < 0.95 else ["frontal", "lateral", "lateral"]  # fmt: skip
    return [str(k) for k in rng.permutation(kinds)]


def write_iu_release(out: str | Path, patients: int = 40, seed: int = 0, image_size: int = 256,
                     defects: bool = True, dicom: bool = False) -> dict:  # fmt: skip
    """Write the release under `out`; return counts (reports, images, defects by kind)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = np.random.default_rng([seed, 40])
    n_each = max(1, round(0.03 * patients)) if defects and patients >= 2 * len(DEFECTS) else 0
    picked = plan.choice(patients, size=n_each * len(DEFECTS), replace=False) if n_each else []
    defect_of = {int(i): DEFECTS[k // n_each] for k, i in enumerate(picked)}
    counts = {"reports": patients, "images": 0, "defects": dict.fromkeys(DEFECTS, 0)}
    frontal: dict[str, str] = {}
    with (tarfile.open(out / REPORTS_TGZ, "w:gz") as reports, tarfile.open(out / PNG_TGZ, "w:gz") as pngs,
          tarfile.open(out / DCM_TGZ, "w:gz") if dicom else io.BytesIO() as dcms):  # fmt: skip
        for n in range(1, patients + 1):
            rng = np.random.default_rng([seed, 41, n])
            defect = defect_of.get(n - 1)
            if defect:
                counts["defects"][defect] += 1
            found = sample_findings(rng)
            sections, _, _ = write_report(found, rng)
            text = {"FINDINGS": sections["section_findings"], "IMPRESSION": sections["section_impression"],
                    "INDICATION": "XXXX-year-old with chest pain.", "COMPARISON": "None."}  # fmt: skip
            if rng.random() < 0.12:  # a tenth of the real reports have no findings section
                text["FINDINGS"] = ""
            if defect == "no_text":
                text["FINDINGS"] = text["IMPRESSION"] = ""
            images = []
            for k, kind in enumerate(_films(rng, defect)):
                image = f"CXR{n}{'_1' if n % 7 == 0 else ''}_IM-{n % 10000:04d}-{1001 + 1000 * k}"
                images.append(image)
                view = str(rng.choice(["PA", "AP"], p=[0.8, 0.2])) if kind == "frontal" else "lateral"
                film = draw_film(found, view, image_size, rng)
                if kind == "frontal":
                    frontal.setdefault(f"CXR{n}", image)
                buffer = io.BytesIO()
                film.save(buffer, format="PNG", compress_level=1)
                png = buffer.getvalue()
                broken = defect == "corrupt_single" or (defect == "corrupt_png" and kind == "lateral")
                if defect != "missing_png":
                    _add(pngs, f"{image}.png", png[:120] if broken else png)
                    counts["images"] += 1
                if dicom:
                    view = "LL" if kind == "lateral" else "PA"
                    view = "PA" if kind == "lateral" and rng.random() < 0.25 else view
                    _add(dcms, f"{image.removeprefix('CXR')}.dcm", _dicom(view))
            xml = report_xml(n, text, _mesh(found, rng), images)
            _add(reports, f"{XML_DIR}/{n}.xml", xml[: len(xml) // 2] if defect == "bad_xml" else xml)
    marker = {"generator": "dataprep.synthetic", "layout": "iu-xray", "patients": patients, "seed": seed,
              "note": SYNTHETIC_NOTE, "frontal": frontal}  # fmt: skip
    (out / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    return counts

"""Write a miniature CheXpert Plus release: the real file names, CSV columns and label files, drawn films.

    python -m dataprep.synthetic S --patients 40 [--seed 0] [--image-size 384] [--no-defects] [--no-laterals]
        [--valid-patients N]
    python -m dataprep.synthetic --examples assets/examples        # a few labelled films for the app
    python -m dataprep.synthetic S --patients 40 --regions-only    # only S/regions.jsonl, for an older release
    python -m dataprep.synthetic S --layout mimic-cxr --patients 40 [--reports zip|files]   # MIMIC-CXR-JPG's layout
    python -m dataprep.synthetic S --layout iu-xray --patients 40 [--dicom]   # IU X-ray's: 40 reports, .tgz files

Each study draws Cardiomegaly, Pleural Effusion, Consolidation, Pneumothorax and Support Devices independently
(~40% each; dataprep/synthetic_reports.py) and its report states them the way real ones do: ALL CAPS or not,
prior-comparison sentences, sign-off boilerplate, de-identification marks. A few studies are broken on purpose (no
report text, a missing or corrupt image, no label row) so every reject path of the builder runs; --no-defects turns
that off. Beside the films, regions.jsonl records where each finding was drawn on each (`cxr_vqa.regions`), for the
pointing game. --layout writes the same kind of studies in another release's shipped layout instead
(dataprep/synthetic_mimic.py, dataprep/synthetic_iu.py), so each reader has a stand-in to run on.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from cxr_vqa.contract import SYNTHETIC_NOTE
from cxr_vqa.contract import write_examples as write_examples_index
from cxr_vqa.regions import REGIONS_FILE, region_record, write_regions
from dataprep.chexpert import COLUMNS, CSV_NAME, LABEL_DIR, LABEL_FILES
from dataprep.releases.study import SYNTHETIC_MARKER
from dataprep.synthetic_films import draw_film
from dataprep.synthetic_reports import sample_findings, write_report

DEFECTS = ("no_text", "missing_image", "corrupt_image", "no_labels")
LAYOUTS = ("chexpert-plus", "mimic-cxr", "iu-xray")


def _png_bytes(film) -> bytes:
    buffer = io.BytesIO()
    film.save(buffer, format="PNG", compress_level=1)  # 2% larger than level 3, a third less time
    return buffer.getvalue()


def _row(path: str, view: str, patient: str, order: int, split: str, sections: dict, rng) -> dict:
    narrative = "CHEST 1 VIEW AP" if view == "AP" else "CHEST 2 VIEWS PA AND LATERAL"
    accession = str(rng.integers(10**7, 10**8))
    report = (
        f"NARRATIVE:\n{narrative}\n\nCLINICAL HISTORY: Shortness of breath.\n\nCOMPARISON: ___\n\n"
        f"FINDINGS:\n{sections['section_findings']}\n\nIMPRESSION:\n{sections['section_impression']}\n\n"
        f"ACCESSION NUMBER: {accession}"
    )
    row = dict.fromkeys(COLUMNS, "")
    row.update(sections)
    row.update(
        path_to_image=path,
        path_to_dcm=path.replace(".jpg", ".dcm"),
        frontal_lateral="Lateral" if view == "lateral" else "Frontal",
        ap_pa="" if view == "lateral" else view,
        deid_patient_id=patient,
        patient_report_date_order=str(order),
        report=report,
        section_narrative=narrative,
        section_clinical_history="Shortness of breath.",
        section_comparison="___",
        section_accession_number=accession,
        age=str(int(rng.integers(18, 90))),
        sex=str(rng.choice(["Male", "Female"])),
        race=str(rng.choice(["White", "Black", "Asian", "Other", "Unknown"])),
        ethnicity=str(rng.choice(["Non-Hispanic/Non-Latino", "Hispanic/Latino"])),
        interpreter_needed="No",
        insurance_type=str(rng.choice(["Private Insurance", "Medicare", "Medicaid"])),
        recent_bmi=f"{rng.uniform(18, 35):.1f}",
        deceased="No",
        split=split,
    )
    return row


def _draw_study(job) -> tuple[list[dict], dict[str, list[str]], int, list[dict]]:
    """One study of the release: its films written under `out` (None: drawn, not written), its CSV rows and label
    lines, how many films, and where each film's findings were drawn (regions.jsonl lines)."""
    out, seed, p, s, split, image_size, defect, laterals = job
    rng = np.random.default_rng([seed, 1, p, s])
    patient = f"patient{p + 1:05d}"
    found = sample_findings(rng)
    sections, labels, impression_labels = write_report(found, rng)
    if defect == "no_text":
        sections = {"section_findings": "", "section_impression": ""}
    frontal = "AP" if rng.random() < 0.4 else "PA"
    views = [frontal, "lateral"] if rng.random() < 0.5 else [frontal]
    if rng.random() < 0.03:
        views = ["lateral"]
    if not laterals:  # the frontal view, its film and its row are the same as with laterals: drawn first
        views = views[:1]
    rows, label_lines, images, regions = [], {name: [] for name in LABEL_FILES}, 0, []
    by_file = {"report_fixed.json": labels, "findings_fixed.json": labels, "impression_fixed.json": impression_labels}
    for k, view in enumerate(views, 1):
        kind = "lateral" if view == "lateral" else "frontal"
        path = f"{split}/{patient}/study{s + 1}/view{k}_{kind}.jpg"
        if defect != "missing_image":
            drawn: dict = {}
            film = draw_film(found, view, image_size, rng, regions=drawn)
            if defect != "corrupt_image":
                regions.append(region_record(path, film.size, drawn))
            if out is not None:
                png = _png_bytes(film)
                target = out / "PNG" / "PNG" / path.replace(".jpg", ".png")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(png[:100] if defect == "corrupt_image" else png)
            images += 1
        rows.append(_row(path, view, patient, s + 1, split, sections, rng))
        if defect != "no_labels":
            for name, values in by_file.items():
                label_lines[name].append(json.dumps({"path_to_image": path, **values}))
    return rows, label_lines, images, regions


def write_release(
    out: str | Path,
    patients: int = 40,
    seed: int = 0,
    image_size: int = 384,
    defects: bool = True,
    workers: int | None = None,
    laterals: bool = True,
    valid_patients: int | None = None,
    regions_only: bool = False,
) -> dict:
    """Write the release under `out`; return counts (patients, studies, images, defects by kind). Studies are drawn
    in `workers` processes (default: every core); each has its own generator, so the release is the same for any
    number of them. Without `laterals`, a study with a frontal film has that film alone (a dataset keeps one film
    per study, the frontal one: the laterals of a two-view study are a third of the drawing time, never used). The
    last `valid_patients` patients (default a tenth) form the official `valid` split, as CheXpert Plus has one.
    `regions_only`: draw it again but write only regions.jsonl, for a release from before it."""
    out = Path(out)
    plan_rng = np.random.default_rng([seed, 0])
    n_valid = (max(1, patients // 10) if patients >= 5 else 0) if valid_patients is None else valid_patients
    studies = [(p, s) for p in range(patients) for s in range(int(plan_rng.integers(1, 4)))]
    n_each = max(1, round(0.03 * len(studies))) if defects and len(studies) >= 10 else 0
    picked = plan_rng.choice(len(studies), size=n_each * len(DEFECTS), replace=False) if n_each else []
    defect_of = {studies[i]: DEFECTS[k // n_each] for k, i in enumerate(picked)}
    rows, label_lines, regions = [], {name: [] for name in LABEL_FILES}, []
    counts = {"patients": patients, "studies": len(studies), "images": 0, "defects": dict.fromkeys(DEFECTS, 0)}
    jobs = [(None if regions_only else out, seed, p, s, "valid" if p >= patients - n_valid else "train", image_size,
             defect_of.get((p, s)), laterals) for p, s in studies]  # fmt: skip
    workers = min(workers or os.cpu_count() or 1, max(1, len(jobs) // 50))  # a pool is not worth it for a few
    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        drawn = pool.map(_draw_study, jobs, chunksize=16) if pool else map(_draw_study, jobs)
        for job, (study_rows, study_labels, images, study_regions) in zip(jobs, drawn, strict=True):
            defect = job[6]
            if defect:
                counts["defects"][defect] += 1
            counts["images"] += images
            rows += study_rows
            regions += study_regions
            for name, lines in study_labels.items():
                label_lines[name] += lines
    out.mkdir(parents=True, exist_ok=True)
    write_regions(out, regions)  # where each finding was drawn, for the pointing game (bench/pointing_game.py)
    if regions_only:
        return counts
    with open(out / CSV_NAME, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / LABEL_DIR).mkdir(exist_ok=True)
    for name, lines in label_lines.items():
        (out / LABEL_DIR / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    # read by dataprep into stats.json, and from there into the model card of whatever is trained on it
    marker = {"generator": "dataprep.synthetic", "patients": patients, "seed": seed, "note": SYNTHETIC_NOTE}
    (out / SYNTHETIC_MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    return counts


EXAMPLES = {
    "normal": {},
    "cardiomegaly": {"Cardiomegaly": {}},
    "pleural_effusion": {"Pleural Effusion": {"side": "left"}},
    "consolidation": {"Consolidation": {"side": "right", "zone": "lower"}},
    "pneumothorax": {"Pneumothorax": {"side": "left", "zone": "upper"}},
    "support_device": {"Support Devices": {"device": "central line"}},
}


def write_examples(out: str | Path, image_size: int = 384, seed: int = 0) -> list[dict]:
    """A labelled film per finding (and a normal one) plus examples.json, for the app's example gallery."""
    from dataprep.qa_labels import FINDINGS  # phrasing shared with the labels generator

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for i, (name, found) in enumerate(EXAMPLES.items()):
        draw_film(found, "PA", image_size, np.random.default_rng([seed, 2, i])).save(out / f"{name}.png")
        label = next(iter(found), None)
        question = f"Is there {FINDINGS[label][0]}?" if label else "Is this chest X-ray normal?"
        answer = f"Yes, there is {FINDINGS[label][0]}." if label else "Yes, there is no acute abnormality."
        index.append({"file": f"{name}.png", "findings": list(found), "question": question, "answer": answer,
                      "source": "Synthetic phantom"})  # fmt: skip
    write_examples_index(out, index)
    return index


def write_layout(args: argparse.Namespace) -> None:
    """A MIMIC-CXR or IU X-ray stand-in (--layout)."""
    if args.layout == "mimic-cxr":
        from dataprep.synthetic_mimic import write_mimic_release

        counts = write_mimic_release(args.out, args.patients, args.seed, args.image_size, args.defects, args.reports)
        what = f"{counts['patients']} subjects, {counts['studies']} studies"
    else:
        from dataprep.synthetic_iu import write_iu_release

        counts = write_iu_release(args.out, args.patients, args.seed, args.image_size, args.defects, args.dicom)
        what = f"{counts['reports']} reports"
    defects = ", ".join(f"{k} {v}" for k, v in counts["defects"].items() if v) or "none"
    print(f"wrote {args.out} ({args.layout} layout): {what}, {counts['images']} images; defects: {defects}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dataprep.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("out", nargs="?", help="folder to write the miniature release into")
    parser.add_argument("--patients", type=int, default=40, help="number of patients (1-3 studies each)")
    parser.add_argument("--seed", type=int, default=0, help="everything drawn follows from it")
    parser.add_argument("--image-size", type=int, default=384, help="film width in pixels (height is 1.15x)")
    parser.add_argument(
        "--defects",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="break a few studies on purpose so the reject paths run",
    )
    parser.add_argument("--laterals", action=argparse.BooleanOptionalAction, default=True,
                        help="draw the lateral view of two-view studies (datasets keep the frontal)")  # fmt: skip
    parser.add_argument("--valid-patients", type=int, help="official valid patients (default: a tenth)")
    parser.add_argument("--examples", metavar="DIR", help="also write labelled example films to DIR")
    regions_help = "write only OUT/regions.jsonl, for a release from before it (the same options draw the same films)"
    parser.add_argument("--regions-only", action="store_true", help=regions_help)
    parser.add_argument("--layout", choices=LAYOUTS, default=LAYOUTS[0], help="the release whose layout to write")
    parser.add_argument("--reports", choices=("zip", "files"), default="zip",
                        help="mimic-cxr: mimic-cxr-reports.zip, or its files/ tree extracted")  # fmt: skip
    parser.add_argument("--dicom", action="store_true", help="iu-xray: also NLMCXR_dcm.tgz (DICOM headers)")
    args = parser.parse_args(argv)
    if not args.out and not args.examples:
        parser.error("give OUT, --examples DIR, or both")
    if args.patients < 1 or args.image_size < 64:
        parser.error("--patients must be >= 1 and --image-size >= 64")
    if args.valid_patients is not None and not 0 <= args.valid_patients <= args.patients:
        parser.error("--valid-patients must be between 0 and --patients")
    if args.layout != LAYOUTS[0] and (args.regions_only or args.valid_patients is not None or not args.laterals):
        parser.error("--regions-only, --valid-patients and --no-laterals are for the chexpert-plus layout")
    if args.out and args.layout != LAYOUTS[0]:
        write_layout(args)
    elif args.out:
        options = {"laterals": args.laterals, "valid_patients": args.valid_patients, "regions_only": args.regions_only}
        counts = write_release(args.out, args.patients, args.seed, args.image_size, args.defects, **options)
        defects = ", ".join(f"{k} {v}" for k, v in counts["defects"].items() if v) or "none"
        print(
            f"wrote {Path(args.out, REGIONS_FILE) if args.regions_only else args.out}: {counts['patients']} patients, "
            f"{counts['studies']} studies, "
            f"{counts['images']} images; defects: {defects}"
        )
    if args.examples:
        index = write_examples(args.examples, args.image_size, args.seed)
        print(f"wrote {len(index)} example films and examples.json to {args.examples}")


if __name__ == "__main__":
    main()

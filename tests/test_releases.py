"""MIMIC-CXR-JPG and IU X-ray read as shipped: a miniature of each in the exact layout (dataprep/synthetic_mimic.py,
dataprep/synthetic_iu.py), a few studies broken on purpose, built by `python -m dataprep --generator labels`."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest

from cxr_vqa.labeler import label_report
from dataprep.clean import DEID_RE
from dataprep.releases import read
from dataprep.releases.iu_xray import parse_report
from dataprep.releases.mimic import LABEL_FILES, METADATA, SPLIT
from dataprep.synthetic_iu import write_iu_release
from dataprep.synthetic_mimic import write_mimic_release

REPO = Path(__file__).resolve().parents[1]
HELD_OUT = ("test", "validation", "train")


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300)


def gz_rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt", newline="") as file:
        return list(csv.DictReader(file))


def build(source: str, root: Path, out: Path, *extra: str) -> tuple[dict, list[dict], dict, Path]:
    """`python -m dataprep --source SOURCE --generator labels`: (rows by study id with their split, rejects, stats,
    the dataset's folder)."""
    from datasets import load_from_disk

    done = run_cli("-m", "dataprep", "--source", source, "--root", str(root), "--out", str(out), "--generator",
                   "labels", "--image-size", "48", "--qa-per-study", "8", "--no-progress", *extra)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {}
    for split, data in load_from_disk(str(out)).items():
        for row in data.remove_columns(["images", "messages"]):
            assert row["study_id"] not in rows
            rows[row["study_id"]] = {**row, "split": split}
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    return rows, rejects, json.loads((out / "stats.json").read_text()), out


def assert_label_semantics(rows: dict, truth: dict[str, dict]) -> int:
    """1 -> a Yes question, 0 -> a No question, -1 / not mentioned -> no closed question; returns closed pairs."""
    closed = 0
    for study_id, row in rows.items():
        labels = truth[study_id]
        for pair in row["qa"]:
            if pair["kind"] != "closed" or pair["finding"] == "No Finding":
                continue
            closed += 1
            assert labels.get(pair["finding"]) in (1.0, 0.0), (study_id, pair)
            assert pair["label"] == ("yes" if labels[pair["finding"]] == 1.0 else "no"), (study_id, pair)
            assert pair["answer"].startswith("Yes" if pair["label"] == "yes" else "No")
    return closed


def assert_patients_stay_in_one_split(rows: dict) -> None:
    splits = defaultdict(set)
    for row in rows.values():
        splits[row["patient_id"]].add(row["split"])
    assert all(len(s) == 1 for s in splits.values())


# --- MIMIC-CXR-JPG ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mimic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mimic-cxr-jpg")
    write_mimic_release(root, patients=24, seed=3, image_size=64)
    return root


@pytest.fixture(scope="module")
def mimic_built(mimic, tmp_path_factory):
    return build("mimic-cxr", mimic, tmp_path_factory.mktemp("mimic-data") / "D")


def test_mimic_every_study_is_a_row_or_a_reject_and_the_official_split_is_kept(mimic, mimic_built):
    rows, rejects, stats, _ = mimic_built
    meta, split_rows = gz_rows(mimic / METADATA), gz_rows(mimic / SPLIT)
    studies = {f"p{r['subject_id']}/s{r['study_id']}" for r in meta}
    rejected = {r["study_id"] for r in rejects}
    assert set(rows) | rejected == studies and not set(rows) & rejected and len(rejected) == len(rejects)
    assert all(r["reason"] and r["detail"] for r in rejects)
    assert {r["reason"] for r in rejects} == {"no_report_text", "no_report", "image_missing", "image_unreadable",
                                              "no_labels", "split_conflict", "no_standard_view"}  # fmt: skip
    assert stats["studies"] == len(studies) and stats["rows"] == len(rows)
    # the official split, validate -> validation; a subject listed in two keeps its most held-out one
    named = {"train": "train", "validate": "validation", "test": "test"}
    listed, subject_splits = {}, defaultdict(set)
    for r in split_rows:
        listed[f"p{r['subject_id']}/s{r['study_id']}"] = named[r["split"]]
        subject_splits[f"p{r['subject_id']}"].add(named[r["split"]])
    kept = {p: next(s for s in HELD_OUT if s in splits) for p, splits in subject_splits.items()}
    for study_id, row in rows.items():
        assert row["split"] == listed[study_id] == kept[row["patient_id"]]
    conflicts = {sid for sid, split in listed.items() if split != kept[sid.split("/")[0]]}
    assert conflicts and conflicts == {r["study_id"] for r in rejects if r["reason"] == "split_conflict"}
    assert {row["split"] for row in rows.values()} == set(HELD_OUT)
    assert_patients_stay_in_one_split(rows)
    assert stats["release"]["source"] == "mimic-cxr" and stats["synthetic"] is True


def test_mimic_keeps_the_pa_then_ap_then_lateral_film_that_exists(mimic, mimic_built):
    rows, _, stats, _ = mimic_built
    rank = {"PA": 0, "AP": 1, "LATERAL": 2, "LL": 2}
    codes = {"postero-anterior": "PA", "antero-posterior": "AP", "lateral": "LATERAL", "left lateral": "LL"}
    films, pa_missing = defaultdict(list), set()
    for r in gz_rows(mimic / METADATA):
        study_id = f"p{r['subject_id']}/s{r['study_id']}"
        position = r["ViewPosition"] or codes.get(r["ViewCodeSequence_CodeMeaning"], "")
        path = f"files/p{r['subject_id'][:2]}/p{r['subject_id']}/s{r['study_id']}/{r['dicom_id']}.jpg"
        if position in rank and (mimic / path).is_file():
            films[study_id].append((rank[position], path, position))
        elif position == "PA":
            pa_missing.add(study_id)
    for study_id, row in rows.items():
        best = min(films[study_id])
        assert row["image_path"] == best[1], study_id
        assert row["view"] == {"PA": "PA", "AP": "AP"}.get(best[2], "lateral")
    kept_without_pa = [rows[sid]["view"] for sid in pa_missing if sid in rows]
    assert kept_without_pa and "PA" not in kept_without_pa  # a study whose PA file is missing keeps its lateral
    assert set(stats["views"]) == {"PA", "AP", "lateral"}


def test_mimic_labels_have_the_chexpert_semantics(mimic, mimic_built):
    rows, _, _, _ = mimic_built
    truth = {f"p{r['subject_id']}/s{r['study_id']}": {k: float(v) for k, v in r.items() if v and k[0].isupper()}
             for r in gz_rows(mimic / LABEL_FILES["chexpert"])}  # fmt: skip
    assert assert_label_semantics(rows, truth) > 50
    for study_id, row in rows.items():
        for pair in row["qa"]:
            if pair["finding"] == "No Finding":  # "normal?": Yes only for No Finding, No only with a pathology
                labels = truth[study_id]
                sick = [k for k, v in labels.items() if v == 1.0 and k not in ("Support Devices", "No Finding")]
                assert pair["label"] == ("yes" if labels.get("No Finding") == 1.0 and not sick else "no")


def test_mimic_negbio_labels_and_extracted_reports(mimic, tmp_path):
    """--mimic-labels negbio reads the other file (the stand-in's chexpert file lacks a few studies; negbio has them);
    reports from an extracted files/ tree read the same as from the zip."""
    from dataprep.__main__ import main

    assert main(["--source", "mimic-cxr", "--root", str(mimic), "--out", str(tmp_path / "N"), "--mimic-labels",
                 "negbio", "--image-size", "32", "--no-progress"]) == 0  # fmt: skip
    stats = json.loads((tmp_path / "N" / "stats.json").read_text())
    assert stats["release"]["labels"] == LABEL_FILES["negbio"] and "no_labels" not in stats["reject_reasons"]
    extracted = tmp_path / "X"
    write_mimic_release(extracted, patients=24, seed=3, image_size=64, reports="files")
    assert not (extracted / "mimic-cxr-reports.zip").exists()
    zipped, unzipped = read("mimic-cxr", mimic), read("mimic-cxr", extracted)
    assert [(s.study_id, s.findings, s.impression) for s in zipped.studies] == \
        [(s.study_id, s.findings, s.impression) for s in unzipped.studies]  # fmt: skip
    assert unzipped.summary["reports"] == "files"


# --- IU X-ray (Open-i) -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iu(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("iu-xray")
    write_iu_release(root, patients=60, seed=5, image_size=96, dicom=True)
    return root


@pytest.fixture(scope="module")
def iu_built(iu, tmp_path_factory):
    return build("iu-xray", iu, tmp_path_factory.mktemp("iu-data") / "D")


def xml_reports(root: Path) -> dict[str, bytes]:
    with tarfile.open(root / "NLMCXR_reports.tgz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_iu_every_report_is_a_row_or_a_reject_and_a_report_is_a_patient(iu, iu_built):
    rows, rejects, stats, _ = iu_built
    reports = xml_reports(iu)
    ids = {f"CXR{Path(name).stem}" for name in reports}
    rejected = {r["study_id"] for r in rejects}
    assert set(rows) | rejected == ids and not set(rows) & rejected and len(rejects) == len(rejected)
    assert {r["reason"] for r in rejects} == {"bad_xml", "no_images", "no_report_text", "image_missing",
                                              "image_unreadable"}  # fmt: skip
    assert all(row["patient_id"] == study_id for study_id, row in rows.items())
    assert_patients_stay_in_one_split(rows)
    assert {row["split"] for row in rows.values()} == set(HELD_OUT)
    release = stats["release"]
    assert "each report is its own patient" in release["patients"]
    assert release["labels"] == {"option": "labeler", "studies_by_source": {"labeler": len(rows)}}
    assert sum(release["frontal_choice"].values()) == len(rows) and release["films"] == "NLMCXR_png.tgz"


def test_iu_chooses_the_frontal_film(iu, iu_built, tmp_path):
    rows, _, stats, _ = iu_built
    truth = json.loads((iu / "SYNTHETIC.json").read_text())["frontal"]
    with_frontal = [sid for sid in rows if sid in truth]
    right = sum(rows[sid]["image_path"] == f"{truth[sid]}.png" for sid in with_frontal)
    assert right / len(with_frontal) >= 0.9, (right, len(with_frontal))
    assert stats["release"]["frontal_choice"]["dicom"] >= 10
    # without the DICOM headers the image heuristic alone decides, as well; the films extracted read the same
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("NLMCXR_reports.tgz", "NLMCXR_png.tgz", "SYNTHETIC.json"):
        (plain / name).symlink_to(iu / name)
    by_image = read("iu-xray", plain, work_dir=tmp_path / "work", image_size=48, progress=False)
    chosen = {s.study_id: s.images[0][0] for s in by_image.studies}
    assert sum(chosen.get(sid) == f"{truth[sid]}.png" for sid in with_frontal) / len(with_frontal) >= 0.9
    assert "dicom" not in by_image.summary["frontal_choice"] and by_image.summary["frontal_choice"]["image"] > 20
    assert sorted(p.name for p in (tmp_path / "work" / "films").iterdir()) == sorted(chosen.values())
    extracted = tmp_path / "extracted"
    with tarfile.open(iu / "NLMCXR_png.tgz") as tar:
        tar.extractall(extracted / "png", filter="data")
    (extracted / "NLMCXR_reports.tgz").symlink_to(iu / "NLMCXR_reports.tgz")
    unpacked = read("iu-xray", extracted, image_size=48, progress=False)
    assert {s.study_id: Path(s.images[0][0]).name for s in unpacked.studies} == chosen
    assert unpacked.film_root == extracted and unpacked.summary["films"] == "extracted PNGs"


def test_iu_labels_come_from_the_labeler_with_their_semantics(iu, iu_built):
    rows, _, _, _ = iu_built
    truth = {}
    for name, data in xml_reports(iu).items():
        try:
            report = parse_report(data, name)
        except ValueError:
            continue
        truth[report.uid] = label_report(DEID_RE.sub(" ", f"{report.findings}\n{report.impression}"))
    assert assert_label_semantics(rows, truth) > 50


# --- the rest of the pipeline, unchanged ---------------------------------------------------------------------------


def test_finetune_trains_on_one_and_evaluation_scores_the_other(mimic_built, iu_built, tiny_model_dir, tmp_path):
    """`python -m finetune` on the MIMIC-CXR stand-in's dataset, `python -m evaluation` on IU X-ray's test split."""
    from evaluation import __main__ as evaluation
    from finetune import __main__ as finetune

    adapter, report = tmp_path / "adapter", tmp_path / "report"
    finetune.main(["--config", "finetune/configs/tiny-cpu.yaml", "--model_name_or_path", tiny_model_dir,
                   "--dataset", str(mimic_built[3]), "--output_dir", str(adapter), "--max_steps", "2",
                   "--per_device_train_batch_size", "2", "--eval_strategy", "no", "--save_steps", "2"])  # fmt: skip
    assert (adapter / "adapter_model.safetensors").is_file()
    evaluation.main(["--dataset", str(iu_built[3]), "--split", "test", "--out", str(report), "--base", tiny_model_dir,
                     "--adapter", str(adapter), "--no-4bit", "--device", "cpu", "--max-new-tokens", "2", "--limit",
                     "3", "--batch-size", "16", "--resamples", "100"])  # fmt: skip
    metrics = json.loads((report / "metrics.json").read_text())
    assert {"base", "tuned"} <= set(metrics["models"])
    records = [json.loads(line) for line in (report / "predictions.jsonl").read_text().splitlines()]
    test_studies = {sid for sid, row in iu_built[0].items() if row["split"] == "test"}
    assert records and {r["study_id"] for r in records} <= test_studies

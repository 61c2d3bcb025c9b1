"""The parts of the release readers, each on its own: MIMIC-CXR's sections, IU X-ray's MeSH labels and frontal film
choice, a hand-written IU report's labels, the command line's release flags."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from dataprep.clean import clean_report
from dataprep.qa_labels import LabelsGenerator
from dataprep.releases import read
from dataprep.releases.iu_films import Films, choose_film
from dataprep.releases.iu_xray import mesh_labels
from dataprep.releases.mimic_sections import report_sections, section_name
from dataprep.synthetic_films import draw_film
from dataprep.synthetic_iu import report_xml

# p10000032/s50414267-style: a title, paperwork headings, FINDINGS and IMPRESSION, lines starting with a space
MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 
 INDICATION:  ___F with new onset ascites  // eval for infection
 
 TECHNIQUE:  Chest PA and lateral
 
 COMPARISON:  None.
 
 FINDINGS: 
 
 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.  Clips project over the left lung,
 potentially within the breast.
 
 IMPRESSION: 
 
 No acute cardiopulmonary process.
"""  # noqa: W291, W293 - MIMIC's blank lines hold a space


def test_mimic_sections_findings_and_impression():
    findings, impression, how = report_sections(MIMIC_REPORT)
    assert how == "findings+impression" and impression == "No acute cardiopulmonary process."
    assert findings.startswith("There is no focal consolidation") and findings.endswith("within the breast.")
    assert "INDICATION" not in findings and "ascites" not in findings + impression


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # no FINDINGS heading: the impression alone
        (" EXAMINATION:  CHEST (PORTABLE AP)\n \n IMPRESSION: \n \n Right lower lobe pneumonia.\n",
         ("", "Right lower lobe pneumonia.", "impression")),
        # misspelt and film-naming headings
        (" INDICATION: cough\n \n PA AND LATERAL VIEWS OF THE CHEST:\n Heart size normal.\n \n IMPRESSON: Clear.\n",
         ("Heart size normal.", "Clear.", "findings+impression")),
        # neither heading: the last paragraph after the last heading's first
        ("   FINAL REPORT\n COMPARISON:  None.\n \n Lungs are clear. No effusion.\n",
         ("", "Lungs are clear. No effusion.", "last_paragraph")),
        ("   FINAL REPORT\n PORTABLE AP CHEST FILM ___ AT ___\n \n Lines and tubes unchanged.\n",
         ("", "Lines and tubes unchanged.", "last_paragraph")),
        # only paperwork: nothing to learn from
        (" EXAMINATION:  CHEST\n \n INDICATION:  ___ with cough\n \n COMPARISON:  ___\n", ("", "", "none")),
    ],
)  # fmt: skip
def test_mimic_sections_without_the_usual_headings(text, expected):
    assert report_sections(text) == expected


def test_mimic_section_names_and_deid_marks():
    assert [section_name(h) for h in ("IMPRESSION", "CONCLUSION", "FINDINGS AND IMPRESSION", "FINDNGS",
                                      "CHEST, TWO VIEWS", "REASON FOR EXAM", "WET READ")] == \
        ["impression", "impression", "impression", "findings", "findings", "other", "other"]  # fmt: skip
    findings, _, _ = report_sections(" FINDINGS: \n Dr. ___ was paged at 3:15pm. ___ Mild cardiomegaly.\n")
    assert clean_report(findings) == "Mild cardiomegaly."


def test_mesh_terms_map_to_chexpert_observations():
    assert mesh_labels(["normal"]) == {"No Finding": 1}
    assert mesh_labels(["Cardiomegaly/mild", "Pleural Effusion/bilateral/small", "Lung/hypoinflation"]) == {
        "Cardiomegaly": 1, "Pleural Effusion": 1}  # fmt: skip
    assert mesh_labels(["Pulmonary Atelectasis/base/left", "Fractures, Bone/ribs/healed", "Thickening/pleura/apex",
                        "Catheters, Indwelling", "normal"]) == {"Atelectasis": 1, "Fracture": 1, "Pleural Other": 1,
                                                                "Support Devices": 1}  # fmt: skip
    assert mesh_labels(["Implanted Medical Device", "normal"]) == {"Support Devices": 1, "No Finding": 1}
    assert mesh_labels(["Calcified Granuloma/lung", "Spine/degenerative"]) == {}


def test_the_frontal_film_choice_rules():
    films = Films(root=Path("."), source="NLMCXR_png.tgz",
                  found={"a": ("a.png", 2.0), "b": ("b.png", 0.5), "c": ("c.png", 1.95), "d": ("d.png", 1.0)},
                  errors={"x": "not a PNG"})  # fmt: skip

    def pick(ids, dicom=None):
        choice = choose_film(ids, films, dicom or {})
        return choice if isinstance(choice, tuple) else (choice.film_id, choice.view, choice.method)

    assert pick(["b", "a"]) == ("a", "frontal", "image")
    assert pick(["c", "a"]) == ("c", "frontal", "order")  # too close to call: the XML's first
    assert pick(["b", "a"], {"a": "LL", "b": "PA"}) == ("b", "PA", "dicom")  # decisive headers win
    assert pick(["b", "a"], {"a": "PA", "b": "PA"}) == ("a", "frontal", "image")  # both "PA": not decisive
    assert pick(["d"]) == ("d", "lateral", "single") and pick(["a", "x"]) == ("a", "frontal", "single")
    assert pick(["b"], {"b": "LL"}) == ("b", "lateral", "dicom")
    assert pick(["x"])[0] == "image_unreadable" and pick(["y"])[0] == "image_missing"


def _png(view: str, seed: int) -> bytes:
    buffer = io.BytesIO()
    draw_film({}, view, 96, np.random.default_rng(seed)).save(buffer, format="PNG")
    return buffer.getvalue()


def _tgz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("source", ["labeler", "mesh"])
def test_a_hand_written_iu_report_gets_its_plain_labels(tmp_path, source):
    sections = {"FINDINGS": "There is cardiomegaly. No pleural effusion.", "IMPRESSION": "XXXX cardiomegaly."}
    xml = report_xml(7, sections, ["Cardiomegaly/mild"], ["CXR7_IM-0001-1001", "CXR7_IM-0001-2001"])
    _tgz(tmp_path / "NLMCXR_reports.tgz", {"ecgen-radiology/7.xml": xml})
    _tgz(tmp_path / "NLMCXR_png.tgz", {"CXR7_IM-0001-1001.png": _png("lateral", 1),
                                       "CXR7_IM-0001-2001.png": _png("PA", 2)})  # fmt: skip
    release = read("iu-xray", tmp_path, work_dir=tmp_path / "work", iu_labels=source, image_size=64, progress=False)
    (study,) = release.studies
    assert study.images == [("CXR7_IM-0001-2001.png", "frontal")]
    assert (release.film_root / study.images[0][0]).is_file()
    # MeSH gives positives only: the effusion the text rules out is then "not mentioned"
    assert study.labels["Cardiomegaly"] == 1.0 and study.labels["No Finding"] is None
    assert study.labels["Pleural Effusion"] == (0.0 if source == "labeler" else None)
    pairs = LabelsGenerator(qa_per_study=10).generate([study])[study.study_id].pairs
    closed = {p["finding"]: p["label"] for p in pairs if p["kind"] == "closed"}
    assert closed["Cardiomegaly"] == "yes"
    assert {f for f, label in closed.items() if label == "no"} <= (
        {"Pleural Effusion", "No Finding"} if source == "labeler" else {"No Finding"})  # fmt: skip
    assert release.summary["labels"]["studies_by_source"] == {source: 1}


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """`python -m dataprep ARGV` in this process: (exit status, stdout, stderr)."""
    from dataprep.__main__ import main

    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_release_flags_on_the_command_line(tmp_path, capsys):
    code, _, err = run_main(["--root", str(tmp_path), "--out", "D", "--mimic-labels", "negbio"], capsys)
    assert code == 2 and "--mimic-labels is for --source mimic-cxr" in err.strip().splitlines()[-1]
    code, _, err = run_main(["--source", "iu-xray", "--chexpert-root", str(tmp_path), "--out", "D"], capsys)
    assert code == 2 and "with --source iu-xray use --root" in err
    for source, named in (("iu-xray", "NLMCXR_reports.tgz"), ("mimic-cxr", "mimic-cxr-2.0.0-metadata.csv.gz")):
        code, _, err = run_main(["--source", source, "--root", str(tmp_path), "--out", str(tmp_path / "D")], capsys)
        assert code == 2 and err.strip().count("\n") == 0 and named in err and "Traceback" not in err
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0 and "--i-have-permission-for-remote" in out and "iu-xray" in out


def test_the_old_chexpert_root_still_works_with_a_note(tmp_path, capsys):
    from dataprep.synthetic import write_release

    write_release(tmp_path / "S", patients=3, image_size=64, defects=False)
    argv = ["--chexpert-root", str(tmp_path / "S"), "--out", str(tmp_path / "D"), "--image-size", "32"]
    code, _, err = run_main(argv, capsys)
    assert code == 0 and "--chexpert-root is deprecated" in err and "use --root" in err
    stats = json.loads((tmp_path / "D" / "stats.json").read_text())
    assert stats["config"]["root"] == str(tmp_path / "S") and stats["release"]["source"] == "chexpert-plus"


def test_iu_reports_that_cannot_be_studies_are_rejected_with_their_reason(tmp_path):
    text = {"FINDINGS": "Heart size is normal. No pleural effusion.", "IMPRESSION": "No acute disease."}
    members = {
        "ecgen-radiology/1.xml": report_xml(1, text, ["normal"], ["CXR1_IM-0001-1001"]),
        "ecgen-radiology/2.xml": report_xml(1, text, ["normal"], ["CXR1_IM-0001-1001"]),  # the same uId again
        "ecgen-radiology/3.xml": report_xml(3, text, ["normal"], []),
        "ecgen-radiology/4.xml": report_xml(4, {"FINDINGS": "XXXX.", "IMPRESSION": ""}, ["normal"], ["CXR4_IM-1"]),
        "ecgen-radiology/5.xml": report_xml(5, text, ["normal"], ["CXR5_IM-1"])[:300],
        "ecgen-radiology/6.xml": report_xml(6, text, ["normal"], ["CXR6_IM-1", "CXR6_IM-2"]),
    }
    _tgz(tmp_path / "NLMCXR_reports.tgz", members)
    _tgz(tmp_path / "NLMCXR_png.tgz", {"CXR1_IM-0001-1001.png": _png("PA", 1), "CXR6_IM-1.png": b"\x89PNG\r\n\x1a\n"})
    release = read("iu-xray", tmp_path, work_dir=tmp_path / "work", image_size=32, progress=False)
    assert [s.study_id for s in release.studies] == ["CXR1"]
    reasons = {r["study_id"]: r["reason"] for r in release.rejects}
    assert reasons == {"CXR1": "duplicate_report", "CXR3": "no_images", "CXR4": "no_report_text", "CXR5": "bad_xml",
                       "CXR6": "image_unreadable"}  # fmt: skip
    detail = next(r["detail"] for r in release.rejects if r["study_id"] == "CXR6")
    assert detail.startswith("CXR6_IM-1: ")  # the film that is there but broken; the other is not in the archive


def test_a_damaged_mimic_report_costs_its_study_only(tmp_path):
    import zipfile

    from dataprep.synthetic_mimic import write_mimic_release

    write_mimic_release(tmp_path, patients=3, seed=2, image_size=48, defects=False)
    archive = tmp_path / "mimic-cxr-reports.zip"
    with zipfile.ZipFile(archive) as zf:
        first = zf.infolist()[0]
    data = bytearray(archive.read_bytes())
    start = first.header_offset + 30 + len(first.filename.encode())  # past the local header (no extra field)
    data[start : start + 8] = bytes(b ^ 0xFF for b in data[start : start + 8])
    archive.write_bytes(bytes(data))
    release = read("mimic-cxr", tmp_path)
    damaged = [r for r in release.rejects if r["reason"] == "report_unreadable"]
    study = Path(first.filename).stem  # sNNNNNNNN
    assert [r["study_id"].split("/")[1] for r in damaged] == [study] and release.studies

"""`python -m evaluation.label` (JSON Lines in, labels out; --explain; every bad input one line naming its line
number, exit 2) and `bench/labeler.py` (--smoke; --release on a miniature CheXpert Plus release and on a MIMIC-CXR
layout written here)."""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cxr_vqa.labeler import label_report
from evaluation import label

ROOT = Path(__file__).resolve().parents[1]
REPORTS = [
    {
        "id": "s1",
        "text": "FINDINGS: Mild cardiomegaly. No pleural effusion.\nIMPRESSION: Possible left base pneumonia.",
    },
    {"id": 2, "text": "INDICATION: r/o pneumothorax\n\nIMPRESSION: No pneumothorax. Lines and tubes in place."},
    {"id": "s3", "text": ""},
]


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_line_gets_its_labels_in_order(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [REPORTS[0], "", REPORTS[1], REPORTS[2]])  # a blank line is skipped
    label.main([str(src), str(tmp_path / "out.jsonl"), "--no-progress"])
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in out] == ["s1", 2, "s3"]
    assert [r["labels"] for r in out] == [label_report(r["text"]) for r in REPORTS]
    assert out[0]["labels"] == {"Cardiomegaly": 1, "Pneumonia": -1, "Pleural Effusion": 0}
    assert out[1]["labels"] == {"Pneumothorax": 0, "Support Devices": 1, "No Finding": 1}
    assert set(out[0]) == {"id", "labels"} and "labelled 3 reports" in capsys.readouterr().out


def test_explain_adds_the_matched_spans(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", REPORTS[:2])
    label.main([str(src), str(tmp_path / "out.jsonl"), "--explain", "--no-progress"])
    first = read_jsonl(tmp_path / "out.jsonl")[0]
    assert first["labels"] == label_report(REPORTS[0]["text"])
    pneumonia = next(d for d in first["explain"] if d["observation"] == "Pneumonia")
    assert (pneumonia["value"], pneumonia["phrase"], pneumonia["trigger"]) == (-1, "pneumonia", "Possible")
    assert REPORTS[0]["text"][pneumonia["start"] : pneumonia["end"]] == "pneumonia"
    assert pneumonia["sentence"] == "Possible left base pneumonia."


BAD = [
    pytest.param([REPORTS[0], "{not json"], "line 2: not JSON", id="not JSON"),
    pytest.param([REPORTS[0], REPORTS[1], {"id": "x"}], 'line 3: no "text"', id="no text"),
    pytest.param([{"id": "x", "text": 3}], 'line 1: "text" must be a string', id="text not a string"),
    pytest.param([REPORTS[0], {"id": "s1", "text": "again"}], "line 2: id 's1' is already on line 1", id="duplicate"),
    pytest.param([{"text": "Clear."}], 'line 1: "id" must be a string or an integer', id="no id"),
    pytest.param([REPORTS[0], '["a", "b"]'], 'line 2: not a JSON object with "id" and "text"', id="not an object"),
    pytest.param([], "holds no reports", id="empty file"),
]


@pytest.mark.parametrize(("lines", "message"), BAD)
def test_bad_input_is_one_line_naming_the_line_and_exit_2(tmp_path, run_cli, lines, message):
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    status, last = run_cli(label.main, [str(src), str(tmp_path / "out.jsonl"), "--no-progress"])
    assert status == 2 and last.startswith("error: ") and message in last
    assert not (tmp_path / "out.jsonl").exists()  # checked before anything is written


def test_unreadable_input_missing_folder_and_same_file_exit_2(tmp_path, run_cli):
    (tmp_path / "latin1.jsonl").write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n')
    assert run_cli(label.main, [str(tmp_path / "latin1.jsonl"), str(tmp_path / "o.jsonl")]) == (
        2,
        f"error: {tmp_path / 'latin1.jsonl'} line 2: not UTF-8 text",
    )
    status, last = run_cli(label.main, [str(tmp_path / "missing.jsonl"), str(tmp_path / "o.jsonl")])
    assert status == 2 and "cannot read" in last
    src = write_jsonl(tmp_path / "in.jsonl", REPORTS)
    status, last = run_cli(label.main, [str(src), str(tmp_path / "nowhere" / "o.jsonl")])
    assert status == 2 and "does not exist" in last
    assert run_cli(label.main, [str(src), str(src)])[0] == 2
    assert run_cli(label.main, [str(src)])[0] == 2  # no OUT: argparse's usage error


def test_the_module_runs_with_help_and_a_progress_bar(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "evaluation.label", "--help"], env=env, capture_output=True, text=True)
    assert run.returncode == 0 and "IN.jsonl" in run.stdout and "--explain" in run.stdout
    src = write_jsonl(tmp_path / "in.jsonl", REPORTS)
    command = [sys.executable, "-m", "evaluation.label", str(src), str(tmp_path / "out.jsonl")]
    run = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0 and "labelling" in run.stderr and "3/3" in run.stderr
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 3


def run_bench(*flags: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "bench/labeler.py", *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


def result(stdout: str) -> dict[str, float]:
    (line,) = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}


def test_bench_smoke_prints_the_result_line():
    out = run_bench("--smoke")
    assert "150 from dataprep.synthetic_reports.write_report, 150 from bench/labeler.py sentence bank" in out
    numbers = result(out)
    assert numbers["reports"] == 300 and numbers["reports_per_s"] > 0 and numbers["wall_reports_per_s"] > 0


def test_bench_agrees_with_a_synthetic_chexpert_plus_release(tmp_path):
    from dataprep.synthetic import write_release

    write_release(tmp_path / "release", patients=12, image_size=64, workers=1)
    out = run_bench("--release", str(tmp_path / "release"))
    numbers = result(out)
    assert numbers["reports"] >= 12 and numbers["micro_f1"] >= 0.95  # its reports say exactly what its labels do
    assert "Pleural Effusion" in out and "Lung Lesion" not in out  # only the observations its labels cover


def test_bench_reads_a_mimic_layout_and_its_impressions(tmp_path):
    """A MIMIC-CXR layout written here (reports of our own, zipped as mimic-cxr-reports.zip): labels come from the
    impression, so a finding said only under FINDINGS does not count."""
    studies = {
        ("10000001", "50000001"): ("FINDINGS: Small left effusion.\n\nIMPRESSION: Left pleural effusion.", "1.0", ""),
        ("10000002", "50000002"): ("INDICATION: ? pna\n\nIMPRESSION: No pneumonia. No effusion.", "0.0", "1.0"),
        ("10000003", "50000003"): ("FINDINGS: Tiny left effusion.\n\nIMPRESSION: No acute process.", "", "1.0"),
    }
    with zipfile.ZipFile(tmp_path / "mimic-cxr-reports.zip", "w") as archive:
        for (subject, study), (text, _, _) in studies.items():
            archive.writestr(f"files/p{subject[:2]}/p{subject}/s{study}.txt", text)
    with gzip.open(tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz", "wt", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["subject_id", "study_id", "Pleural Effusion", "No Finding"])
        for (subject, study), (_, effusion, no_finding) in studies.items():
            writer.writerow([subject, study, effusion, no_finding])
    numbers = result(run_bench("--release", str(tmp_path)))
    assert numbers["reports"] == 3 and numbers["micro_f1"] == 1.0

"""VQA-RAD and SLAKE read in their authors' own formats (files written here, in those exact layouts), evaluated end
to end through the CLI on the tiny model, with the exact counts of chest questions each filter keeps."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from app_lib.explore import open_report
from evaluation import __main__ as ev
from evaluation.benchmarks import read_benchmark

# (qid, image_name, image_organ, phrase_type, answer_type, question, answer)
VQA_RAD = [
    (1, "synpic100.jpg", "CHEST", "test_freeform", "CLOSED", "Is there a pneumothorax?", "No"),
    (2, "synpic100.jpg", "CHEST", "test_para", "CLOSED", "Is the heart enlarged?", "yes"),
    (3, "synpic100.jpg", "CHEST", "test_freeform", "OPEN", "What is abnormal?", "right pleural effusion"),
    (4, "synpic200.jpg", "CHEST ", "test_freeform", "CLOSED", "Which view is this?", "PA"),  # a stray space
    (5, "synpic200.jpg", "CHEST", "freeform", "CLOSED", "Is this a training question?", "yes"),  # train split
    (6, "synpic300.jpg", "HEAD", "test_freeform", "CLOSED", "Is there a bleed?", "yes"),
    (7, "synpic400.jpg", "ABD", "test_para", "OPEN", "How many kidneys?", 2),  # numbers stay numbers in the JSON
]
# (qid, img_name, q_lang, modality, location, answer_type, question, answer)
SLAKE = [
    (11, "xmlab1/source.jpg", "en", "X-Ray", "Lung", "CLOSED", "Is the lung healthy?", "No"),
    (12, "xmlab1/source.jpg", "en", "X-Ray", "Lung", "OPEN", "Where is the abnormality?", "Left Lung, Right"),
    (13, "xmlab1/source.jpg", "zh", "X-Ray", "Lung", "CLOSED", "肺部健康吗?", "否"),
    (14, "xmlab2/source.jpg", "en", "X-Ray", "Chest_heart", "CLOSED", "Does the picture contain a heart?", "Yes"),
    (15, "xmlab3/source.jpg", "en", "CT", "Abdomen", "OPEN", "What organ is this?", "Liver"),
    (16, "xmlab4/source.jpg", "en", "MRI", "Brain_Tissue", "CLOSED", "Is this a T1 image?", "Yes"),
]


def film(path, shade):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (400, 300), shade).save(path)


@pytest.fixture(scope="module")
def vqa_rad(tmp_path_factory):
    root = tmp_path_factory.mktemp("VQA_RAD")
    entries = [{"qid": q, "image_name": img, "image_organ": organ, "phrase_type": phrase, "answer_type": kind,
                "question": question, "answer": answer, "question_type": "PRES", "image_case_url": "https://x"}
               for q, img, organ, phrase, kind, question, answer in VQA_RAD]  # fmt: skip
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(entries))
    for i, name in enumerate(sorted({e[1] for e in VQA_RAD})):
        film(root / "VQA_RAD Image Folder" / name, 40 * i)
    return root


@pytest.fixture(scope="module")
def slake(tmp_path_factory):
    root = tmp_path_factory.mktemp("Slake1.0")
    entries = [{"qid": q, "img_id": int(img.split("/")[0][5:]), "img_name": img, "q_lang": lang, "modality": mod,
                "location": loc, "answer_type": kind, "base_type": "vqa", "content_type": "Organ", "triple": [],
                "question": question, "answer": answer}
               for q, img, lang, mod, loc, kind, question, answer in SLAKE]  # fmt: skip
    (root / "test.json").write_text(json.dumps(entries, ensure_ascii=False))
    for i, name in enumerate(sorted({e[1] for e in SLAKE})):
        film(root / "imgs" / name, 50 * i)
    return root


@pytest.mark.parametrize(
    "name, options, closed, opened, films",
    [
        ("vqa-rad", {}, 3, 1, 2),  # chest test questions: qid 1, 2, 4 closed, 3 open
        ("vqa-rad", {"all_organs": True}, 4, 2, 4),
        ("slake", {}, 2, 1, 2),  # English chest X-rays: qid 11, 14 closed, 12 open
        ("slake", {"all_languages": True}, 3, 1, 2),
        ("slake", {"all_organs": True}, 3, 2, 4),
    ],
)
def test_filters_keep_the_exact_chest_questions(name, options, closed, opened, films, vqa_rad, slake):
    questions, paths = read_benchmark(name, vqa_rad if name == "vqa-rad" else slake, **options)
    kinds = [q["kind"] for q in questions]
    assert (kinds.count("closed"), kinds.count("open"), len(paths)) == (closed, opened, films)
    assert all(paths[q["row"]].name.endswith(".jpg") for q in questions)


def test_vqa_rad_end_to_end_through_the_cli(vqa_rad, tiny_model_dir, random_adapter_dir, tmp_path):
    out = tmp_path / "report"
    ev.main(["--benchmark", "vqa-rad", "--dataset", str(vqa_rad), "--base", tiny_model_dir, "--adapter",
             random_adapter_dir, "--out", str(out), "--no-4bit", "--device", "cpu", "--max-new-tokens", "3",
             "--resamples", "100"])  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["benchmark"] == "vqa-rad" and metrics["questions"] == {"total": 4, "closed": 3, "open": 1}
    assert metrics["studies"] == 2  # intervals resample films
    assert metrics["models"]["tuned"]["confidence"]["n"] == 2  # the yes/no questions, not "PA"
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    pa = next(r for r in records if r["reference"] == "PA")
    assert pa["scores"]["tuned"]["yes_no"] is False and set(pa["p_yes"]) == {
        "base",
        "tuned",
        "base_blank",
        "tuned_blank",
    }
    assert "tuned_minus_base" in metrics["difference"] and "macro_auroc" in metrics["difference"]["tuned_minus_base"]
    assert (out / "confidence.png").is_file() and "AUROC" in (out / "report.md").read_text()
    # the app's Explore tab finds each film by the path the record names in the release, there or where it moved
    assert {r["film"] for r in records} == {"VQA_RAD Image Folder/synpic100.jpg", "VQA_RAD Image Folder/synpic200.jpg"}
    copy = open_report(out).films.copy(pa, tmp_path)
    assert copy.suffix == ".jpg" and copy.read_bytes() == (vqa_rad / pa["film"]).read_bytes()
    moved = tmp_path / "moved"
    shutil.copytree(vqa_rad, moved)
    run = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**run, "dataset": str(tmp_path / "gone")}))
    assert not open_report(out).films.available and open_report(out, dataset=str(moved)).films.available


def test_slake_end_to_end_through_the_cli_base_only(slake, tiny_model_dir, tmp_path, run_cli):
    out = tmp_path / "report"
    argv = ["--benchmark", "slake", "--dataset", str(slake), "--base", tiny_model_dir, "--out", str(out), "--no-4bit",
            "--device", "cpu", "--max-new-tokens", "3", "--resamples", "100", "--no-ablation"]  # fmt: skip
    ev.main(argv)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["questions"] == {"total": 3, "closed": 2, "open": 1} and list(metrics["models"]) == ["base"]
    # rows index the filtered film list: a resume under another filter would mix films into the answers
    code, line = run_cli(ev.main, [*argv, "--all-organs"])
    assert code == 2 and "holds a run with other settings (all_organs)" in line


def test_a_missing_film_or_file_is_one_line(vqa_rad, tmp_path, run_cli):
    code, line = run_cli(ev.main, ["--benchmark", "slake", "--dataset", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and "test.json not found" in line
    (vqa_rad / "VQA_RAD Image Folder" / "synpic200.jpg").rename(tmp_path / "moved.jpg")
    try:
        code, line = run_cli(
            ev.main, ["--benchmark", "vqa-rad", "--dataset", str(vqa_rad), "--out", str(tmp_path / "o")]
        )
        assert code == 2 and "1 of 2 films missing" in line and "synpic200.jpg" in line
    finally:
        (tmp_path / "moved.jpg").rename(vqa_rad / "VQA_RAD Image Folder" / "synpic200.jpg")


def test_a_corrupt_film_names_its_file(slake, tiny_model_dir, tmp_path, run_cli):
    broken = tmp_path / "slake"
    shutil.copytree(slake, broken)
    (broken / "imgs" / "xmlab2" / "source.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    code, line = run_cli(ev.main, ["--benchmark", "slake", "--dataset", str(broken), "--base", tiny_model_dir,
                                   "--out", str(tmp_path / "o"), "--no-4bit", "--device", "cpu", "--no-ablation",
                                   "--max-new-tokens", "2"])  # fmt: skip
    assert code == 2 and "xmlab2/source.jpg: JPEG file is truncated or corrupt" in line

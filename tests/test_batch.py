"""The Batch tab's handler with a tiny checkpoint, the base and two random adapters: every model answers every
(film, question), checked against the model core asked one film at a time; the exact CSV; a zip with a broken film;
the host's limits."""

from __future__ import annotations

import csv
import io
import zipfile
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from conftest import _random_adapter
from films import dicom_bytes, make_dicom
from PIL import Image
from test_browser import free_port
from vision_server import VisionServer

from app_lib.batch import (
    BatchLimits,
    LocalModels,
    RemoteModels,
    answer_rows,
    csv_columns,
    list_films,
    read_films,
    read_questions,
    size_in_bytes,
    write_csv,
)
from app_lib.batch_tab import BatchView
from app_lib.votes import VoteStore
from cxr_vqa.answers import Answer
from cxr_vqa.endpoint import Backoff
from cxr_vqa.errors import UserError
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.images import load_film
from cxr_vqa.model import load_model
from cxr_vqa.remote import RemoteModel, parse_remote
from cxr_vqa.template import add_question

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"
SETTINGS = GenerationSettings(max_new_tokens=4)
QUESTIONS = ["Is there cardiomegaly?", "Is there a pleural effusion?", "What abnormalities are seen?"]


@pytest.fixture(scope="module")
def vqa(coarse_model, tmp_path_factory):
    model, first = coarse_model
    second = _random_adapter(model, tmp_path_factory.mktemp("second-coarse-adapter"), seed=2, rank=4)
    return load_model(model, [f"rank8={first}", f"rank4={second}"], load_in_4bit=False, device="cpu")


@pytest.fixture
def view(vqa, tmp_path):
    return BatchView(vqa, VoteStore(tmp_path / "votes.sqlite"), settings=SETTINGS, limits=BatchLimits(batch_size=8))


def five_films(folder: Path) -> list[str]:
    """Three example PNGs, a JPEG and a DICOM."""
    paths = [str(EXAMPLES / f"{name}.png") for name in ("cardiomegaly", "pleural_effusion", "normal")]
    Image.open(EXAMPLES / "pneumothorax.png").convert("RGB").save(folder / "pneumothorax.jpg", quality=90)
    pixels = (np.add.outer(np.arange(96), np.arange(80)) * 20).astype(np.uint16)
    (folder / "ramp.dcm").write_bytes(dicom_bytes(make_dicom(pixels)))
    return [*paths, str(folder / "pneumothorax.jpg"), str(folder / "ramp.dcm")]


def test_five_films_three_questions_three_models_and_the_exact_csv(view, vqa, tmp_path):
    films = five_films(tmp_path)
    result, models, decoded = view.run(films, "\n".join(QUESTIONS) + "\n\n")  # blank lines are not questions
    table, csv_path, status = view.present(result, models, decoded)
    assert models == ["base", "rank8", "rank4"] and result["errors"] == []
    rows = result["rows"]
    assert len(rows) == 15 and all(len(r["answers"]) == 3 and len(r["p_yes"]) == 3 for r in rows)
    assert [(r["film"], r["question"]) for r in rows] == [(Path(f).name, q) for f in films for q in QUESTIONS]
    for i, path in enumerate(films):  # each film with one of the questions, as the side-by-side view asks it
        row, question = rows[3 * i + i % 3], QUESTIONS[i % 3]
        alone = vqa.compare(load_film(path, vqa.input_size).image, add_question(None, question), SETTINGS)
        assert row["question"] == question and row["answers"] == {m: a.text for m, a in alone.items()}, path
        for m, answer in alone.items():
            assert (row["p_yes"][m] is None) == (not answer.is_closed)
            assert row["p_yes"][m] is None or row["p_yes"][m] == pytest.approx(answer.p_yes, abs=1e-4)
    assert len({r["answers"]["base"] for r in rows} | {r["answers"]["rank8"] for r in rows}) > 1
    with open(csv_path, newline="", encoding="utf-8") as file:
        lines = list(csv.reader(file))
    assert lines[0] == ["film", "question", "base answer", "base P(yes)", "rank8 answer", "rank8 P(yes)",
                        "rank4 answer", "rank4 P(yes)"] == csv_columns(models)  # fmt: skip
    expected = [[r["film"], r["question"], *(c for m in models for c in (_cell(r["answers"][m]), _p(r["p_yes"][m])))]
                for r in rows]  # fmt: skip
    assert lines[1:] == expected
    frame = table.value
    assert len(frame["data"]) == 15 and frame["headers"] == ["film", "name", "question", *models]
    assert all(cell.startswith("![film](data:image/png;base64,") for cell, *_ in frame["data"])
    assert status.startswith("15 answers from each of 3 models")


def _p(p):
    return "" if p is None else f"{p:.4f}"


def _cell(text):
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def test_the_csv_never_hands_a_spreadsheet_a_formula(tmp_path):
    rows = [{"film": "=cmd.png", "question": "-1+1?", "answers": {"base": "@SUM(A1)", "tuned": "Yes."},
             "p_yes": {"base": None, "tuned": 0.123456}}]  # fmt: skip
    with open(write_csv(tmp_path / "b.csv", rows, ["base", "tuned"]), newline="", encoding="utf-8") as file:
        assert list(csv.reader(file))[1] == ["'=cmd.png", "'-1+1?", "'@SUM(A1)", "", "Yes.", "0.1235"]


def test_a_zip_with_a_broken_film_names_it_and_answers_the_others(view, tmp_path):
    archive = tmp_path / "films.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(EXAMPLES / "cardiomegaly.png", "study/cardiomegaly.png")
        z.writestr("study/broken.png", (EXAMPLES / "normal.png").read_bytes()[:1500])
        z.writestr("__MACOSX/study/._cardiomegaly.png", b"resource fork")
        z.writestr("study/.DS_Store", b"junk")
        z.writestr("notes.txt", b"not a film")
    result, _, _ = view.run([str(archive), str(EXAMPLES / "normal.png")], "Is there cardiomegaly?")
    assert [(r["film"], r["question"]) for r in result["rows"]] == [
        ("study/cardiomegaly.png", "Is there cardiomegaly?"), ("normal.png", "Is there cardiomegaly?")]  # fmt: skip
    errors = {e["film"]: e["error"] for e in result["errors"]}
    assert list(errors) == ["study/broken.png", "notes.txt"]
    assert "truncated or corrupt" in errors["study/broken.png"] and "not an image" in errors["notes.txt"]
    _, _, status = view.batch_table([str(archive)], "Is there cardiomegaly?")
    assert "`study/broken.png`: PNG image is truncated or corrupt" in status


def test_the_hosts_limits_refuse_a_batch_before_any_model_call(vqa, tmp_path):
    limits = BatchLimits(max_files=3, max_questions=2, max_rows=4, max_file_bytes=size_in_bytes("100kb"))
    view = BatchView(vqa, VoteStore(tmp_path / "votes.sqlite"), settings=SETTINGS, limits=limits)
    film = str(EXAMPLES / "normal.png")
    cases = [
        ([film] * 4, "Is there cardiomegaly?", "4 films, over this app's limit of 3"),
        ([film], "a?\nb?\nc?", "3 questions, over this app's limit of 2"),
        ([film] * 3, "a?\nb?", "3 films x 2 questions = 6 answers a model, over this app's limit of 4"),
        ([film], " \n ", "no question"),
        ([], "Is there cardiomegaly?", "no films"),
    ]
    for files, questions, message in cases:
        with pytest.raises(gr.Error, match=message):
            view.run(files, questions)
    big = tmp_path / "big.zip"
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)  # ~270 KB as PNG
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    with zipfile.ZipFile(big, "w") as z:
        z.writestr("big.png", buffer.getvalue())  # the zip itself passed the upload limit; its film does not
    result, _, _ = view.run([str(big), film], "Is there cardiomegaly?")
    refused = "270,701 bytes unzipped, over this app's upload limit of 102,400 bytes"  # what its entry declares
    assert result["errors"] == [{"film": "big.png", "error": refused}]
    assert [r["film"] for r in result["rows"]] == ["normal.png"]


def test_sizes_read_as_gradio_reads_them():
    assert [size_in_bytes(s) for s in ("20mb", "5 MB", "204800b", "1gb")] == [20 << 20, 5 << 20, 204800, 1 << 30]
    for bad in ("20", "mb", "20xb", "-1mb"):
        with pytest.raises(ValueError, match="max_file_size"):
            size_in_bytes(bad)


class GrowingVQA:
    """Stands in for the local models of `app.py --demo`: the hook before each answer loads the first checkpoint
    (`tuned`) once the batch has begun, so the loaded models grow between two generate calls."""

    def __init__(self):
        self.model_names, self.asked = ["base"], []

    def answer(self, images, conversations, models=None, settings=None, on_text=None):
        self.model_names = ["base", "tuned"]  # what `before_answer` does when the trainer writes its first checkpoint
        assert len(images) == len(conversations) == len(models)
        self.asked += models
        return [Answer(f"{model}: No.") for model in models]


def decoded(paths, limits=BatchLimits()):
    return read_films(list_films(paths, limits), limits, decode=lambda data: load_film(data, 336))


def test_a_model_loaded_mid_batch_neither_joins_it_nor_breaks_its_table(tmp_path):
    films, _ = decoded([str(EXAMPLES / f"{name}.png") for name in ("normal", "cardiomegaly", "pneumothorax")])
    vqa = GrowingVQA()
    source = LocalModels(vqa, {q: add_question(None, q) for q in QUESTIONS[:2]})
    rows = answer_rows(films, QUESTIONS[:2], [source], SETTINGS, batch_size=2)  # 3 generate calls
    assert source.names == ["base"] and vqa.asked == ["base"] * 6 and vqa.model_names == ["base", "tuned"]
    assert all(r["answers"] == {"base": "base: No."} for r in rows)
    table, _, status = BatchView.present({"rows": rows, "errors": []}, source.names, films)
    assert [row[3] for row in table.value["data"]] == ["base: No."] * 6 and status.startswith("6 answers from each")
    rows[0]["answers"].pop("base"), rows[0]["p_yes"].pop("base")  # a model without an answer in a row: empty cell
    table, _, _ = BatchView.present({"rows": rows, "errors": []}, ["base"], films)
    assert table.value["data"][0][3] == ""


def test_films_of_one_name_keep_their_own_thumbnails_and_csv_rows(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    Image.open(EXAMPLES / "normal.png").save(tmp_path / "a" / "x.png")
    Image.open(EXAMPLES / "cardiomegaly.png").save(tmp_path / "b" / "x.png")
    with zipfile.ZipFile(tmp_path / "films.zip", "w") as z:
        z.write(EXAMPLES / "pneumothorax.png", "x.png")
    paths = [str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), str(tmp_path / "films.zip")]
    films, errors = decoded(paths)
    assert [name for name, _ in films] == ["x.png", "x.png (2)", "x.png (3)"] and errors == []
    source = LocalModels(GrowingVQA(), {QUESTIONS[0]: add_question(None, QUESTIONS[0])})
    rows = answer_rows(films, QUESTIONS[:1], [source], SETTINGS, batch_size=8)
    table, csv_path, _ = BatchView.present({"rows": rows, "errors": []}, ["base"], films)
    thumbs = [row[0] for row in table.value["data"]]
    assert len(set(thumbs)) == 3 and [row[1] for row in table.value["data"]] == ["x.png", "x.png (2)", "x.png (3)"]
    with open(csv_path, newline="", encoding="utf-8") as file:
        assert [line[0] for line in list(csv.reader(file))[1:]] == ["x.png", "x.png (2)", "x.png (3)"]


def _patch(data: bytearray, name: str, local: dict[int, bytes], central: dict[int, bytes]) -> None:
    """Overwrite fields of `name`'s local header and central directory entry (offsets from each header's start)."""
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        start = z.getinfo(name).header_offset
    entry = data.index(name.encode(), data.index(b"PK\x01\x02")) - 46  # the name follows its 46-byte entry
    for offset, value in local.items():
        data[start + offset : start + offset + len(value)] = value
    for offset, value in central.items():
        data[entry + offset : entry + offset + len(value)] = value


def test_corrupt_zip_members_get_a_line_each_and_the_others_are_read(tmp_path):
    body = bytes(range(256)) * 64  # compressible: its deflate stream has structure to break
    archive = tmp_path / "films.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(EXAMPLES / "normal.png", "good.png")
        z.writestr("bad_deflate.png", body)
        z.writestr("bad_crc.png", body)
        z.writestr("cut_short.png", body, compress_type=zipfile.ZIP_STORED)  # its overstated size runs off the end
        z.write(EXAMPLES / "cardiomegaly.png", "good2.png")
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as z:
        at = z.getinfo("bad_deflate.png").header_offset + 30 + len("bad_deflate.png")
    data[at + 2 : at + 12] = bytes(b ^ 0x55 for b in data[at + 2 : at + 12])
    crc = (zlib.crc32(body) ^ 1).to_bytes(4, "little")
    _patch(data, "bad_crc.png", {14: crc}, {16: crc})
    huge = (10**6).to_bytes(4, "little")
    _patch(data, "cut_short.png", {18: huge + huge}, {20: huge + huge})
    archive.write_bytes(bytes(data))
    films, errors = decoded([str(archive)])
    assert [name for name, _ in films] == ["good.png", "good2.png"]
    assert {e["film"]: e["error"] for e in errors} == {
        "bad_deflate.png": "corrupt in its zip (Error -3 while decompressing data: invalid code lengths set)",
        "bad_crc.png": "corrupt in its zip (Bad CRC-32 for file 'bad_crc.png')",
        "cut_short.png": "corrupt in its zip (cut short)",
    }


def test_a_zip_of_junk_and_a_pasted_book_are_one_line_each_and_a_zip_is_opened_once(tmp_path, monkeypatch):
    limits = BatchLimits(max_files=2)
    junk = tmp_path / "junk.zip"
    with zipfile.ZipFile(junk, "w") as z:
        z.write(EXAMPLES / "normal.png", "normal.png")
        for i in range(20):
            z.writestr(f"__MACOSX/._{i}.png", b"fork")
    with pytest.raises(UserError, match="21 or more files and folders .* over this app's limit of 20 a batch"):
        list_films([str(junk)], limits)
    with pytest.raises(UserError, match="500,001 characters of questions: type at most 5 short questions"):
        read_questions("?\n" * 250_000 + "?", BatchLimits(max_questions=5), 1)  # limit: 5 x 100,000 characters
    opened = []

    class Counted(zipfile.ZipFile):
        def __init__(self, *args, **kwargs):
            opened.append(args[0])
            super().__init__(*args, **kwargs)

    films = tmp_path / "films.zip"
    with zipfile.ZipFile(films, "w") as z:
        for name in ("normal", "cardiomegaly", "pneumothorax"):
            z.write(EXAMPLES / f"{name}.png", f"{name}.png")
    monkeypatch.setattr(zipfile, "ZipFile", Counted)
    found, errors = decoded([str(films)], BatchLimits(max_files=3))
    assert len(found) == 3 and errors == [] and opened == [str(films)] * 2  # listed once, read once


def test_a_remote_model_whose_endpoint_is_down_is_skipped_for_the_rest_of_the_batch():
    films, _ = decoded([str(EXAMPLES / f"{name}.png") for name in ("normal", "cardiomegaly", "pneumothorax")])
    conversations = {q: add_question(None, q) for q in QUESTIONS[:2]}
    with VisionServer({"slow", "fast", "flaky"}, hang_seconds=10) as server:
        server.fail("hang", times=None, match="slow")
        server.fail("500", times=2, match="flaky")  # one row's two attempts fail: an error, not a dead endpoint
        remotes = {name: RemoteModel(parse_remote(f"{name}={server.url}#{name}"), timeout=0.5, max_retries=1,
                                     backoff=Backoff(0.01)) for name in ("slow", "fast", "flaky")}  # fmt: skip
        remotes["gone"] = RemoteModel(parse_remote(f"gone=http://127.0.0.1:{free_port()}/v1#gone"), timeout=0.5,
                                      max_retries=1, backoff=Backoff(0.01))  # fmt: skip
        source = RemoteModels(remotes, conversations, workers=1)
        rows = answer_rows(films, QUESTIONS[:2], [source], SETTINGS, batch_size=8)  # 3 calls of 2 rows
        asked = [r["model"] for r in server.requests]
    assert asked.count("slow") == 2 and asked.count("fast") == 6 and asked.count("flaky") == 7  # slow: 1 retry
    slow = [r["answers"]["slow"] for r in rows]
    first = "slow did not answer: no reply from 127.0.0.1"
    assert slow[0].startswith(f"error: {first}") and "within 0.5 s after 2 attempts" in slow[0]
    assert all(cell == f"error: skipped after {slow[0][len('error: ') :]}" for cell in slow[1:])
    gone = [r["answers"]["gone"] for r in rows]
    assert "cannot connect to 127.0.0.1" in gone[0] and all(c.startswith("error: skipped after") for c in gone[1:])
    flaky = [r["answers"]["flaky"] for r in rows]
    assert flaky[0].startswith("error: flaky did not answer: HTTP 500 from 127.0.0.1") and "2 attempts" in flaky[0]
    assert not any(cell.startswith("error") for cell in flaky[1:] + [r["answers"]["fast"] for r in rows])
    assert set(source.down) == {"slow", "gone"}

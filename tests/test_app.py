"""The app's handlers with the tiny checkpoint and a random LoRA adapter: no browser, no server.

The adapter is the `random_adapter_dir` fixture (random non-zero LoRA weights), not a trained one: what these tests
check is routing (which pane gets which model, one batched call, conversations kept apart), for which any adapter
that changes the output is as good as a trained one and costs no training time.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

import app
from app_lib.blind import NO_BLIND, VOTE_FIRST, Blind
from app_lib.config import parse_config
from app_lib.handlers import NO_ADAPTER, NO_IMAGE, Handlers
from app_lib.ratings import results_markdown
from app_lib.results import load_report, report_updates, wilson_interval
from app_lib.votes import VoteStore
from cxr_vqa.errors import UserError
from cxr_vqa.findings import FINDINGS_QUESTION
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.images import image_sha256, load_film
from cxr_vqa.model import load_model
from cxr_vqa.questions import MAX_QUESTION_TOKENS, clean_question
from cxr_vqa.template import add_question
from cxr_vqa.vqa import BASE, TUNED

ROOT = Path(__file__).resolve().parents[1]
FILM = ROOT / "assets" / "examples" / "cardiomegaly.png"
SETTINGS = (12, 0.0, 1.0)  # max new tokens, temperature, top-p: short greedy answers keep the tests fast
APP_SETTINGS = GenerationSettings(*SETTINGS)  # what /compare uses


@pytest.fixture(scope="module")
def vqa(tiny_model_dir, random_adapter_dir):
    return load_model(tiny_model_dir, random_adapter_dir, device="cpu")  # 4-bit, as the app serves by default


@pytest.fixture(scope="module")
def vqa_base_only(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture
def handlers(vqa, tmp_path):
    return Handlers(vqa, VoteStore(tmp_path / "votes.sqlite"), settings=APP_SETTINGS, rng=random.Random(0))


@pytest.fixture
def blind(vqa, tmp_path):
    return Blind(vqa, VoteStore(tmp_path / "votes.sqlite"), settings=APP_SETTINGS, rng=random.Random(0))


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def dicom(pixels: np.ndarray | None) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("film.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
        "DX",
    )
    if pixels is not None:
        ds.set_pixel_data(pixels, "MONOCHROME2", 12)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def bomb() -> bytes:
    """A real decompression bomb: 144 M pixels that compress to ~17 KB."""
    buffer = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buffer, "PNG")
    return buffer.getvalue()


def run(generator) -> list[tuple]:
    return list(generator)


# --- import, config, entry point ------------------------------------------------------------------------------------


def test_importing_app_loads_no_model(tmp_path):
    code = "import sys, app; print([m for m in ('transformers', 'peft', 'bitsandbytes') if m in sys.modules])"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []  # no votes database, no cache, nothing written


def test_config_env_yaml_and_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("BASE_MODEL", "env/base")
    monkeypatch.setenv("ADAPTER_MODEL", "env/adapter")
    assert (parse_config([]).base, parse_config([]).adapter, parse_config([]).load_in_4bit) == (
        "env/base",
        ["env/adapter"],
        True,
    )
    config = tmp_path / "app.yaml"
    config.write_text("base: yaml/base\nport: 8000\nload_in_4bit: false\n")
    parsed = parse_config(["--config", str(config), "--port", "9000", "--max-new-tokens", "64"])
    assert (parsed.base, parsed.port, parsed.load_in_4bit, parsed.adapter) == (
        "yaml/base",
        9000,
        False,
        ["env/adapter"],
    )
    assert parsed.max_new_tokens == 64
    assert parse_config(["--no-4bit"]).load_in_4bit is False
    config.write_text("base: yaml/base\nportt: 8000\n")
    with pytest.raises(SystemExit):
        parse_config(["--config", str(config)])
    with pytest.raises(SystemExit):
        parse_config(["--port", "0"])


def test_main_reports_a_bad_model_in_one_line(tmp_path, run_cli):
    code, line = run_cli(
        app.main, ["--base", str(tmp_path / "missing"), "--no-4bit", "--votes-db", str(tmp_path / "v")]
    )
    assert code == 2 and line.startswith("error: model ") and "not found" in line


def test_demo_has_compare_endpoint_examples_notice_report_and_zero_gpu(vqa, tmp_path, monkeypatch):
    wrapped = []

    class FakeSpaces:  # what ZeroGPU's package offers: a decorator that attaches a GPU while the function runs
        @staticmethod
        def GPU(fn):  # noqa: N802
            wrapped.append(getattr(fn, "__name__", fn))
            return fn

    monkeypatch.setattr(app, "spaces", FakeSpaces)
    (tmp_path / "metrics.json").write_text(json.dumps({"tuned": {"closed_accuracy_marker": 0.75}}))
    Image.new("RGB", (8, 8)).save(tmp_path / "comparison.png")
    demo = app.create_demo(vqa, votes_db=tmp_path / "v.sqlite", report_dir=tmp_path)
    assert sorted(wrapped) == ["answer", "ask", "ask_findings", "batch", "batch_table", "compare", "compare_all",
                              "compare_scores", "findings", "maps", "show_maps"]  # fmt: skip
    api = [fn for fn in demo.fns.values() if fn.api_name == "compare"]
    assert len(api) == 1 and api[0].api_visibility == "public"
    public = [fn.api_name for fn in demo.fns.values() if fn.api_visibility == "public"]
    # export_votes: the operator's (it refuses without the token: tests/test_votes_private.py)
    assert sorted(public) == ["batch", "compare", "compare_all", "compare_scores", "explore", "export_votes",
                              "findings", "maps"]  # fmt: skip
    gpu = {fn.api_name for fn in demo.fns.values() if fn.concurrency_id == "gpu"}  # the visitor limits' group
    assert {"findings", "compare_all"} <= gpu and app.SUGGESTED_QUESTIONS[0] == FINDINGS_QUESTION
    config = json.dumps(demo.get_config_file(), default=str)
    assert "not a medical device" in config and "Not for diagnosis" in config
    assert vqa.adapters[TUNED] in config and "Real chest X-ray (NIH ChestX-ray14): cardiomegaly" in config
    assert "closed_accuracy_marker" in config and "comparison.png" in config  # the report is on the results tab


def test_the_token_slider_reaches_a_longer_max_new_tokens(vqa, tmp_path):
    from cxr_vqa.generation import GenerationSettings

    demo = app.create_demo(vqa, votes_db=tmp_path / "v.sqlite", settings=GenerationSettings(max_new_tokens=600))
    (slider,) = [c for c in demo.get_config_file()["components"] if c["props"].get("label") == "Max new tokens"]
    assert slider["props"]["maximum"] == 600 and slider["props"]["value"] == 600


# --- inputs ---------------------------------------------------------------------------------------------------------


def test_film_is_shown_letterboxed_as_the_model_sees_it(handlers, tmp_path):
    image, film, status, *reset = handlers.load_film(str(FILM))
    assert image.size == (336, 336) and film.image is image
    assert film.sha256 == image_sha256(FILM)
    width, height = Image.open(FILM).size
    assert f"{width}×{height}" in status and reset == [[], [], "", "", None]
    ramp = np.tile(np.linspace(0, 4095, 200).astype(np.uint16), (120, 1))  # 200 wide x 120 high, 12-bit DICOM
    image, film, status, *_ = handlers.load_film(write(tmp_path / "film.dcm", dicom(ramp)))
    pixels = np.asarray(image)[..., 0]
    assert image.size == (336, 336) and pixels[:60].max() == 0  # letterbox bands above a wide film
    assert pixels[168, 10] < pixels[168, 320]  # the ramp keeps its direction


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("notes.txt", lambda: b"patient,report\n1,clear\n", "not an image: expected PNG, JPEG or DICOM"),
        ("cut.png", lambda: FILM.read_bytes()[:3000], "PNG image is truncated or corrupt"),
        ("bomb.png", bomb, "image too large"),
        ("sr.dcm", lambda: dicom(None), "DICOM file has no pixel data"),
    ],
    ids=["non-image", "truncated-png", "decompression-bomb", "dicom-without-pixels"],
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own, expected for the bomb
def test_bad_films_get_a_one_line_message(handlers, tmp_path, name, make, message):
    with pytest.warns(UserWarning, match=message):
        image, film, status, *_ = handlers.load_film(write(tmp_path / name, make()))
    assert image is None and film is None
    assert message in status and "\n" not in status
    with pytest.raises(gr.Error, match=NO_IMAGE.split(":")[0]):  # asking afterwards says there is no film
        run(handlers.ask(film, "Is there cardiomegaly?", None, *SETTINGS))


def test_question_cleaning_rules():
    assert clean_question("  Is there\tcardiomegaly?\n") == ("Is there cardiomegaly?", [])
    question, notes = clean_question("Is\x00 there\x1b[31m an effusion?\u202e")
    assert question == "Is there[31m an effusion?" and notes == ["removed 3 control character(s) from the question"]
    question, notes = clean_question("Is there <image> cardiomegaly?</s>", ["<image>", "</s>"])
    assert question == "Is there cardiomegaly?" and len(notes) == 2
    question, notes = clean_question("有心脏肥大吗？")
    assert question == "有心脏肥大吗？" and "fine-tuned on English" in notes[0]
    assert clean_question("Is there an effusión?")[1] == []  # accented Latin is not another script
    for empty in ("", "   ", "\x00\x07", None):
        with pytest.raises(UserError, match="empty question"):
            clean_question(empty)


def test_long_question_explains_the_token_limit(handlers):
    film = load_film(FILM, 336)
    with pytest.raises(gr.Error) as info:
        run(handlers.ask(film, "Is there cardiomegaly? " * 870, None, *SETTINGS))  # ~20,000 characters
    message = str(info.value)
    assert f"over the {MAX_QUESTION_TOKENS}-token limit" in message and "576 for the image" in message
    assert "4,096 tokens" in message and "\n" not in message


def test_control_characters_and_other_scripts_warn_but_answer(handlers):
    film = load_film(FILM, 336)
    with pytest.warns(UserWarning) as caught:
        frames = run(handlers.ask(film, "هل يوجد\x00 تضخم في القلب؟", None, *SETTINGS))
    messages = [str(w.message) for w in caught]
    assert any("control character" in m for m in messages) and any("English" in m for m in messages)
    assert frames[-1][4]["base"][0]["content"][-1]["text"] == "هل يوجد تضخم في القلب؟"


# --- side by side ---------------------------------------------------------------------------------------------------


def test_panes_stream_and_match_the_model_core(handlers, vqa):
    film = load_film(FILM, 336)
    frames = run(handlers.ask(film, "Is there cardiomegaly?", None, *SETTINGS))
    base_chat, tuned_chat, base_stats, tuned_stats, chats, box = frames[-1]
    conversation = add_question(None, "Is there cardiomegaly?")
    settings = APP_SETTINGS
    assert base_chat[-1]["content"] == vqa.answer([film.image], [conversation], [BASE], settings)[0].text
    assert tuned_chat[-1]["content"] == vqa.answer([film.image], [conversation], [TUNED], settings)[0].text
    assert base_chat[-1]["content"] != tuned_chat[-1]["content"]
    assert base_chat[0] == {"role": "user", "content": "Is there cardiomegaly?"} and box == ""
    assert len(frames) > 3  # streamed: partial answers arrived before the end
    partial = [f[0][-1]["content"] for f in frames[1:-1]]
    assert any(0 < len(p) < len(base_chat[-1]["content"]) for p in partial)
    for stats in (base_stats, tuned_stats):  # "0.49 s · 12 tokens · 24.5 tokens/s"
        seconds, tokens = re.fullmatch(r"([\d.]+) s · (\d+) tokens · [\d.]+ tokens/s", stats).groups()
        assert float(seconds) > 0 and 1 <= int(tokens) <= SETTINGS[0]


def test_a_page_closed_mid_answer_frees_the_model_within_a_few_tokens(handlers, vqa, monkeypatch):
    from cxr_vqa.generation import BatchStreamer

    steps = []
    put = BatchStreamer.put
    monkeypatch.setattr(BatchStreamer, "put", lambda streamer, value: (steps.append(1), put(streamer, value))[1])
    film = handlers.load_film(str(FILM))[1]
    asking = handlers.ask(film, "Is there cardiomegaly?", None, 512, 0.0, 1.0)
    next(asking), next(asking)  # the waiting panes, then the first token
    asking.close()  # what Gradio does when the browser disconnects
    closed_at = len(steps)
    assert vqa.lock.acquire(timeout=120)  # the generate, which holds it, has ended
    vqa.lock.release()
    assert len(steps) - closed_at <= 3  # not the 512 tokens asked for


def test_follow_up_continues_both_conversations_and_clear_resets(handlers, vqa):
    film = load_film(FILM, 336)
    first = run(handlers.ask(film, "Is there cardiomegaly?", None, *SETTINGS))[-1]
    second = run(handlers.ask(film, "Is there a pleural effusion?", first[4], *SETTINGS))[-1]
    chats = second[4]
    assert [len(chats["base"]), len(chats["tuned"])] == [4, 4]
    # each pane keeps its own model's earlier answer in its history
    assert chats["base"][1]["content"][0]["text"] == first[0][-1]["content"]
    assert chats["tuned"][1]["content"][0]["text"] == first[1][-1]["content"]
    settings = APP_SETTINGS
    tuned_conv = chats["tuned"][:3]
    assert second[1][-1]["content"] == vqa.answer([film.image], [tuned_conv], [TUNED], settings)[0].text
    assert len(second[0]) == 4  # user, answer, user, answer
    assert handlers.clear() == ([], [], "", "", None)


def test_settings_out_of_range_are_refused(handlers):
    film = load_film(FILM, 336)
    with pytest.raises(gr.Error, match="top_p must be in"):
        run(handlers.ask(film, "Is there cardiomegaly?", None, 12, 0.7, 0.0))


def test_without_adapter_the_tuned_pane_says_why(vqa_base_only, tmp_path):
    handlers = Handlers(vqa_base_only, VoteStore(tmp_path / "votes.sqlite"), settings=APP_SETTINGS)
    blind = Blind(vqa_base_only, handlers.votes, settings=APP_SETTINGS)
    film = load_film(FILM, 336)
    base_chat, tuned_chat, base_stats, tuned_stats, chats, _ = run(
        handlers.ask(film, "Is it normal?", None, *SETTINGS)
    )[-1]
    assert base_chat[-1]["content"] and tuned_chat == [] and tuned_stats == NO_ADAPTER
    base, tuned = handlers.compare(str(FILM), "Is it normal?")
    assert base and tuned == ""
    assert handlers.compare_scores(str(FILM), "Is it normal?")["tuned"] is None
    with pytest.raises(gr.Error, match=NO_BLIND.split(":")[0]):
        blind.answer(film, "Is it normal?", *SETTINGS)


def test_compare_endpoint_matches_core_and_refuses_bad_input(handlers, vqa):
    base, tuned = handlers.compare(str(FILM), "Is there cardiomegaly?")
    film = load_film(FILM, 336)
    answers = vqa.compare(film.image, add_question(None, "Is there cardiomegaly?"), settings=APP_SETTINGS)
    assert (base, tuned) == (answers[BASE].text, answers[TUNED].text)
    with pytest.raises(gr.Error, match="no image"):
        handlers.compare(None, "Is there cardiomegaly?")
    with pytest.raises(gr.Error, match="empty question"):
        handlers.compare(str(FILM), " ")


# --- blind A/B and results ------------------------------------------------------------------------------------------


def test_compare_scores_gives_p_yes_for_closed_answers_only(handlers, vqa):
    film = load_film(FILM, 336)
    conversation = add_question(None, "Is there cardiomegaly?")
    answers = vqa.compare(film.image, conversation, APP_SETTINGS)
    result = handlers.compare_scores(str(FILM), "Is there cardiomegaly?")
    for side, model in (("base", BASE), ("tuned", TUNED)):
        assert result[side]["answer"] == answers[model].text
        expected = answers[model].p_yes if answers[model].is_closed else None
        assert result[side]["p_yes"] == (pytest.approx(expected) if expected is not None else None)
    assert handlers.compare_all(str(FILM), "Is there cardiomegaly?") == {m: a.text for m, a in answers.items()}


def test_a_closed_answer_shows_its_p_yes_under_the_pane():
    from app_lib.handlers import pane_stats
    from cxr_vqa.answers import Answer

    assert pane_stats(0.5, 4, Answer("Yes, there is.", 0.934)).endswith("· P(yes) 0.93")
    assert "P(yes)" not in pane_stats(0.5, 4, Answer("An enlarged heart.", 0.934))  # open answers: nothing extra
    # a findings report that opens with "No ..." is not a no
    assert "P(yes)" not in pane_stats(0.5, 20, Answer("No pneumothorax. The heart is enlarged.", 0.01), report=True)


# --- blind A/B and results ------------------------------------------------------------------------------------------


def test_blind_vote_is_stored_with_both_models_and_hash_not_image(blind, vqa, tmp_path):
    film = load_film(FILM, 336)
    answer_a, answer_b, trial, _ = blind.answer(film, "Is there cardiomegaly?", *SETTINGS)
    conversation = add_question(None, "Is there cardiomegaly?")
    base, tuned = [a.text for a in vqa.answer([film.image] * 2, [conversation] * 2, [BASE, TUNED], APP_SETTINGS)]
    assert {answer_a, answer_b} == {base, tuned} and base != tuned
    assert {trial.model_a, trial.model_b} == {BASE, TUNED}
    assert answer_a == (base if trial.model_a == BASE else tuned)
    reveal, pending = blind.vote("A", trial)
    assert pending is None and "Vote stored" in reveal and f"**A** was **{trial.model_a}**" in reveal
    with pytest.raises(gr.Error, match=VOTE_FIRST.split(":")[0]):  # one vote per pair
        blind.vote("B", pending)
    with sqlite3.connect(blind.votes.path) as con:
        con.row_factory = sqlite3.Row
        rows = [dict(r) for r in con.execute("SELECT * FROM ab_votes")]
    assert len(rows) == 1
    row = rows[0]
    assert (row["question"], row["answer_a"], row["answer_b"]) == ("Is there cardiomegaly?", answer_a, answer_b)
    assert (row["model_a"], row["model_b"], row["vote"], row["winner"]) == (trial.model_a, trial.model_b, "A",
                                                                             trial.model_a)  # fmt: skip
    sources = {row["model_a"]: row["source_a"], row["model_b"]: row["source_b"]}
    assert sources == {BASE: vqa.base_name, TUNED: vqa.adapters[TUNED]}
    assert row["image_sha256"] == image_sha256(FILM)
    assert not any(isinstance(v, bytes) for v in row.values())  # no image bytes anywhere
    assert "1 votes in all" in blind.results()


def test_blind_sides_are_drawn_at_random(blind):
    film = load_film(FILM, 336)
    sides = {blind.answer(film, "Is there cardiomegaly?", 1, 0.0, 1.0)[2].model_a for _ in range(6)}
    assert sides == {BASE, TUNED}


@pytest.mark.parametrize(
    "successes, total, expected",
    # (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.96, worked out by hand
    [(0, 3, (0.0, 0.5615)), (3, 3, (0.4385, 1.0)), (7, 10, (0.3968, 0.8922)), (0, 0, (0.0, 1.0))],
)
def test_wilson_interval_known_values(successes, total, expected):
    assert wilson_interval(successes, total) == pytest.approx(expected, abs=1e-4)


def test_results_table_and_report(tmp_path):
    assert "No blind votes yet" in results_markdown([])
    assert "No evaluation report" in load_report(None).note
    (tmp_path / "metrics.json").write_text(json.dumps({"base": {"closed_accuracy": 0.5}}))
    (tmp_path / "report.md").write_text("# Evaluation\n\n| metric | base |\n|---|---|\n| acc | 0.500 |\n\n"
                                        "![headline](comparison.png)\n")  # fmt: skip
    Image.new("RGB", (8, 8)).save(tmp_path / "comparison.png")
    report = load_report(tmp_path)
    assert report.metrics == {"base": {"closed_accuracy": 0.5}} and report.plots == {
        "comparison.png": str(tmp_path / "comparison.png")}  # fmt: skip
    # the figure line goes (the figure is an image beside), the heading goes under the page's title
    assert report.markdown == "## Evaluation\n\n| metric | base |\n|---|---|\n| acc | 0.500 |"
    assert "not found" not in report.note
    (tmp_path / "metrics.json").write_text("{not json")
    (tmp_path / "report.md").unlink()
    note = load_report(tmp_path).note
    assert "metrics.json could not be read (JSONDecodeError)" in note and "report.md not found" in note


def test_a_comparison_png_still_being_written_is_a_note_not_a_crash(tmp_path):
    Image.effect_noise((200, 200), 50).convert("RGB").save(tmp_path / "comparison.png")  # ~100 KB: two IDAT chunks
    whole = (tmp_path / "comparison.png").read_bytes()
    first_idat = whole.index(b"IDAT") - 4
    second = first_idat + 12 + int.from_bytes(whole[first_idat : first_idat + 4], "big")
    for cut in (5, 2000, second + 4):  # in its header, in its data, in the next chunk's head: three errors of PIL
        (tmp_path / "comparison.png").write_bytes(whole[:cut])
        note, _, plot, *_ = report_updates(tmp_path)  # PLOTS' order: comparison.png first
        assert "comparison.png could not be read: press Refresh" in note and plot.visible is False, cut
    (tmp_path / "comparison.png").write_bytes(whole)
    note, _, plot, *_ = report_updates(tmp_path)
    assert "could not be read" not in note and plot.visible is not False

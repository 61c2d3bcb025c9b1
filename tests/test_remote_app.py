"""The app with remote models beside the local ones: its handlers (panes streamed, failures in their own pane, blind
trials and votes), over HTTP with gradio_client (/compare_all, /compare, /findings), and `--base none` as a process.
The remote side is the loopback vision server of tests/vision_server.py, reached through the real `openai` client."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from vision_server import VisionServer

import app
from app_lib.blind import Blind
from app_lib.config import parse_config
from app_lib.findings_view import FINDINGS_MIN_NEW_TOKENS
from app_lib.handlers import NO_LOCAL, Handlers
from app_lib.ratings import results_markdown
from app_lib.votes import VoteStore
from cxr_vqa.endpoint import Backoff
from cxr_vqa.findings import FINDINGS_QUESTION
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.images import load_film
from cxr_vqa.labeler import label_report
from cxr_vqa.lineup import Lineup
from cxr_vqa.model import load_model
from cxr_vqa.remote import RemoteModel, parse_remote
from cxr_vqa.template import add_question
from cxr_vqa.vqa import BASE, TUNED

ROOT = Path(__file__).resolve().parents[1]
FILM = ROOT / "assets" / "examples" / "pleural_effusion.png"
QUESTION = "Is there a pleural effusion?"
SETTINGS = GenerationSettings(max_new_tokens=12)
SLIDERS = (12, 0.0, 1.0)
MODEL = "vision-test"
REPORT = "The heart is enlarged. Small right pleural effusion. No pneumothorax."  # the remote model's findings


@pytest.fixture(scope="module")
def vqa(tiny_model_dir, random_adapter_dir):
    return load_model(tiny_model_dir, random_adapter_dir, device="cpu")


@pytest.fixture(scope="module")
def server():
    with VisionServer({MODEL}, findings={MODEL: REPORT}) as server:
        yield server


@pytest.fixture(autouse=True)
def healthy(server):
    server.reset()  # each test starts with a server that answers


def remote_model(server) -> RemoteModel:
    return RemoteModel(parse_remote(f"vis={server.url}#{MODEL}"), timeout=5, max_retries=1, backoff=Backoff(0.01))


def remote_answer(film_path: Path) -> tuple[str, float]:
    """(answer, P(yes)) of the vision server for this film, from the mean grey of the letterboxed picture; its 11
    tokens fit the 12 new tokens these tests allow."""
    mean = float(np.asarray(load_film(str(film_path), 336).image.convert("L"), dtype=float).mean())
    text = f"{'Yes' if mean >= 127.5 else 'No'}, mean grey {mean:.1f} on a 336x336 film, turn 1."
    return text, min(max(mean / 255, 0.02), 0.98)


def ask(handlers: Handlers, question: str = QUESTION, chats=None) -> list[tuple]:
    film = handlers.vqa.prepare_film(str(FILM))
    return list(handlers.ask(film, question, chats, *SLIDERS))


def test_panes_stream_remote_beside_local_and_each_matches_its_model(vqa, server, tmp_path):
    h = Handlers(Lineup(vqa, [remote_model(server)]), VoteStore(tmp_path / "v.sqlite"), settings=SETTINGS)
    assert h.panes == [BASE, TUNED, "vis"]
    frames = ask(h)
    *panes, base_stats, tuned_stats, vis_stats, chats, _ = frames[-1]
    local = vqa.compare(load_film(str(FILM), 336).image, add_question(None, QUESTION), SETTINGS)
    texts = [pane[-1]["content"] for pane in panes]
    assert texts == [local[BASE].text, local[TUNED].text, remote_answer(FILM)[0]]
    remote_texts = [frame[2][-1]["content"] for frame in frames[1:-1] if frame[2]]
    assert len({t for t in remote_texts if t not in ("", "…")}) > 2  # the remote pane grew piece by piece
    assert vis_stats.endswith(f"tokens/s · P(yes) {remote_answer(FILM)[1]:.2f}")  # from the endpoint's logprobs
    assert "tokens" in base_stats and "tokens" in tuned_stats and chats["vis"][-1]["role"] == "assistant"
    # a follow-up continues the remote model's own conversation
    ask(h, "Is it large?", chats)
    assert server.requests[-1]["history"] == [texts[2]] and server.requests[-1]["turns"] == 2


def test_a_down_remote_fails_its_own_pane_in_one_line_and_the_others_answer(vqa, server, tmp_path):
    server.fail("500", times=None)
    h = Handlers(Lineup(vqa, [remote_model(server)]), VoteStore(tmp_path / "v.sqlite"), settings=SETTINGS)
    *panes, _, _, vis_stats, chats, _ = ask(h)[-1]
    line = panes[2][-1]["content"]
    assert line.startswith("error: vis did not answer: HTTP 500") and "\n" not in line and vis_stats == "no answer"
    assert panes[0][-1]["content"] and panes[1][-1]["content"] and chats["vis"] == []  # no half turn kept


def test_blind_trials_draw_the_remote_model_and_votes_keep_its_url_not_its_key_or_film(vqa, server, tmp_path,
                                                                                         monkeypatch):  # fmt: skip
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-stored")
    store = VoteStore(tmp_path / "votes.sqlite")
    blind = Blind(Lineup(vqa, [remote_model(server)]), store, settings=SETTINGS, rng=random.Random(3))
    film = blind.vqa.prepare_film(str(FILM))
    drawn = set()
    for _ in range(6):
        *_, trial, _ = blind.answer(film, QUESTION, *SLIDERS)
        drawn |= {trial.model_a, trial.model_b}
        blind.vote("A", trial)
    assert "vis" in drawn
    votes = store.all()
    sources = {v["model_a"]: v["source_a"] for v in votes} | {v["model_b"]: v["source_b"] for v in votes}
    assert sources["vis"] == f"{server.url}#{MODEL}"
    raw = (tmp_path / "votes.sqlite").read_bytes()
    assert b"sk-never" not in raw and b"base64" not in raw and b"\x89PNG" not in raw
    assert "vis" in results_markdown(votes)  # rated beside the local models
    server.fail("500", times=None)
    with pytest.raises(gr.Error, match="vis did not answer"):  # a pair with one answer is no trial
        for _ in range(10):
            blind.answer(film, QUESTION, *SLIDERS)


def test_base_none_serves_remote_models_only(server, tmp_path):
    h = Handlers(Lineup(None, [remote_model(server)]), VoteStore(tmp_path / "v.sqlite"), settings=SETTINGS)
    assert h.panes == ["vis"]
    (pane, _stats, chats, _) = ask(h)[-1]
    assert pane[-1]["content"] == remote_answer(FILM)[0] and list(chats) == ["vis"]
    assert h.compare_all(str(FILM), QUESTION) == {"vis": remote_answer(FILM)[0]}
    with pytest.raises(gr.Error, match=NO_LOCAL.split(":")[0].replace("(", r"\(").replace(")", r"\)")):
        h.compare(str(FILM), QUESTION)


def test_a_batch_asks_the_remote_model_every_film_and_question_beside_the_local_ones(vqa, server, tmp_path):
    from app_lib.batch import BatchLimits
    from app_lib.batch_tab import BatchView

    films = [ROOT / "assets" / "examples" / name for name in ("normal.png", "pleural_effusion.png")]
    view = BatchView(Lineup(vqa, [remote_model(server)]), VoteStore(tmp_path / "v.sqlite"), settings=SETTINGS,
                     limits=BatchLimits(batch_size=4))  # fmt: skip
    result = view.batch([str(f) for f in films], f"{QUESTION}\nIs it normal?")
    assert [(r["film"], r["question"]) for r in result["rows"]] == [
        (f.name, q) for f in films for q in (QUESTION, "Is it normal?")]  # fmt: skip
    for row, film in zip(result["rows"], [f for f in films for _ in range(2)], strict=True):
        assert list(row["answers"]) == [BASE, TUNED, "vis"]
        assert row["answers"]["vis"] == remote_answer(film)[0]  # each film the remote model was sent was its own
        assert row["p_yes"]["vis"] == pytest.approx(remote_answer(film)[1], abs=1e-3)
    server.fail("500", times=None)
    down = view.batch([str(films[0])], QUESTION)["rows"][0]["answers"]
    assert down["vis"].startswith("error: vis did not answer") and down[BASE] and down[TUNED]


def test_remote_options_are_checked_before_anything_loads(run_cli, server):
    ok = parse_config(["--base", "none", "--remote", f"vis={server.url}#{MODEL}"])
    assert ok.base == "none" and ok.remote == [f"vis={server.url}#{MODEL}"]
    for argv, says in [
        (["--base", "none"], "serves remote models only"),
        (["--base", "none", "--adapter", "runs/a", "--remote", f"vis={server.url}#m"], "serves remote models only"),
        (["--remote", "vis=http://h/v1#m#sk-proj-Secret1"], "never the key itself"),
        (["--remote", "base=http://127.0.0.1:1/v1#m"], "already a model's"),
    ]:
        code, line = run_cli(app.main, argv)
        assert code == 2 and says in line and "Secret1" not in line


# -- over HTTP -------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def client(vqa, server, tmp_path_factory):
    votes_db = tmp_path_factory.mktemp("votes") / "votes.sqlite"
    demo = app.create_demo(vqa, remotes=[remote_model(server)], votes_db=votes_db, settings=SETTINGS)
    _, url, _ = app.serve(demo, host="127.0.0.1", port=free_port(), queue_size=4, max_file_size="20mb",
                          prevent_thread_lock=True, quiet=True)  # fmt: skip
    yield Client(url, verbose=False)
    demo.close()


def test_compare_all_over_http_answers_base_adapter_and_remote(client, vqa, server):
    answers = client.predict(handle_file(str(FILM)), QUESTION, api_name="/compare_all")
    local = vqa.compare(load_film(str(FILM), 336).image, add_question(None, QUESTION), SETTINGS)
    assert answers == {BASE: local[BASE].text, TUNED: local[TUNED].text, "vis": remote_answer(FILM)[0]}
    asked = server.count["chat"]
    assert tuple(client.predict(handle_file(str(FILM)), QUESTION, api_name="/compare")) == (
        local[BASE].text, local[TUNED].text)  # fmt: skip
    scores = client.predict(handle_file(str(FILM)), QUESTION, api_name="/compare_scores")
    assert set(scores) == {"base", "tuned"} and server.count["chat"] == asked  # /compare asks no remote model


def test_compare_all_over_http_with_the_remote_down_says_so_in_one_line(client, vqa, server):
    server.fail("500", times=None)
    answers = client.predict(handle_file(str(FILM)), QUESTION, api_name="/compare_all")
    assert answers["vis"].startswith("error: vis did not answer: HTTP 500") and "\n" not in answers["vis"]
    assert answers[BASE] and answers[TUNED]


def test_findings_over_http_gives_each_models_report_and_its_labels(client, vqa, server):
    found = client.predict(handle_file(str(FILM)), api_name="/findings")
    settings = GenerationSettings(max_new_tokens=FINDINGS_MIN_NEW_TOKENS)  # the app's 12 tokens, raised for a report
    local = vqa.compare(load_film(str(FILM), 336).image, add_question(None, FINDINGS_QUESTION), settings)
    texts = {BASE: local[BASE].text, TUNED: local[TUNED].text, "vis": REPORT}
    assert found == {model: {"text": text, "labels": label_report(text)} for model, text in texts.items()}
    assert found["vis"]["labels"] == {"Cardiomegaly": 1, "Pneumothorax": 0, "Pleural Effusion": 1}
    assert found[BASE]["text"] != found[TUNED]["text"] and server.requests[-1]["questions"] == [FINDINGS_QUESTION]


def test_findings_over_http_with_the_remote_down_names_why_and_gives_no_labels(client, server):
    server.fail("500", times=None)
    found = client.predict(handle_file(str(FILM)), api_name="/findings")
    assert found["vis"]["text"].startswith("error: vis did not answer: HTTP 500") and found["vis"]["labels"] is None
    assert all(found[m]["text"] and found[m]["labels"] == label_report(found[m]["text"]) for m in (BASE, TUNED))


def test_base_none_starts_a_server_that_loads_nothing(server, tmp_path):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hub"), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, str(ROOT / "app.py"), "--base", "none", "--remote", f"vis={server.url}#{MODEL}",
            "--port", str(port), "--votes-db", str(tmp_path / "v.sqlite")]  # fmt: skip
    process = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(600):
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        answers = Client(url, verbose=False).predict(handle_file(str(FILM)), QUESTION, api_name="/compare_all")
        assert answers == {"vis": remote_answer(FILM)[0]}
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "loading" not in output and not (tmp_path / "empty-hub").exists()  # no model loaded, nothing downloaded

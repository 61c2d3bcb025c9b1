""" "Where did it look?" in the app: through its handlers (the tiny checkpoint in 4-bit, as the app serves it, and
a random adapter), over HTTP as `/maps`, and once in a real browser with a screenshot."""

from __future__ import annotations

import os
import random
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from test_app_http import server, vqa  # noqa: F401  (fixtures: the tiny model in 4-bit as the app serves it, served)
from test_browser import free_port

from app_lib.handlers import NO_IMAGE, Handlers
from app_lib.maps import ASK_FIRST, NOT_AVAILABLE, Maps
from app_lib.votes import VoteStore
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.lineup import Lineup
from cxr_vqa.remote import RemoteModel, parse_remote
from cxr_vqa.template import add_question, assistant_turn
from cxr_vqa.vqa import BASE, TUNED

ROOT = Path(__file__).resolve().parents[1]
FILM = ROOT / "assets" / "examples" / "pleural_effusion.png"
SETTINGS = GenerationSettings(max_new_tokens=10)
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def handlers(vqa, tmp_path):  # noqa: F811
    votes = VoteStore(tmp_path / "votes.sqlite")
    return Handlers(vqa, votes, settings=SETTINGS), Maps(vqa, votes, settings=SETTINGS, rng=random.Random(0))


def asked(h: Handlers, question: str = "Is there a pleural effusion?"):
    film = h.load_film(str(FILM))[1]
    *_, chats, _ = list(h.ask(film, question, None, 10, 0.0, 1.0))[-1]
    return film, chats


def test_the_button_maps_every_panes_last_answer(handlers, vqa):  # noqa: F811
    h, maps = handlers
    film, chats = asked(h)
    gallery, status = maps.show_maps(film, chats)
    assert [caption.split(":")[0] for _, caption in gallery] == ["Base", "Fine-tuned"]
    for (picture, caption), model in zip(gallery, (BASE, TUNED), strict=True):
        assert picture.size == film.image.size and chats[model][-1]["content"][0]["text"][:20] in caption
    assert "2 model(s)" in status
    # the maps are the core's, for the answers the panes show
    answers = [chats[m][-1]["content"][0]["text"] for m in (BASE, TUNED)]
    expected = vqa.relevance([film.image] * 2, [chats[BASE][:-1], chats[TUNED][:-1]], answers, [BASE, TUNED])
    explained = maps.explain(film, chats)
    for model, found in zip((BASE, TUNED), expected, strict=True):
        np.testing.assert_allclose(explained[model][1].grid, found.grid, atol=1e-5)


def test_a_follow_up_is_explained_in_its_own_conversation(handlers):
    h, maps = handlers
    film, chats = asked(h)
    *_, chats, _ = list(h.ask(film, "Is the heart enlarged?", chats, 10, 0.0, 1.0))[-1]
    explained = maps.explain(film, chats)
    assert all(len(chats[m]) == 4 and explained[m][0] == chats[m][-1]["content"][0]["text"] for m in (BASE, TUNED))


def test_a_model_without_weights_here_says_not_available(handlers):
    h, maps = handlers
    film, chats = asked(h)
    conversation = add_question(None, "Is there a pleural effusion?")
    chats["remote-gpt"] = [*conversation, assistant_turn("Yes.")]  # a remote model's pane (issue 23)
    gallery, status = maps.show_maps(film, chats)
    assert len(gallery) == 2 and NOT_AVAILABLE in status and "remote-gpt" in status
    assert maps.explain(film, chats)["remote-gpt"] == ("Yes.", None)


def test_maps_says_why_a_remote_model_gave_no_answer_as_compare_all_does(vqa, tmp_path):  # noqa: F811
    gone = RemoteModel(parse_remote(f"gone=http://127.0.0.1:{free_port()}/v1#m"), timeout=2, max_retries=0)
    lineup, votes = Lineup(vqa, [gone]), VoteStore(tmp_path / "votes.sqlite")
    found = Maps(lineup, votes, settings=SETTINGS).maps(str(FILM), "Is there a pleural effusion?")
    alone = Handlers(lineup, votes, settings=SETTINGS).compare_all(str(FILM), "Is there a pleural effusion?")
    assert {m: found[m]["answer"] for m in found} == alone
    assert alone["gone"].startswith("error: gone did not answer: cannot connect to 127.0.0.1")
    assert found["gone"]["available"] is False and found[BASE]["available"] is True


@pytest.mark.parametrize("state, message", [("no film", NO_IMAGE), ("no answer", ASK_FIRST)])
def test_nothing_to_explain_is_one_line(handlers, state, message):
    h, maps = handlers
    film = None if state == "no film" else h.load_film(str(FILM))[1]
    with pytest.raises(gr.Error, match=message[:30]):
        maps.show_maps(film, None)


def test_maps_over_http_beside_the_unchanged_compare_endpoints(server, vqa):  # noqa: F811
    client = Client(server["url"], verbose=False)
    film, question = handle_file(str(FILM)), "Is there a pleural effusion?"
    got = client.predict(film, question, api_name="/maps")
    assert set(got) == {BASE, TUNED}
    for entry in got.values():
        grid = np.array(entry["map"])
        assert entry["available"] and grid.shape == (24, 24) and grid.min() >= 0 and grid.max() == pytest.approx(1)
        assert entry["sinks"] == []
    answers = client.predict(film, question, api_name="/compare_all")
    assert answers == {m: e["answer"] for m, e in got.items()}
    loaded = vqa.prepare_film(str(FILM))
    conversation = add_question(None, question)
    expected = vqa.relevance([loaded.image] * 2, [conversation] * 2, [answers[BASE], answers[TUNED]], [BASE, TUNED])
    np.testing.assert_allclose(np.array(got[TUNED]["map"]), expected[1].grid, atol=1e-3)  # JSON keeps 4 decimals
    assert client.predict(film, question, api_name="/compare") == (answers[BASE], answers[TUNED])


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install chromium)")
def test_where_did_it_look_in_a_browser(server, tmp_path):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*args, "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.set_default_timeout(60_000)
        page.goto(server["url"])
        page.locator("#film-file input[type=file]").set_input_files(str(FILM))
        expect(page.locator("#film-status")).to_contain_text("letterboxed")
        page.locator("#maps-button").click()
        expect(page.locator(".toast-body")).to_contain_text("ask a question first")
        page.locator("#question textarea").fill("Is there a pleural effusion?")
        page.locator("#ask").click()
        for pane in ("base", "tuned"):
            expect(page.locator(f"#{pane}-stats")).to_contain_text("tokens/s")
        page.locator("#maps-button").click()
        expect(page.locator("#maps-status")).to_contain_text("Maps of 2 model(s)")
        expect(page.locator("#maps img")).to_have_count(2)
        expect(page.locator("#maps")).to_contain_text("Fine-tuned")
        page.screenshot(path=str(tmp_path / "where_did_it_look.png"), full_page=True)
        page.locator("#clear").click()  # old maps go with the answers they explained
        expect(page.locator("#maps img")).to_have_count(0)
        browser.close()
    print(f"screenshot: {tmp_path / 'where_did_it_look.png'}")

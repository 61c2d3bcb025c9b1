"""One pass through the app in a real headless browser (Playwright + Debian's Chromium): upload a film and ask, see
both panes fill; upload a broken file and see its message; cast a blind vote, find it in SQLite and in the Results
tab's ratings as soon as the tab is opened.

Needs /usr/bin/chromium (`apt-get install chromium`); Playwright's own browser download is not used.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path

import pytest

import app
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.model import load_model

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
FILM = ROOT / "assets" / "examples" / "cardiomegaly.png"
TIMEOUT_MS = 60_000  # a loaded 2-core CI machine renders Gradio slowly

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install chromium)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(vqa, tmp_path_factory):
    votes_db = tmp_path_factory.mktemp("votes") / "votes.sqlite"
    demo = app.create_demo(vqa, votes_db=votes_db, settings=GenerationSettings(max_new_tokens=16))
    _, url, _ = app.serve(
        demo,
        host="127.0.0.1",
        port=free_port(),
        queue_size=8,
        max_file_size="5mb",
        prevent_thread_lock=True,
        quiet=True,
    )
    return demo, {"url": url, "votes_db": votes_db}


@pytest.fixture(scope="module")
def server(tiny_model_dir, random_adapter_dir, tmp_path_factory):
    demo, served = serve(load_model(tiny_model_dir, random_adapter_dir, device="cpu"), tmp_path_factory)
    yield served
    demo.close()


@pytest.fixture(scope="module")
def server_two_adapters(tiny_model_dir, random_adapter_dir, second_adapter_dir, tmp_path_factory):
    adapters = [f"rank8={random_adapter_dir}", f"rank4={second_adapter_dir}"]
    demo, served = serve(load_model(tiny_model_dir, adapters, device="cpu"), tmp_path_factory)
    yield served
    demo.close()


def open_page(url):
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*args, "--disable-sync"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        yield page
        browser.close()


@pytest.fixture
def page(server):
    yield from open_page(server["url"])


def upload(page, path: Path) -> None:
    page.locator("#film-file input[type=file]").set_input_files(str(path))


def test_ask_bad_upload_and_blind_vote_in_a_browser(page, server, tmp_path):
    from playwright.sync_api import expect

    expect(page.locator("#notice")).to_contain_text("not a medical device")
    upload(page, FILM)
    expect(page.locator("#film-status")).to_contain_text("letterboxed to 336×336")
    expect(page.locator("#film-view img")).to_be_visible()
    page.locator("#question textarea").fill("Is there cardiomegaly?")
    page.locator("#ask").click()
    for pane in ("base", "tuned"):
        expect(page.locator(f"#{pane}-stats")).to_contain_text("tokens/s")
        expect(page.locator(f"#{pane}-chat")).to_contain_text("Is there cardiomegaly?")
    base_text = page.locator("#base-chat [data-testid=bot]").last.inner_text()
    tuned_text = page.locator("#tuned-chat [data-testid=bot]").last.inner_text()
    assert base_text.strip() and tuned_text.strip() and base_text != tuned_text
    page.screenshot(path=str(tmp_path / "side_by_side.png"), full_page=True)

    broken = tmp_path / "broken.png"
    broken.write_bytes(FILM.read_bytes()[:3000])
    page.locator("#film-file button[aria-label='Clear']").first.click()
    upload(page, broken)
    expect(page.locator("#film-status")).to_contain_text("PNG image is truncated or corrupt")
    page.screenshot(path=str(tmp_path / "bad_upload.png"), full_page=True)

    page.locator("#film-file button[aria-label='Clear']").first.click()
    upload(page, FILM)
    expect(page.locator("#film-status")).to_contain_text("letterboxed")
    page.get_by_role("tab", name="Blind A/B").click()
    page.locator("#question textarea").fill("Is there cardiomegaly?")
    page.locator("#blind").click()
    expect(page.locator("#reveal")).to_contain_text("Vote to reveal")
    assert page.locator("#answer-a textarea").input_value() and page.locator("#answer-b textarea").input_value()
    page.locator("#vote-a").click()
    expect(page.locator("#reveal")).to_contain_text("Vote stored")
    page.screenshot(path=str(tmp_path / "blind.png"), full_page=True)
    page.get_by_role("tab", name="Results").click()  # the page loaded before the vote; no Refresh pressed
    expect(page.locator("#results")).to_contain_text("1 votes in all")
    with sqlite3.connect(server["votes_db"]) as con:
        rows = con.execute("SELECT vote, model_a, winner, question FROM ab_votes").fetchall()
    assert len(rows) == 1 and rows[0][0] == "A" and rows[0][1] == rows[0][2] and rows[0][3] == "Is there cardiomegaly?"
    print(f"screenshots in {tmp_path}")


def test_two_adapters_fill_three_panes_in_a_browser(server_two_adapters, tmp_path):
    from playwright.sync_api import expect

    for page in open_page(server_two_adapters["url"]):
        upload(page, FILM)
        expect(page.locator("#film-status")).to_contain_text("letterboxed to 336×336")
        page.locator("#question textarea").fill("Is there cardiomegaly?")
        page.locator("#ask").click()
        texts = []
        for pane in ("base", "model-rank8", "model-rank4"):
            expect(page.locator(f"#{pane}-stats")).to_contain_text("tokens/s")
            texts.append(page.locator(f"#{pane}-chat [data-testid=bot]").last.inner_text().strip())
        assert all(texts) and len(set(texts)) == 3
        expect(page.locator("#models")).to_contain_text("rank4")
        page.screenshot(path=str(tmp_path / "three_panes.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'three_panes.png'}")

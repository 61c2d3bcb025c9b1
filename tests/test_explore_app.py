"""The Explore and Batch tabs served: `/explore` and `/batch` over HTTP with gradio_client, as a script calls them,
and one row of the evaluation chosen in a real browser (Chromium), its film and question in the side-by-side view
and answered again by the live models."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from test_browser import CHROMIUM, free_port, open_page

import app
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.model import load_model

EXAMPLES = Path(__file__).resolve().parents[1] / "assets" / "examples"


@pytest.fixture(scope="module")
def server(synthetic_report, coarse_model, tmp_path_factory):
    vqa = load_model(*coarse_model, load_in_4bit=False, device="cpu")
    votes_db = tmp_path_factory.mktemp("votes") / "votes.sqlite"
    demo = app.create_demo(vqa, votes_db=votes_db, report_dir=synthetic_report, settings=GenerationSettings(4))
    _, url, _ = app.serve(demo, host="127.0.0.1", port=free_port(), queue_size=8, max_file_size="5mb",
                          prevent_thread_lock=True, quiet=True)  # fmt: skip
    yield url
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server, verbose=False)


def test_explore_over_http(client, synthetic_report):
    records = [json.loads(line) for line in (synthetic_report / "predictions.jsonl").read_text().splitlines()]
    everything = client.predict("", "", "", False, api_name="/explore")
    assert everything == {"total": len(records), "ids": [r["id"] for r in records], "complete": True}
    finding = next(r["finding"] for r in records if r["finding"])  # a study opens with its findings report (none)
    wanted = [r["id"] for r in records if r["finding"] == finding and not r["scores"]["tuned"]["correct"]]
    assert client.predict(finding, "tuned", "wrong", False, api_name="/explore") == {
        "total": len(wanted), "ids": wanted, "complete": True}  # fmt: skip
    with pytest.raises(AppError, match="unknown model 'tuned_blank'"):
        client.predict("", "tuned_blank", "right", False, api_name="/explore")


def test_batch_over_http(client, tmp_path):
    archive = tmp_path / "films.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(EXAMPLES / "normal.png", "normal.png")
        z.writestr("broken.png", (EXAMPLES / "normal.png").read_bytes()[:1000])
    files = [handle_file(str(EXAMPLES / "cardiomegaly.png")), handle_file(str(archive))]
    result = client.predict(files, "Is there cardiomegaly?\nIs there edema?", api_name="/batch")
    assert [(r["film"], r["question"]) for r in result["rows"]] == [
        (film, q) for film in ("cardiomegaly.png", "normal.png") for q in ("Is there cardiomegaly?", "Is there edema?")
    ]
    assert all(set(r["answers"]) == set(r["p_yes"]) == {"base", "tuned"} for r in result["rows"])
    assert [e["film"] for e in result["errors"]] == ["broken.png"]
    assert "truncated or corrupt" in result["errors"][0]["error"]
    base, tuned = client.predict(handle_file(str(EXAMPLES / "cardiomegaly.png")), "Is there cardiomegaly?",
                                 api_name="/compare")  # fmt: skip
    assert (base, tuned) == tuple(result["rows"][0]["answers"][m] for m in ("base", "tuned"))  # the same models


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install chromium)")
def test_choosing_a_row_in_the_browser_loads_its_film_and_question(server, synthetic_report, tmp_path):
    from playwright.sync_api import expect

    records = [json.loads(line) for line in (synthetic_report / "predictions.jsonl").read_text().splitlines()]
    for page in open_page(server):
        page.get_by_role("tab", name="Explore the evaluation").click()
        expect(page.locator("#explore-note")).to_contain_text(f"{len(records):,} questions")
        expect(page.locator("#explore-page")).to_contain_text(f"of {len(records):,}")
        rows = page.locator("#explore-table .virtual-row")
        expect(rows.first.locator("img")).to_be_visible()  # the thumbnail
        page.locator("#explore-kind").get_by_label("open").check()  # a filter: open questions only
        chosen = next(r for r in records if r["kind"] == "open")
        expect(rows.first).to_contain_text(chosen["id"])
        rows.first.locator("[role=gridcell]").nth(4).click()
        expect(page.locator("#film-status")).to_contain_text("letterboxed to 336×336")
        expect(page.locator("#question textarea")).to_have_value(chosen["question"])
        expect(page.locator("#explore-status")).to_contain_text(chosen["id"])
        page.locator("#ask").click()
        for pane in ("base", "tuned"):
            expect(page.locator(f"#{pane}-stats")).to_contain_text("tokens/s")
            expect(page.locator(f"#{pane}-chat")).to_contain_text(chosen["question"])
        page.screenshot(path=str(tmp_path / "explore_row_in_side_by_side.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'explore_row_in_side_by_side.png'}")

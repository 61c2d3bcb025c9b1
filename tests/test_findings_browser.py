"""The Findings button in a real headless browser (Playwright + Debian's Chromium): two models write their findings
for one film, the chips come under each pane, the observations where the reports disagree are marked on both and
named above them, and a chip's tooltip quotes the words that decided it. The models are two model ids of the loopback
vision server, each writing its own report (no model to load). Screenshots go to a temporary folder, printed (-s): the
panes with their chips, one chip's words shown as a keyboard user sees them, and the whole page."""

from __future__ import annotations

import os
import re

import pytest
from test_browser import CHROMIUM, TIMEOUT_MS, free_port, open_page, upload
from test_findings_view import FILM, REPORTS
from vision_server import VisionServer

import app
from cxr_vqa.endpoint import Backoff
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.remote import RemoteModel, parse_remote

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with VisionServer(set(REPORTS), findings=REPORTS) as vision:
        remotes = [RemoteModel(parse_remote(f"{m}={vision.url}#{m}"), timeout=10, max_retries=0,
                               backoff=Backoff(0.01)) for m in REPORTS]  # fmt: skip
        votes_db = tmp_path_factory.mktemp("votes") / "votes.sqlite"
        demo = app.create_demo(None, remotes=remotes, votes_db=votes_db, settings=GenerationSettings(16))
        _, url, _ = app.serve(demo, host="127.0.0.1", port=free_port(), queue_size=8, max_file_size="5mb",
                              prevent_thread_lock=True, quiet=True)  # fmt: skip
        yield url
        demo.close()


def region(page, top: str = "#findings-summary", panes: str = "#panes") -> dict:
    """The page's area from the summary line to the bottom of the panes and their chips, in page coordinates."""
    return page.evaluate(
        """([top, panes]) => {
            const t = document.querySelector(top).getBoundingClientRect();
            const p = document.querySelector(panes).getBoundingClientRect();
            return {x: p.left + scrollX - 8, y: t.top + scrollY - 8, width: p.width + 16,
                    height: p.bottom - t.top + 16};
        }""",
        [top, panes],
    )


def test_findings_button_shows_each_reports_chips_and_marks_a_disagreement(url, tmp_path):
    from playwright.sync_api import expect

    for page in open_page(url):
        upload(page, FILM)
        expect(page.locator("#film-status")).to_contain_text("letterboxed to 336×336")
        page.locator("#question textarea").fill("Is it normal?")  # typed, not asked: the button leaves it be
        page.locator("#findings").click()
        a, b = (page.locator(f"#model-{m}-findings") for m in REPORTS)
        expect(a.locator(".fx-chip").first).to_be_visible(timeout=TIMEOUT_MS)  # once both reports are written
        expect(page.locator("#findings-summary")).to_contain_text(
            "Models disagree on: Cardiomegaly, Atelectasis, Pleural Effusion"
        )
        for pane, reading, decided_by in ((a, "present", "heart is enlarged"), (b, "absent", "Heart size")):
            chip = pane.locator(".fx-chip.fx-disagree[data-observation='Cardiomegaly']")
            expect(chip).to_contain_text(f"Cardiomegaly{reading}")  # the reading in words, beside its colour
            expect(chip.locator(".fx-flag")).to_have_text("≠")
            expect(chip).to_have_attribute("title", re.compile(f"matched “{decided_by}”"))
        expect(b.locator(".fx-chip[data-observation='Atelectasis']")).to_contain_text("uncertain")
        expect(a.locator(".fx-chip[data-observation='Pneumothorax']")).not_to_have_class(re.compile("fx-disagree"))
        expect(page.locator("#model-reader-a-chat")).to_contain_text(REPORTS["reader-a"])
        expect(page.locator("#question textarea")).to_have_value("Is it normal?")
        shots = {name: tmp_path / f"findings_{name}.png" for name in ("chips", "tooltip", "page")}
        page.screenshot(path=str(shots["chips"]), full_page=True, clip=region(page))
        chip = a.locator(".fx-chip[data-observation='Cardiomegaly']")
        chip.focus()
        page.keyboard.press("Shift+Tab")
        page.keyboard.press("Tab")  # reached with the keyboard: the tooltip's words show beneath the chip
        assert chip.evaluate("e => e.matches(':focus-visible')")
        shown = chip.evaluate("e => getComputedStyle(e, '::after').content")
        assert "matched “heart is enlarged”" in shown and "reader-b: absent" in shown
        page.screenshot(path=str(shots["tooltip"]), full_page=True, clip=region(page))
        page.screenshot(path=str(shots["page"]), full_page=True)
        print("screenshots:", *shots.values())

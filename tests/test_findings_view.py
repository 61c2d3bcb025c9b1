"""The Findings view's handlers: each report's chips (reading, sign and words, the phrase and trigger in the tooltip),
the disagreements marked on every pane and named in one line, model output escaped, and the Findings button asking
every model, in a new conversation, with room for a whole report. The models are two model ids of the loopback vision
server (tests/vision_server.py), each writing its own report: no model to load, so these run in a second or two."""

from __future__ import annotations

import html
from html.parser import HTMLParser
from pathlib import Path

import gradio as gr
import pytest
from vision_server import VisionServer

from app_lib.findings_html import KEY, chips_html, read_report, summary_html
from app_lib.findings_view import FINDINGS_MIN_NEW_TOKENS, FindingsView, findings_tokens
from app_lib.handlers import Handlers
from app_lib.votes import VoteStore
from cxr_vqa.endpoint import Backoff
from cxr_vqa.findings import FINDINGS_QUESTION
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.labeler import label_report
from cxr_vqa.lineup import Lineup
from cxr_vqa.remote import RemoteModel, parse_remote

FILM = Path(__file__).resolve().parents[1] / "assets" / "examples" / "cardiomegaly.png"
SLIDERS = (12, 0.0, 1.0)  # 12 new tokens: a findings report must still come whole
REPORTS = {  # 17 and 18 words: longer than the slider allows, shorter than FINDINGS_MIN_NEW_TOKENS
    "reader-a": "The heart is enlarged. Small left pleural effusion. No pneumothorax. Lungs are otherwise clear of "
    "consolidation.",
    "reader-b": "Heart size is normal. Possible atelectasis at the left base. No pleural effusion or pneumothorax.",
}
DISAGREE = ["Cardiomegaly", "Atelectasis", "Pleural Effusion"]  # a: present, not mentioned, present; b: the opposite


class Chips(HTMLParser):
    """The chips of one pane's HTML: {observation: (reading, disagree?, title, visible text)}, and every tag seen."""

    def __init__(self, markup: str):
        super().__init__()
        self.chips, self.tags, self._open = {}, [], None
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "li":
            self._open = attrs["data-observation"]
            self.chips[self._open] = [attrs["data-reading"], "fx-disagree" in attrs["class"], attrs["title"], ""]

    def handle_endtag(self, tag):
        if tag == "li":
            self._open = None

    def handle_data(self, data):
        if self._open:
            self.chips[self._open][3] += data


@pytest.fixture(scope="module")
def server():
    with VisionServer(set(REPORTS), findings=REPORTS) as server:
        yield server


@pytest.fixture(autouse=True)
def healthy(server):
    server.reset()


@pytest.fixture
def view(server, tmp_path):
    remotes = [RemoteModel(parse_remote(f"{m}={server.url}#{m}"), timeout=5, max_retries=0, backoff=Backoff(0.01))
               for m in REPORTS]  # fmt: skip
    h = Handlers(Lineup(None, remotes), VoteStore(tmp_path / "v.sqlite"), settings=GenerationSettings(12))
    return FindingsView(h)


def chips_of(frame, n: int = 2) -> tuple[list[Chips], str]:
    return [Chips(markup) for markup in frame[-n - 1 : -1]], frame[-1]


def test_a_known_report_gets_its_chips_with_words_signs_and_the_deciding_phrase():
    report = read_report("Mild cardiomegaly. No pleural effusion. Opacity at the left base may represent atelectasis.")
    chips = Chips(chips_html(report, name="the base report")).chips
    assert list(chips) == ["Cardiomegaly", "Lung Opacity", "Atelectasis", "Pleural Effusion"]  # claimed first
    assert {o: c[0] for o, c in chips.items()} == {
        "Cardiomegaly": "present", "Lung Opacity": "present", "Atelectasis": "uncertain", "Pleural Effusion": "absent"
    }  # fmt: skip
    # not colour alone: each chip says its sign and its reading in words
    assert [c[3] for c in chips.values()] == ["+Cardiomegalypresent", "+Lung Opacitypresent",
                                              "?Atelectasisuncertain", "−Pleural Effusionabsent"]  # fmt: skip
    assert chips["Pleural Effusion"][2] == (
        "Pleural Effusion: absent\nmatched “pleural effusion”, negated by “No” in “No pleural effusion.”"
    )
    assert "made uncertain by “may”" in chips["Atelectasis"][2] and "“atelectasis”" in chips["Atelectasis"][2]
    assert not any(c[1] for c in chips.values())  # no other report: nothing to disagree with
    normal = Chips(chips_html(read_report("No acute cardiopulmonary abnormality."))).chips
    assert list(normal) == ["No Finding"] and "no pathology is positive or uncertain" in normal["No Finding"][2]
    other = chips_html(read_report("Emphysema."))  # outside the 14: no chip, and no "No Finding" either
    assert "none of the 14 observations" in other and "<li" not in other


def test_model_output_is_escaped_everywhere_it_reaches_the_html():
    text = 'Cardiomegaly" onmouseover="alert(1)" x=". <script>alert(\'x\')</script> No <b>pleural effusion</b>.'
    markup = chips_html(read_report(text), disagree=["Edema"], notes={"Edema": 'a: present · "b": absent'},
                        name='the <img src=x onerror=alert(1)> report')  # fmt: skip
    assert "<script" not in markup and "<img" not in markup and "<b>" not in markup and 'onmouseover="' not in markup
    parsed = Chips(markup)
    assert set(parsed.tags) <= {"ul", "li", "span"}  # only the chips' own markup
    sentence = parsed.chips["Cardiomegaly"][2].split("\n")[1]
    assert 'Cardiomegaly" onmouseover="alert(1)" x="' in html.unescape(sentence)  # the words, as words
    assert "&lt;img src=x onerror=alert(1)&gt;" in markup  # the pane's name is escaped too
    summary = summary_html(['<script>"x"</script>'], 2)
    assert "<script" not in summary and "&lt;script&gt;&quot;x&quot;" in summary


def test_findings_button_asks_every_model_and_marks_where_the_reports_disagree(view, server):
    film = view.h.vqa.prepare_film(str(FILM))
    before = len(server.requests)
    frames = list(view.ask_findings(film, *SLIDERS))
    panes = frames[-2][:2]  # the last frame of answers; the one after it brings the chips
    assert [p[-1]["content"] for p in panes] == [REPORTS["reader-a"], REPORTS["reader-b"]]  # whole: past 12 tokens
    assert [r["questions"] for r in server.requests[before:]] == [[FINDINGS_QUESTION]] * 2  # a new conversation
    assert len(frames[-1]) == 2 + 2 + 1 + 3  # panes, stats, chats: no question box (what was typed stays)
    (a, b), summary = chips_of(frames[-1])
    assert {o: c[0] for o, c in a.chips.items()} == {"Cardiomegaly": "present", "Pleural Effusion": "present",
                                                     "Consolidation": "absent", "Pneumothorax": "absent",
                                                     "Atelectasis": "not mentioned"}  # fmt: skip
    assert {o: c[0] for o, c in b.chips.items()} == {
        "Atelectasis": "uncertain", "Cardiomegaly": "absent", "Pleural Effusion": "absent", "Pneumothorax": "absent"
    }  # fmt: skip
    for pane in (a, b):  # the same observations marked on both panes, the others not
        assert sorted(o for o, c in pane.chips.items() if c[1]) == sorted(DISAGREE)
        assert all("the reports disagree" in c[3] for c in pane.chips.values() if c[1])  # said, not only drawn
    assert "reader-a: present · reader-b: absent" in a.chips["Cardiomegaly"][2]
    assert "Models disagree on:</strong> Cardiomegaly, Atelectasis, Pleural Effusion" in summary
    assert html.escape(KEY, quote=True) in summary
    for model, pane in zip(REPORTS, (a, b), strict=True):  # the chips are the labeler's reading, nothing more
        labels = label_report(REPORTS[model])
        assert {o: c[0] for o, c in pane.chips.items() if c[0] != "not mentioned"} == {
            o: {1: "present", 0: "absent", -1: "uncertain"}[v] for o, v in labels.items()}  # fmt: skip


def test_a_typed_findings_question_gets_chips_and_another_question_clears_them(view):
    film = view.h.vqa.prepare_film(str(FILM))
    frames = list(view.ask(film, "describe the FINDINGS", None, *SLIDERS))
    assert frames[0][-1].startswith('<p class="fx-summary">Each report')  # said while the models write
    (a, b), summary = chips_of(frames[-1])
    assert a.chips and b.chips and "Models disagree on" in summary and frames[-2][5] == ""  # the box emptied
    chats = frames[-2][4]
    frames = list(view.ask(film, "Is there cardiomegaly?", chats, *SLIDERS))
    assert frames[0][-3:] == ("", "", "")  # cleared with the first frame ...
    assert all(f[-3:] == (gr.skip(),) * 3 for f in frames[1:])  # ... and never filled
    assert len(frames[-1][4]["reader-a"]) == 4  # a follow-up in the same conversation
    assert findings_tokens(12) == FINDINGS_MIN_NEW_TOKENS and findings_tokens(400) == 400


def test_a_model_that_fails_says_so_under_its_pane_and_in_the_api(view, server):
    server.fail("500", times=None, match="reader-b")
    film = view.h.vqa.prepare_film(str(FILM))
    frames = list(view.ask_findings(film, *SLIDERS))
    (a, _), summary = chips_of(frames[-1])
    assert a.chips and not any(c[1] for c in a.chips.values())  # nothing to disagree with
    assert frames[-1][-2] == '<p class="fx-none">No report to read: the model gave no answer (see its pane).</p>'
    assert "One report: nothing to compare it with." in summary
    found = view.findings(str(FILM))
    assert found["reader-a"] == {"text": REPORTS["reader-a"], "labels": label_report(REPORTS["reader-a"])}
    assert found["reader-b"]["text"].startswith("error: reader-b did not answer")
    assert found["reader-b"]["labels"] is None  # not {}: the labels of a report that names none of the 14

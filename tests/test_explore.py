"""The Explore tab over a report of 1,200 questions from a real evaluation (conftest's `synthetic_report`: `python -m
evaluation` of a tiny model and a random adapter on 40 studies of a synthetic release's train split, its records
repeated under new ids). Each filter's rows are counted here straight from predictions.jsonl, by this file's own
reading of the rules, and must be exactly the table's.

The tiny models answer noise (no answer parses as yes or no), so a second report keeps the same questions, films and
ids but gets answers drawn at random from the reference, the opposite answer and the model's own text, scored again
by the evaluation's scorer: there every filter has rows to keep and rows to drop.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from app_lib import explore
from app_lib.explore import CONFIDENTLY_WRONG, P_YES_GAP, PAGE_SIZE, UNREADABLE, Query, open_report
from app_lib.explore_tab import ExploreView
from app_lib.handlers import Handlers
from app_lib.report_films import ReportFilms
from app_lib.votes import VoteStore
from cxr_vqa.contract import open_splits
from cxr_vqa.images import ImageLoadError
from cxr_vqa.model import load_model
from evaluation.scoring import score_answer


def records_of(report: Path) -> list[dict]:
    return [json.loads(line) for line in (report / "predictions.jsonl").read_text().splitlines()]


def right(record: dict, variant: str) -> bool:
    score = record["scores"][variant]
    return score["recall"] >= 0.5 if record["kind"] in ("open", "findings") else score["correct"]


def expected_ids(records, finding="", model="", outcome="", disagree=False, kind="", compared=("base", "tuned")):
    ids = []
    for r in records:
        if (finding and r["finding"] != finding) or (kind and r["kind"] != kind):
            continue
        if outcome and right(r, model) != (outcome == "right"):
            continue
        yes_no = r["kind"] == "closed" and r["scores"]["base"]["yes_no"]
        if disagree and not (yes_no and len({r["scores"][m]["parsed"] for m in compared}) > 1):
            continue
        ids.append(r["id"])
    return ids


@pytest.fixture(scope="module")
def varied_report(synthetic_report, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("varied-report")
    shutil.copy(synthetic_report / "run.json", out / "run.json")
    shutil.copy(synthetic_report / "metrics.json", out / "metrics.json")  # a finished report (its scores are not read)
    rng = random.Random(0)
    flip = {"yes": "No.", "no": "Yes."}
    lines = []
    for r in records_of(synthetic_report):
        for v in r["answers"]:
            wrong = flip.get(r["label"], "Something else entirely.")
            r["answers"][v] = rng.choice([r["reference"], wrong, r["answers"][v]])
            r["p_yes"][v] = rng.random()
            r["scores"][v] = score_answer(r["answers"][v], kind=r["kind"], reference=r["reference"], label=r["label"])
        lines.append(json.dumps(r))
    (out / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    return out


@pytest.mark.parametrize("which", ["evaluated", "varied"])
def test_each_filter_keeps_exactly_the_rows_predictions_jsonl_says(which, synthetic_report, varied_report):
    report = synthetic_report if which == "evaluated" else varied_report
    records, table = records_of(report), open_report(report)
    assert len(records) >= 1000 and table.ids == [r["id"] for r in records]
    assert table.models == ["base", "tuned"] and table.variants == ["base", "tuned", "base_blank", "tuned_blank"]
    findings = sorted({r["finding"] for r in records if r["finding"]})
    assert table.findings == findings and len(findings) >= 5
    view = ExploreView(report)
    counts = {}
    for finding in ["", *findings]:
        for model, outcome in [("", ""), ("base", "right"), ("base", "wrong"), ("tuned", "right"), ("tuned", "wrong")]:
            for disagree in (False, True):
                wanted = expected_ids(records, finding, model, outcome, disagree)
                got = view.explore(finding, model, outcome, disagree)
                query = (finding, model, outcome, disagree)
                assert got == {"total": len(wanted), "ids": wanted, "complete": True}, query
                counts[finding, model, outcome, disagree] = len(wanted)
    for kind in ("closed", "open", "findings"):  # the synthetic data opens each study with a findings report
        assert [table.ids[i] for i in table.select(Query(kind=kind))] == expected_ids(records, kind=kind) != []
    blank = ("base", "tuned", "base_blank", "tuned_blank")
    got = [table.ids[i] for i in table.select(Query(disagree=True, blank=True))]
    assert got == expected_ids(records, disagree=True, compared=blank)
    got = [table.ids[i] for i in table.select(Query(model="tuned_blank", outcome="right"))]
    assert got == expected_ids(records, model="tuned_blank", outcome="right")
    assert counts["", "tuned", "right", False] + counts["", "tuned", "wrong", False] == len(records)
    if which == "varied":  # every filter keeps some rows and drops others
        assert all(0 < n < len(records) for key, n in counts.items() if key[0] == "" and key != ("", "", "", False))


def test_the_sorts(varied_report):
    table = open_report(varied_report)
    records = table.records
    order = table.select(Query(sort=P_YES_GAP, pair=("base", "tuned_blank")))
    gaps = [abs(records[i]["p_yes"]["base"] - records[i]["p_yes"]["tuned_blank"]) for i in order]
    assert sorted(order) == list(range(len(records))) and gaps == sorted(gaps, reverse=True)
    order = table.select(Query(sort=CONFIDENTLY_WRONG, model="tuned", kind="closed"))
    wrong_sure = []
    for i in order:
        r = records[i]
        p = r["p_yes"]["tuned"]
        if right(r, "tuned"):
            wrong_sure.append(None)
        elif r["label"] in ("yes", "no"):
            wrong_sure.append(p if r["label"] == "no" else 1 - p)
        else:  # a wrong answer to a question that is not yes/no: after the sure ones, before the right ones
            wrong_sure.append(-1.0)
    n_wrong = sum(s is not None for s in wrong_sure)
    assert 0 < n_wrong < len(order) and all(s is None for s in wrong_sure[n_wrong:])
    assert wrong_sure[:n_wrong] == sorted(wrong_sure[:n_wrong], reverse=True)


def test_a_page_holds_only_its_rows_with_thumbnails(varied_report):
    view = ExploreView(varied_report)
    frame, columns, line, page, ids = view.page(Query(model="tuned", outcome="wrong"), 3)
    wanted = expected_ids(records_of(varied_report), model="tuned", outcome="wrong")
    assert page == 3 and ids == wanted[2 * PAGE_SIZE : 3 * PAGE_SIZE] and len(frame["data"]) == PAGE_SIZE
    assert line == f"Page 3 of {-(-len(wanted) // PAGE_SIZE)} · rows 41–60 of {len(wanted):,}"
    assert [row[1] for row in frame["data"]] == ids and columns["datatype"] == ["markdown"] + ["str"] * 7
    assert all(row[0].startswith("![film](data:image/png;base64,") and len(row[0]) < 8000 for row in frame["data"])
    assert all(row[7].startswith("✗ ") for row in frame["data"])  # the tuned column: every answer wrong
    assert frame["headers"][6:] == ["base", "tuned"]
    frame, *_ = view.page(Query(blank=True), 10_000)  # past the end: the last page
    assert frame["headers"][6:] == ["base", "tuned", "base (blank image)", "tuned (blank image)"]


def test_choosing_a_row_puts_its_film_and_question_in_the_side_by_side_view(
    varied_report, synthetic_data, coarse_model, tmp_path
):
    view = ExploreView(varied_report)
    _, _, _, _, ids = view.page(Query(model="tuned", outcome="wrong"), 2)
    path, question, status = view.choose(ids, gr.SelectData(None, {"index": [3, 4], "value": "x"}))
    record = view.table.records[view.table.index(ids[3])]
    assert question == record["question"] and ids[3] in status
    vqa = load_model(*coarse_model, load_in_4bit=False, device="cpu")
    h = Handlers(vqa, VoteStore(tmp_path / "votes.sqlite"))
    shown, film, film_status, *_ = h.load_film(path)  # what the upload box's change event runs
    expected = open_splits(synthetic_data)["train"][record["row"]]["images"][0].convert("RGB")
    assert np.array_equal(np.asarray(film.image), np.asarray(expected)) and "letterboxed" in film_status
    *_, chats, cleared = list(h.ask(film, question, None, 3, 0.0, 1.0))[-1]
    assert cleared == "" and set(chats) == {"base", "tuned"}
    assert all(
        chat[0]["content"][-1]["text"] == question and chat[1]["role"] == "assistant" for chat in chats.values()
    )
    *_, chats, _ = list(h.ask(film, "And is there an effusion?", chats, 3, 0.0, 1.0))[-1]  # a follow-up
    assert all([t["role"] for t in chat] == ["user", "assistant"] * 2 for chat in chats.values())
    with pytest.raises(gr.Error, match="no longer on the page"):
        view.choose(ids, gr.SelectData(None, {"index": [PAGE_SIZE, 0], "value": "x"}))


def test_films_are_found_where_the_report_says_or_with_dataset(varied_report, synthetic_data, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(varied_report, moved)
    run = json.loads((moved / "run.json").read_text())
    (moved / "run.json").write_text(json.dumps({**run, "dataset": str(tmp_path / "gone")}))
    view = ExploreView(moved)
    assert not view.table.films.available and "--dataset" in view.note
    assert view.page(Query(), 1)[0]["data"][0][0] == ""  # the table still opens, without thumbnails
    with pytest.raises(gr.Error, match="not available"):
        view.choose_id(view.table.ids[0])
    assert ExploreView(moved, dataset=synthetic_data).table.films.available
    (moved / "run.json").write_text(json.dumps({**run, "split": "validation"}))  # another split: other films
    view = ExploreView(moved)
    assert not view.table.films.available and "is not the evaluated dataset" in view.note


def test_the_api_and_the_tab_without_a_report_say_what_to_do(tmp_path):
    view = ExploreView(None)
    with pytest.raises(gr.Error, match="--report R"):
        view.explore("", "", "", False)
    (tmp_path / "run.json").write_text("{}")
    assert "cannot be explored" in ExploreView(tmp_path).note


def test_a_report_written_after_the_app_started_is_explored_by_the_api(varied_report, tmp_path):
    later = tmp_path / "report"  # the demo's build evaluates itself last, while its app already serves
    view = ExploreView(later)
    assert "not written yet" in view.note
    with pytest.raises(gr.Error, match="not written yet"):
        view.explore("", "", "", False)
    shutil.copytree(varied_report, later)
    assert view.explore("", "", "", False) == ExploreView(varied_report).explore("", "", "", False)


def test_a_script_s_mistakes_get_one_line_each(varied_report):
    view = ExploreView(varied_report)
    for args, message in [
        (("Edema?", "", "", False), "unknown finding 'Edema\\?': this report has"),
        (("", "gpt", "", False), "unknown model 'gpt': this report has base, tuned"),
        (("", "tuned", "maybe", False), "outcome must be 'right', 'wrong' or ''"),
        (("", "", "wrong", False), "wrong needs a model"),
    ]:
        with pytest.raises(gr.Error, match=message):
            view.explore(*args)


def test_a_report_still_being_written_is_read_again_as_it_grows_and_kept_once_finished(varied_report, tmp_path):
    lines = (varied_report / "predictions.jsonl").read_text().splitlines(keepends=True)
    ids = [json.loads(line)["id"] for line in lines]
    report = tmp_path / "report"  # the evaluation appends predictions batch by batch and writes metrics.json last
    report.mkdir()
    shutil.copy(varied_report / "run.json", report / "run.json")
    (report / "predictions.jsonl").write_text("".join(lines[:100]))
    view = ExploreView(report)
    assert "100 questions so far" in view.note and "still writing" in view.note
    assert view.explore("", "", "", False) == {"total": 100, "ids": ids[:100], "complete": False}
    with open(report / "predictions.jsonl", "a") as file:
        file.write("".join(lines[100:250]) + lines[250][:40])  # a batch and the start of a line being written
    assert view.explore("", "", "", False) == {"total": 250, "ids": ids[:250], "complete": False}
    *_, line, _, _ = view.page(Query(), 13)
    assert line == "Page 13 of 13 · rows 241–250 of 250 so far (the evaluation is still writing this report)"
    with open(report / "predictions.jsonl", "a") as file:
        file.write(lines[250][40:] + "".join(lines[251:]))
    shutil.copy(varied_report / "metrics.json", report / "metrics.json")
    assert view.explore("", "", "", False) == {"total": len(ids), "ids": ids, "complete": True}
    (report / "predictions.jsonl").write_text("")  # finished: read once and kept
    assert view.explore("", "", "", False)["total"] == len(ids) and "so far" not in view.page(Query(), 1)[2]


def test_an_unreadable_film_is_a_note_in_its_row_and_the_page_still_shows(varied_report):
    view = ExploreView(varied_report)
    table = view.table
    readable = table.films._image
    broken = {table.records[0]["row"]: ImageLoadError("PNG image is truncated"), table.records[3]["row"]: OSError()}

    def image(record):
        if record["row"] in broken:
            raise broken[record["row"]]
        return readable(record)

    table.films = ReportFilms(table.films.note, image)
    frame, *_ = view.page(Query(), 1)
    films = [row[0] for row in frame["data"]]
    for record, film in zip(table.records[:PAGE_SIZE], films, strict=True):
        assert film == UNREADABLE if record["row"] in broken else film.startswith("![film](data:image/png;base64,")
    assert films[0] == films[3] == UNREADABLE
    assert [row[1] for row in frame["data"]] == table.ids[:PAGE_SIZE]  # every row with the rest of its cells


def test_a_row_chosen_after_a_header_sort_is_the_row_clicked(varied_report):
    view = ExploreView(varied_report)
    *_, ids = view.page(Query(), 1)
    frame, *_ = view.page(Query(), 1)
    clicked = frame["data"][7]  # shown at the top once the browser sorted the page by a column
    _, question, status = view.choose(ids, gr.SelectData(None, {"index": [0, 4], "value": "x", "row_value": clicked}))
    assert ids[7] in status and question == view.table.records[7]["question"]
    _, _, status = view.choose(ids, gr.SelectData(None, {"index": [2, 4], "value": "x"}))  # no row value: the index
    assert ids[2] in status


def test_the_shared_thumbnails_evict_safely_under_concurrent_pages(varied_report, monkeypatch):
    class Slow(dict):
        def __iter__(self):  # another page's thread runs between finding the oldest thumbnail and dropping it
            for key in list(super().__iter__()):
                time.sleep(0.002)
                yield key

    table = open_report(varied_report)
    monkeypatch.setattr(explore, "THUMBS_KEPT", 2)
    monkeypatch.setattr(explore, "thumbnail", lambda image: "thumb")  # the cache is under test, not the PNG
    table.films, table._thumbs = ReportFilms("films", lambda record: None), Slow()
    records = [{"film": f"f{i}", "row": i, "id": str(i)} for i in range(200)]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(table._thumbnail, records)) == ["thumb"] * len(records)
    assert len(table._thumbs) == 2


def test_studies_with_dotted_ids_get_a_film_file_each(tmp_path):
    shades = {"1.2.840.113619.2.55.1": 40, "1.2.840.113619.2.55.2": 200, "p1_s1": 120}  # DICOM UIDs differ at the end
    films = ReportFilms("films", lambda record: Image.new("RGB", (8, 8), (shades[record["study_id"]],) * 3))
    paths = [films.copy({"study_id": study}, tmp_path) for study in shades]
    assert [p.name for p in paths] == [f"{study}.png" for study in shades]
    assert [Image.open(p).getpixel((0, 0)) for p in paths] == [(v, v, v) for v in shades.values()]

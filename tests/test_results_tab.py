"""The Results tab as a person reads it, from a real evaluation (`python -m evaluation` of a tiny model): report.md's
tables (each model's closed accuracy and AUROC with their intervals, the paired tests, the findings reports' F1s), its
figures as images, metrics.json in a closed accordion; the ratings as they are whenever the tab is opened; and in the
demo, Results and Explore filled when the build's report comes while the page is up (no restart)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

import app
from app_lib import demo as demo_models
from app_lib.results import report_updates
from app_lib.votes import Trial
from cxr_vqa.contract import DEMO_FORMAT, DEMO_MARKER
from cxr_vqa.model import load_model

EXAMPLE = app.EXAMPLES_DIR / "cardiomegaly.png"


@pytest.fixture(scope="module")
def vqa(coarse_model):
    return load_model(*coarse_model, load_in_4bit=False, device="cpu")


def num(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def est(e: dict) -> str:
    """An estimate as report.md writes it: value [low, high]."""
    return f"{num(e['value'])} [{num(e['ci'][0])}, {num(e['ci'][1])}]"


def diff(d: dict) -> str:
    """A paired test as report.md writes it: difference [low, high], p (and Holm's p)."""
    value = "n/a" if math.isnan(d["value"]) else f"{d['value']:+.3f}"
    holm = f", Holm p={num(d['p_holm'], 4)}" if "p_holm" in d else ""
    return f"{value} [{num(d['ci'][0])}, {num(d['ci'][1])}], p={num(d['p_value'], 4)}{holm}"


def component(demo, elem_id: str) -> dict:
    return next(c for c in demo.get_config_file()["components"] if c["props"].get("elem_id") == elem_id)


def handler(demo, elem_id: str, trigger: str):
    """The function the page runs on `trigger` ("select", "click", "load") of the component `elem_id` ("" for the
    page itself)."""
    config = demo.get_config_file()
    target = component(demo, elem_id)["id"] if elem_id else demo._id
    found = [d["id"] for d in config["dependencies"] if [target, trigger] in [list(t) for t in d["targets"]]]
    assert found, f"nothing runs on {trigger} of {elem_id or 'the page'}"
    return [demo.fns[i] for i in found]


def test_the_results_tab_shows_report_md_as_tables_with_its_figures(vqa, synthetic_evaluation, tmp_path):
    m = json.loads((synthetic_evaluation / "metrics.json").read_text())
    demo = app.create_demo(vqa, votes_db=tmp_path / "v.sqlite", report_dir=synthetic_evaluation)
    text = component(demo, "report-md")["props"]["value"]
    models, tests = m["models"], m["difference"]["tuned_minus_base"]
    rows = {  # report.md's rows with figures computed here from metrics.json
        "closed accuracy": [est(models["base"]["closed_accuracy"]), est(models["tuned"]["closed_accuracy"]),
                            diff(tests["closed_accuracy"])],
        "macro AUROC of P(yes)": [est(models["base"]["macro_auroc"]), est(models["tuned"]["macro_auroc"]),
                                  diff(tests["macro_auroc"])],
    }  # fmt: skip
    f = m["findings"]
    rows["micro F1-14"] = [est(f["models"][v]["micro_f1_14"]) for v in f["models"]]
    rows["micro F1-14"].append(diff(f["difference"]["tuned_minus_base"]["micro_f1_14"]))
    for label, cells in rows.items():
        assert f"| {label} | {' | '.join(cells)} |" in text.splitlines(), label
    assert "p_holm" in tests["closed_accuracy"] and "Holm p=" in text  # the primary tests, corrected
    assert "### Headline metrics" in text and "### Findings reports" in text  # under the page's own title
    assert "![" not in text  # report.md's figure lines: shown as images instead
    for name in ("comparison", "confidence", "findings"):
        figure = component(demo, f"report-{name}")["props"]
        assert figure["visible"] is not False and figure["value"] is not None, name
    raw = component(demo, "report-json")["props"]
    assert raw["open"] is False and raw["visible"] is not False  # metrics.json one click away
    raw_json = next(c for c in demo.get_config_file()["components"] if c["props"].get("label") == "metrics.json")
    assert raw_json["props"]["value"] == m
    updates = report_updates(synthetic_evaluation)  # what Refresh and the demo's timer give: the same
    assert updates[1].value == text and all(image.value is not None for image in updates[2:5])


def test_the_ratings_are_current_whenever_the_results_tab_is_opened(vqa, tmp_path):
    demo = app.create_demo(vqa, votes_db=tmp_path / "v.sqlite")
    (on_load,) = [fn for fn in handler(demo, "", "load") if fn.fn.__name__ == "results"]
    assert "No blind votes yet" in on_load.fn()  # what the page came up with
    trial = Trial("Is there cardiomegaly?", "base", "tuned", "Yes.", "No.", "0" * 64)
    for vote in ("vote-a", "vote-b", "vote-tie"):  # the page's own vote buttons, as three visitors press them
        (cast,) = handler(demo, vote, "click")
        assert "Vote stored" in cast.fn(trial)[0]
    (opened,) = handler(demo, "results-tab", "select")
    shown = opened.fn()
    assert "3 votes in all" in shown and "| base vs tuned | 3 | 1 – 1 | 1 |" in shown
    assert fn_outputs(opened) == [component(demo, "results")["id"]]


@pytest.fixture
def building(tmp_path, coarse_model):
    """A demo folder that serves (its base and examples) while its build has not written its report yet."""
    out = tmp_path / "demo"
    shutil.copytree(coarse_model[0], out / "base")
    (out / "examples").mkdir()
    shutil.copy(EXAMPLE, out / "examples" / "cardiomegaly.png")
    index = [{"file": "cardiomegaly.png", "findings": ["Cardiomegaly"], "question": "Is there cardiomegaly?",
              "answer": "Yes.", "source": "Held-out phantom"}]  # fmt: skip
    (out / "examples" / "examples.json").write_text(json.dumps(index))
    marker = {"format": DEMO_FORMAT, "complete": False, "trained": True, "base": "base", "adapter": "adapter",
              "examples": "examples/examples.json", "report": "report"}  # fmt: skip
    (out / DEMO_MARKER).write_text(json.dumps(marker))
    shutil.copytree(coarse_model[1], out / "adapter")
    return out


def test_the_demo_fills_results_and_explore_when_its_report_comes(building, vqa, synthetic_evaluation, tmp_path):
    found = demo_models.read(building)
    live = demo_models.Live(found, vqa)
    demo = app.create_demo(vqa, votes_db=tmp_path / "v.sqlite", report_dir=found.report, live=live,
                           examples=found.examples)  # fmt: skip
    note = component(demo, "explore-note")["props"]["value"]
    assert "not written yet" in note and "shows here when the build has evaluated its models" in note
    assert "start the app again" not in note
    table = component(demo, "explore-table")
    body = next(c for c in demo.get_config_file()["components"] if c["type"] == "column"
                and table["id"] in _children(demo, c["id"]))  # fmt: skip
    assert body["props"]["visible"] is False  # the table and its filters wait for the report
    (tick,) = [fn for fn in handler(demo, "", "load") if component(demo, "demo-status")["id"] in fn_outputs(fn)]
    before = tick.fn()
    assert all(isinstance(u, dict) and u.get("__type__") == "update" and len(u) == 1 for u in before[2:])  # skips

    shutil.copytree(synthetic_evaluation, found.report)  # the build's evaluation ends: its report, then demo.json
    marker = json.loads((building / DEMO_MARKER).read_text())
    (building / DEMO_MARKER).write_text(json.dumps({**marker, "complete": True}))
    status, timer, *views = tick.fn()
    assert timer.active is False  # the page stops asking
    m = json.loads((found.report / "metrics.json").read_text())
    assert est(m["models"]["tuned"]["closed_accuracy"]) in views[1].value and views[1].visible is not False
    explore = views[7:]  # after Results' seven: note, body, finding, model, gap_a, gap_b, table, page line, page, ids
    records = [json.loads(line) for line in (found.report / "predictions.jsonl").read_text().splitlines()]
    assert f"{len(records):,} questions from" in explore[0] and explore[1].visible is True
    findings = sorted({r["finding"] for r in records if r.get("finding")})
    assert [c[1] for c in explore[2].choices] == ["", *findings]
    assert [c[1] for c in explore[3].choices] == ["", *m["models"]]  # the models and their blank-image variants
    assert (explore[4].value, explore[5].value) == ("base", "tuned")
    assert explore[7].startswith("Page 1 of") and explore[8] == 1
    assert explore[9] == [r["id"] for r in records[:20]]
    assert [row[1] for row in explore[6].value["data"]] == explore[9]


def fn_outputs(fn) -> list[int]:
    return [o._id if hasattr(o, "_id") else o for o in fn.outputs]


def _children(demo, parent: int) -> set[int]:
    """The ids of every component under `parent` in the page's layout."""

    def walk(node, inside):
        found = {node["id"]} if inside else set()
        for child in node.get("children", []):
            found |= walk(child, inside or node["id"] == parent)
        return found

    return walk(demo.get_config_file()["layout"], False)

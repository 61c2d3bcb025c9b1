"""Explore over findings reports: the filters "a model claims X" and "the reports disagree on X", counted here straight
from predictions.jsonl by this file's own reading of the rules (the labeler's labels; claimed = present or uncertain;
a model without an answer has no report), the table's cells, a chosen row's chips, the labels read once, and /explore
over HTTP with the old four arguments and the two new ones. The report is built by hand: 90 records, 60 of them
findings reports drawn from a bank of report texts, a few answers missing (a remote model's refusals)."""

from __future__ import annotations

import functools
import json
import random
import socket
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client

import app_lib.explore_findings as explore_findings
from app_lib.explore import Query, open_report
from app_lib.explore_findings import ANY
from app_lib.explore_tab import ExploreView, explore_tab
from cxr_vqa.errors import UserError
from cxr_vqa.labeler import OBSERVATIONS, label_report
from evaluation.scoring import score_answer

MODELS = ("base", "tuned")
VARIANTS = ("base", "tuned", "base_blank", "tuned_blank")
BANK = [
    "The heart is enlarged. Small left pleural effusion. No pneumothorax.",
    "Heart size is normal. Possible atelectasis at the left base. No pleural effusion or pneumothorax.",
    "No acute cardiopulmonary abnormality.",
    "Mild pulmonary edema. Cardiomegaly. Bilateral pleural effusions.",
    "Endotracheal tube in place. Consolidation in the right lower lobe, which may represent pneumonia.",
    "Left pneumothorax. No focal consolidation.",
    "Emphysema. No pleural effusion.",
    'Cardiomegaly" onmouseover="alert(1)". <script>alert("x")</script> No edema.',
]


def write_report(out: Path, n_findings: int = 60, seed: int = 0) -> Path:
    rng = random.Random(seed)
    records = []
    for i in range(n_findings + 30):
        kind = "findings" if i < n_findings else "closed" if i < n_findings + 20 else "open"
        record = {"id": f"s{i}#0", "row": i, "study_id": f"s{i}", "patient_id": f"p{i}", "kind": kind,
                  "question": "Describe the findings." if kind == "findings" else "Is there edema?",
                  "finding": None if kind == "findings" else "Edema", "label": "yes" if kind == "closed" else None,
                  "answers": {}, "p_yes": {}, "scores": {}}  # fmt: skip
        record["reference"] = rng.choice(BANK) if kind == "findings" else "Yes." if kind == "closed" else "edema"
        agree = rng.random() < 0.3  # every model writes the reference: the reports agree
        for v in VARIANTS:
            answer = rng.choice(BANK) if kind == "findings" else rng.choice(["Yes.", "No."])
            answer = record["reference"] if agree and kind == "findings" else answer
            if kind == "findings" and v == "tuned" and i % 9 == 4:  # refused: no report
                record.setdefault("errors", {})[v], answer = "HTTP 500", ""
            record["answers"][v] = answer
            record["p_yes"][v] = rng.random() if kind == "closed" else None
            scored = "open" if kind == "findings" else kind
            record["scores"][v] = score_answer(answer, kind=scored, reference=record["reference"],
                                               label=record["label"])  # fmt: skip
        records.append(record)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({"dataset": str(out / "no-dataset"), "split": "test",
                                              "variants": list(VARIANTS)}))  # fmt: skip
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "metrics.json").write_text("{}")  # written last: a finished report
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return write_report(tmp_path_factory.mktemp("findings-report"))


def records_of(report: Path) -> list[dict]:
    return [json.loads(line) for line in (report / "predictions.jsonl").read_text().splitlines()]


labels_of = functools.cache(label_report)  # this file's own reading, kept: the bank has 8 texts


def readings(record: dict, variants) -> dict[str, dict]:
    """{variant: labels} of the variants that wrote a report."""
    return {v: labels_of(record["answers"][v]) for v in variants if v not in record.get("errors", {})}


def said(value) -> str:
    return "present" if value == 1 else "uncertain" if value == -1 else "not claimed"


def expected_claims(records, observation: str, variants) -> list[str]:
    return [r["id"] for r in records if r["kind"] == "findings"
            and any(found.get(observation) in (1, -1) for found in readings(r, variants).values())]  # fmt: skip


def expected_disagree(records, observation: str, variants) -> list[str]:
    kept = []
    for r in records:
        found = readings(r, variants) if r["kind"] == "findings" else {}
        split = [o for o in OBSERVATIONS if len({said(f.get(o)) for f in found.values()}) > 1]
        if split and (observation == ANY or observation in split):
            kept.append(r["id"])
    return kept


def test_each_findings_filter_keeps_exactly_the_reports_the_records_say(report):
    records, table, view = records_of(report), open_report(report), ExploreView(report)
    findings = sum(r["kind"] == "findings" for r in records)
    counts = {}
    for observation in OBSERVATIONS:
        for blank in (False, True):
            shown = VARIANTS if blank else MODELS
            for model in ("", *shown):
                got = [table.ids[i] for i in table.select(Query(claims=observation, model=model, blank=blank))]
                assert got == expected_claims(records, observation, [model] if model else shown), (observation, model)
                counts["claims", observation, model, blank] = len(got)
        for blank in (False, True):
            got = [table.ids[i] for i in table.select(Query(disagree_on=observation, blank=blank))]
            assert got == expected_disagree(records, observation, VARIANTS if blank else MODELS), observation
            counts["disagree", observation, blank] = len(got)
        for model in ("", *MODELS):  # the API: the models with their films
            wanted = expected_claims(records, observation, [model] if model else MODELS)
            assert view.explore("", model, "", False, observation, "") == {"total": len(wanted), "ids": wanted,
                                                                            "complete": True}  # fmt: skip
    for blank in (False, True):
        got = [table.ids[i] for i in table.select(Query(disagree_on=ANY, blank=blank))]
        assert got == expected_disagree(records, ANY, VARIANTS if blank else MODELS)
        assert 0 < len(got) < findings
    # every observation the bank names is claimed by some reports and not by others; "Lung Lesion" by none
    for observation in ("Cardiomegaly", "Edema", "Pleural Effusion", "Atelectasis", "Pneumothorax", "No Finding"):
        assert 0 < counts["claims", observation, "tuned", False] < counts["claims", observation, "", False] < findings
        assert 0 < counts["disagree", observation, False] < findings
    assert counts["claims", "Lung Lesion", "", True] == 0
    # with the other filters: the tuned reports that claim edema and are wrong by recall
    got = [table.ids[i] for i in table.select(Query(kind="findings", model="tuned", outcome="wrong", claims="Edema"))]
    wrong = {r["id"] for r in records if r["kind"] == "findings" and r["scores"]["tuned"]["recall"] < 0.5}
    assert got == [qid for qid in expected_claims(records, "Edema", ["tuned"]) if qid in wrong] != []


def test_a_refused_report_claims_nothing_and_takes_no_part_in_a_disagreement(report):
    records, table = records_of(report), open_report(report)
    refused = [i for i, r in enumerate(records) if r.get("errors")]
    assert refused and all(table.reports.labels(i, "tuned") is None for i in refused)
    for i in refused:  # base alone wrote a report: nothing to disagree with
        assert table.reports.disagree(i, ["base", "tuned"]) == []
        assert i not in table.select(Query(model="tuned", claims="No Finding"))


def test_the_table_shows_what_each_report_claims_and_where_they_disagree(report):
    records, table = records_of(report), open_report(report)
    rows = table.page(list(range(len(records))), 0, list(MODELS), size=len(records))
    for record, row in zip(records, rows, strict=True):
        _, qid, finding, kind, _, reference, base, tuned = row
        if kind != "findings":
            assert (finding, reference) == ("Edema", record["reference"]) and "[" not in base
            continue
        split = expected_disagree([record], ANY, MODELS)
        assert finding == ("≠ " if split else "reports agree") + (", ".join(
            o for o in OBSERVATIONS if len({said(f.get(o)) for f in readings(record, MODELS).values()}) > 1)
            if split else "")  # fmt: skip
        labels = label_report(record["answers"]["base"])
        present = [o for o in OBSERVATIONS if labels.get(o) == 1]
        assert base[2:].startswith(f"[+ {', '.join(present)}" if present else "[")  # after ✓/✗
        assert base.endswith(record["answers"]["base"]) and reference.endswith(record["reference"])
        assert tuned.endswith("[no report]") == ("tuned" in record.get("errors", {}))


def test_a_chosen_findings_row_shows_every_report_with_its_chips_escaped(report):
    records, view = records_of(report), ExploreView(report)
    i = next(i for i, r in enumerate(records) if r["answers"]["base"] == BANK[-1] and "errors" not in r)
    detail = view.findings_of(records[i]["id"])
    assert "<script" not in detail and "&lt;script&gt;" in detail and 'onmouseover="' not in detail
    assert detail.count('class="fx-report"') == 3  # the reference, base, tuned
    assert view.findings_of(records[i]["id"], blank=True).count('class="fx-report"') == 5
    assert view.findings_of(records[-1]["id"]) == ""  # not a findings report
    with pytest.raises(gr.Error, match="no question 'nope'"):
        view.findings_of("nope")
    with pytest.raises(UserError, match="claims and disagree_on take one of the observations"):
        open_report(report).select(Query(claims="Heart failure"))


def test_labels_are_read_once_per_report(report, monkeypatch):
    table = open_report(report)
    calls = []
    monkeypatch.setattr(explore_findings, "label_report", lambda text: calls.append(text) or label_report(text))
    table.select(Query(disagree_on=ANY, blank=True))
    first = len(calls)
    assert first == sum(len(readings(r, VARIANTS)) for r in records_of(report) if r["kind"] == "findings")
    for observation in OBSERVATIONS:
        table.select(Query(claims=observation, blank=True))
        table.select(Query(disagree_on=observation))
    assert len(calls) == first


def test_explore_over_http_takes_the_old_four_arguments_and_the_two_new_ones(report):
    records = records_of(report)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with gr.Blocks() as demo:
        explore_tab(ExploreView(report), gr.File(), gr.Textbox(), "notice")
    demo.queue()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        everything = client.predict("", "", "", False, api_name="/explore")  # as scripts call it today
        assert everything == {"total": len(records), "ids": [r["id"] for r in records], "complete": True}
        wanted = expected_claims(records, "Edema", ["tuned"])
        assert client.predict("", "tuned", "", False, "Edema", "", api_name="/explore")["ids"] == wanted
        wanted = expected_disagree(records, "Cardiomegaly", MODELS)
        assert client.predict("", "", "", False, "", "Cardiomegaly", api_name="/explore")["ids"] == wanted
    finally:
        demo.close()

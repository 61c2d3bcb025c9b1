"""The one reader of an evaluation's JSON-lines files (cxr_vqa.reports.iter_predictions): what a killed run leaves is
skipped, a damaged file is named, never silently read short; and the ledger behind --max-cost (cxr_vqa.costs)."""

from __future__ import annotations

import json

import pytest

from cxr_vqa.costs import Ledger
from cxr_vqa.errors import UserError
from cxr_vqa.reports import iter_predictions, read_predictions, split_variant

RECORDS = [{"id": "q1", "answers": {"base": "Yes"}}, {"id": "q2", "answers": {"base": "No"}}]


def lines(*extra: str) -> str:
    return "".join(json.dumps(r) + "\n" for r in RECORDS) + "".join(extra)


@pytest.mark.parametrize("tail", ["", '{"id": "q3", "answ', "[1, 2", "\n"])
def test_a_last_line_cut_short_by_a_killed_run_is_skipped(tmp_path, tail):
    path = tmp_path / "predictions.jsonl"
    path.write_text(lines(tail))
    assert read_predictions(path) == RECORDS


@pytest.mark.parametrize("bad", ['{"id": "q0", "answ\n', "not json\n", "[1, 2]\n"])
def test_a_bad_line_before_the_last_is_named_never_skipped(tmp_path, bad):
    path = tmp_path / "predictions.jsonl"
    path.write_text(bad + lines())
    with pytest.raises(UserError) as err:
        list(iter_predictions(path))
    assert str(err.value) == f"{path}: line 1 is not a JSON record; repair or remove that line and run again"


def test_the_blank_image_variant_is_named_by_its_suffix():
    assert split_variant("tuned_blank") == ("tuned", True) and split_variant("tuned") == ("tuned", False)


def test_a_reply_that_reports_zero_tokens_costs_zero_not_the_estimate():
    ledger = Ledger((1.0, 2.0))
    assert ledger.record({"prompt_tokens": 100, "completion_tokens": 0}, (500, 400)) == pytest.approx(100e-6)
    assert (ledger.prompt_tokens, ledger.completion_tokens) == (100, 0)
    assert ledger.record(None, (500, 400)) == pytest.approx((500 + 800) * 1e-6)  # none reported: the estimate
    assert ledger.record({"prompt_tokens": 10, "completion_tokens": None}, (500, 400)) == pytest.approx(810e-6)

"""Arena-style results on hand-made votes: Bradley–Terry ratings in a known order, ties counted half, win rates per
pair, the CSV export's columns, and votes of the first schema migrated."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

import pytest

from app_lib.blind import Blind
from app_lib.ratings import bradley_terry, pair_rates, results_markdown
from app_lib.votes import COLUMNS, Trial, VoteStore


def vote(a, b, choice, source_a=None, source_b=None):
    return {"model_a": a, "model_b": b, "source_a": source_a or f"src/{a}", "source_b": source_b or f"src/{b}",
            "vote": choice}  # fmt: skip


def test_bradley_terry_recovers_a_known_ordering():
    # strong beats base 9 of 10, base beats weak 8 of 10, strong beats weak 10 of 10
    votes = (
        [vote("strong", "base", "A")] * 9
        + [vote("strong", "base", "B")]
        + [vote("base", "weak", "A")] * 8
        + [vote("weak", "base", "A")] * 2
        + [vote("weak", "strong", "B")] * 10
    )
    ratings = bradley_terry(votes, n_bootstrap=50)
    assert ratings["base"]["rating"] == pytest.approx(1000.0)  # the anchor
    assert ratings["strong"]["rating"] > ratings["base"]["rating"] > ratings["weak"]["rating"]
    low, high = ratings["strong"]["ci"]
    assert low < ratings["strong"]["rating"] < high and ratings["weak"]["votes"] == 20


def test_ties_count_half_and_an_even_record_rates_equal():
    votes = [vote("tuned", "base", "A"), vote("tuned", "base", "B"), vote("base", "tuned", "tie"),
             vote("tuned", "base", "both_wrong")]  # fmt: skip
    ratings = bradley_terry(votes, n_bootstrap=20)
    assert ratings["tuned"]["rating"] == pytest.approx(1000.0, abs=1e-3)
    # one win and one tie against one loss and one tie: 1.5 of 2 -> odds 3:1 before the ridge
    lopsided = bradley_terry([vote("tuned", "base", "A"), vote("tuned", "base", "tie")], n_bootstrap=20)
    assert 1000 < lopsided["tuned"]["rating"] <= 1000 + 400 * 0.4772 + 1  # 400 log10(3)


def test_pair_rates_and_one_name_standing_for_two_adapters():
    votes = [vote("tuned", "base", "A", "runs/a"), vote("base", "tuned", "A", None, "runs/b"),
             vote("tuned", "base", "tie", "runs/a")]  # fmt: skip
    rows = {(r["first"], r["second"]): r for r in pair_rates(votes)}
    assert set(rows) == {("base", "tuned (runs/a)"), ("base", "tuned (runs/b)")}
    assert rows[("base", "tuned (runs/a)")]["second_wins"] == 1 and rows[("base", "tuned (runs/a)")]["ties"] == 1
    assert rows[("base", "tuned (runs/b)")]["first_win_rate"] == 1.0
    assert "3 votes in all" in results_markdown(votes)


class FakeVQA:
    base_name, adapters = "m", {"labels": "runs/labels"}


def export(store: VoteStore) -> tuple[str, list[dict]]:
    """The CSV the Results tab's export writes, and its rows."""
    path = Blind(FakeVQA(), store).export()
    with open(path, newline="") as file:
        return path, list(csv.DictReader(file))


def test_export_has_every_column_and_vote(tmp_path):
    store = VoteStore(tmp_path / "v.sqlite")
    trial = Trial("Is there edema?", "base", "labels", "No.", "Yes.", "ab" * 32)
    store.add(trial, "B", sources={"base": "m", "labels": "runs/labels"}, base_model="m")
    path, rows = export(store)
    assert list(rows[0]) == list(COLUMNS) and rows[0]["winner"] == "labels" and rows[0]["source_b"] == "runs/labels"
    store.add(trial, "tie", sources={"base": "m", "labels": "runs/labels"}, base_model="m")
    again, rows = export(store)
    assert len(rows) == 2
    # a folder per click (two visitors' downloads never share a file); the old ones go ten minutes later
    assert again != path and Path(again).is_file() and Path(path).is_file()


def test_the_votes_csv_never_hands_a_spreadsheet_a_formula(tmp_path):
    store = VoteStore(tmp_path / "v.sqlite")
    trial = Trial('=HYPERLINK("http://x")', "base", "labels", "+1", "@SUM(A1)", "ab" * 32)
    store.add(trial, "A", sources={"base": "m", "labels": "runs/labels"}, base_model="m")
    row = export(store)[1][0]
    assert [row["question"], row["answer_a"], row["answer_b"]] == ['\'=HYPERLINK("http://x")', "'+1", "'@SUM(A1)"]
    assert row["winner"] == "base" and row["model_b"] == "labels"


def test_votes_of_the_first_schema_stay_readable(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as con:  # the table the app wrote before several adapters
        con.execute("CREATE TABLE votes (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT, question TEXT, "
                    "base_answer TEXT, tuned_answer TEXT, a_model TEXT, vote TEXT, winner TEXT, image_sha256 TEXT, "
                    "base_model TEXT, adapter TEXT)")  # fmt: skip
        con.execute("INSERT INTO votes VALUES (1, 't', 'q?', 'base says', 'tuned says', 'tuned', 'A', 'tuned', 'h', "
                    "'m', 'runs/old')")  # fmt: skip
    for _ in range(2):  # opening twice migrates once
        votes = VoteStore(path).all()
    assert len(votes) == 1
    v = votes[0]
    assert (v["model_a"], v["source_a"], v["answer_a"]) == ("tuned", "runs/old", "tuned says")
    assert (v["model_b"], v["source_b"], v["answer_b"], v["winner"]) == ("base", "m", "base says", "tuned")

"""Votes are the operator's: the database and SQLite's journals are 0600 from their creation (an existing file is
tightened), old votes are deleted at start and as votes come and leave no text behind, the ratings are computed once
per change of the votes, and over HTTP the CSV export is refused without the operator token and served with it."""

from __future__ import annotations

import csv
import os
import socket
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from vision_server import VisionServer

import app
from app_lib import blind as blind_module
from app_lib.blind import Blind
from app_lib.votes import COLUMNS, Trial, VoteStore
from app_lib.votes_tab import EXPORT_OFF, OPERATOR_TOKEN_ENV, Operator, operator_token
from cxr_vqa.errors import UserError
from cxr_vqa.lineup import Lineup
from cxr_vqa.remote import RemoteModel, parse_remote

TOKEN = "op-" + "x7Kq2mZ9" * 4  # what an operator sets in $CXR_VQA_OPERATOR_TOKEN
SOURCES = {"base": "m", "labels": "runs/labels"}


class FakeVQA:
    base_name, adapters = "m", {"labels": "runs/labels"}


def mode(path) -> int:
    return Path(path).stat().st_mode & 0o777


@contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def add_vote(store: VoteStore, question: str = "Is there edema?", vote: str = "A") -> None:
    store.add(Trial(question, "base", "labels", "No.", "Yes.", "ab" * 32), vote, sources=SOURCES, base_model="m")


def add_old_vote(path, question: str, days: int) -> None:
    """A vote cast `days` ago, written as the store writes one."""
    when = (datetime.now(timezone.utc) - timedelta(days=days)).isoformat(timespec="seconds")
    with sqlite3.connect(path) as con:
        con.execute(
            f"INSERT INTO ab_votes ({', '.join(COLUMNS[1:])}) VALUES ({', '.join('?' * 12)})",
            (when, question, "base", "m", "labels", "runs/labels", "No.", "Yes.", "A", "base", "ab" * 32, "m"),
        )


def test_the_database_and_its_journals_are_0600_whatever_the_umask(tmp_path):
    path = tmp_path / "votes.sqlite"
    with umask(0):  # a umask that lets everything through: the mode comes from the app, not the environment
        store = VoteStore(path)
        add_vote(store)
        assert mode(path) == 0o600
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")  # a write in progress: SQLite's rollback journal exists now
        con.execute("DELETE FROM ab_votes")
        assert mode(f"{path}-journal") == 0o600
        con.execute("ROLLBACK")
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("INSERT INTO ab_votes SELECT * FROM ab_votes WHERE 0")
        assert mode(f"{path}-wal") == 0o600 and mode(f"{path}-shm") == 0o600
        con.close()


def test_an_existing_readable_database_is_tightened_with_a_warning(tmp_path, caplog):
    path = tmp_path / "votes.sqlite"
    VoteStore(path)
    path.chmod(0o644)  # as the app before this one left it
    with caplog.at_level("WARNING"):
        VoteStore(path)
    assert mode(path) == 0o600 and "readable by other users (mode 644)" in caplog.text


def test_retention_deletes_old_votes_at_start_and_after_each_vote_and_leaves_no_text(tmp_path):
    path = tmp_path / "votes.sqlite"
    VoteStore(path)  # created 0600, no retention: nothing deleted
    add_old_vote(path, "OLD-PATIENT-DETAILS", days=40)
    add_old_vote(path, "RECENT-QUESTION", days=5)
    assert len(VoteStore(path).all()) == 2
    store = VoteStore(path, retention_days=30)  # at start
    assert [v["question"] for v in store.all()] == ["RECENT-QUESTION"]
    add_old_vote(path, "ANOTHER-OLD-ONE", days=31)
    add_vote(store, "NEW-QUESTION")  # as a vote comes
    assert [v["question"] for v in store.all()] == ["RECENT-QUESTION", "NEW-QUESTION"]
    raw = path.read_bytes() + b"".join(Path(f"{path}{s}").read_bytes() for s in ("-journal", "-wal")
                                       if Path(f"{path}{s}").exists())  # fmt: skip
    assert b"OLD-PATIENT-DETAILS" not in raw and b"ANOTHER-OLD-ONE" not in raw  # overwritten, not in a free page
    assert mode(path) == 0o600
    assert VoteStore(path, retention_days=0).retention_days is None  # 0: kept until the operator deletes them


def test_ratings_are_computed_once_per_change_of_the_votes(tmp_path, monkeypatch):
    computed = []  # the bootstrap itself is test_ratings.py's: here only how often it runs
    monkeypatch.setattr(blind_module, "results_markdown",
                        lambda votes: computed.append(len(votes)) or f"{len(votes)} votes in all.")  # fmt: skip
    store = VoteStore(tmp_path / "votes.sqlite")
    for _ in range(3):
        add_vote(store)
    blind = Blind(FakeVQA(), store)
    first = blind.results()
    assert [blind.results() for _ in range(5)] == [first] * 5 and computed == [3]  # page loads, Refresh
    add_vote(store, vote="B")
    threads = [threading.Thread(target=blind.results) for _ in range(6)]  # several pages loading at once
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert computed == [3, 4]
    add_vote(VoteStore(tmp_path / "votes.sqlite"), vote="tie")  # another process's vote counts too
    assert "5 votes in all" in blind.results() and computed == [3, 4, 5]
    add_old_vote(tmp_path / "votes.sqlite", "old", days=400)
    blind.results()
    VoteStore(tmp_path / "votes.sqlite", retention_days=30)  # deleted as too old: the ratings go back to 5 votes
    assert blind.results() == "5 votes in all." and computed == [3, 4, 5, 6, 5]


def test_the_public_results_hold_ratings_and_win_rates_never_a_vote(tmp_path, monkeypatch):
    from app_lib import ratings

    monkeypatch.setattr(ratings, "bradley_terry", partial(ratings.bradley_terry, n_bootstrap=10))  # fast enough
    store = VoteStore(tmp_path / "votes.sqlite")
    add_vote(store, "PATIENT JANE ROE HAS A PACEMAKER?")
    add_vote(store, "PATIENT JANE ROE HAS A PACEMAKER?", vote="B")
    shown = Blind(FakeVQA(), store).results()
    assert "Ratings" in shown and "Win rates per pair" in shown and "JANE" not in shown and "Yes." not in shown


def test_the_operator_token_is_long_compared_in_full_and_the_export_is_off_without_one(tmp_path):
    assert operator_token({}) is None
    assert operator_token({OPERATOR_TOKEN_ENV: TOKEN}) == TOKEN
    with pytest.raises(UserError, match="too short"):
        operator_token({OPERATOR_TOKEN_ENV: "secret"})
    blind = Blind(FakeVQA(), VoteStore(tmp_path / "v.sqlite"))
    with pytest.raises(gr.Error, match="export is off"):
        Operator(None).export(blind, TOKEN)
    for wrong in (None, "", TOKEN[:-1], TOKEN + "x", TOKEN.upper()):
        with pytest.raises(gr.Error, match="for the operator"):
            Operator(TOKEN).export(blind, wrong)
    assert Operator(TOKEN).export(blind, TOKEN).endswith("votes.csv")


# -- over HTTP -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vision():
    with VisionServer({"vision-test"}) as server:
        yield server


def serve(vision, votes_db, operator: Operator):
    remote = RemoteModel(parse_remote(f"vis={vision.url}#vision-test"), timeout=5)
    demo = app.create_demo(None, remotes=[remote], votes_db=votes_db, operator=operator, votes_retention_days=30)
    _, url, _ = app.serve(demo, host="127.0.0.1", port=free_port(), queue_size=4, max_file_size="5mb",
                          prevent_thread_lock=True, quiet=True)  # fmt: skip
    return demo, url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_over_http_the_export_is_refused_without_the_token_and_served_with_it(vision, tmp_path):
    votes_db = tmp_path / "votes.sqlite"
    demo, url = serve(vision, votes_db, Operator(TOKEN))
    try:
        add_vote(VoteStore(votes_db), "PATIENT JOHN DOE, 54, IS THERE EDEMA?")
        client = Client(url, verbose=False)
        for given in ("", "not-the-token-but-long-enough", TOKEN[:-1]):
            with pytest.raises(AppError, match="the votes export is for the operator"):
                client.predict(given, api_name="/export_votes")
        path = client.predict(TOKEN, api_name="/export_votes")
        with open(path, newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
        assert [r["question"] for r in rows] == ["PATIENT JOHN DOE, 54, IS THERE EDEMA?"]
        assert mode(votes_db) == 0o600
        config = str(demo.get_config_file())  # what every visitor's page holds: the stored-vote notice, no vote
        assert "What a vote stores" in config and "older than **30 days** are deleted" in config
        assert "JOHN DOE" not in config
    finally:
        demo.close()


def test_without_a_token_the_page_and_the_api_say_the_export_is_off(vision, tmp_path):
    demo, url = serve(vision, tmp_path / "votes.sqlite", Operator(None))
    try:
        with pytest.raises(AppError, match="export is off"):
            Client(url, verbose=False).predict(TOKEN, api_name="/export_votes")
        components = demo.get_config_file()["components"]
        (export,) = [c for c in components if c["props"].get("elem_id") == "export"]
        (note,) = [c for c in components if c["props"].get("elem_id") == "export-note"]
        assert export["props"]["interactive"] is False and EXPORT_OFF in note["props"]["value"]
    finally:
        demo.close()


def test_a_blind_vote_in_the_app_lands_0600(vision, tmp_path):
    votes_db = tmp_path / "votes.sqlite"
    remote = RemoteModel(parse_remote(f"vis={vision.url}#vision-test"), timeout=5)
    blind = Blind(Lineup(None, [remote, RemoteModel(parse_remote(f"vis2={vision.url}#vision-test"), timeout=5)]),
                  VoteStore(votes_db))  # fmt: skip
    film = blind.vqa.prepare_film(str(Path(__file__).resolve().parents[1] / "assets" / "examples" / "normal.png"))
    *_, trial, _ = blind.answer(film, "Is it normal?", 12, 0.0, 1.0)
    blind.vote("A", trial)
    assert len(blind.votes.all()) == 1 and mode(votes_db) == 0o600


def test_exports_of_earlier_clicks_are_deleted_and_two_clicks_never_share_a_file(monkeypatch):
    """A votes CSV (questions people fill with patient details) must not pile up in /tmp: each click writes into its
    own folder, and the folders of clicks older than the keep time go at the next click."""
    import os
    import time

    from app_lib import tables

    first, second = tables.export_folder("votes"), tables.export_folder("batch")
    assert first != second and first.parent == second.parent
    (first / "votes.csv").write_text("question\n")
    old = time.time() - tables.EXPORT_KEEP_SECONDS - 5
    os.utime(first, (old, old))
    third = tables.export_folder("votes")
    assert not first.exists() and second.is_dir() and third.is_dir()
    assert oct(third.parent.stat().st_mode & 0o777) == "0o700"  # mkdtemp: this user's only

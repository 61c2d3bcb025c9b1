"""Blind A/B votes in SQLite: what was asked, both answers, which model sat on side A, the vote, and a hash of the
film. Never the film itself: the database can be shared without sharing images.

    store = VoteStore("votes.sqlite")
    store.add(trial, "A", base_model="llava-hf/llava-1.5-7b-hf", adapter="runs/llava-cxr")
    store.counts()   # {"tuned": 3, "base": 1, "tie": 0, "both_wrong": 1}
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cxr_vqa.errors import UserError

logger = logging.getLogger(__name__)

VOTES = ("A", "B", "tie", "both_wrong")  # what the person clicks
OUTCOMES = ("tuned", "base", "tie", "both_wrong")  # what it means once the sides are known
SIDES = ("base", "tuned")

SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,                -- UTC, ISO 8601
    question TEXT NOT NULL,
    base_answer TEXT NOT NULL,
    tuned_answer TEXT NOT NULL,
    a_model TEXT NOT NULL CHECK (a_model IN ('base', 'tuned')),  -- which model was shown as "A"
    vote TEXT NOT NULL CHECK (vote IN ('A', 'B', 'tie', 'both_wrong')),
    winner TEXT NOT NULL CHECK (winner IN ('tuned', 'base', 'tie', 'both_wrong')),
    image_sha256 TEXT NOT NULL,
    base_model TEXT NOT NULL,
    adapter TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class Trial:
    """One blind comparison waiting for its vote."""

    question: str
    base_answer: str
    tuned_answer: str
    a_model: str  # "base" or "tuned"
    image_sha256: str

    def __post_init__(self):
        if self.a_model not in SIDES:
            raise ValueError(f"a_model must be one of {SIDES}, got {self.a_model!r}")

    @property
    def answers(self) -> tuple[str, str]:
        """(answer shown as A, answer shown as B)."""
        if self.a_model == "base":
            return self.base_answer, self.tuned_answer
        return self.tuned_answer, self.base_answer

    def winner(self, vote: str) -> str:
        if vote not in VOTES:
            raise ValueError(f"vote must be one of {VOTES}, got {vote!r}")
        if vote in ("tie", "both_wrong"):
            return vote
        b_model = "tuned" if self.a_model == "base" else "base"
        return self.a_model if vote == "A" else b_model


class VoteStore:
    """Append-only vote table; one short-lived connection per call, so Gradio's worker threads can share it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as con:
                con.execute(SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise UserError(f"cannot open the votes database {self.path}: {err}; pass a writable --votes-db") from None

    def _connect(self) -> closing[sqlite3.Connection]:
        return closing(sqlite3.connect(self.path, timeout=10, isolation_level=None))

    def add(self, trial: Trial, vote: str, *, base_model: str, adapter: str) -> str:
        """Store one vote and return the winner ("tuned", "base", "tie" or "both_wrong")."""
        winner = trial.winner(vote)
        row = (
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
            trial.question,
            trial.base_answer,
            trial.tuned_answer,
            trial.a_model,
            vote,
            winner,
            trial.image_sha256,
            base_model,
            adapter,
        )
        with self._connect() as con:
            con.execute(
                "INSERT INTO votes (time, question, base_answer, tuned_answer, a_model, vote, winner, image_sha256,"
                " base_model, adapter) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
        logger.info("stored a blind vote (%s)", winner)
        return winner

    def counts(self, *, base_model: str | None = None, adapter: str | None = None) -> dict[str, int]:
        """Votes per outcome, optionally only those cast for one base model / adapter pair."""
        query, params = "SELECT winner, COUNT(*) FROM votes", []
        if base_model is not None and adapter is not None:
            query += " WHERE base_model = ? AND adapter = ?"
            params = [base_model, adapter]
        with self._connect() as con:
            found = dict(con.execute(query + " GROUP BY winner", params).fetchall())
        return {outcome: int(found.get(outcome, 0)) for outcome in OUTCOMES}

"""Blind A/B votes in SQLite: what was asked, which two models answered (sides drawn at random), both answers, the
vote, and a hash of the film. Never the film itself: the database can be shared without sharing images.

    store = VoteStore("votes.sqlite")
    store.add(trial, "A", base_model="llava-hf/llava-1.5-7b-hf")
    store.all()      # every vote, oldest first, whatever models were loaded when it was cast

A model is stored by its name and its source (the adapter's path or Hub id; the base model's id for the base), so
votes stay readable and attributable after the app is restarted with other adapters. Databases of the first schema
(base vs one adapter) are migrated once, in place, and their old table is kept.
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
SCHEMA_VERSION = 2
COLUMNS = ("id", "time", "question", "model_a", "source_a", "model_b", "source_b", "answer_a", "answer_b", "vote",
           "winner", "image_sha256", "base_model")  # fmt: skip
SCHEMA = """
CREATE TABLE IF NOT EXISTS ab_votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,                -- UTC, ISO 8601
    question TEXT NOT NULL,
    model_a TEXT NOT NULL, source_a TEXT NOT NULL,   -- the model shown as "A": its name and where it came from
    model_b TEXT NOT NULL, source_b TEXT NOT NULL,
    answer_a TEXT NOT NULL, answer_b TEXT NOT NULL,
    vote TEXT NOT NULL CHECK (vote IN ('A', 'B', 'tie', 'both_wrong')),
    winner TEXT NOT NULL,              -- model_a, model_b, 'tie' or 'both_wrong'
    image_sha256 TEXT NOT NULL,
    base_model TEXT NOT NULL
)
"""
# schema 1 held base-vs-tuned votes in `votes`: side A was `a_model` ('base' or 'tuned'), the adapter its path
MIGRATE_V1 = """
INSERT INTO ab_votes (time, question, model_a, source_a, model_b, source_b, answer_a, answer_b, vote, winner,
                      image_sha256, base_model)
SELECT time, question,
       a_model, CASE a_model WHEN 'base' THEN base_model ELSE adapter END,
       CASE a_model WHEN 'base' THEN 'tuned' ELSE 'base' END,
       CASE a_model WHEN 'base' THEN adapter ELSE base_model END,
       CASE a_model WHEN 'base' THEN base_answer ELSE tuned_answer END,
       CASE a_model WHEN 'base' THEN tuned_answer ELSE base_answer END,
       vote, winner, image_sha256, base_model
FROM votes ORDER BY id
"""


@dataclass(frozen=True)
class Trial:
    """One blind comparison waiting for its vote: model A's and model B's answers to one question."""

    question: str
    model_a: str
    model_b: str
    answer_a: str
    answer_b: str
    image_sha256: str

    def winner(self, vote: str) -> str:
        if vote not in VOTES:
            raise ValueError(f"vote must be one of {VOTES}, got {vote!r}")
        return {"A": self.model_a, "B": self.model_b}.get(vote, vote)


class VoteStore:
    """Append-only vote table; one short-lived connection per call, so Gradio's worker threads can share it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as con:
                con.execute(SCHEMA)
                self._migrate(con)
        except (OSError, sqlite3.Error) as err:
            raise UserError(f"cannot open the votes database {self.path}: {err}; pass a writable --votes-db") from None

    def _connect(self) -> closing[sqlite3.Connection]:
        return closing(sqlite3.connect(self.path, timeout=10, isolation_level=None))

    @staticmethod
    def _migrate(con: sqlite3.Connection) -> None:
        if con.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        old = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'votes'").fetchone()
        con.execute("BEGIN IMMEDIATE")  # two app processes starting at once must not both migrate
        if old and con.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            moved = con.execute(MIGRATE_V1).rowcount
            logger.info("moved %d votes of the first schema to ab_votes", moved)
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        con.execute("COMMIT")

    def add(self, trial: Trial, vote: str, *, sources: dict[str, str], base_model: str) -> str:
        """Store one vote and return the winner (a model name, "tie" or "both_wrong")."""
        winner = trial.winner(vote)
        row = (
            datetime.now(timezone.utc).isoformat(timespec="seconds"), trial.question,
            trial.model_a, sources[trial.model_a], trial.model_b, sources[trial.model_b],
            trial.answer_a, trial.answer_b, vote, winner, trial.image_sha256, base_model,
        )  # fmt: skip
        with self._connect() as con:
            con.execute(f"INSERT INTO ab_votes ({', '.join(COLUMNS[1:])}) VALUES ({', '.join('?' * 12)})", row)
        logger.info("stored a blind vote")
        return winner

    def all(self, *, base_model: str | None = None) -> list[dict]:
        """Every vote as a dict of COLUMNS, oldest first; only those cast on `base_model` if given."""
        query, params = f"SELECT {', '.join(COLUMNS)} FROM ab_votes", []
        if base_model is not None:
            query, params = query + " WHERE base_model = ?", [base_model]
        with self._connect() as con:
            return [dict(zip(COLUMNS, row, strict=True)) for row in con.execute(query + " ORDER BY id", params)]

"""Blind A/B votes in SQLite: what was asked, which two models answered (sides drawn at random), both answers, the
vote, and a hash of the film. Never the film itself: the database can be shared without sharing images.

    store = VoteStore("votes.sqlite", retention_days=90)   # created 0600; votes older than 90 days deleted
    store.add(trial, "A", base_model="llava-hf/llava-1.5-7b-hf")
    store.all()      # every vote, oldest first, whatever models were loaded when it was cast
    store.version()  # changes whenever the votes do: what a cache of their ratings is keyed on

A model is stored by its name and its source (the adapter's path or Hub id; the base model's id for the base), so
votes stay readable and attributable after the app is restarted with other adapters. Databases of the first schema
(base vs one adapter) are migrated once, in place, and their old table is kept.

Votes hold what people typed (sometimes more about a patient than they should): the file is readable by its owner
only (0600, and SQLite gives its journal the same mode), votes older than `retention_days` are deleted when the store
opens and after each vote, and deleted rows are overwritten (`secure_delete`), not left in free pages.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import closing, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cxr_vqa.errors import UserError

logger = logging.getLogger(__name__)

VOTES = ("A", "B", "tie", "both_wrong")  # what the person clicks
PRIVATE_MODE = 0o600
SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")
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

    def __init__(self, path: str | Path, *, retention_days: int | None = None):
        self.path = Path(path)
        self.retention_days = retention_days or None  # 0 or None: kept until the operator deletes them
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._make_private()
            with self._connect() as con:
                con.execute(SCHEMA)
                self._migrate(con)
            self.prune()
        except (OSError, sqlite3.Error) as err:
            raise UserError(f"cannot open the votes database {self.path}: {err}; pass a writable --votes-db") from None

    def _make_private(self) -> None:
        """Create the file 0600 before SQLite does (it would use the umask: 0644), and tighten an existing one."""
        with suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE))
        for path in [self.path, *(Path(f"{self.path}{side}") for side in SQLITE_SIDE_FILES)]:
            if path.exists() and path.stat().st_mode & 0o077:
                logger.warning("%s was readable by other users (mode %o): now %o", path, path.stat().st_mode & 0o777,
                               PRIVATE_MODE)  # fmt: skip
                path.chmod(PRIVATE_MODE)

    def _connect(self) -> closing[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        con.execute("PRAGMA secure_delete = ON")  # a deleted vote's text is overwritten, not left in a free page
        return closing(con)

    def prune(self) -> int:
        """Delete the votes older than `retention_days` (those of the first schema's table too); how many went."""
        if self.retention_days is None:
            return 0
        cutoff = (datetime.now(timezone.utc) - timedelta(days=self.retention_days)).isoformat(timespec="seconds")
        with self._connect() as con:
            gone = con.execute("DELETE FROM ab_votes WHERE time < ?", (cutoff,)).rowcount
            if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'votes'").fetchone():
                gone += con.execute("DELETE FROM votes WHERE time < ?", (cutoff,)).rowcount
        if gone:
            logger.info("deleted %d votes older than %d days", gone, self.retention_days)
        return gone

    def version(self, *, base_model: str | None = None) -> tuple[int, int]:
        """(how many votes, the newest id): changes with every vote cast or deleted, by this process or another."""
        query, params = "SELECT count(*), coalesce(max(id), 0) FROM ab_votes", []
        if base_model is not None:
            query, params = query + " WHERE base_model = ?", [base_model]
        with self._connect() as con:
            return tuple(con.execute(query, params).fetchone())

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
        self.prune()
        return winner

    def all(self, *, base_model: str | None = None) -> list[dict]:
        """Every vote as a dict of COLUMNS, oldest first; only those cast on `base_model` if given."""
        query, params = f"SELECT {', '.join(COLUMNS)} FROM ab_votes", []
        if base_model is not None:
            query, params = query + " WHERE base_model = ?", [base_model]
        with self._connect() as con:
            return [dict(zip(COLUMNS, row, strict=True)) for row in con.execute(query + " ORDER BY id", params)]

"""The Blind A/B tab's handlers: two models drawn at random from all of them (base and remote ones included), sides at
random, one vote per pair; and the Results tab's ratings (cached: recomputed only when the votes change) and the CSV
of every vote (for the operator: `app_lib.votes_tab` checks the token before calling `export`)."""

from __future__ import annotations

import csv
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from app_lib.handlers import NO_IMAGE, Inputs, ui_errors
from app_lib.ratings import results_markdown
from app_lib.tables import export_folder, spreadsheet_safe
from app_lib.votes import COLUMNS, Trial
from cxr_vqa.errors import UserError
from cxr_vqa.images import Film

NO_BLIND = (
    "blind A/B needs two models: start the app with --adapter DIR (or set ADAPTER_MODEL) or --remote NAME=URL#MODEL"
)
VOTE_FIRST = "no pair to vote on: press “Answer blind” first (each pair takes one vote)"
CHOICES = {"A": "A", "B": "B", "tie": "a tie", "both_wrong": "both wrong"}


@dataclass(frozen=True)
class BlindTrial(Trial):
    """A trial and where its two models came from when they answered: a demo swaps in checkpoints meanwhile, and the
    vote is on these answers."""

    source_a: str
    source_b: str


class Blind(Inputs):
    def __init__(self, vqa, votes, *, notes: Callable[[], dict[str, str]] | None = None, **kwargs):
        super().__init__(vqa, votes, **kwargs)
        self.notes = notes or dict  # {model: why it does not answer yet}, e.g. a demo's adapter still training
        # the ratings' bootstrap costs seconds of CPU for thousands of votes: computed once per change of the votes,
        # by one thread while the others wait for it, not on every page load
        self._ratings: tuple[tuple, str] | None = None
        self._ratings_lock = threading.Lock()

    @property
    def sources(self) -> dict[str, str]:
        """Where each model came from: the base model's id, each adapter's path or Hub id, each remote model's
        BASE_URL#MODEL (never its key)."""
        return self.vqa.sources

    def answer(self, film: Film | None, question: str, max_new_tokens, temperature, top_p):
        """(answer A, answer B, Trial state, reveal line): both answers from one call, pair and sides at random."""
        with ui_errors():
            if len(self.vqa.model_names) < 2:
                waiting = [note for model, note in self.notes().items() if model not in self.vqa.model_names]
                raise UserError(
                    f"blind A/B needs two models, and the fine-tuned one is still training ({waiting[0]})"
                    if waiting
                    else NO_BLIND
                )
            if film is None:
                raise UserError(NO_IMAGE)
            settings = self._settings(max_new_tokens, temperature, top_p)
            question = self._clean(question)
            conversation = self.vqa.conversation(None, question, settings.max_new_tokens)
            model_a, model_b = self.rng.sample(self.vqa.model_names, 2)
            answers = self.vqa.compare(film.image, {model_a: conversation, model_b: conversation}, settings)
            for answer in answers.values():
                if answer.error:  # a pair with one answer is no trial: say which model failed, and vote on none
                    raise UserError(answer.error)
        local = self.vqa.local if {model_a, model_b} & set(self.vqa.local_names) else None
        used = local.last_weights() if local is not None else None  # read right after this thread's answer
        sources = self.sources | (used.sources if used is not None else {})
        trial = BlindTrial(question=question, model_a=model_a, model_b=model_b, answer_a=answers[model_a].text,
                           answer_b=answers[model_b].text, image_sha256=film.sha256, source_a=sources[model_a],
                           source_b=sources[model_b])  # fmt: skip
        return trial.answer_a, trial.answer_b, trial, "Which answer is better? Vote to reveal which model wrote which."

    def vote(self, choice: str, trial: Trial | None):
        """(reveal line, Trial state): store the vote in SQLite, then say which side was which."""
        if trial is None:
            raise gr.Error(VOTE_FIRST)
        sources = self.sources  # a plain Trial: where the models come from now
        if isinstance(trial, BlindTrial):
            sources = {trial.model_a: trial.source_a, trial.model_b: trial.source_b}
        try:
            self.votes.add(trial, choice, sources=sources, base_model=self.vqa.base_name)
        except (OSError, sqlite3.Error, ValueError) as err:
            raise gr.Error(f"could not store the vote: {err}") from None
        reveal = (f"You voted {CHOICES[choice]}. **A** was **{trial.model_a}**, **B** was **{trial.model_b}**. "
                  "Vote stored.")  # fmt: skip
        return reveal, None

    def results(self) -> str:
        """The Results tab's ratings and win rates of the votes cast on this base model (never a vote's text)."""
        with self._ratings_lock:
            version = self.votes.version(base_model=self.vqa.base_name)
            if self._ratings is None or self._ratings[0] != version:
                self._ratings = version, results_markdown(self.votes.all(base_model=self.vqa.base_name))
            return self._ratings[1]

    def export(self) -> str:
        """Every stored vote (all base models) as a CSV file; callers check the operator's token first."""
        path = export_folder("votes") / "votes.csv"
        with open(path, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=COLUMNS)
            writer.writeheader()
            for vote in self.votes.all():  # questions and answers are typed by people and written by models
                writer.writerow({k: spreadsheet_safe(v) if isinstance(v, str) else v for k, v in vote.items()})
        return str(path)

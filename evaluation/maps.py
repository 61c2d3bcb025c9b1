"""A contact sheet of relevance maps (`python -m evaluation ... --maps N`, off by default): for N questions sampled
from the predictions, right and wrong answers of the first fine-tuned model in equal parts where both exist, where
each model looked for the answer it gave (`cxr_vqa.relevance`), side by side, as R/maps.png.

    write_contact_sheet(vqa, films, records, ["base", "tuned"], 8, Path("reports/test/maps.png"))

The maps explain the answers already in predictions.jsonl: each model's answer is teacher-forced after its
question with its film, one forward and one backward per question for all models (no new answer is generated).
"""

from __future__ import annotations

import random
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from cxr_vqa.relevance import overlay
from cxr_vqa.template import add_question

MAPS_PNG = "maps.png"


def sample(records: Sequence[dict], judged: str, n: int, seed: int = 0) -> list[dict]:
    """Up to `n` closed questions, half answered right by `judged` and half wrong where there are enough of each
    (the rest from the other group), in a seeded random order; open questions fill in when closed ones run out."""
    rng = random.Random(seed)
    closed = [r for r in records if r["kind"] == "closed" and "correct" in r["scores"].get(judged, {})]
    right = [r for r in closed if r["scores"][judged]["correct"]]
    wrong = [r for r in closed if not r["scores"][judged]["correct"]]
    in_closed = {id(r) for r in closed}  # by identity: `r not in closed` compares dicts, n x n of them
    rest = [r for r in records if id(r) not in in_closed]
    for group in (right, wrong, rest):
        rng.shuffle(group)
    take_wrong = min(len(wrong), n // 2)
    picked = wrong[:take_wrong] + right[: n - take_wrong]
    picked += wrong[take_wrong : take_wrong + n - len(picked)]
    return picked + rest[: n - len(picked)]


def _mark(record: dict, model: str) -> str:
    correct = record["scores"].get(model, {}).get("correct")
    return "" if correct is None else " ✓" if correct else " ✗"


def write_contact_sheet(
    vqa, films: Callable[[int], Image.Image], records: Sequence[dict], models: Sequence[str], n: int, path: Path,
    seed: int = 0,
) -> int:  # fmt: skip
    """Draw the sheet (one row per sampled question, one column per model) into `path`; returns the rows drawn."""
    from evaluation.plots import _pyplot

    judged = next((m for m in models if m != models[0]), models[0])  # the first adapter, else the base
    picked = sample(records, judged, n, seed)
    if not picked:
        return 0
    plt = _pyplot()
    fig, axes = plt.subplots(len(picked), len(models), figsize=(2.6 * len(models), 2.9 * len(picked)), squeeze=False)
    for row, record in enumerate(picked):
        film = films(record["row"])
        conversation = add_question(None, record["question"])
        answers = [record["answers"][m] for m in models]
        maps = vqa.relevance([film] * len(models), [conversation] * len(models), answers, list(models))
        for col, (model, answer, found) in enumerate(zip(models, answers, maps, strict=True)):
            ax = axes[row][col]
            ax.imshow(overlay(film, found.grid))
            ax.set_xticks([])
            ax.set_yticks([])
            title = f"{model}{_mark(record, model)}: {answer[:60]}"
            ax.set_title("\n".join(textwrap.wrap(title, 34)[:2]), fontsize=7)
        axes[row][0].set_ylabel("\n".join(textwrap.wrap(record["question"], 30)[:3]), fontsize=7)
    fig.suptitle("Where each model looked for its answer\n(relevance maps, cxr_vqa.relevance)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return len(picked)

"""Arena-style results of blind A/B votes: win rates per pair with Wilson intervals, and a Bradley–Terry rating per
model with bootstrap intervals over votes. Pure functions of vote dicts (`VoteStore.all()`).

    ratings = bradley_terry(votes)          # {label: {"rating", "ci", "votes"}}, base anchored at 1000
    rows = pair_rates(votes)                # one row per pair of models that met

Ties and "both wrong" count half a win for each side, as FastChat's arena does. The rating is on the Elo scale
(400 points = 10:1 odds); the base model is anchored at 1000 so an adapter's rating reads as its gain over the base.
A small ridge keeps an undefeated model's rating finite.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from app_lib.results import wilson_interval

ANCHOR, ELO_SCALE, RIDGE = 1000.0, 400 / math.log(10), 0.01
N_BOOTSTRAP = 200


def labels(votes: list[dict]) -> list[tuple[str, str]]:
    """(label_a, label_b) of each vote: a model's name, with its source where one name stood for several models."""
    sources: dict[str, set[str]] = {}
    for v in votes:
        sources.setdefault(v["model_a"], set()).add(v["source_a"])
        sources.setdefault(v["model_b"], set()).add(v["source_b"])

    def label(name: str, source: str) -> str:
        return name if len(sources[name]) == 1 else f"{name} ({source})"

    return [(label(v["model_a"], v["source_a"]), label(v["model_b"], v["source_b"])) for v in votes]


def outcomes(votes: list[dict]) -> list[tuple[str, str, float]]:
    """(A, B, A's score): 1 for an A win, 0 for a B win, 0.5 for a tie or both wrong."""
    score = {"A": 1.0, "B": 0.0, "tie": 0.5, "both_wrong": 0.5}
    return [(a, b, score[v["vote"]]) for v, (a, b) in zip(votes, labels(votes), strict=True)]


def _fit(games: list[tuple[int, int, float]], n: int, anchor: int) -> np.ndarray:
    from scipy.optimize import minimize

    a, b, s = (np.array(x) for x in zip(*games, strict=True))
    free = [i for i in range(n) if i != anchor]

    def loss(theta_free):
        theta = np.zeros(n)
        theta[free] = theta_free
        d = theta[a] - theta[b]
        nll = np.sum(np.logaddexp(0, -d) * s + np.logaddexp(0, d) * (1 - s))
        grad_d = -s * (1 - 1 / (1 + np.exp(-d))) + (1 - s) / (1 + np.exp(-d))
        grad = np.bincount(a, grad_d, n) - np.bincount(b, grad_d, n) + 2 * RIDGE * theta
        return nll + RIDGE * np.sum(theta**2), grad[free]

    theta = np.zeros(n)
    if free:
        theta[free] = minimize(loss, np.zeros(len(free)), jac=True, method="L-BFGS-B").x
    return theta


def bradley_terry(votes: list[dict], *, base: str = "base", n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """Maximum-likelihood Bradley–Terry ratings on the Elo scale with 95% intervals over resampled votes."""
    games = outcomes(votes)
    if not games:
        return {}
    models = sorted({m for a, b, _ in games for m in (a, b)}, key=lambda m: (m != base, m))
    index = {m: i for i, m in enumerate(models)}
    coded = [(index[a], index[b], s) for a, b, s in games]
    rating = ANCHOR + ELO_SCALE * _fit(coded, len(models), 0)
    rng = np.random.default_rng(seed)
    boot = np.array([ANCHOR + ELO_SCALE * _fit([coded[i] for i in rng.integers(0, len(coded), len(coded))],
                                               len(models), 0) for _ in range(n_bootstrap)])  # fmt: skip
    counts = Counter(m for a, b, _ in games for m in (a, b))
    return {
        m: {"rating": float(rating[i]), "ci": [float(x) for x in np.percentile(boot[:, i], [2.5, 97.5])],
            "votes": counts[m]}
        for i, m in enumerate(models)
    }  # fmt: skip


def pair_rates(votes: list[dict]) -> list[dict]:
    """Per pair of models that met: votes, wins of each, ties, and the first's win rate among decisive votes."""
    table: dict[tuple[str, str], Counter] = {}
    for a, b, s in outcomes(votes):
        first, second = sorted((a, b))
        result = "tie" if s == 0.5 else ("first" if (s == 1.0) == (a == first) else "second")
        table.setdefault((first, second), Counter())[result] += 1
    rows = []
    for (first, second), c in sorted(table.items()):
        decisive = c["first"] + c["second"]
        rate = c["first"] / decisive if decisive else float("nan")
        rows.append({"first": first, "second": second, "votes": sum(c.values()), "first_wins": c["first"],
                     "second_wins": c["second"], "ties": c["tie"], "first_win_rate": rate,
                     "ci": list(wilson_interval(c["first"], decisive))})  # fmt: skip
    return rows


def results_markdown(votes: list[dict]) -> str:
    if not votes:
        return "No blind votes yet for this base model: use the **Blind A/B** tab."
    lines = ["**Ratings** (Bradley–Terry, Elo scale, base = 1000; ties count half; 95% bootstrap CI over votes)", "",
             "| model | rating | 95% CI | votes |", "|---|---:|---:|---:|"]  # fmt: skip
    for model, r in sorted(bradley_terry(votes).items(), key=lambda kv: -kv[1]["rating"]):
        lines.append(f"| {model} | {r['rating']:.0f} | {r['ci'][0]:.0f} – {r['ci'][1]:.0f} | {r['votes']} |")
    lines += [
        "",
        "**Win rates per pair** (ties and both-wrong left out; 95% Wilson CI)",
        "",
        "| pair | votes | wins | ties | win rate of the first | 95% CI |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in pair_rates(votes):
        rate = "n/a" if math.isnan(r["first_win_rate"]) else f"{r['first_win_rate']:.0%}"
        lines.append(f"| {r['first']} vs {r['second']} | {r['votes']} | {r['first_wins']} – {r['second_wins']} | "
                     f"{r['ties']} | {rate} | {r['ci'][0]:.0%} – {r['ci'][1]:.0%} |")  # fmt: skip
    return "\n".join([*lines, "", f"{len(votes)} votes in all."])

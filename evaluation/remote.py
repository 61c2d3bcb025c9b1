"""Remote models' answers to an evaluation's questions (each with its film, and with a blank image): asked concurrently
through the core's `RemoteModel`, cached by content so that a killed run never asks again, tokens counted, and a
`--max-cost` stop.

    answered = answer_remote(remotes, films, questions, variants, settings, cache=RemoteCache(out / REMOTE_CACHE),
                             concurrency=8, budget=Budget(remotes, price=None, max_cost=5.0))
    answered["gpt4o_blank"]["study1#0"]      # (Answer, usage, error): what `predictions.answer_all` writes for it

The cache key hashes the whole request (the endpoint, the model id, the conversation, the film as sent, the decoding
settings), so a changed film, question or setting is asked again and nothing else is. The cache file holds one JSON
line per answer (its key, that hash; its text, P(yes), token usage and cost), never the film, the request or the API
key; a line cut short by a kill is skipped. `--max-cost` counts what the cache says was spent, so it caps every run
into the same --out together.

A request the endpoint refuses for good (a 4xx no retry passes, e.g. a content refusal) is cached as an answer with
empty text, no P(yes) and an "error" (scored as a wrong, unparseable answer, and counted as refused in the report),
provided that model answered other requests: a model that refuses every one is set up wrongly, not refusing. A
question a remote model could not answer for now (timeouts, 429, 5xx, no connection: after the core's retries) or that
the budget stops is left out, and the run ends with one line saying how many, after everything else was asked: a
rerun asks only those.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from cxr_vqa.answers import Answer
from cxr_vqa.costs import Ledger, estimate_tokens, price_of
from cxr_vqa.errors import UserError
from cxr_vqa.files import write_text_atomic
from cxr_vqa.remote import RemoteError, RemoteModel, answer_of, png_data_url
from cxr_vqa.reports import split_variant
from cxr_vqa.template import add_question
from evaluation.predictions import Settings, settings_for

logger = logging.getLogger(__name__)

REMOTE_CACHE = "remote_cache.jsonl"
IMAGE_TOKENS = 576  # a film is 576 tokens to LLaVA-1.5 (fewer to OpenAI's models): budget estimates err high


class RemoteCache:
    """Answers by request key, appended one JSON line each as they arrive."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries = {}
        if not self.path.is_file():
            return
        text = self.path.read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                self.entries[entry["key"]] = entry
            except (ValueError, TypeError, KeyError):  # a line cut short by a kill: its request is asked again
                continue
        if text and (not text.endswith("\n") or len(self.entries) != text.count("\n")):
            # rewrite what was read whole, or the next answer would join a cut line and be lost with it
            write_text_atomic(self.path, "".join(json.dumps(e) + "\n" for e in self.entries.values()))

    @property
    def cost(self) -> float:
        """USD spent on the answers it holds, whichever run asked them."""
        return sum(e.get("cost_usd") or 0.0 for e in self.entries.values())

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, entry: dict) -> None:
        self.entries[key] = {"key": key, **entry}
        with open(self.path, "a", encoding="utf-8") as file:  # whole lines: a kill loses at most the one being written
            file.write(json.dumps(self.entries[key]) + "\n")


def request_key(remote: RemoteModel, body: dict) -> str:
    return hashlib.sha256(json.dumps([remote.identity, body], sort_keys=True).encode()).hexdigest()


class Budget:
    """Tokens and dollars per remote model (its own price) under one --max-cost for all of them, `earlier` USD of
    which earlier runs into the same --out spent (`RemoteCache.cost`)."""

    def __init__(self, remotes: Sequence[RemoteModel], price: tuple[float, float] | None, max_cost: float | None,
                 earlier: float = 0.0):  # fmt: skip
        self.ledgers = {r.name: Ledger(price_of(r.spec.model, price)) for r in remotes}
        self.max_cost, self.earlier = max_cost, earlier

    def reserve(self, name: str, tokens: tuple[int, int]) -> float | None:
        """The estimate reserved before a send; None when it would pass --max-cost."""
        estimate = self.ledgers[name].cost(*tokens)
        used = self.earlier + sum(ledger.spent + ledger.reserved for ledger in self.ledgers.values())
        if self.max_cost is not None and used + estimate > self.max_cost:
            return None
        self.ledgers[name].reserve(estimate)
        return estimate

    @property
    def spent(self) -> float:
        """USD spent by this run."""
        return sum(ledger.spent for ledger in self.ledgers.values())


def refused(err: RemoteError) -> bool:
    """Whether the endpoint refused this one request for good: an HTTP 4xx that no retry passes (a content refusal, a
    request too large), not a gap a rerun may fill (429, 5xx, timeouts, no connection) or a refused key (fatal)."""
    return not err.fatal and not err.retryable and err.status is not None


def _tasks(remotes, films, questions, variants, settings) -> Iterator[tuple[str, str, RemoteModel, dict]]:
    """(question id, variant, model, request body) for every question and remote variant, built lazily: only the
    current film's data URLs are held."""
    held: dict[int, dict[bool, str]] = {}
    for q in questions:
        if q["row"] not in held:
            image = films(q["row"])
            held = {q["row"]: {False: png_data_url(image), True: png_data_url(Image.new("RGB", image.size))}}
        conversation = add_question(None, q["question"])
        for variant, name, blank in variants:
            body = remotes[name].body(held[q["row"]][blank], conversation, settings_for(settings, q["kind"]))
            yield q["id"], variant, remotes[name], body


def _tokens(body: dict) -> tuple[int, int]:
    """(input, output) tokens a request may use, before it is sent: its texts, a film, the answer's cap."""
    texts = [m["content"] if isinstance(m["content"], str) else " ".join(p.get("text", "") for p in m["content"])
             for m in body["messages"]]  # fmt: skip
    return estimate_tokens(" ".join(texts)) + IMAGE_TOKENS, body["max_tokens"]


async def _ask(tasks: Iterator, cache: RemoteCache, concurrency: int, budget: Budget, bar) -> tuple[dict, dict]:
    """Ask every task not in the cache, each distinct request once: ({(question id, variant): cache key}, {cache key:
    why it has no answer})."""
    clients: dict = {}
    keys: dict[tuple, str] = {}
    seen: set[str] = set()  # requests sent or being sent: the same blank film and question is asked once
    missing: dict[str, str] = {}
    refusals: dict[str, tuple[str, str]] = {}  # cache key: (model, why), refused for good
    fatal: list[RemoteError] = []
    sent: Counter = Counter()

    async def worker() -> None:
        for qid, variant, remote, body in tasks:  # one shared iterator: each task goes to exactly one worker
            key = keys[(qid, variant)] = request_key(remote, body)
            bar.update()
            if key in seen or cache.get(key) is not None:
                continue
            seen.add(key)
            if fatal:  # a refused key or an unknown model: no later request can pass
                missing[key] = str(fatal[0])
                continue
            tokens = _tokens(body)
            estimate = budget.reserve(remote.name, tokens)
            if estimate is None:
                missing[key] = f"--max-cost {budget.max_cost:g} USD would be exceeded"
                continue
            client = clients.get(remote.name) or clients.setdefault(remote.name, remote.client())
            try:
                reply = await remote.send(client, body)
            except RemoteError as err:
                if refused(err):
                    refusals[key] = (remote.name, str(err))
                else:
                    missing[key] = str(err)
                    fatal.extend([err] if err.fatal else [])
                continue
            finally:
                budget.ledgers[remote.name].release(estimate)
            cost = budget.ledgers[remote.name].record(reply.usage, tokens)
            answer = answer_of(reply)
            cache.put(key, {"model": remote.name, "text": answer.text, "p_yes": answer.p_yes, "usage": reply.usage,
                            "cost_usd": cost})  # fmt: skip
            sent[remote.name] += 1

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        for client in clients.values():
            await client.close()
    answering = {e["model"] for e in cache.entries.values() if "error" not in e}
    for key, (name, why) in refusals.items():
        if name in answering:  # a wrong answer it will always give: cached, so no rerun stops on it again
            cache.put(key, {"model": name, "text": "", "p_yes": None, "usage": None, "cost_usd": 0.0, "error": why})
        else:
            missing[key] = f"{why}; {name} answered no request: check its endpoint and model"
    logger.info("remote answers sent this run: %s; spent %.4f USD", dict(sent) or "none", budget.spent)
    return keys, missing


def answer_remote(
    remotes: dict[str, RemoteModel],
    films: Callable[[int], Image.Image],
    questions: Sequence[dict],
    variants: Sequence[tuple[str, str, bool]],
    settings: Settings,
    *,
    cache: RemoteCache,
    concurrency: int,
    budget: Budget,
) -> dict[str, dict[str, tuple[Answer, dict | None, str | None]]]:
    """{variant: {question id: (answer, token usage, why it was refused or None)}} for every question under every
    remote variant (variant name, remote model name, blank image?); UserError naming what is missing when some could
    not be had."""
    total = len(questions) * len(variants)
    tasks = _tasks(remotes, films, questions, variants, settings)
    with tqdm(total=total, desc="remote answers", unit="answer") as bar:
        keys, missing = asyncio.run(_ask(tasks, cache, concurrency, budget, bar))
    absent = [key for key in keys.values() if cache.get(key) is None]
    if absent:
        why = next((missing[key] for key in absent if key in missing), "not asked")
        raise UserError(f"{len(absent)} of {total} remote answers missing ({why}): rerun the same command to ask "
                        f"only those (the others are cached in {cache.path.name})")  # fmt: skip
    answered: dict[str, dict] = {variant: {} for variant, _, _ in variants}
    for (qid, variant), key in keys.items():
        entry = cache.get(key)
        answered[variant][qid] = (Answer(entry["text"], entry["p_yes"]), entry.get("usage"), entry.get("error"))
    return answered


def remote_usage(records: Sequence[dict], remotes: dict[str, RemoteModel], price: tuple[float, float] | None) -> dict:
    """Per remote model, over every answer the records hold (whichever run asked it): its source, answers, requests
    (identical ones are asked once), answers refused (scored as wrong), tokens (as its endpoint reported them) and
    their cost at the given or list prices."""
    out = {}
    for name, remote in remotes.items():
        ledger, answers, requests = Ledger(price_of(remote.spec.model, price)), 0, set()
        refusals = sum(split_variant(v)[0] == name for r in records for v in r.get("errors", {}))
        for record in records:
            for variant, usage in record.get("usage", {}).items():
                model, blank = split_variant(variant)
                # what makes the request: the question, and the film unless blank (a blank film is any study's)
                request = (variant, record["question"], None if blank else record["row"])
                if model == name and request not in requests:
                    requests.add(request)
                    ledger.record(usage, (0, 0))
                answers += model == name
        out[name] = {"source": remote.source, "answers": answers, "requests": len(requests), "refused": refusals,
                     "prompt_tokens": ledger.prompt_tokens,
                     "completion_tokens": ledger.completion_tokens, "price_per_mtok": list(ledger.price),
                     "cost_usd": round(ledger.spent, 6)}  # fmt: skip
    return out

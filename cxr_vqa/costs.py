"""What calls to a paid endpoint cost: list prices, a rough token count, and the ledger behind `--max-cost`, for every
part that sends requests (dataprep's QA generator, evaluation's and the app's remote models).

    ledger = Ledger(price_of("gpt-4o-mini"), max_cost=5.0)
    if ledger.reserve(estimate): ...send...; ledger.release(estimate); ledger.record(usage, tokens)
    budget = Budget({"gpt4o": price_of("gpt-4o")}, max_cost=5.0)    # several models, one cap, any thread
    held = budget.reserve("gpt4o", tokens); ...send...; budget.settle("gpt4o", held, usage, tokens)

Reserving before each send is what keeps concurrent requests from overshooting the budget together.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

# USD per million (input, output) tokens, list prices when written; flags override them. Unknown models (a local
# vLLM or Ollama) cost 0.
PRICES_PER_MTOK = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
}


def price_of(model: str, given: tuple[float, float] | None = None) -> tuple[float, float]:
    """USD per million (input, output) tokens: `given`, else the list price of `model`, else 0 (a local server)."""
    return given or PRICES_PER_MTOK.get(model, (0.0, 0.0))


IMAGE_TOKENS = 576  # a film is 576 tokens to LLaVA-1.5 (fewer to OpenAI's models): budget estimates err high


def estimate_tokens(text: str) -> int:
    return len(text) // 4 + 1  # ~4 characters a token for English; good enough for a budget


def request_tokens(conversation: Sequence[dict], max_new_tokens: int) -> tuple[int, int]:
    """(prompt, completion) tokens a request may cost at most, about: its texts and one film in, the whole answer
    budget out."""
    parts = [
        p
        for turn in conversation
        for p in ([{"type": "text", "text": turn["content"]}] if isinstance(turn["content"], str) else turn["content"])
    ]
    texts = [p["text"] or "" for p in parts if p["type"] == "text"]
    return estimate_tokens(" ".join(texts)) + IMAGE_TOKENS, max_new_tokens


class Ledger:
    """Tokens and dollars, and a budget that requests reserve before they are sent (concurrency overshoots).
    Not thread-safe: use one from one thread or one event loop (its coroutines interleave only at awaits)."""

    def __init__(self, price: tuple[float, float], max_cost: float | None = None) -> None:
        self.price, self.max_cost = price, max_cost
        self.prompt_tokens = self.completion_tokens = 0
        self.spent = self.reserved = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int, discount: float = 1.0) -> float:
        return discount * (prompt_tokens * self.price[0] + completion_tokens * self.price[1]) / 1e6

    def reserve(self, amount: float) -> bool:
        if self.max_cost is not None and self.spent + self.reserved + amount > self.max_cost:
            return False
        self.reserved += amount
        return True

    def release(self, amount: float) -> None:
        self.reserved -= amount

    def record(self, usage: dict | None, estimate: tuple[int, int], discount: float = 1.0) -> float:
        """Add one reply's tokens (the estimate where the server reports none); return its cost."""
        usage = usage or {}
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        prompt = estimate[0] if prompt is None else prompt  # a reported 0 (an empty answer) costs 0, not a guess
        completion = estimate[1] if completion is None else completion
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        cost = self.cost(prompt, completion, discount)
        self.spent += cost
        return cost


class Budget:
    """Several models' ledgers (each at its own price) under one `max_cost` for all of them, safe to use from many
    threads at once (the app's panes and batches answer in threads)."""

    def __init__(self, prices: dict[str, tuple[float, float]], max_cost: float | None = None) -> None:
        self.ledgers = {name: Ledger(price) for name, price in prices.items()}
        self.max_cost = max_cost
        self._lock = threading.Lock()

    def reserve(self, name: str, tokens: tuple[int, int]) -> float | None:
        """The estimate held for one send of `name`; None when it would pass `max_cost`."""
        with self._lock:
            estimate = self.ledgers[name].cost(*tokens)
            used = sum(ledger.spent + ledger.reserved for ledger in self.ledgers.values())
            if self.max_cost is not None and used + estimate > self.max_cost:
                return None
            self.ledgers[name].reserve(estimate)
            return estimate

    def settle(self, name: str, held: float, usage: dict | None, tokens: tuple[int, int],
               answered: bool = True) -> float:  # fmt: skip
        """Release what was held and record what the reply used (the estimate where the server reported no usage;
        nothing for a send that got no reply: 429, 5xx and timeouts are not billed)."""
        with self._lock:
            self.ledgers[name].release(held)
            return self.ledgers[name].record(usage, tokens) if answered else 0.0

    @property
    def spent(self) -> float:
        with self._lock:
            return sum(ledger.spent for ledger in self.ledgers.values())

"""What calls to a paid endpoint cost: list prices, a rough token count, and the ledger behind `--max-cost`, for every
part that sends requests (dataprep's QA generator, evaluation's remote models).

    ledger = Ledger(price_of("gpt-4o-mini"), max_cost=5.0)
    if ledger.reserve(estimate): ...send...; ledger.release(estimate); ledger.record(usage, tokens)

Reserving before each send is what keeps concurrent requests from overshooting the budget together.
"""

from __future__ import annotations

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


def estimate_tokens(text: str) -> int:
    return len(text) // 4 + 1  # ~4 characters a token for English; good enough for a budget


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

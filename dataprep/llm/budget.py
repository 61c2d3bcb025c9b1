"""What one run may spend: dollars (list prices, a rough token count, the ledger behind --max-cost) and sends (two
retry budgets under one hard ceiling per report).

    ledger = Ledger(PRICES_PER_MTOK["gpt-4o-mini"], max_cost=5.0)
    if ledger.reserve(estimate): ...send...; ledger.release(estimate); ledger.record(usage, tokens)
    check_retry_options(max_retries=4, max_invalid_retries=2)     # ValueError past MAX_SENDS_PER_REPORT

Reserving before each send is what keeps concurrent requests from overshooting the budget together.

A free failure (429, 5xx, a timeout, a refused connection) bills nothing and often passes later, so it gets the
larger budget, --max-retries. A reply that arrives but is malformed or fails the schema is billed, and at
temperature 0 it usually comes back the same, so --max-invalid-retries is small. Whatever the mix of faults, no
report is sent more than MAX_SENDS_PER_REPORT times in a run. A report still malformed after its billed sends is
remembered as rejected in the cache and not paid for again (dataprep.llm.cache); what failed for free is retried by
the next run.
"""

from __future__ import annotations

import json

MAX_SENDS_PER_REPORT = 5
OUTPUT_TOKENS_PER_PAIR = 40  # for estimates only

# USD per million (input, output) tokens, list prices when written; --price-input/--price-output override.
# Unknown models (a local vLLM or Ollama) cost 0.
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


def estimate_tokens(text: str) -> int:
    return len(text) // 4 + 1  # ~4 characters a token for English; good enough for a budget


def request_tokens(body: dict, qa_per_study: int) -> tuple[int, int]:
    """(input, output) tokens one chat request is expected to use, before it is sent."""
    return estimate_tokens(json.dumps(body["messages"])), qa_per_study * OUTPUT_TOKENS_PER_PAIR


def check_retry_options(max_retries: int, max_invalid_retries: int) -> None:
    """Reject a budget the ceiling could never grant; the two together are capped by it, not rejected."""
    for flag, value in (("--max-retries", max_retries), ("--max-invalid-retries", max_invalid_retries)):
        if not 0 <= value < MAX_SENDS_PER_REPORT:
            raise ValueError(
                f"{flag} must be between 0 and {MAX_SENDS_PER_REPORT - 1} (no report is sent more than "
                f"{MAX_SENDS_PER_REPORT} times), got {value}"
            )


class Ledger:
    """Tokens and dollars, and a budget that requests reserve before they are sent (concurrency overshoots)."""

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
        prompt = usage.get("prompt_tokens") or estimate[0]
        completion = usage.get("completion_tokens") or estimate[1]
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        cost = self.cost(prompt, completion, discount)
        self.spent += cost
        return cost

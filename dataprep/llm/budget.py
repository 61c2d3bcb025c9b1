"""What one run may spend: dollars (the core's prices and ledger, `cxr_vqa.costs`, behind --max-cost) and sends (two
retry budgets under one hard ceiling per report).

    tokens = request_tokens(body, qa_per_study)                   # (input, output) estimate before a send
    check_retry_options(max_retries=4, max_invalid_retries=2)     # ValueError past MAX_SENDS_PER_REPORT

A free failure (429, 5xx, a timeout, a refused connection) bills nothing and often passes later, so it gets the
larger budget, --max-retries. A reply that arrives but is malformed or fails the schema is billed, and at
temperature 0 it usually comes back the same, so --max-invalid-retries is small. Whatever the mix of faults, no
report is sent more than MAX_SENDS_PER_REPORT times in a run. A report still malformed after its billed sends is
remembered as rejected in the cache and not paid for again (dataprep.llm.cache); what failed for free is retried by
the next run.
"""

from __future__ import annotations

import json

from cxr_vqa.costs import estimate_tokens

MAX_SENDS_PER_REPORT = 5
OUTPUT_TOKENS_PER_PAIR = 40  # for estimates only


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

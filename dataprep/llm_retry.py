"""How many times one report may be sent in a run: two retry budgets under one hard ceiling.

A free failure (429, 5xx, a timeout, a refused connection) bills nothing and often passes later, so it gets the
larger budget, --max-retries. A reply that arrives but is malformed or fails the schema is billed, and at
temperature 0 it usually comes back the same, so --max-invalid-retries is small. Whatever the mix of faults, no
report is sent more than MAX_SENDS_PER_REPORT times; what is still missing is rejected, and the next run retries it.
"""

from __future__ import annotations

MAX_SENDS_PER_REPORT = 5


def check_retry_options(max_retries: int, max_invalid_retries: int) -> None:
    """Reject a budget the ceiling could never grant; the two together are capped by it, not rejected."""
    for flag, value in (("--max-retries", max_retries), ("--max-invalid-retries", max_invalid_retries)):
        if not 0 <= value < MAX_SENDS_PER_REPORT:
            raise ValueError(
                f"{flag} must be between 0 and {MAX_SENDS_PER_REPORT - 1} (no report is sent more than "
                f"{MAX_SENDS_PER_REPORT} times), got {value}"
            )

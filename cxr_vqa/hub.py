"""Is the Hugging Face Hub reachable? Asked once per process, before the first download, so that a machine without
network fails in seconds with one line instead of huggingface_hub retrying every file five times with backoff
(about 2.5 minutes and 130 lines of warnings for the 7B base).

    problem = hub_problem("llava-hf/llava-1.5-7b-hf", "config.json")   # None: go ahead (online, or cached)

When the Hub cannot be reached but the repository is in the local cache, the process switches to offline mode and
loads the cached copy, as `HF_HUB_OFFLINE=1` would have.
"""

from __future__ import annotations

import functools
import logging
import os
import threading

logger = logging.getLogger(__name__)

PROBE_SECONDS = 8.0  # one HEAD request; a TLS handshake to huggingface.co takes well under a second when online
_switched_offline = False  # set when this module turned offline mode on: later repositories are still checked


def hub_problem(repo_id: str, probe_file: str, revision: str | None = None) -> str | None:
    """None when `repo_id` (at `revision`, default its main branch) can be loaded (offline mode is set, the Hub
    answers, or `probe_file` of it is cached); otherwise the one-line reason, with how to run offline."""
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.is_offline_mode() and not _switched_offline:
        return None  # the user chose offline: the loaders read the cache and say what is missing
    reason = _unreachable(constants.ENDPOINT)
    if reason is None:
        return None
    if isinstance(try_to_load_from_cache(repo_id, probe_file, revision=revision), str):
        logger.warning("the Hub at %s cannot be reached (%s): loading %s from the local cache", constants.ENDPOINT,
                       reason, repo_id)  # fmt: skip
        _go_offline()
        return None
    return (
        f"cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({reason}) to download {repo_id!r}"
        f"{f' at revision {revision!r}' if revision else ''}, and it is not in the local cache "
        f"({constants.HF_HUB_CACHE}). To run offline: pass a local checkpoint directory, "
        f"set HF_HUB_OFFLINE=1 once {repo_id!r} is cached, or try the app on a tiny model with `python app.py --demo`"
    )


@functools.cache
def _unreachable(endpoint: str) -> str | None:
    """Why one plain request to `endpoint` failed, or None when it got any HTTP answer (even an error status)."""
    from huggingface_hub.utils import get_session  # the Hub's own client: same proxies, certificates and headers

    outcome: list[str | None] = []

    def probe() -> None:
        try:
            get_session().head(endpoint, timeout=PROBE_SECONDS)
            outcome.append(None)
        except Exception as err:  # refused, DNS, TLS, proxy, timeout: whichever it is, no file can come
            outcome.append(str(err).splitlines()[0] if str(err) else type(err).__name__)

    # in a thread with a deadline: name resolution is not covered by the request's own timeout
    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(PROBE_SECONDS + 2)
    return outcome[0] if outcome else f"no answer within {PROBE_SECONDS + 2:.0f} s"


def _go_offline() -> None:
    """Offline mode for this process and its children: huggingface_hub reads the flag on every call."""
    global _switched_offline
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    _switched_offline = True

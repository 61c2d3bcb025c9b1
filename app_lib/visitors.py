"""Limits per visitor on the events that share the model worker (the `gpu` concurrency group: Ask, Findings, blind
answers, maps, batches, /compare, /compare_scores, /compare_all, /findings, /maps, /batch, and any event added with the
app's GPU_EVENT): at most one request waiting or running per browser session, `in_flight` per client address, and
`per_minute` admitted a minute per address and per session. A request past a limit is refused at the queue's door,
before Gradio queues it, with HTTP 429, a Retry-After header and one line the page shows as it is:

    busy: your previous question is still being answered; try again in 4 s
    rate limit: at most 20 questions a minute from one visitor; try again in 31 s

Why at the door: Gradio's queue is first come, first served, with one bound for everyone (`--queue-size`); a client
that sends 50 requests at once would fill it and every other visitor would be told it is full, or wait behind 50
answers. Refused here, a request costs the parsing of its JSON body and never takes a queue place, so a second
visitor's question waits behind at most the `in_flight` answers of each other client. The count of what a client has
in flight is read from Gradio's own queue (waiting and running events of the group), so it can never drift from it.

    app.serve(demo, ..., limits=VisitorLimits(in_flight=1, per_minute=20))   # adds AdmissionMiddleware

The client address is the TCP peer's, or, only behind a proxy named with --trusted-proxy, what that proxy wrote in
X-Forwarded-For (uvicorn reads it: see `trusted_proxies`); a header anyone can send is never believed otherwise.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

GROUP = "gpu"  # the concurrency_id of every event that runs a model
WINDOW_S = 60.0
UNKNOWN_ANSWER_S = 10.0  # a guess at one answer's time before the queue has timed any
JOIN = re.compile(r"/gradio_api/queue/join/?$")
CALL = re.compile(r"/gradio_api/call/(?:v2/)?(?P<api>[^/]+)/?$")  # the REST API's POST; its GET streams the result
MAX_BODY = 1 << 20  # a join names uploaded files by path: its JSON is small; a larger one is refused (HTTP 413)
PRIVATE_NETWORKS = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,127.0.0.0/8,fc00::/7,::1"
KEYS_KEPT = 100_000  # rate windows remembered; past this, those with nothing in the last minute are dropped


@dataclass(frozen=True)
class VisitorLimits:
    in_flight: int = 1  # requests one client address may have waiting or running (a session: always 1)
    per_minute: int = 20  # requests admitted a minute per address and per session; 0: no rate limit

    def __post_init__(self):
        if self.in_flight < 1 or self.per_minute < 0:
            raise ValueError(f"in_flight must be >= 1 and per_minute >= 0, got {self.in_flight}, {self.per_minute}")


def trusted_proxies(option: str | None, on_space: bool) -> str:
    """uvicorn's FORWARDED_ALLOW_IPS for `--trusted-proxy`: the proxies whose X-Forwarded-For is believed ("" for
    none: the peer is the client). `private` names the private networks: a Hugging Face Space's proxy reaches the app
    from an internal 10.x address and writes the visitor's public address last in X-Forwarded-For, so the visitor is
    the right-most address that is not a private one (uvicorn's rule), whatever a visitor put in the header itself."""
    if option is None:
        option = "private" if on_space else "none"
    if option == "none":
        return ""
    if option == "*":  # uvicorn then believes the left-most address, which the visitor writes
        raise ValueError("--trusted-proxy '*' would let any visitor choose their address: name the proxies "
                         "(addresses or networks, comma-separated) or 'private'")  # fmt: skip
    if option == "private":
        return PRIVATE_NETWORKS
    for item in option.split(","):  # uvicorn would take a typo for a host name that never matches, silently
        try:
            ipaddress.ip_network(item.strip(), strict=False)
        except ValueError:
            raise ValueError(f"--trusted-proxy: {item.strip()!r} is not an IP address or network (or use 'private' "
                             "or 'none')") from None  # fmt: skip
    return ",".join(item.strip() for item in option.split(","))


class Admission:
    """The decision, apart from HTTP: which requests of the group a client may add now. Thread-safe."""

    def __init__(self, blocks, limits: VisitorLimits, clock=time.monotonic):
        self.blocks, self.limits, self.clock = blocks, limits, clock
        self.joining: Counter = Counter()  # admitted joins not yet in Gradio's queue, per key
        self.admitted: dict[tuple[str, str], deque] = {}  # per key, when its requests of the last minute came
        self.by_api: dict[str, object] = {}
        self.lock = threading.Lock()

    def fn(self, fn_index=None, api_name: str | None = None):
        """The event a join names, if it is one of the group's; None for every other event (never limited here)."""
        if api_name is not None:
            if not self.by_api:
                self.by_api = {f.api_name: f for f in self.blocks.fns.values() if f.api_name}
            fn = self.by_api.get(api_name)
        else:
            fn = self.blocks.fns.get(_as_index(fn_index))
        return fn if fn is not None and fn.concurrency_id == GROUP else None

    def _events(self) -> list:
        """The group's events running, then waiting, in the order the worker takes them."""
        queue = self.blocks._queue
        running = [e for job in queue.active_jobs if job for e in job if e.concurrency_id == GROUP]
        waiting = queue.event_queue_per_concurrency_id.get(GROUP)
        return running + list(waiting.queue if waiting is not None else [])

    def _wait_s(self, events: list, mine) -> int:
        """About how long until the last of `mine` (events of this client) is answered."""
        times = self.blocks._queue.process_time_per_fn
        last = max(i for i, e in enumerate(events) if mine(e))
        seconds = sum(times[e.fn].avg_time if e.fn in times else UNKNOWN_ANSWER_S for e in events[: last + 1])
        return max(1, math.ceil(seconds))

    def check(self, address: str | None, session: str | None) -> tuple[str, int] | None:
        """None to admit (and count it); else (the one-line reason, seconds to wait)."""
        keys = [("address", address or "unknown")] + ([("session", session)] if session else [])
        with self.lock:
            events = self._events()

            def from_session(e):
                return session is not None and e.session_hash == session

            def from_address(e):
                client = getattr(e.request, "client", None)
                return (client.host if client else "unknown") == keys[0][1]

            if session is not None and (self.joining[keys[-1]] or any(from_session(e) for e in events)):
                wait = self._wait_s(events, from_session) if any(from_session(e) for e in events) else 1
                return f"busy: your previous question is still being answered; try again in {wait} s", wait
            if self.joining[keys[0]] + sum(from_address(e) for e in events) >= self.limits.in_flight:
                wait = self._wait_s(events, from_address) if any(from_address(e) for e in events) else 1
                return (f"busy: a question from your network address is still being answered; try again in {wait} s",
                        wait)  # fmt: skip
            now = self.clock()
            if self.limits.per_minute:
                for key in keys:
                    window = self.admitted.setdefault(key, deque())
                    while window and window[0] <= now - WINDOW_S:
                        window.popleft()
                    if len(window) >= self.limits.per_minute:
                        wait = max(1, math.ceil(window[0] + WINDOW_S - now))
                        return (f"rate limit: at most {self.limits.per_minute} questions a minute from one visitor; "
                                f"try again in {wait} s", wait)  # fmt: skip
                for key in keys:
                    self.admitted[key].append(now)
                if len(self.admitted) > KEYS_KEPT:
                    self._forget(now)
            for key in keys:
                self.joining[key] += 1
            return None

    def joined(self, address: str | None, session: str | None) -> None:
        """The admitted join has been answered: its event is in Gradio's queue now (or was refused there)."""
        with self.lock:
            for key in [("address", address or "unknown")] + ([("session", session)] if session else []):
                self.joining[key] -= 1
                if self.joining[key] <= 0:
                    del self.joining[key]

    def _forget(self, now: float) -> None:
        for key in [k for k, w in self.admitted.items() if not w or w[-1] <= now - WINDOW_S]:
            del self.admitted[key]


def _as_index(value) -> int | None:
    """`fn_index` as Gradio reads it: its PredictBody coerces "3", 3.0 and true to an int (pydantic's lax mode), so
    a check of `isinstance(value, int)` alone would let those spellings of a model's event past the limits."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(int).validate_python(value)
    except ValidationError:
        return None


class AdmissionMiddleware:
    """ASGI middleware in front of Gradio's routes: POSTs that join the queue with an event of the group go through
    `Admission.check`; everything else passes untouched."""

    def __init__(self, app, admission: Admission):
        self.app, self.admission = app, admission

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" and scope.get("method") == "POST" else ""
        join, call = JOIN.search(path), CALL.search(path)
        if not (join or call):
            return await self.app(scope, receive, send)
        body, more, messages = b"", True, []
        while more and len(body) <= MAX_BODY:  # read the body, then hand it on as it came
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if more:  # a join names uploaded files by path: a body this large is no browser's or client's
            return await self._refuse(send, f"request too large: a queue request is at most {MAX_BODY} bytes", 0, 413)
        fn, session = self._event(body, join is not None, call.group("api") if call else None)
        if fn is None:
            return await self.app(scope, self._replay(messages, receive), send)
        address = (scope.get("client") or (None,))[0]
        refused = self.admission.check(address, session)
        if refused is not None:
            return await self._refuse(send, *refused)
        try:
            return await self.app(scope, self._replay(messages, receive), send)
        finally:
            self.admission.joined(address, session)

    def _event(self, body: bytes, join: bool, api_name: str | None):
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return None, None
        if not isinstance(data, dict):
            return None, None
        session = data.get("session_hash") if isinstance(data.get("session_hash"), str) else None
        return self.admission.fn(data.get("fn_index") if join else None, api_name), session

    @staticmethod
    def _replay(messages: list, receive):
        pending = list(messages)

        async def replay():
            return pending.pop(0) if pending else await receive()

        return replay

    @staticmethod
    async def _refuse(send, reason: str, wait: int, status: int = 429) -> None:
        body = json.dumps({"detail": reason}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if wait:
            headers.append((b"retry-after", str(wait).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

"""Limits per visitor on the model's events: the admission decision on a queue made by hand (one in flight per
session, `in_flight` per address, a rate per address and session, how long to wait), then the real app over HTTP
with a slow loopback vision model (a second request of a session or an address refused at once with 429 and its
reason, X-Forwarded-For believed only from a trusted proxy, the REST routes around the queue closed, events outside
the model's group never limited). bench/visitor_limits.py is the load test."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from gradio_client import Client, handle_file
from test_browser import CHROMIUM, open_page
from vision_server import VisionServer

import app
from app_lib.visitors import GROUP, PRIVATE_NETWORKS, Admission, VisitorLimits, trusted_proxies
from cxr_vqa.remote import RemoteModel, parse_remote

FILM = str(Path(__file__).resolve().parents[1] / "assets" / "examples" / "normal.png")
QUESTION = "Is it normal?"
ANSWER_S = 2.0  # the vision model's time per answer: long enough for a second request to find the first in flight


# -- the decision ----------------------------------------------------------------------------------------------------


def event(session: str, address: str, fn, group: str = GROUP):
    return SimpleNamespace(session_hash=session, fn=fn, concurrency_id=group,
                           request=SimpleNamespace(client=SimpleNamespace(host=address)))  # fmt: skip


class Fn:  # Gradio's BlockFunction as the admission sees it: hashable, its group and API name
    def __init__(self, concurrency_id: str, api_name: str):
        self.concurrency_id, self.api_name = concurrency_id, api_name


def blocks(running=(), waiting=(), times=None):
    fns = {0: Fn(GROUP, "compare"), 1: Fn("explore", "explore")}
    queue = SimpleNamespace(
        active_jobs=[list(running) or None, None],
        event_queue_per_concurrency_id={GROUP: SimpleNamespace(queue=list(waiting))},
        process_time_per_fn={fns[0]: SimpleNamespace(avg_time=2.0)} if times is None else times,
    )
    return SimpleNamespace(fns=fns, _queue=queue)


def test_one_in_flight_per_session_and_in_flight_per_address_with_the_wait_in_seconds():
    b = blocks()
    fn = b.fns[0]
    b._queue.active_jobs[0] = [event("s1", "10.0.0.1", fn)]
    b._queue.event_queue_per_concurrency_id[GROUP].queue = [event("s2", "10.0.0.2", fn), event("s3", "10.0.0.1", fn)]
    admission = Admission(b, VisitorLimits(in_flight=2, per_minute=0))
    assert admission.check("10.0.0.9", "s1") == (
        "busy: your previous question is still being answered; try again in 2 s", 2)  # fmt: skip
    # the address holds two (one running, one third in line): three answers of 2 s until its last is done
    assert admission.check("10.0.0.1", "s4") == (
        "busy: a question from your network address is still being answered; try again in 6 s", 6)  # fmt: skip
    assert admission.check("10.0.0.2", "s5") is None  # one of two for that address
    assert admission.check("10.0.0.2", "s5")[0].startswith("busy: your previous")  # admitted, not yet queued
    admission.joined("10.0.0.2", "s5")
    assert admission.check("10.0.0.3", None) is None and not admission.joining.get(("session", "s5"))
    assert admission.fn(0) is fn and admission.fn(1) is None and admission.fn(api_name="compare") is fn
    assert admission.fn(api_name="explore") is None and admission.fn("x") is None  # other groups, bad input
    # what Gradio's PredictBody coerces to an int names that event too: "0", 0.0 and true are not a way around it
    assert admission.fn("0") is fn and admission.fn(0.0) is fn and admission.fn(True) is None  # True is 1: explore


def test_the_rate_per_address_and_per_session_with_when_to_come_back():
    now = [1000.0]
    admission = Admission(blocks(), VisitorLimits(in_flight=5, per_minute=3), clock=lambda: now[0])
    for second in range(3):
        now[0] = 1000.0 + 10 * second
        assert admission.check("10.0.0.1", f"s{second}") is None
        admission.joined("10.0.0.1", f"s{second}")
    now[0] = 1025.0
    assert admission.check("10.0.0.1", "s9") == (
        "rate limit: at most 3 questions a minute from one visitor; try again in 35 s", 35)  # fmt: skip
    assert admission.check("10.0.0.2", "s9") is None  # another address: its own minute
    now[0] = 1060.0
    assert admission.check("10.0.0.1", "s8") is None  # the first has left the window


def test_trusted_proxies_are_named_never_everyone():
    assert trusted_proxies(None, on_space=False) == "" and trusted_proxies("none", on_space=True) == ""
    assert trusted_proxies(None, on_space=True) == PRIVATE_NETWORKS == trusted_proxies("private", on_space=False)
    assert trusted_proxies("10.1.2.3,192.168.0.0/16", on_space=False) == "10.1.2.3,192.168.0.0/16"
    with pytest.raises(ValueError, match="any visitor choose their address"):
        trusted_proxies("*", on_space=False)
    with pytest.raises(ValueError, match="'nginx.local' is not an IP address or network"):
        trusted_proxies("10.0.0.5, nginx.local", on_space=False)


# -- over HTTP -------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def vision():
    with VisionServer({"vision-test"}, latency=ANSWER_S) as server:
        yield server


def serve(vision, tmp_path, **options):
    remote = RemoteModel(parse_remote(f"vis={vision.url}#vision-test"), timeout=10)
    demo = app.create_demo(None, remotes=[remote], votes_db=tmp_path / "votes.sqlite")
    _, url, _ = app.serve(demo, host="127.0.0.1", port=free_port(), queue_size=8, max_file_size="5mb",
                          prevent_thread_lock=True, quiet=True, **options)  # fmt: skip
    return demo, url


def outcome(job) -> str:
    """ "answered", or the reason of a refusal (HTTP 429 at the queue's door)."""
    try:
        job.result()
        return "answered"
    except httpx.HTTPStatusError as err:
        assert err.response.status_code == 429 and int(err.response.headers["retry-after"]) >= 1
        return err.response.json()["detail"]


def ask(client: Client):
    return client.submit(handle_file(FILM), QUESTION, api_name="/compare_all")


@pytest.fixture(scope="module")
def limited(vision, tmp_path_factory):
    demo, url = serve(vision, tmp_path_factory.mktemp("limited"), limits=VisitorLimits(in_flight=1, per_minute=30))
    yield url
    demo.close()


def test_a_session_s_second_question_is_refused_at_once_while_the_first_is_answered(limited):
    client = Client(limited, verbose=False)
    assert outcome(ask(client)) == "answered"  # warm: the client has its config and the server its first answer
    first = ask(client)
    time.sleep(0.3)  # in the queue now
    refused = outcome(ask(client))
    assert not first.done()  # refused while the first is still being answered: not queued behind it
    assert refused.startswith("busy: your previous question is still being answered; try again in ")
    assert outcome(first) == "answered"
    assert outcome(ask(client)) == "answered"  # and it may ask again once answered


def test_another_session_from_the_same_address_waits_its_turn_whatever_header_it_sends(limited):
    first = ask(Client(limited, verbose=False))
    time.sleep(0.3)
    spoofed = Client(limited, verbose=False, headers={"X-Forwarded-For": "198.51.100.23"})  # not a trusted proxy
    assert outcome(ask(spoofed)).startswith("busy: a question from your network address is still being answered")
    assert outcome(first) == "answered"


def test_the_routes_around_the_queue_are_closed_and_the_rest_api_is_limited_too(limited):
    first = ask(Client(limited, verbose=False))
    time.sleep(0.3)
    run = httpx.post(f"{limited}gradio_api/run/compare_all", json={"data": [None, QUESTION]})
    assert run.status_code == 404 and "join the queue" in run.text  # it would skip the queue and the limits
    call = httpx.post(f"{limited}gradio_api/call/compare_all", json={"data": [None, QUESTION]})
    assert call.status_code == 429 and call.json()["detail"].startswith("busy:")
    other = httpx.post(f"{limited}gradio_api/call/explore", json={"data": ["", "", "", False]})
    assert other.status_code == 200  # not the model's group: never limited here
    assert outcome(first) == "answered"


def test_a_join_naming_the_event_as_gradio_would_coerce_it_is_limited_too(limited):
    client = Client(limited, verbose=False)
    first = ask(client)
    time.sleep(0.3)
    fn_index = next(i for i, fn in app_fns(limited).items() if fn == "compare_all")
    for spelled in (str(fn_index), float(fn_index)):  # Gradio's PredictBody takes both as the event's index
        body = {"data": [None, QUESTION], "fn_index": spelled, "session_hash": client.session_hash}
        join = httpx.post(f"{limited}gradio_api/queue/join", json=body)
        assert join.status_code == 429 and join.json()["detail"].startswith("busy:"), join.text
    assert outcome(first) == "answered"


def app_fns(url: str) -> dict[int, str]:
    """fn_index -> api_name of the served app, from its config."""
    config = httpx.get(f"{url}config").json()
    return {dep["id"]: dep.get("api_name") for dep in config["dependencies"]}


def test_behind_a_trusted_proxy_each_forwarded_address_is_its_own_client(vision, tmp_path):
    demo, url = serve(vision, tmp_path, limits=VisitorLimits(in_flight=1, per_minute=30), trusted_proxy="127.0.0.1")
    try:
        ana = Client(url, verbose=False, headers={"X-Forwarded-For": "198.51.100.1"})
        ben = Client(url, verbose=False, headers={"X-Forwarded-For": "198.51.100.2"})
        ana_again = Client(url, verbose=False, headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.1"})
        jobs = [ask(ana)]
        time.sleep(0.3)
        jobs += [ask(ben), ask(ana_again)]  # the proxy appends: the right-most address is the one it saw
        assert [outcome(job)[:42] for job in jobs] == [
            "answered", "answered", "busy: a question from your network address"]  # fmt: skip
    finally:
        demo.close()


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (apt-get install chromium)")
def test_in_a_browser_a_second_ask_while_the_first_is_answered_says_busy(limited, tmp_path):
    from playwright.sync_api import expect

    for page in open_page(limited):
        page.locator("#film-file input[type=file]").set_input_files(FILM)
        expect(page.locator("#film-status")).to_contain_text("letterboxed")
        page.locator("#question textarea").fill(QUESTION)
        page.locator("#ask").click()
        expect(page.locator("#model-vis-chat")).to_contain_text(QUESTION)  # the first question is being answered
        page.locator("#maps-button").click()  # a second model call from the same page, while the first is answered
        expect(page.get_by_text("busy: your previous question is still being answered")).to_be_visible()
        page.screenshot(path=str(tmp_path / "busy.png"), full_page=True)
        expect(page.locator("#model-vis-stats")).to_contain_text("tokens/s")  # and the first still answered

"""Remote models in the core (cxr_vqa.remote, cxr_vqa.lineup): through the real `openai` client against the loopback
vision server of tests/vision_server.py, which checks every request strictly and answers from the picture it got."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from vision_server import VisionServer

from cxr_vqa.answers import Answer, p_yes_of_candidates
from cxr_vqa.endpoint import Backoff
from cxr_vqa.errors import UserError
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.images import load_film
from cxr_vqa.lineup import Lineup
from cxr_vqa.model import adapter_specs
from cxr_vqa.remote import RemoteError, RemoteModel, parse_remote, remote_specs
from cxr_vqa.template import add_question, assistant_turn

ROOT = Path(__file__).resolve().parents[1]
FILM = ROOT / "assets" / "examples" / "cardiomegaly.png"
MODEL = "vision-test"
FAST = Backoff(base=0.01, cap=0.05)  # retries without the real waits


@pytest.fixture
def server():
    with VisionServer({MODEL}) as server:
        yield server


@pytest.fixture(scope="module")
def film():
    return load_film(str(FILM), 336)


def remote(server, *, timeout: float = 5.0, max_retries: int = 3, key_env: str = "") -> RemoteModel:
    spec = parse_remote(f"vis={server.url}#{MODEL}" + (f"#{key_env}" if key_env else ""))
    return RemoteModel(spec, timeout=timeout, max_retries=max_retries, backoff=FAST)


def expected(film) -> tuple[float, float]:
    """(mean grey, P(yes)) the server reads from this film: proves which picture it was sent."""
    mean = float(np.asarray(film.image.convert("L"), dtype=float).mean())
    return mean, min(max(mean / 255, 0.02), 0.98)


def test_the_remote_model_sees_exactly_the_letterboxed_film_and_answers_with_p_yes(server, film):
    question = "Is there cardiomegaly?"
    answer = remote(server).answer(film.image, add_question(None, question), GenerationSettings(max_new_tokens=64))
    mean, p_yes = expected(film)
    [seen] = server.requests
    assert seen["pixels"] == hashlib.sha256(film.image.tobytes()).hexdigest()  # pixel for pixel what local models see
    assert seen["size"] == (336, 336) and seen["questions"] == [question] and server.violations == []
    assert answer.text == f"{'Yes' if mean >= 127.5 else 'No'}, mean grey {mean:.1f} on a 336x336 film, turn 1."
    assert answer.p_yes == pytest.approx(p_yes) and answer.error is None


def test_follow_ups_send_the_whole_conversation_and_settings_reach_the_endpoint(server, film):
    model = remote(server)
    first = model.answer(film.image, add_question(None, "Is there cardiomegaly?"))
    history = add_question(None, "Is there cardiomegaly?") + [assistant_turn(first.text)]
    second = model.answer(film.image, add_question(history, "Is it severe?"), GenerationSettings(3, 0.7, 0.9))
    seen = server.requests[-1]
    assert seen["questions"] == ["Is there cardiomegaly?", "Is it severe?"] and seen["history"] == [first.text]
    assert seen["turns"] == 2 and first.text.endswith("turn 1.")
    assert second.text == first.text.split(",")[0] + ", mean"  # max_tokens=3 reached the server: 3 tokens back
    assert server.violations == []


def test_streaming_grows_to_the_same_answer_and_p_yes(server, film):
    conversation = add_question(None, "Is there cardiomegaly?")
    model, pieces = remote(server), []
    streamed = model.answer(film.image, conversation, on_text=pieces.append)
    assert streamed == model.answer(film.image, conversation)
    assert len(pieces) > 5 and pieces[-1] == streamed.text
    assert all(a != b and b.startswith(a) for a, b in zip(pieces, pieces[1:], strict=False))  # grew by pieces


@pytest.mark.parametrize("stream", [False, True])
def test_without_logprobs_p_yes_is_none_never_guessed(server, film, stream):
    server.fail("nologprobs")
    answer = remote(server).answer(film.image, add_question(None, "Is there cardiomegaly?"),
                                   on_text=(lambda _: None) if stream else None)  # fmt: skip
    assert answer.text.split(",")[0] in ("Yes", "No") and answer.p_yes is None


def test_a_429_is_retried_and_then_answered(server, film):
    server.fail("429")
    answer = remote(server).answer(film.image, add_question(None, "Is there cardiomegaly?"))
    assert answer.text and server.count["chat"] == 2


def test_a_server_failing_for_ever_gives_one_line_after_bounded_retries(server, film):
    server.fail("500", times=None)
    with pytest.raises(RemoteError, match=r"^vis did not answer: HTTP 500 from 127\.0\.0\.1:\d+ after 3 attempts$"):
        remote(server, max_retries=2).answer(film.image, add_question(None, "Is there cardiomegaly?"))
    assert server.count["chat"] == 3


def test_a_hang_past_the_timeout_is_one_line(server, film):
    server.fail("hang", times=None)
    with pytest.raises(RemoteError, match=r"no reply from 127\.0\.0\.1:\d+ within 0\.5 s after 2 attempts$"):
        remote(server, timeout=0.5, max_retries=1).answer(film.image, add_question(None, "Is there cardiomegaly?"))


def test_a_down_endpoint_is_one_line(film):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = RemoteModel(parse_remote(f"vis=http://127.0.0.1:{port}/v1#{MODEL}"), max_retries=1, backoff=FAST)
    with pytest.raises(RemoteError, match=f"^vis did not answer: cannot connect to 127.0.0.1:{port} after 2"):
        model.answer(film.image, add_question(None, "Is there cardiomegaly?"))


def test_a_refused_key_stops_at_once_and_no_key_or_film_reaches_the_log(film, monkeypatch, caplog):
    monkeypatch.setenv("VIS_KEY", "sk-right-key")
    with VisionServer({MODEL}, api_key="sk-right-key") as server, caplog.at_level(logging.DEBUG):
        conversation = add_question(None, "Is there cardiomegaly?")
        assert remote(server, key_env="VIS_KEY").answer(film.image, conversation).text  # the named variable's key
        monkeypatch.setenv("VIS_KEY", "sk-wrong-key")
        with pytest.raises(RemoteError, match=r"the API key was refused \(key from \$VIS_KEY\)") as err:
            remote(server, key_env="VIS_KEY").answer(film.image, conversation)
        assert err.value.fatal and server.count["chat"] == 2  # no retry: a refused key never passes later
    logged = caplog.text + str(err.value)
    assert "sk-" not in logged and "base64" not in logged and "\n" not in str(err.value)


def test_specs_name_their_key_variable_and_never_echo_a_pasted_key(monkeypatch):
    spec = parse_remote("gpt=https://api.openai.com/v1#gpt-4o#MY_OPENAI_KEY")
    assert (spec.base_url, spec.model, spec.key_env) == ("https://api.openai.com/v1", "gpt-4o", "MY_OPENAI_KEY")
    assert spec.source == "https://api.openai.com/v1#gpt-4o"
    for bad, says in [
        ("gpt=https://api.openai.com/v1#gpt-4o#sk-proj-AbC123secret", "never the key itself"),
        ("gpt=https://user:sk-secret@api.example.com/v1#m", "no credentials in the URL"),
        ("az=https://x.openai.azure.com/openai/v1?api-key=secret#gpt-4o", "no query string"),
        ("az=https://x.openai.azure.com/openai/v1?api-version=1#gpt-4o#AZ_KEY", "no query string"),
        ("gpt=api.openai.com#gpt-4o", "must be http(s)"),
        ("gpt=https://api.openai.com/v1", "name the model"),
        ("no name https://h/v1#m", "NAME=BASE_URL#MODEL"),
    ]:
        with pytest.raises(UserError, match=re.escape(says)) as err:
            parse_remote(bad)
        assert "secret" not in str(err.value)
    with pytest.raises(UserError, match="already a model's"):
        remote_specs(["base=http://127.0.0.1:1/v1#m"], taken=["base"])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserError, match=r"\$OPENAI_API_KEY is not set"):  # at start, not at the first question
        RemoteModel(parse_remote("gpt=https://api.openai.com/v1#gpt-4o"))


@pytest.mark.parametrize(
    ("entry", "key_env"),
    [
        ("gpt=https://api.openai.com/v1#gpt-4o", "OPENAI_API_KEY"),  # https: OpenAI's key unless another is named
        ("vllm=https://vllm.example.org/v1#tuned#VLLM_KEY", "VLLM_KEY"),
        ("local=http://127.0.0.1:8000/v1/#llava-hf/llava-1.5-7b-hf", None),  # this machine: only a named key
        ("local=http://localhost:8000/v1#tuned#VLLM_KEY", "VLLM_KEY"),
        ("box=http://gpu-box:8000/v1#tuned", None),  # plain http elsewhere: never a key
    ],
)
def test_each_endpoint_gets_only_the_key_its_entry_allows(entry, key_env):
    assert parse_remote(entry).key_env == key_env


def test_a_key_named_for_plain_http_to_another_machine_is_refused_and_a_local_server_gets_none_unnamed(
    server, film, monkeypatch
):
    with pytest.raises(UserError, match=r"^--remote box: \$BOX_KEY would travel in clear over http to gpu-box"):
        parse_remote("box=http://gpu-box:8000/v1#tuned#BOX_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret")
    monkeypatch.setenv("VIS_KEY", "sk-vis")
    conversation = add_question(None, "Is there cardiomegaly?")
    remote(server).answer(film.image, conversation)
    remote(server, key_env="VIS_KEY").answer(film.image, conversation)
    assert server.keys == ["unused", "sk-vis"]  # OpenAI's key never reached the local server


def test_a_4xx_says_the_servers_reason_in_one_line_without_the_key(server, film, monkeypatch):
    monkeypatch.setenv("VIS_KEY", "sk-vis-secret")
    server.refuse(400, {"error": {"message": "Unsupported parameter: 'logprobs'\nwith sk-vis-secret"}})
    with pytest.raises(RemoteError) as err:
        remote(server, key_env="VIS_KEY").answer(film.image, add_question(None, "Is there cardiomegaly?"))
    assert re.fullmatch(r"vis did not answer: HTTP 400 from 127\.0\.0\.1:\d+ after 1 attempt: Unsupported parameter: "
                        r"'logprobs' with \*\*\*", str(err.value))  # fmt: skip
    assert server.count["chat"] == 1  # a request the server cannot take is not sent again


def test_a_stream_asks_for_its_usage_and_counts_it_as_a_plain_reply_does(server, film):
    model = remote(server)

    async def ask(on_text):
        client = model.client()
        try:
            return await model.aanswer(client, film.image, add_question(None, "Is there cardiomegaly?"),
                                       GenerationSettings(), on_text)  # fmt: skip
        finally:
            await client.close()

    streamed, streamed_usage = asyncio.run(ask(lambda _: None))
    plain, plain_usage = asyncio.run(ask(None))
    assert streamed == plain and server.violations == []
    assert streamed_usage == plain_usage and streamed_usage["completion_tokens"] == 11  # "Yes" "," and 9 words


@pytest.mark.parametrize("name", ["x_blank", "X_BLANK", "tuned_Blank"])
def test_a_model_name_ending_in_blank_is_refused_for_remote_models_and_adapters(name):
    with pytest.raises(UserError, match="not ending in _blank"):
        parse_remote(f"{name}=https://api.openai.com/v1#gpt-4o")
    with pytest.raises(UserError, match="not ending in _blank"):
        adapter_specs([f"{name}=runs/a"])
    with pytest.raises(UserError, match="not ending in _blank"):
        adapter_specs(["a=runs/a", f"runs/{name}"])  # a bare path is named after its last part
    assert parse_remote("blank_x=https://h.example/v1#m#H_KEY").name == "blank_x"  # another host names its key
    assert list(adapter_specs(["x_blanket=runs/a", "blank=runs/b"])) == ["x_blanket", "blank"]


def test_p_yes_of_candidates_counts_every_spelling_of_yes_and_no():
    logp = np.log
    candidates = {"Yes": logp(0.3), "▁yes": logp(0.1), " YES": logp(0.1), "No": logp(0.2), "Ġno": logp(0.05),
                  "The": logp(0.25), "\nyes": logp(0.05), "\tNo": logp(0.05)}  # fmt: skip
    assert p_yes_of_candidates(candidates) == pytest.approx(0.55 / 0.85)
    assert p_yes_of_candidates({"\nYes": np.log(0.9), "No": np.log(0.1)}) == pytest.approx(0.9)
    assert p_yes_of_candidates({"The": 0.0, "Yesterday": -1.0, "Nope": -2.0}) is None


class SlowLocal:
    """A local model stand-in whose generate holds until the remote endpoint has a request in hand."""

    model_names, has_adapter, adapters = ["base"], False, {}

    def __init__(self, server):
        self.server, self.overlapped = server, False

    def compare(self, image, conversations, settings, on_text=None):
        for _ in range(500):  # the remote request arrives while this "generate" runs: they overlap
            if self.server.count["chat"]:
                self.overlapped = True
                break
            threading.Event().wait(0.01)
        if on_text:
            on_text({"base": "local"})
        return {name: Answer("local", 0.5) for name in conversations}


def test_the_lineup_asks_remote_models_during_the_local_generate_and_isolates_their_failures(server, film):
    local = SlowLocal(server)
    lineup = Lineup(local, [remote(server)])
    updates: list[dict] = []
    answers = lineup.compare(film.image, add_question(None, "Is there cardiomegaly?"), on_text=updates.append)
    assert local.overlapped and list(answers) == ["base", "vis"] and answers["vis"].text.endswith("turn 1.")
    assert {name for update in updates for name in update} == {"base", "vis"}  # each update names who moved
    server.fail("500", times=None)
    answers = Lineup(local, [remote(server, max_retries=0)]).compare(film.image, add_question(None, "Why?"))
    assert answers["base"].text == "local" and answers["vis"].error.startswith("vis did not answer: HTTP 500")
    assert answers["vis"].text == ""


def test_a_remote_model_that_breaks_fails_its_own_answer_and_the_others_answer(server, film, caplog):
    def on_text(update):
        if "vis" in update:
            raise RuntimeError("a pane that cannot be drawn, sk-never-logged")

    local = SlowLocal(server)
    with caplog.at_level(logging.DEBUG):
        answers = Lineup(local, [remote(server)]).compare(film.image, add_question(None, "Why?"), on_text=on_text)
    assert answers["base"].text == "local" and answers["vis"] == Answer("", None, "vis did not answer: RuntimeError")
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("cxr_vqa"))  # http libraries'
    assert "RuntimeError" in ours and "sk-never" not in ours  # DEBUG traces of the on_text exception are theirs


def test_a_failing_local_generate_still_waits_for_the_remote_answers(film):
    class FailingLocal(SlowLocal):
        def compare(self, image, conversations, settings, on_text=None):
            raise RuntimeError("out of memory")

    pieces = []
    with VisionServer({MODEL}, latency=0.5) as server:
        lineup = Lineup(FailingLocal(server), [remote(server)])
        with pytest.raises(RuntimeError, match="out of memory"):
            lineup.compare(film.image, add_question(None, "Is there cardiomegaly?"), on_text=pieces.append)
        done = list(pieces)  # what the remote thread had sent when compare gave up
    assert done and done[-1]["vis"].endswith("turn 1.")  # it had answered in full: no thread outlives compare


def test_two_remote_models_of_one_name_or_a_local_models_name_are_refused(server):
    with pytest.raises(UserError, match="^remote model name vis is given twice: give each model its own name$"):
        Lineup(None, [remote(server), remote(server)])
    with pytest.raises(UserError, match="^remote model name base is a local model's: give each model its own name$"):
        Lineup(SlowLocal(server), [RemoteModel(parse_remote(f"base={server.url}#{MODEL}"))])


def test_the_lineup_never_waits_for_the_local_models_lock(tiny_model_dir, server, film):
    from cxr_vqa.model import load_model

    vqa = load_model(tiny_model_dir, device="cpu", load_in_4bit=False)
    lineup = Lineup(vqa, [remote(server)])
    with vqa._lock:  # a local generate in progress elsewhere
        answers = lineup.compare(film.image, {"vis": add_question(None, "Is there cardiomegaly?")})
    assert answers["vis"].text.endswith("turn 1.")
    assert lineup.sources == {"base": tiny_model_dir, "vis": f"{server.url}#{MODEL}"}
    with pytest.raises(UserError, match="base is a local model's"):
        Lineup(vqa, [RemoteModel(parse_remote(f"base={server.url}#{MODEL}"))])

"""Several adapters served from one base: one pane per model filled by one batched generate, /compare_all over HTTP,
blind trials between any two of them, and the evaluation comparing each with the base."""

from __future__ import annotations

import json
import random

import pytest
from gradio_client import Client, handle_file
from test_app import FILM, SETTINGS, run
from test_app_http import free_port

import app
from app_lib.blind import Blind
from app_lib.handlers import Handlers
from app_lib.votes import VoteStore
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.images import load_film
from cxr_vqa.model import adapter_specs, load_model
from cxr_vqa.template import add_question
from cxr_vqa.vqa import BASE

APP_SETTINGS = GenerationSettings(*SETTINGS)


@pytest.fixture(scope="module")
def vqa(tiny_model_dir, random_adapter_dir, second_adapter_dir):
    return load_model(tiny_model_dir, [f"rank8={random_adapter_dir}", f"rank4={second_adapter_dir}"], device="cpu")


def test_adapter_names_from_flags():
    assert adapter_specs("runs/llava-cxr") == {"tuned": "runs/llava-cxr"}
    assert adapter_specs(["a=runs/x", "runs/y/", "user/hub-adapter"]) == {
        "a": "runs/x",
        "y": "runs/y/",
        "hub-adapter": "user/hub-adapter",
    }
    assert adapter_specs(["runs/lr=1e-4"]) == {"tuned": "runs/lr=1e-4"}  # a path with "=", not NAME=PATH
    for bad, message in ((["a=x", "a=y"], "given twice"), (["base=x"], "base model's name"), (["a="], "NAME=PATH")):
        with pytest.raises(Exception, match=message):
            adapter_specs(bad)


def test_each_pane_equals_that_adapters_single_row_answer(vqa, tmp_path):
    handlers = Handlers(vqa, VoteStore(tmp_path / "v.sqlite"), settings=APP_SETTINGS)
    film = load_film(FILM, 336)
    assert handlers.panes == [BASE, "rank8", "rank4"]
    *panes, chats, _ = run(handlers.ask(film, "Is there cardiomegaly?", None, *SETTINGS))[-1]
    chat_panes, stats = panes[:3], panes[3:]
    conversation = add_question(None, "Is there cardiomegaly?")
    alone = {m: vqa.answer([film.image], [conversation], [m], APP_SETTINGS)[0].text for m in handlers.panes}
    assert [p[-1]["content"] for p in chat_panes] == [alone[m] for m in handlers.panes]
    assert len(set(alone.values())) == 3  # three different models, so the check above can fail
    assert all("tokens/s" in s for s in stats) and set(chats) == set(handlers.panes)
    # a follow-up continues each model's own conversation
    *panes, chats, _ = run(handlers.ask(film, "Is there an effusion?", chats, *SETTINGS))[-1]
    assert all(len(chats[m]) == 4 and chats[m][1]["content"][0]["text"] == alone[m] for m in handlers.panes)


def test_a_blind_vote_records_the_pair_it_showed(vqa, tmp_path):
    blind = Blind(vqa, VoteStore(tmp_path / "v.sqlite"), settings=APP_SETTINGS, rng=random.Random(3))
    film = load_film(FILM, 336)
    pairs = set()
    for _ in range(8):
        answer_a, answer_b, trial, _ = blind.answer(film, "Is there cardiomegaly?", *SETTINGS)
        pairs.add(frozenset((trial.model_a, trial.model_b)))
        blind.vote("B", trial)
    votes = blind.votes.all()
    assert len(votes) == 8 and len(pairs) > 1  # pairs drawn from all three models
    for v in votes:
        assert v["winner"] == v["model_b"] and v["source_b"] == {BASE: vqa.base_name, **vqa.adapters}[v["model_b"]]
    assert "rank8" in blind.results() or "rank4" in blind.results()


def test_compare_all_over_http_returns_every_model(vqa, tmp_path):
    demo = app.create_demo(vqa, votes_db=tmp_path / "v.sqlite", settings=APP_SETTINGS)
    _, url, _ = app.serve(demo, host="127.0.0.1", port=free_port(), queue_size=4, max_file_size="5mb",
                          prevent_thread_lock=True, quiet=True)  # fmt: skip
    try:
        client = Client(url, verbose=False)
        everyone = client.predict(handle_file(str(FILM)), "Is there cardiomegaly?", api_name="/compare_all")
        base, first = client.predict(handle_file(str(FILM)), "Is there cardiomegaly?", api_name="/compare")
        scores = client.predict(handle_file(str(FILM)), "Is there cardiomegaly?", api_name="/compare_scores")
    finally:
        demo.close()
    film = load_film(FILM, 336)
    direct = vqa.compare(film.image, add_question(None, "Is there cardiomegaly?"), APP_SETTINGS)
    assert everyone == {m: a.text for m, a in direct.items()} and list(everyone) == [BASE, "rank8", "rank4"]
    assert (base, first) == (direct[BASE].text, direct["rank8"].text)
    assert scores["tuned"]["answer"] == direct["rank8"].text


def test_evaluation_compares_each_adapter_with_the_base(qa_dataset, tiny_model_dir, random_adapter_dir,
                                                        second_adapter_dir, tmp_path):  # fmt: skip
    from evaluation import __main__ as ev

    out = tmp_path / "report"
    ev.main(["--dataset", qa_dataset, "--out", str(out), "--base", tiny_model_dir, "--no-4bit", "--device", "cpu",
             "--adapter", f"rank8={random_adapter_dir}", "--adapter", f"rank4={second_adapter_dir}",
             "--max-new-tokens", "4", "--batch-size", "12", "--resamples", "100"])  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["base", "rank8", "rank4", "base_blank", "rank8_blank", "rank4_blank"]
    assert set(metrics["difference"]) == {"rank8_minus_base", "rank4_minus_base"} and "Holm" in metrics["multiplicity"]
    p_values = [metrics["difference"][d]["closed_accuracy"] for d in ("rank8_minus_base", "rank4_minus_base")]
    assert all(d["p_holm"] >= d["p_value"] for d in p_values)
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    vqa = load_model(tiny_model_dir, [f"rank8={random_adapter_dir}", f"rank4={second_adapter_dir}"],
                     load_in_4bit=False, device="cpu")  # fmt: skip
    from datasets import load_from_disk

    study = load_from_disk(qa_dataset)["test"][0]
    conversation = add_question(None, study["qa"][0]["question"])
    first = next(r for r in records if r["id"] == f"{study['study_id']}#0")
    for model in vqa.model_names:  # each model's record is that model's own single-row answer
        settings = GenerationSettings(max_new_tokens=4)
        assert first["answers"][model] == vqa.answer([study["images"][0].convert("RGB")], [conversation], [model],
                                                       settings)[0].text  # fmt: skip

"""`python -m evaluation --remote`: a remote model (the loopback vision server of tests/vision_server.py) answers every
question and its blank-image variant beside the tiny base and a random adapter, is scored and tested like them, and
a killed run resumes without asking anything twice."""

from __future__ import annotations

import json

import numpy as np
import pytest
from vision_server import VisionServer

from evaluation import __main__ as ev
from evaluation.metrics import comparisons
from evaluation.remote import RemoteCache

MODEL = "vision-test"
MAX_NEW_TOKENS = 6


@pytest.fixture
def server():
    with VisionServer({MODEL, "vision-b"}) as server:
        yield server


def args(dataset, out, server, *extra, base=None, adapter=None, remote=("vis", MODEL)):
    argv = ["--dataset", dataset, "--out", str(out), "--no-4bit", "--device", "cpu", "--resamples", "200",
            "--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "8", "--concurrency", "3",
            "--remote", f"{remote[0]}={server.url}#{remote[1]}"]  # fmt: skip
    return argv + ["--base", base or "none"] + (["--adapter", adapter] if adapter else []) + list(extra)


def records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def expected(image) -> str:
    """The vision server's first MAX_NEW_TOKENS tokens for a film: "Yes, mean grey 140.2 on" (its mean grey)."""
    mean = float(np.asarray(image.convert("L"), dtype=float).mean())
    return f"{'Yes' if mean >= 127.5 else 'No'}, mean grey {mean:.1f} on"


@pytest.fixture(scope="module")
def report(qa_dataset, tiny_model_dir, random_adapter_dir, tmp_path_factory):
    with VisionServer({MODEL}) as server:
        out = tmp_path_factory.mktemp("report")
        ev.main(args(qa_dataset, out, server, base=tiny_model_dir, adapter=random_adapter_dir))
        assert server.violations == []
        return out, len(server.requests)


def test_every_question_gets_every_models_answer_the_remote_one_from_its_own_film(report, qa_dataset):
    from datasets import load_from_disk

    out, asked = report
    test = load_from_disk(qa_dataset)["test"]
    film_of = {row["study_id"]: row["images"][0].convert("RGB") for row in test}
    rows = records(out)
    # each question with its film, and with a blank one: 5 + 4, since two studies ask "Is there cardiomegaly?", and
    # that question with a blank film is one request, asked once
    assert len(rows) == 5 and asked == 9
    for r in rows:
        assert set(r["answers"]) == {"base", "tuned", "vis", "base_blank", "tuned_blank", "vis_blank"}
        assert r["answers"]["vis"] == expected(film_of[r["study_id"]])
        assert r["answers"]["vis_blank"] == "No, mean grey 0.0 on" and r["p_yes"]["vis_blank"] == pytest.approx(0.02)
        assert r["usage"]["vis"]["completion_tokens"] == MAX_NEW_TOKENS


def test_metrics_score_the_remote_model_and_test_it_against_base_and_adapter_with_holm(report):
    out, _ = report
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["models"]) == ["base", "tuned", "vis", "base_blank", "tuned_blank", "vis_blank"]
    assert set(metrics["difference"]) == {"tuned_minus_base", "vis_minus_base", "vis_minus_tuned"}
    holm = [d["closed_accuracy"] for d in metrics["difference"].values()]
    assert all(d["p_holm"] >= d["p_value"] for d in holm) and "3 comparisons" in metrics["multiplicity"]
    closed = [r for r in records(out) if r["kind"] == "closed"]
    accuracy = sum(r["scores"]["vis"]["correct"] for r in closed) / len(closed)
    assert metrics["models"]["vis"]["closed_accuracy"]["value"] == pytest.approx(accuracy)
    assert metrics["models"]["vis"]["confidence"]["p_yes_coverage"] == 1.0 and "vis" in metrics["ablation"]
    usage = metrics["remote"]["vis"]
    assert (usage["answers"], usage["requests"], usage["completion_tokens"]) == (10, 9, 9 * MAX_NEW_TOKENS)
    text = (out / "report.md").read_text()
    assert "remote model `vis`" in text and "vis − tuned" in text


def test_a_killed_run_resumes_and_asks_nothing_twice(qa_dataset, tmp_path, server):
    out = tmp_path / "r"
    ev.main(args(qa_dataset, out, server))  # remote model only (--base none)
    before, asked = records(out), len(server.requests)
    assert asked == 9 and list(json.loads((out / "metrics.json").read_text())["models"]) == ["vis", "vis_blank"]
    # killed twice over: the predictions lost their last records mid-line, the cache lost its last answers
    lines = (out / "predictions.jsonl").read_text().splitlines()
    (out / "predictions.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:30])
    cache = (out / "remote_cache.jsonl").read_text().splitlines()
    (out / "remote_cache.jsonl").write_text("\n".join(cache[:6]) + "\n" + cache[6][:20])
    ev.main(args(qa_dataset, out, server))
    lost = {json.loads(line)["key"] for line in cache[6:]}
    assert len(server.requests) == asked + len(lost) == asked + 3  # exactly the answers the cache lost
    assert sorted(records(out), key=lambda r: r["id"]) == sorted(before, key=lambda r: r["id"])
    ev.main(args(qa_dataset, out, server))  # finished: nothing is asked
    assert len(server.requests) == asked + 3


def test_without_logprobs_auroc_and_calibration_are_unavailable_not_guessed(qa_dataset, tmp_path, server):
    server.fail("nologprobs", times=None)
    ev.main(args(qa_dataset, tmp_path, server, "--no-ablation"))
    vis = json.loads((tmp_path / "metrics.json").read_text())["models"]["vis"]
    assert vis["confidence"]["unavailable"] and vis["macro_auroc"]["unavailable"] and vis["brier"]["unavailable"]
    assert vis["closed_accuracy"]["n"] == 4  # still scored on its answers
    text = (tmp_path / "report.md").read_text()
    assert "P(yes) unavailable for vis" in text and "| macro AUROC of P(yes) | unavailable |" in text


def test_max_cost_stops_sending_and_a_rerun_with_more_budget_asks_only_the_rest(qa_dataset, tmp_path, server, run_cli):
    # 1,000 USD per million tokens: an answer is estimated at ~0.6 USD (a film is 576 tokens), 0.59 actually paid
    prices = ["--price-input", "1000", "--price-output", "1000", "--concurrency", "1"]
    code, line = run_cli(ev.main, args(qa_dataset, tmp_path, server, *prices, "--max-cost", "2"))
    assert code == 2 and "--max-cost 2 USD would be exceeded" in line and "rerun the same command" in line
    assert len(server.requests) == 3
    code, line = run_cli(ev.main, args(qa_dataset, tmp_path, server, *prices, "--max-cost", "2"))
    assert code == 2 and len(server.requests) == 3  # the same cap over reruns: the 1.77 USD paid count
    ev.main(args(qa_dataset, tmp_path, server, *prices, "--max-cost", "10"))
    assert len(server.requests) == 9  # the three paid for were not asked again
    usage = json.loads((tmp_path / "metrics.json").read_text())["remote"]["vis"]
    assert usage["requests"] == 9 and usage["cost_usd"] == pytest.approx(
        (usage["prompt_tokens"] + usage["completion_tokens"]) / 1000
    )


def test_a_remote_model_that_never_answers_stops_the_run_in_one_line(qa_dataset, tmp_path, server, run_cli):
    server.fail("500", times=None)
    code, line = run_cli(ev.main, args(qa_dataset, tmp_path, server, "--no-ablation", "--remote-timeout", "5"))
    assert code == 2 and "5 of 5 remote answers missing (vis did not answer: HTTP 500" in line


def test_a_refused_question_is_a_wrong_answer_reported_and_never_asked_again(qa_dataset, tmp_path, server, capsys):
    server.fail("400")  # e.g. a content refusal: no retry passes it
    ev.main(args(qa_dataset, tmp_path, server, "--no-ablation"))
    assert len(server.requests) == 5
    (refused,) = [r for r in records(tmp_path) if "errors" in r]
    assert refused["answers"]["vis"] == "" and refused["p_yes"]["vis"] is None
    assert "vis did not answer: HTTP 400" in refused["errors"]["vis"]
    score = refused["scores"]["vis"]  # an empty answer: wrong, unparseable where yes or no is asked
    assert (score["correct"], score["parsed"]) == (False, None) if refused["kind"] == "closed" else score["f1"] == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["remote"]["vis"]["refused"] == 1 and metrics["models"]["vis"]["closed_accuracy"]["n"] == 4
    assert "**1 refused** by its endpoint" in (tmp_path / "report.md").read_text()
    assert "vis: 1 answers refused by its endpoint" in capsys.readouterr().out
    (tmp_path / "predictions.jsonl").unlink()  # answered again from the cache, the refusal included
    ev.main(args(qa_dataset, tmp_path, server, "--no-ablation"))
    assert len(server.requests) == 5 and json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_a_model_that_refuses_every_request_is_set_up_wrongly_and_stops(qa_dataset, tmp_path, server, run_cli):
    server.fail("400", times=None)
    code, line = run_cli(ev.main, args(qa_dataset, tmp_path, server, "--no-ablation"))
    assert code == 2 and "5 of 5 remote answers missing" in line and "vis answered no request" in line
    assert not (tmp_path / "remote_cache.jsonl").exists()  # nothing cached: a fixed endpoint is asked again


def test_a_cache_line_cut_short_is_dropped_and_the_next_answers_read_whole(tmp_path):
    path = tmp_path / "remote_cache.jsonl"
    path.write_text('{"key": "a", "text": "Yes.", "cost_usd": 0.5}\n{"key": "b", "te')  # killed mid-write
    cache = RemoteCache(path)
    assert cache.get("a") and cache.get("b") is None and cache.cost == 0.5
    cache.put("c", {"text": "No.", "cost_usd": 0.25})
    again = RemoteCache(path)
    assert again.get("c") == {"key": "c", "text": "No.", "cost_usd": 0.25} and again.cost == 0.75
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "c"]  # the cut line is gone


def test_comparisons_put_each_remote_model_against_every_model_before_it():
    assert comparisons(["base", "a", "b"]) == [("base", "a"), ("base", "b")]
    assert comparisons(["base", "a", "r1", "r2"], remotes=["r1", "r2"]) == [
        ("base", "a"), ("base", "r1"), ("a", "r1"), ("base", "r2"), ("a", "r2"), ("r1", "r2")]  # fmt: skip
    assert comparisons(["r1", "r2"], remotes=["r1", "r2"]) == [("r1", "r2")]

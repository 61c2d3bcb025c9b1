"""The llm generator against a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/llm_server.py).

No mocks of the client: a real `openai.AsyncOpenAI(base_url=...)` talks HTTP to a scripted server.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
from llm_server import OpenAIServer, distinct_studies, small_release

from cxr_vqa.endpoint import EndpointSetupError
from dataprep.__main__ import main
from dataprep.clean import cites_text, mentions_prior
from dataprep.config import Config
from dataprep.llm.budget import MAX_SENDS_PER_REPORT
from dataprep.llm.cache import cache_key
from dataprep.llm.generator import LLMGenerator
from dataprep.llm.prompt import PROMPT_VERSION

REPO = Path(__file__).resolve().parents[1]
MODEL = "test-model"


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return small_release(tmp_path_factory.mktemp("llm-release"))


@pytest.fixture(scope="module")
def studies(release) -> list:
    """Studies with distinct reports (identical reports share one request, which would blur the counts)."""
    return distinct_studies(release, 8)


@pytest.fixture
def server():
    with OpenAIServer() as server:
        yield server


def make_generator(server: OpenAIServer, cache: Path, **options) -> LLMGenerator:
    client = openai.AsyncOpenAI(base_url=server.url, api_key="test-key")
    defaults = {"concurrency": 4, "backoff": 0.001, "progress": False, "poll_interval": 0.01}
    return LLMGenerator(client, MODEL, cache, **{**defaults, **options})


def test_retries_after_429_and_500(server, studies, tmp_path):
    server.fail("429")
    server.fail("500")
    generator = make_generator(server, tmp_path / "cache", concurrency=1)
    results = generator.generate(studies)
    assert all(result.pairs for result in results.values())
    assert server.count["chat"] == len(studies) + 2
    assert generator.stats["retries"] == 2 and generator.stats["requests"] == len(studies) + 2


def test_a_timed_out_request_is_retried(server, studies, tmp_path):
    server.fail("slow", match=studies[0].report)
    generator = make_generator(server, tmp_path / "cache", timeout=0.5)
    results = generator.generate(studies[:2])
    assert all(result.pairs for result in results.values())
    assert generator.stats["retries"] == 1 and server.count["chat"] == 3


def test_malformed_json_is_retried_and_a_study_that_stays_invalid_is_rejected(server, studies, tmp_path):
    server.fail("malformed", times=1, match=studies[0].report)
    server.fail("malformed", times=5, match=studies[1].report)
    generator = make_generator(server, tmp_path / "cache", max_retries=2)
    results = generator.generate(studies[:3])
    assert results[studies[0].study_id].pairs
    rejected = results[studies[1].study_id]
    assert rejected.pairs is None and rejected.reason == "llm_invalid_output" and "3 attempts" in rejected.detail
    assert generator.stats["invalid_outputs"] == {"malformed_json": 4}
    assert server.count["chat"] == 2 + 3 + 1


@pytest.mark.parametrize(
    ("options", "sends"), [({}, 3), ({"max_invalid_retries": 0}, 1), ({"max_invalid_retries": 4}, 5)]
)
def test_a_report_answered_malformed_forever_is_sent_1_plus_max_invalid_retries_times(
    server, studies, tmp_path, options, sends
):
    server.fail("malformed", times=None, match=studies[0].report)
    generator = make_generator(server, tmp_path / "cache", price=(1.0, 1.0), **options)  # default: 2 billed retries
    results = generator.generate(studies[:4])
    assert server.reports.count(studies[0].report) == sends
    rejected = results[studies[0].study_id]
    assert rejected.pairs is None and rejected.reason == "llm_invalid_output"
    assert rejected.detail.startswith("malformed JSON at character ") and rejected.detail.endswith(
        f"after {sends} attempts"
    )
    assert all(results[s.study_id].pairs for s in studies[1:4])
    stats = generator.stats
    assert stats["invalid_retries"] == stats["retries"] == sends - 1 and stats["free_retries"] == 0
    assert stats["requests"] == sends + 3 and stats["invalid_outputs"] == {"malformed_json": sends}
    assert stats["cost_usd"] > stats["dataset_cost_usd"] > 0  # the invalid replies were billed


def test_a_report_answered_429_twice_is_sent_three_times_and_kept(server, studies, tmp_path):
    server.fail("429", times=2, match=studies[0].report)
    generator = make_generator(server, tmp_path / "cache")
    results = generator.generate(studies[:3])
    assert server.reports.count(studies[0].report) == 3 and all(r.pairs for r in results.values())
    stats = generator.stats
    assert stats["free_retries"] == stats["retries"] == 2 and stats["invalid_retries"] == 0
    assert stats["requests"] == 5 and stats["invalid_outputs"] == {}


@pytest.mark.parametrize(
    ("modes", "times", "options", "reason"),
    [
        ("500", None, {}, "llm_unavailable"),  # 1 + max_retries (4)
        (["500", "malformed"], None, {"max_retries": 4, "max_invalid_retries": 4}, "llm_unavailable"),  # ceiling
        (["malformed", "500"], None, {}, "llm_invalid_output"),  # the third billed retry is not sent
        (["429", "malformed"], 4, {}, None),  # 2 free + 2 billed retries: the fifth send is allowed and valid
    ],
)
def test_mixed_faults_never_send_a_report_more_than_five_times(
    server, studies, tmp_path, modes, times, options, reason
):
    server.fail(modes, times=times, match=studies[0].report)
    results = make_generator(server, tmp_path / "cache", **options).generate(studies[:3])
    assert server.reports.count(studies[0].report) == MAX_SENDS_PER_REPORT == 5
    result = results[studies[0].study_id]
    assert result.reason == (reason or "") and bool(result.pairs) == (reason is None)
    if reason:
        assert result.detail.endswith("after 5 attempts")
    assert all(results[s.study_id].pairs for s in studies[1:3])


@pytest.mark.parametrize("option", ["max_retries", "max_invalid_retries"])
def test_retry_options_that_could_pass_the_ceiling_are_rejected(server, tmp_path, option):
    with pytest.raises(ValueError, match="between 0 and 4"):
        make_generator(server, tmp_path / "cache", **{option: MAX_SENDS_PER_REPORT})
    with pytest.raises(ValueError, match="between 0 and 4"):
        Config(chexpert_root="R", out="D", **{option: -1})
    assert Config(chexpert_root="R", out="D", max_retries=4, max_invalid_retries=4).max_invalid_retries == 4


def test_leaky_prior_duplicate_and_schema_pairs_are_filtered_and_counted(server, studies, tmp_path):
    server.fail("leaky", times=2)
    server.fail("all_leaky", times=1, match=studies[2].report)  # no usable pair at all: asked again
    generator = make_generator(server, tmp_path / "cache", concurrency=1)
    results = generator.generate(studies[:3])
    assert generator.stats["filtered_pairs"] == {"cites_text": 2, "needs_prior": 2, "duplicate": 2, "schema": 2}
    assert generator.stats["invalid_outputs"] == {"no_usable_pair": 1}
    for result in results.values():
        assert len(result.pairs) == 6 and result.pairs[0]["kind"] == "findings"  # the report's own, then the LLM's 5
        for pair in result.pairs:
            text = pair["question"] + " " + pair["answer"]
            assert not cites_text(text) and not mentions_prior(text)
            assert pair["kind"] in ("open", "findings") or pair["answer"].startswith(("Yes", "No"))


def test_rerun_is_served_from_cache_with_zero_requests(server, studies, tmp_path):
    first = make_generator(server, tmp_path / "cache").generate(studies + studies[:2])  # repeats share a request
    assert server.count["chat"] == len(studies)
    again = make_generator(server, tmp_path / "cache")
    assert again.generate(studies) == {s.study_id: first[s.study_id] for s in studies}
    assert server.count["chat"] == len(studies) and again.stats["requests"] == 0
    assert again.stats["cache_hits"] == len(studies)
    assert list((tmp_path / "cache").rglob(".tmp-*")) == []  # atomic writes leave no temporary files


def test_a_reply_cut_short_on_disk_is_asked_again(server, studies, tmp_path):
    first = make_generator(server, tmp_path / "cache").generate(studies[:2])
    cut = sorted((tmp_path / "cache").rglob("*.json"))[0]
    cut.write_text(cut.read_text()[:20])  # a power cut mid-write, past the atomic rename's protection
    again = make_generator(server, tmp_path / "cache")
    assert again.generate(studies[:2]) == first
    assert again.stats["requests"] == 1 and server.count["chat"] == 3


def test_auth_failure_stops_the_run_with_one_line(server, studies, tmp_path):
    server.fail("401", times=100)
    with pytest.raises(EndpointSetupError, match="API key was refused"):
        make_generator(server, tmp_path / "cache").generate(studies)


def test_max_cost_stops_sending_and_rejects_the_rest(server, studies, tmp_path):
    probe = make_generator(server, tmp_path / "probe", price=(1000.0, 1000.0))
    one_request = probe.estimate(studies[:1])["cost_usd"]
    generator = make_generator(
        server, tmp_path / "cache", concurrency=1, price=(1000.0, 1000.0), max_cost=2.5 * one_request
    )
    results = generator.generate(studies)
    reasons = [r.reason for r in results.values() if r.pairs is None]
    assert 1 <= server.count["chat"] <= 3 and reasons and set(reasons) == {"max_cost_reached"}
    assert server.count["chat"] + len(reasons) == len(studies)
    assert generator.stats["cost_usd"] <= 2.5 * one_request * 1.5


def test_dry_run_estimates_and_sends_nothing(server, release, tmp_path, capsys):
    out = tmp_path / "D"
    code = main(
        [
            "--chexpert-root",
            str(release),
            "--out",
            str(out),
            "--generator",
            "llm",
            "--model",
            "gpt-4o-mini",
            "--base-url",
            server.url,
            "--dry-run",
        ]
    )
    assert code == 0 and server.count["chat"] == 0 and not out.exists()
    printed = capsys.readouterr().out
    assert "dry run" in printed and "requests to gpt-4o-mini" in printed and "$" in printed


@pytest.mark.parametrize("price", [["--price-input", "2.5"], ["--price-output", "10"]])
def test_one_price_without_the_other_is_a_usage_error(price, release, tmp_path, run_cli):
    """As in `python -m evaluation`: one price alone would count the other side free under --max-cost."""
    argv = ["--chexpert-root", str(release), "--out", str(tmp_path / "D"), "--generator", "llm", "--dry-run", *price]
    code, line = run_cli(main, argv)
    assert code == 2 and "give both --price-input and --price-output, or neither" in line


def test_batch_api_resumes_a_submitted_batch_instead_of_paying_twice(studies, tmp_path):
    async def stop_once_submitted(generator: LLMGenerator) -> None:
        task = asyncio.create_task(generator.agenerate(studies))
        deadline = time.monotonic() + 30
        while server.count["batch_poll"] < 1 and time.monotonic() < deadline and not task.done():
            await asyncio.sleep(0.01)
        task.cancel()  # as if the run were killed while waiting for the batch
        with pytest.raises(asyncio.CancelledError):
            await task

    with OpenAIServer(batch_polls=1) as server:
        server.hold_batches = True
        asyncio.run(stop_once_submitted(make_generator(server, tmp_path / "cache", batch_api=True)))
        assert server.count["file_upload"] == 1 and server.count["batch_create"] == 1
        server.hold_batches = False
        generator = make_generator(server, tmp_path / "cache", batch_api=True)
        results = generator.generate(studies)
        assert all(result.pairs for result in results.values())
        assert server.count["file_upload"] == 1 and server.count["batch_create"] == 1  # polled, not resubmitted
        assert server.count["chat"] == len(studies) and server.count["file_content"] == 1
        assert generator.stats["completion_tokens"] > 0
        rerun = make_generator(server, tmp_path / "cache", batch_api=True)
        rerun.generate(studies)
        assert server.count["batch_create"] == 1 and rerun.stats["cache_hits"] == len(studies)


def test_batch_api_rejects_and_counts_an_invalid_reply_and_the_next_run_resubmits_it(server, studies, tmp_path):
    server.fail("malformed", match=studies[0].report)
    server.fail("500", match=studies[1].report)
    generator = make_generator(server, tmp_path / "cache", batch_api=True, price=(1.0, 1.0))
    results = generator.generate(studies[:4])
    invalid, failed = results[studies[0].study_id], results[studies[1].study_id]
    assert invalid.pairs is None and invalid.reason == "llm_invalid_output" and invalid.detail.startswith("malformed")
    assert failed.pairs is None and (failed.reason, failed.detail) == ("llm_batch_failed", "HTTP 500")
    assert all(results[s.study_id].pairs for s in studies[2:4])
    stats = generator.stats
    assert stats["batch_requests"] == 4 and stats["requests"] == stats["retries"] == 0
    assert stats["invalid_outputs"] == {"malformed_json": 1} and stats["cost_usd"] > stats["dataset_cost_usd"] > 0
    rerun = make_generator(server, tmp_path / "cache", batch_api=True)  # one batch round a run: this is the retry
    assert all(r.pairs for r in rerun.generate(studies[:4]).values())
    assert rerun.stats["batch_requests"] == 2 and rerun.stats["cache_hits"] == 2 and server.count["batch_create"] == 2


def _rows(out: Path) -> dict:
    from datasets import load_from_disk

    dataset = load_from_disk(str(out))
    return {
        name: list(zip(split["study_id"], split["qa"], split["source"], strict=True))
        for name, split in dataset.items()
    }


def test_killed_run_resumes_without_repeating_finished_requests(release, tmp_path):
    """Kill the CLI mid-run (SIGKILL), restart it: finished reports are not requested again; same dataset."""
    with OpenAIServer(latency=0.1) as server:
        args = [
            "--chexpert-root",
            str(release),
            "--generator",
            "llm",
            "--model",
            MODEL,
            "--base-url",
            server.url,
            "--concurrency",
            "2",
            "--image-size",
            "64",
            "--no-progress",
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        killed = subprocess.Popen(
            [sys.executable, "-m", "dataprep", *args, "--out", str(tmp_path / "A")],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while len(server.answered) < 4 and time.monotonic() < deadline and killed.poll() is None:
            time.sleep(0.01)
        killed.kill()
        killed.wait()
        finished = {p.stem for p in (tmp_path / "A" / "cache").rglob("*.json")}
        seen_before = len(server.reports)
        assert finished, "the killed run should have cached some replies"

        assert main([*args, "--out", str(tmp_path / "A")]) == 0
        asked_again = {
            cache_key(model=MODEL, prompt_version=PROMPT_VERSION, qa_per_study=5, report=report)
            for report in server.reports[seen_before:]
        }
        assert asked_again and not asked_again & finished

        assert main([*args, "--out", str(tmp_path / "B")]) == 0  # uninterrupted, its own cache
    resumed, straight = _rows(tmp_path / "A"), _rows(tmp_path / "B")
    assert resumed == straight and sum(len(rows) for rows in resumed.values()) > 0
    assert {source for rows in resumed.values() for _, _, source in rows} == {f"llm:{MODEL}"}
    assert (tmp_path / "A" / "rejects.jsonl").read_text() == (tmp_path / "B" / "rejects.jsonl").read_text()

"""A report whose replies stay malformed is paid for once, not on every rerun: the cache remembers the rejection
(never the report) until --retry-rejected. Through the real `openai` client against tests/llm_server.py."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import openai
import pytest
from llm_server import OpenAIServer, distinct_studies, small_release

from dataprep.__main__ import main
from dataprep.chexpert import read_release
from dataprep.llm.generator import LLMGenerator

MODEL = "test-model"


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return small_release(tmp_path_factory.mktemp("rejections-release"))


@pytest.fixture(scope="module")
def malformed(release) -> list[str]:
    """Two reports of the release that no other report contains, so that a server failing "every request whose
    report contains it" fails exactly that report."""
    reports = {study.report for study in read_release(release)[0]}
    alone = [r for r in sorted(reports) if sum(r in other for other in reports) == 1]
    assert len(alone) >= 2
    return alone[:2]


def cli(release: Path, out: Path, url: str, *extra: str) -> int:
    args = ["--chexpert-root", str(release), "--out", str(out), "--generator", "llm", "--model", MODEL]
    return main([*args, "--base-url", url, "--image-size", "64", "--no-progress", *extra])


def rejected(out: Path) -> dict[str, tuple[str, str]]:
    lines = (out / "rejects.jsonl").read_text().splitlines()
    return {r["study_id"]: (r["reason"], r["detail"]) for r in map(json.loads, lines) if r["reason"].startswith("llm")}


def requests_estimated(printed: str) -> int:
    return int(re.search(r"; (\d+) requests to", printed).group(1))


def generator_stats(out: Path) -> dict:
    return json.loads((out / "stats.json").read_text())["generator"]


def test_a_rerun_asks_nothing_for_reports_that_stayed_malformed_and_the_flag_asks_exactly_those(
    release, malformed, tmp_path, capsys
):
    out = tmp_path / "D"
    with OpenAIServer() as server:
        for report in malformed:
            server.fail("malformed", times=None, match=report)
        assert cli(release, out, server.url) == 0
        first = rejected(out)
        assert first and {reason for reason, _ in first.values()} == {"llm_invalid_output"}
        assert Counter(server.reports)[malformed[0]] == Counter(server.reports)[malformed[1]] == 3  # 1 + 2 billed
        asked = server.count["chat"]

        assert cli(release, out, server.url) == 0  # the same command again
        assert server.count["chat"] == asked  # no request at all
        again = rejected(out)
        assert again.keys() == first.keys() and {reason for reason, _ in again.values()} == {"llm_invalid_output"}
        assert all("remembered" in detail and "--retry-rejected" in detail for _, detail in again.values())
        stats = generator_stats(out)
        assert stats["remembered_rejections"] == 2 and stats["requests"] == 0 and stats["cost_usd"] == 0

        # the estimate agrees: a remembered rejection costs nothing, unless asked again (the dry run decodes no
        # film, so it also counts the reports of studies whose film turns out unreadable: the same in both)
        capsys.readouterr()
        assert cli(release, out, server.url, "--dry-run") == 0
        plain = capsys.readouterr().out
        assert cli(release, out, server.url, "--dry-run", "--retry-rejected") == 0
        flagged = capsys.readouterr().out
        assert "2 rejections remembered" in plain and "0 rejections remembered" in flagged
        assert requests_estimated(flagged) == requests_estimated(plain) + 2 and server.count["chat"] == asked

        assert cli(release, out, server.url, "--retry-rejected") == 0
        assert Counter(server.reports[asked:]) == {malformed[0]: 3, malformed[1]: 3}  # exactly those, by report
        assert rejected(out).keys() == first.keys() and generator_stats(out)["retried_rejections"] == 2
        asked = server.count["chat"]
        assert cli(release, out, server.url) == 0 and server.count["chat"] == asked  # remembered again


def test_free_failures_are_not_remembered_and_the_next_run_sends_them_again(release, malformed, tmp_path):
    out = tmp_path / "D"
    with OpenAIServer() as server:
        server.fail("500", times=1, match=malformed[0])
        assert cli(release, out, server.url, "--max-retries", "0") == 0
        assert {reason for reason, _ in rejected(out).values()} == {"llm_unavailable"}
        asked = server.count["chat"]
        assert cli(release, out, server.url) == 0
        assert server.reports[asked:] == [malformed[0]] and rejected(out) == {}
        assert generator_stats(out)["remembered_rejections"] == 0


def test_the_remembered_rejection_holds_a_reason_and_a_count_never_the_report(release, malformed, tmp_path):
    with OpenAIServer() as server:
        server.fail("malformed", times=None, match=malformed[0])
        cli(release, tmp_path / "D", server.url)
    entries = [json.loads(p.read_text()) for p in (tmp_path / "D" / "cache").rglob("*.json")]
    (entry,) = [e for e in entries if "rejected" in e]
    assert set(entry) == {"rejected", "detail", "invalid_sends", "model"} and entry["invalid_sends"] == 3
    assert entry["rejected"] == "llm_invalid_output" and entry["detail"].startswith("malformed JSON at character ")
    assert malformed[0] not in json.dumps(entry) and "pairs" not in entry["detail"]


def test_with_the_batch_api_a_malformed_report_is_resubmitted_until_its_billed_sends_are_used(
    release, malformed, tmp_path
):
    """One batch round a run: the report gets 1 + --max-invalid-retries billed sends over as many runs, then none."""
    studies = [s for s in distinct_studies(release, 100) if s.report == malformed[0]]
    studies += [s for s in distinct_studies(release, 100) if s.report not in malformed][:2]
    sent = []
    with OpenAIServer() as server:
        server.fail("malformed", times=None, match=malformed[0])
        for _ in range(4):
            client = openai.AsyncOpenAI(base_url=server.url, api_key="test-key")
            generator = LLMGenerator(
                client, MODEL, tmp_path / "cache", batch_api=True, poll_interval=0.01, progress=False
            )
            results = generator.generate(studies)
            assert results[studies[0].study_id].reason == "llm_invalid_output"
            sent.append(server.reports.count(malformed[0]))
    assert sent == [1, 2, 3, 3]
    assert generator.stats["batch_requests"] == 0 and generator.stats["remembered_rejections"] == 1

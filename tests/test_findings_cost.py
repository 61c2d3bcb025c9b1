"""bench/findings_cost.py's small mode: the same release prepared with and without the findings turn, measured side
by side (the plumbing; the figures come from a full run, docs/findings.md)."""

from __future__ import annotations

import re

from bench import findings_cost


def test_findings_cost_smoke_measures_both_datasets(tmp_path, capsys):
    findings_cost.main(["--smoke", "--work", str(tmp_path / "work")])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    figures = dict(re.findall(r"(\w+)=([\d.]+)", line))
    assert line.startswith("RESULT ") and set(figures) == {
        "tokens_before", "tokens_after", "answer_tokens_before", "answer_tokens_after", "step_ms_before",
        "step_ms_after", "ratio"}  # fmt: skip
    # the findings turn adds its question and answer to every row, its answer to the loss
    assert float(figures["tokens_after"]) > float(figures["tokens_before"])
    assert float(figures["answer_tokens_after"]) > float(figures["answer_tokens_before"]) > 0
    assert float(figures["step_ms_before"]) > 0 and float(figures["ratio"]) > 0

"""MIMIC-CXR's data use, enforced: `--generator llm` sends its reports to a server on this machine only, unless
--i-have-permission-for-remote. Against the loopback OpenAI-compatible server (tests/llm_server.py), which also
plays the remote one: a host name that is not this machine, reached through it as an HTTP proxy, so a request that
leaves would be counted."""

from __future__ import annotations

import json

import pytest
from llm_server import OpenAIServer
from test_release_parts import run_main

from dataprep.synthetic_mimic import write_mimic_release

REMOTE = "http://llm.example.org/v1"


@pytest.fixture(scope="module")
def mimic(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic-llm")
    write_mimic_release(root, patients=5, seed=4, image_size=48, defects=False)
    return root


@pytest.fixture
def server(monkeypatch):
    with OpenAIServer() as server:
        proxy = server.url.removesuffix("/v1")
        for name in ("http_proxy", "HTTP_PROXY"):
            monkeypatch.setenv(name, proxy)
        for name in ("no_proxy", "NO_PROXY", "OPENAI_API_KEY", "OPENAI_BASE_URL", "all_proxy", "ALL_PROXY"):
            monkeypatch.delenv(name, raising=False)
        yield server


def argv(root, out, base_url: str | None, *extra: str) -> list[str]:
    return ["--source", "mimic-cxr", "--root", str(root), "--out", str(out), "--generator", "llm", "--model", "m",
            *(["--base-url", base_url] if base_url else []), "--image-size", "32", "--concurrency", "2",
            "--no-progress", *extra]  # fmt: skip


def test_mimic_reports_never_go_to_a_remote_llm_without_permission(mimic, server, tmp_path, capsys):
    code, _, err = run_main(argv(mimic, tmp_path / "refused", REMOTE), capsys)
    assert code == 2 and err.strip().count("\n") == 0
    assert "llm.example.org" in err and "PhysioNet" in err and "--i-have-permission-for-remote" in err
    assert server.count["chat"] == 0 and not (tmp_path / "refused" / "stats.json").exists()
    # a dry run is refused too: the run it prices could not happen
    code, _, err = run_main(argv(mimic, tmp_path / "refused", REMOTE, "--dry-run"), capsys)
    assert code == 2 and "PhysioNet" in err
    # OpenAI itself (no --base-url) is remote
    code, _, err = run_main(argv(mimic, tmp_path / "refused", None), capsys)
    assert code == 2 and "api.openai.com" in err


def test_with_permission_the_remote_endpoint_is_used(mimic, server, tmp_path, capsys):
    code, out, err = run_main(argv(mimic, tmp_path / "D", REMOTE, "--i-have-permission-for-remote"), capsys)
    assert code == 0, err[-2000:]
    stats = json.loads((tmp_path / "D" / "stats.json").read_text())
    assert server.count["chat"] == stats["generator"]["requests"] > 0 and stats["rows"] > 0
    assert stats["config"]["i_have_permission_for_remote"] is True


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_server_on_this_machine_needs_no_permission(mimic, server, tmp_path, capsys, monkeypatch, host):
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name)  # straight to the loopback server
    code, _, err = run_main(argv(mimic, tmp_path / "D", server.url.replace("127.0.0.1", host)), capsys)
    assert code == 0, err[-2000:]
    assert server.count["chat"] > 0 and json.loads((tmp_path / "D" / "stats.json").read_text())["rows"] > 0

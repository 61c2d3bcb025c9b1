"""`python app.py --demo` with a prepared cache serves at once, without building anything; with none it runs the
builder's command and reports its failure in one line; with a build running elsewhere it starts no second one."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

import app
from app_lib import demo as demo_models
from app_lib.demo_early import start_early
from app_lib.results import report_updates
from cxr_vqa.findings import FINDINGS_QUESTION
from cxr_vqa.labeler import label_report


@pytest.fixture
def prepared(tmp_path, tiny_model_dir, random_adapter_dir):
    """A finished build as `python -m finetune.demo` leaves it, made of the test suite's tiny model and adapter."""
    out = tmp_path / "demo"
    shutil.copytree(tiny_model_dir, out / "speaking-base" / "merged")
    shutil.copytree(random_adapter_dir, out / "adapter-seed0")
    (out / "examples").mkdir()
    shutil.copy(app.EXAMPLES_DIR / "cardiomegaly.png", out / "examples" / "cardiomegaly.png")
    index = [{"file": "cardiomegaly.png", "findings": ["Cardiomegaly"], "question": "Is there cardiomegaly?",
              "answer": "Yes.", "source": "Held-out phantom", "study_id": "patient7/study1"}]  # fmt: skip
    (out / "examples" / "examples.json").write_text(json.dumps(index))
    marker = {"format": 2, "complete": True, "trained": True, "base": "speaking-base/merged",
              "adapter": "adapter-seed0", "examples": "examples/examples.json", "report": "report"}  # fmt: skip
    (out / "demo.json").write_text(json.dumps(marker))
    return out


def test_a_prepared_demo_serves_without_training(prepared, monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("the demo was built again")

    monkeypatch.setattr(subprocess, "Popen", no_build)
    served = {}
    monkeypatch.setattr(app, "serve", lambda demo, **kw: served.update(demo=demo, **kw))
    app.main(["--demo", "--demo-dir", str(prepared), "--port", "7999", "--votes-db", str(prepared / "v.sqlite")])
    config = json.dumps(served["demo"].get_config_file(), default=str)
    assert "Demo models" in config and "synthetic phantoms" in config and "never on patients" in config
    assert "Held-out phantom: cardiomegaly (expected: Yes.)" in config and served["port"] == 7999
    assert "Synthetic phantom: pneumothorax" in config and "Real chest X-ray" not in config  # the demo's own films
    assert "the final adapter" in config  # what the fine-tuned pane answers with, said above the panes
    assert [fn.api_name for fn in served["demo"].fns.values() if fn.api_name == "demo_status"] == ["demo_status"]
    # the first suggested question asks for the findings, and /findings (the Findings button's question) gets the
    # demo's base and fine-tuned reports with their labels
    components = served["demo"].get_config_file()["components"]
    suggested = next(c for c in components if c["props"].get("label") == "Suggested questions")
    assert suggested["props"]["samples"][0] == [FINDINGS_QUESTION]
    findings = next(fn.fn for fn in served["demo"].fns.values() if fn.api_name == "findings")
    found = findings(str(prepared / "examples" / "cardiomegaly.png"))
    assert list(found) == ["base", "tuned"] and found["base"]["text"] != found["tuned"]["text"]
    assert all(r["labels"] == label_report(r["text"]) for r in found.values())


def test_an_incomplete_build_is_not_served(prepared):
    assert demo_models.read(prepared) is not None
    shutil.rmtree(prepared / "speaking-base")
    assert demo_models.read(prepared) is None  # a file the marker names is gone: build again


class Builder:
    """Stands in for the `python -m finetune.demo` process: exits with `code`, or is interrupted while waited on."""

    started: list = []

    def __init__(self, command, *, code=3, interrupted=False, **kwargs):
        self.command, self.kwargs, self.code, self.interrupted, self.terminated = command, kwargs, code, interrupted, 0
        Builder.started.append(self)

    def poll(self):  # the app polls its builder while it waits for the first page
        if self.interrupted and not self.terminated:
            self.interrupted = False
            raise KeyboardInterrupt  # what the app turns SIGTERM into
        return self.code  # None: still running

    def wait(self, timeout=None):
        return self.code

    def terminate(self):
        self.terminated += 1


def test_a_failed_build_is_one_line(tmp_path, monkeypatch, run_cli):
    monkeypatch.setattr(subprocess, "Popen", Builder)
    code, line = run_cli(app.main, ["--demo", "--demo-dir", str(tmp_path / "nothing")])
    assert code == 2 and "building the demo" in line and "exit 3" in line
    builder = Builder.started[-1]
    assert builder.command[1:3] == ["-m", "finetune.demo"] and builder.kwargs["cwd"] == demo_models.ROOT


def test_stopping_the_app_during_the_build_stops_the_builder(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", lambda command, **kw: Builder(command, code=None, interrupted=True, **kw))
    with pytest.raises(KeyboardInterrupt):
        demo_models.start(tmp_path / "nothing")
    assert Builder.started[-1].terminated == 1  # not left training on, orphaned


def test_a_second_app_on_a_building_folder_starts_no_second_build(prepared, monkeypatch, capsys):
    from finetune.demo import hold_lock

    marker = json.loads((prepared / "demo.json").read_text())
    (prepared / "demo.json").write_text(json.dumps({**marker, "complete": False, "trained": False}))
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a second build was started"))
    lock = hold_lock(prepared)  # the first app's builder
    try:
        found, builder = demo_models.start(prepared)
    finally:
        lock.close()
    assert builder is None and found.base.endswith("merged")
    assert "another process is building the demo" in capsys.readouterr().out


def test_the_results_tab_shows_a_report_written_after_the_page_came_up(tmp_path):
    from PIL import Image

    report = tmp_path / "report"
    note, text, plot, _, _, raw, metrics = report_updates(report)  # the page comes up before the evaluation ends
    assert "not found" in note and {text.visible, plot.visible, raw.visible, metrics.visible} == {False}
    report.mkdir()
    (report / "metrics.json").write_text(json.dumps({"models": {"tuned": {"closed_accuracy": 0.97}}}))
    (report / "report.md").write_text("| metric | tuned |\n|---|---|\n| closed accuracy | 0.970 |\n")
    Image.new("RGB", (8, 8), (200, 0, 0)).save(report / "comparison.png")
    note, text, plot, _, _, raw, metrics = report_updates(report)
    assert "not found" not in note and "| closed accuracy | 0.970 |" in text.value and text.visible is not False
    assert metrics.value["models"]["tuned"]["closed_accuracy"] == 0.97 and raw.visible is not False
    assert plot.visible is not False and plot.value is not None


def test_a_build_left_unfinished_is_continued_by_the_next_start(prepared, monkeypatch):
    marker = json.loads((prepared / "demo.json").read_text())
    (prepared / "demo.json").write_text(json.dumps({**marker, "complete": False, "trained": False}))
    monkeypatch.setattr(subprocess, "Popen", lambda command, **kw: Builder(command, code=None, **kw))
    found, builder = demo_models.start(prepared)  # serves at once: its base is there, the builder continues
    assert builder is Builder.started[-1] and builder.command[1:3] == ["-m", "finetune.demo"]
    demo_models.stop(builder)  # the app's exit ends it; the next start continues again
    assert builder.terminated == 1


def test_a_builder_that_ignores_sigterm_is_killed():
    class Stuck(Builder):
        killed = 0

        def wait(self, timeout=None):
            if timeout is not None and not self.killed:
                raise subprocess.TimeoutExpired(self.command, timeout)
            return -9

        def kill(self):
            self.killed += 1

    builder = Stuck(["python", "-m", "finetune.demo"], code=None)
    demo_models.stop(builder)  # no TimeoutExpired in the app's exit, no builder left training on
    assert (builder.terminated, builder.killed) == (1, 1)


def test_the_build_starts_before_the_apps_imports_and_the_app_adopts_it(prepared, monkeypatch):
    """`python app.py --demo` starts the build first thing (app.py's __main__ block), and `start` takes that build
    over instead of starting a second one."""
    marker = json.loads((prepared / "demo.json").read_text())
    (prepared / "demo.json").write_text(json.dumps({**marker, "complete": False, "trained": False}))
    monkeypatch.setattr(subprocess, "Popen", lambda command, **kw: Builder(command, code=None, **kw))
    before = len(Builder.started)
    start_early(["--port", "7999", "--demo", "--demo-dir", str(prepared)])
    early = Builder.started[-1]
    assert len(Builder.started) == before + 1 and early.command[1:] == ["-m", "finetune.demo", str(prepared)]
    found, builder = demo_models.start(prepared)
    assert builder is early and len(Builder.started) == before + 1 and found.base.endswith("merged")
    demo_models.stop(builder)


@pytest.mark.parametrize("argv", [["--base", "x"], ["--demo", "--config", "app.yaml"], ["--demo", "--help"],
                                  ["--demo", "--config=app.yaml"]])  # fmt: skip
def test_the_early_start_leaves_other_command_lines_to_the_app(argv, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("a build was started"))
    start_early(argv)


def test_an_early_build_is_not_started_for_a_complete_demo_and_is_stopped_if_the_app_exits_first(prepared, tmp_path):
    """A complete demo starts nothing; a usage error after the early start leaves no build running (exit 2)."""
    import os
    import sys
    import time

    root = demo_models.ROOT
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
    out = tmp_path / "early"
    done = subprocess.run([sys.executable, str(root / "app.py"), "--demo", "--demo-dir", str(out), "--port", "nope"],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "--port" in done.stderr
    time.sleep(1)
    builds = [p for p in os.listdir("/proc") if p.isdigit() and str(out).encode() in _cmdline(p)]
    assert (out / demo_models.DEMO_LOCK).exists()  # the build had started, before the app's imports and its error
    assert not builds and not (out / "demo.json").exists()
    started = demo_models.early_builds.copy()
    start_early(["--demo", "--demo-dir", str(prepared)])  # complete: nothing to build
    assert demo_models.early_builds == started


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:
        return b""

"""`python app.py --demo` with a prepared cache serves at once, without building anything; with none it runs the
builder's command and reports its failure in one line."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

import app
from app_lib import demo as demo_models


@pytest.fixture
def prepared(tmp_path, tiny_model_dir, random_adapter_dir):
    """A finished build as `python -m finetune.demo` leaves it, made of the test suite's tiny model and adapter."""
    out = tmp_path / "demo"
    shutil.copytree(tiny_model_dir, out / "tiny-llava")
    shutil.copytree(random_adapter_dir, out / "adapter-seed0")
    (out / "examples").mkdir()
    shutil.copy(app.EXAMPLES_DIR / "cardiomegaly.png", out / "examples" / "cardiomegaly.png")
    index = [{"file": "cardiomegaly.png", "findings": ["Cardiomegaly"], "question": "Is there cardiomegaly?",
              "answer": "Yes.", "source": "Held-out phantom", "study_id": "patient7/study1"}]  # fmt: skip
    (out / "examples" / "examples.json").write_text(json.dumps(index))
    marker = {"format": 1, "base": "tiny-llava", "adapter": "adapter-seed0", "examples": "examples/examples.json"}
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


def test_an_incomplete_build_is_not_served(prepared):
    assert demo_models.read(prepared) is not None
    shutil.rmtree(prepared / "adapter-seed0")
    assert demo_models.read(prepared) is None  # a file the marker names is gone: build again


class Builder:
    """Stands in for the `python -m finetune.demo` process: exits with `code`, or is interrupted while waited on."""

    started: list = []

    def __init__(self, command, *, code=3, interrupted=False, **kwargs):
        self.command, self.kwargs, self.code, self.interrupted, self.terminated = command, kwargs, code, interrupted, 0
        Builder.started.append(self)

    def wait(self, timeout=None):
        if self.interrupted and not self.terminated:
            raise KeyboardInterrupt  # what the app turns SIGTERM into
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
    monkeypatch.setattr(subprocess, "Popen", lambda command, **kw: Builder(command, interrupted=True, **kw))
    with pytest.raises(KeyboardInterrupt):
        demo_models.prepare(tmp_path / "nothing")
    assert Builder.started[-1].terminated == 1  # not left training on, orphaned

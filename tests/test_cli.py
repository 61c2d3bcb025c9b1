"""The four commands share one way to be configured: every usage mistake exits 2, its last stderr line naming it."""

from __future__ import annotations

import pytest
import torch

import app
import dataprep.__main__
import evaluation.__main__
import finetune.__main__
from cxr_vqa.errors import UserError

COMMANDS = {
    "dataprep": dataprep.__main__.main,
    "finetune": finetune.__main__.main,
    "evaluate": evaluation.__main__.main,
    "app": app.main,
}


@pytest.mark.parametrize("name", COMMANDS)
def test_an_unknown_flag_exits_2_naming_it(name, run_cli):
    code, line = run_cli(COMMANDS[name], ["--no-such-flag"])
    assert code == 2 and line.endswith("error: unrecognized arguments: --no-such-flag")


@pytest.mark.parametrize("name", COMMANDS)
def test_an_unknown_yaml_key_exits_2_naming_it(name, run_cli, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("no_such_key: 1\n")
    code, line = run_cli(COMMANDS[name], ["--config", str(path)])
    assert code == 2 and f"unknown key(s) in {path}: no_such_key" in line


@pytest.mark.parametrize(
    "name, yaml, key",
    [
        ("dataprep", "generator: lables", "generator"),
        ("finetune", "attn_implementation: bogus", "attn_implementation"),
        ("evaluate", "benchmark: nope", "benchmark"),
        ("evaluate", "extra_metrics: [radeval, bogus]", "extra_metrics"),
    ],
)
def test_a_yaml_value_outside_its_choices_exits_2(name, yaml, key, run_cli, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml + "\n")
    code, line = run_cli(COMMANDS[name], ["--config", str(path)])
    assert code == 2 and f"{key} in {path} must be one of" in line


@pytest.mark.parametrize("name", COMMANDS)
def test_a_bad_value_exits_2_naming_the_option(name, run_cli):
    code, line = run_cli(COMMANDS[name], ["--load_in_4bit", "maybe"] if name != "dataprep" else ["--limit", "x"])
    assert code == 2 and ("argument --load_in_4bit" in line or "argument --limit: invalid int value" in line)


def test_the_4bit_switch_is_spelt_one_way():
    from app_lib.config import AppConfig
    from evaluation.config import EvalConfig
    from finetune.config import ScriptArguments

    for kind in (AppConfig, ScriptArguments, EvalConfig):
        assert kind.__dataclass_fields__["load_in_4bit"].default is True


def test_a_single_yaml_adapter_needs_no_list(tmp_path):
    from cxr_vqa.cli import parse_config
    from evaluation.config import EvalConfig

    path = tmp_path / "eval.yaml"
    path.write_text("adapter: runs/a\n")
    (cfg,) = parse_config([EvalConfig], ["--config", str(path), "--dataset", "d", "--out", "o"],
                          prog="evaluate")  # fmt: skip
    assert cfg.adapter == ["runs/a"] and cfg.models == ["base", "tuned"]


class _BadFilm(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        raise UserError("film p1/s1.png is truncated or corrupt; export it again")


def test_a_user_error_in_a_dataloader_worker_keeps_its_message(capsys):
    from cxr_vqa.cli import user_errors

    loader = torch.utils.data.DataLoader(_BadFilm(), num_workers=1)
    with pytest.raises(SystemExit) as stop, user_errors():
        next(iter(loader))
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and line == "error: film p1/s1.png is truncated or corrupt; export it again"


def test_a_bad_port_in_the_environment_exits_2(run_cli, monkeypatch):
    monkeypatch.setenv("GRADIO_SERVER_PORT", "abc")
    code, line = run_cli(app.main, [])
    assert code == 2 and line.endswith("GRADIO_SERVER_PORT must be a port number, got 'abc'")

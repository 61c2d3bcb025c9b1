"""bench/learn_synthetic.py over several data seeds: the last RESULT line is the worst over every data seed and
trainer seed, and names the run it came from (the stages themselves are smoke-tested in tests/test_benches.py)."""

from __future__ import annotations

import pytest

from bench import learn_synthetic


def figures(tuned: float) -> dict:
    return {"tuned": tuned, "tuned_auroc": 0.99, "base": 0.6, "question_chance": 0.66, "base_unparseable": 0.0,
            "base_auroc": 0.5, "tuned_blank": 0.3, "tuned_blank_unparseable": 0.0, "tuned_blank_auroc": 0.5,
            "drop": tuned - 0.3, "p": 1e-9}  # fmt: skip


def test_several_data_seeds_report_each_and_the_worst_run_with_its_seeds(monkeypatch, capsys):
    tuned = {(0, 0): 0.97, (0, 1): 0.96, (3, 0): 0.98, (3, 1): 0.93}
    ran = []

    def fake_run(args, data_seed, seeds, several):
        ran.append((data_seed, several))
        return [figures(tuned[data_seed, t]) for t in seeds]

    monkeypatch.setattr(learn_synthetic, "run_data_seed", fake_run)
    learn_synthetic.main(["--seeds", "3,0", "--trainer-seeds", "0,1"])
    lines = capsys.readouterr().out.splitlines()
    assert ran == [(0, True), (3, True)]
    per_seed = [line for line in lines if line.startswith("RESULT data_seed=")]
    assert [line.split()[1] for line in per_seed] == ["data_seed=0", "data_seed=3"]
    assert "tuned_min=0.960" in per_seed[0] and "tuned_min=0.930" in per_seed[1]
    last = lines[-1]
    assert last.startswith("RESULT seeds=4 data_seeds=2 worst_data_seed=3 worst_trainer_seed=1 tuned_min=0.930 ")
    assert any("NOT met" in line for line in lines)  # 0.93 < 0.95


def test_one_data_seed_keeps_the_old_result_line(monkeypatch, capsys):
    monkeypatch.setattr(learn_synthetic, "run_data_seed", lambda args, d, seeds, several: [figures(0.97)] * len(seeds))
    learn_synthetic.main(["--seed", "5"])
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("RESULT seeds=3 tuned_min=0.970 ") and "data_seeds" not in last


def test_bad_seeds_are_a_usage_error():
    with pytest.raises(SystemExit) as exit_:
        learn_synthetic.main(["--seeds", "0,x"])
    assert exit_.value.code == 2


def test_each_data_seed_has_its_own_directory(tmp_path):
    parser_args = learn_synthetic.argparse.Namespace(work=str(tmp_path))
    assert learn_synthetic.work_dir(parser_args, 3, several=True) == tmp_path / "seed3"
    assert learn_synthetic.work_dir(parser_args, 3, several=False) == tmp_path
    default = learn_synthetic.argparse.Namespace(work=None)
    assert learn_synthetic.work_dir(default, 0, several=True).name == "learn-synthetic"
    assert learn_synthetic.work_dir(default, 7, several=True).name == "learn-synthetic-seed7"

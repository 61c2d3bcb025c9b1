"""`python -m evaluation --maps N`: a contact sheet of where each model looked, for right and wrong answers; off by
default. On the 3-study dataset of test_evaluate.py."""

from __future__ import annotations

from PIL import Image
from test_evaluate import _args, dataset_dir  # noqa: F401  (a fixture, used by name)

from evaluation import __main__ as ev
from evaluation.maps import MAPS_PNG, sample


def record(i: int, correct: bool | None, kind: str = "closed") -> dict:
    scores = {"tuned": {"correct": correct}} if correct is not None else {"tuned": {"f1": 0.5}}
    return {"id": str(i), "kind": kind, "scores": scores}


def test_the_sample_is_half_right_half_wrong_where_it_can_be():
    records = [record(i, i % 4 == 0) for i in range(20)] + [record(99, None, "open")]
    picked = sample(records, "tuned", 6, seed=1)
    assert len(picked) == 6 and sum(r["scores"]["tuned"]["correct"] for r in picked) == 3
    assert sample(records, "tuned", 6, seed=1) == picked and len({r["id"] for r in picked}) == 6
    few_wrong = [record(i, i != 0) for i in range(10)]
    assert sum(not r["scores"]["tuned"]["correct"] for r in sample(few_wrong, "tuned", 6)) == 1
    assert len(sample(records, "tuned", 40)) == len(records)  # the open one fills in at the end


class Record(dict):
    """A prediction record that fails when compared by value: the sample must tell records apart by identity."""

    def __eq__(self, other):
        raise AssertionError("records compared by value: n x n dict comparisons")

    __hash__ = None


def test_the_sample_tells_records_apart_by_identity():
    records = [Record(record(i, i % 3 == 0)) for i in range(30)] + [Record(record(99, None, "open"))]
    picked = sample(records, "tuned", 40)
    assert len(picked) == 31 and picked[-1]["id"] == "99"  # every closed one, then the open one


def test_maps_without_a_local_model_is_a_usage_error(tmp_path, run_cli):
    argv = ["--dataset", str(tmp_path), "--out", str(tmp_path / "r"), "--base", "none", "--remote",
            "vis=http://127.0.0.1:9/v1#m", "--maps", "4"]  # fmt: skip
    code, line = run_cli(ev.main, argv)
    assert code == 2 and "--maps draws where local models looked" in line
    assert not (tmp_path / "r").exists()  # refused before anything ran


def test_maps_flag_draws_a_contact_sheet_and_is_off_by_default(dataset_dir, tiny_model_dir, random_adapter_dir,  # noqa: F811
                                                                tmp_path, capsys):  # fmt: skip
    ev.main(_args(dataset_dir, tmp_path / "off", tiny_model_dir, random_adapter_dir, "--no-ablation"))
    assert not (tmp_path / "off" / MAPS_PNG).exists()
    ev.main(_args(dataset_dir, tmp_path / "on", tiny_model_dir, random_adapter_dir, "--no-ablation", "--maps", "3"))
    assert "maps.png" in capsys.readouterr().out
    with Image.open(tmp_path / "on" / MAPS_PNG) as sheet:
        width, height = sheet.size
    assert height > width  # 3 questions down, 2 models across
    # a finished run draws the sheet again without answering anything
    (tmp_path / "on" / MAPS_PNG).unlink()
    ev.main(_args(dataset_dir, tmp_path / "on", tiny_model_dir, random_adapter_dir, "--no-ablation", "--maps", "2"))
    assert (tmp_path / "on" / MAPS_PNG).is_file()

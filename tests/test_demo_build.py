"""The demo builder (`python -m finetune.demo`): finished stages are skipped, a complete build is recognised and
nothing runs again, one process builds a folder at a time, examples come from held-out test studies showing one
finding each; and, once, the whole build on a handful of patients."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from cxr_vqa.contract import DEMO_FORMAT, DEMO_MARKER, SPLITS, demo_build, features, open_splits
from cxr_vqa.errors import UserError
from cxr_vqa.template import conversation_from_qa
from finetune import demo, demo_stages

REPO = Path(__file__).resolve().parents[1]


def _json_stage(src: Path, dst: Path) -> demo_stages.Stage:
    """A real, fast command line: `python -m json.tool SRC DST` (fails on a file that is not JSON)."""
    return demo_stages.Stage("copy", "json.tool", [src, dst])


def test_a_finished_stage_is_skipped_and_other_settings_stop_the_run(tmp_path):
    src, dst = tmp_path / "in.json", tmp_path / "out.json"
    src.write_text('{"a": 1}')
    assert demo_stages.run_stage(tmp_path, _json_stage(src, dst)) is not None
    assert json.loads(dst.read_text()) == {"a": 1}
    record = json.loads((tmp_path / "stages" / "copy.json").read_text())
    assert record["seconds"] > 0 and record["cpu_seconds"] > 0  # the child's own CPU time, for loaded machines
    dst.unlink()
    assert demo_stages.run_stage(tmp_path, _json_stage(src, dst)) is None  # reused: the command did not run again
    assert not dst.exists()
    with pytest.raises(UserError, match="built with other settings"):
        demo_stages.run_stage(tmp_path, _json_stage(src, tmp_path / "elsewhere.json"))


def test_a_failing_stage_names_itself_and_records_nothing(tmp_path):
    src = tmp_path / "in.json"
    src.write_text("not json")
    log = tmp_path / "logs" / "copy.log"
    with pytest.raises(UserError, match=r"\[copy\] failed with exit code 1"):
        demo_stages.run_stage(tmp_path, _json_stage(src, tmp_path / "out.json"), log=log)
    assert log.is_file() and not demo_stages.finished(tmp_path, _json_stage(src, tmp_path / "out.json"))


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Python 3.10 starts each stage in a session of its own")
def test_a_stage_leads_its_own_group_in_the_builders_session_at_its_priority(tmp_path, monkeypatch):
    """Killed as one group, and niced where the scheduler sees it: Linux shares the CPU between sessions (autogroups)
    before nice values count, so a lower-priority stage in a session of its own took a fair share anyway."""
    probe = tmp_path / "probe_ids.py"
    probe.write_text("import json, os, sys, time\n"
                     "time.sleep(0.3)\n"  # the builder lowers a stage's priority just after it starts
                     "ids = {'pid': os.getpid(), 'group': os.getpgid(0), 'session': os.getsid(0), "
                     "'nice': os.getpriority(os.PRIO_PROCESS, 0)}\n"
                     "open(sys.argv[1], 'w').write(json.dumps(ids))\n")  # fmt: skip
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    out = tmp_path / "ids.json"
    demo_stages.run_stage(tmp_path, demo_stages.Stage("probe", "probe_ids", [out]), nice=5)
    ids = json.loads(out.read_text())
    assert ids["group"] == ids["pid"] and ids["session"] == os.getsid(0)
    assert ids["nice"] == min(os.getpriority(os.PRIO_PROCESS, 0) + 5, 19)


def test_training_resumes_only_from_a_complete_checkpoint(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(demo_stages, "_run", lambda cmd, *_: commands.append(cmd) or (0, 0.0))
    adapter = tmp_path / "adapter"
    (adapter / "checkpoint-4").mkdir(parents=True)  # killed while saving: no trainer_state.json
    demo_stages.run_stage(tmp_path, demo_stages.train_stage(tmp_path, adapter, trainer_seed=3))
    (adapter / "checkpoint-2").mkdir()
    (adapter / "checkpoint-2" / "trainer_state.json").write_text("{}")
    demo_stages.run_stage(tmp_path, demo_stages.train_stage(tmp_path, adapter, trainer_seed=4))
    assert "--resume_from_checkpoint" not in commands[0] and commands[1][-1] == "--resume_from_checkpoint"
    assert commands[0][commands[0].index("--seed") + 1] == "3"


def test_a_killed_training_does_not_resume_under_other_settings(tmp_path, monkeypatch):
    def killed(cmd, *_):
        (adapter / "checkpoint-2").mkdir(parents=True)
        (adapter / "checkpoint-2" / "trainer_state.json").write_text("{}")
        return -9, 0.0

    adapter = tmp_path / "adapter"
    monkeypatch.setattr(demo_stages, "_run", killed)
    with pytest.raises(UserError, match="failed"):
        demo_stages.run_stage(tmp_path, demo_stages.train_stage(tmp_path, adapter, extra=("--num_train_epochs", 0.3)))
    monkeypatch.setattr(demo_stages, "_run", lambda *a, **k: pytest.fail("resumed a 0.3-epoch run as another"))
    with pytest.raises(UserError, match="unfinished 'train \\(seed 0\\)' with other settings"):
        demo_stages.run_stage(tmp_path, demo_stages.train_stage(tmp_path, adapter))


def test_an_unreadable_record_is_not_finished_and_unreadable_settings_do_not_resume(tmp_path, monkeypatch):
    src, dst = tmp_path / "in.json", tmp_path / "out.json"
    src.write_text('{"a": 1}')
    stage = _json_stage(src, dst)
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "copy.json").write_text('{"command": ["json.to')  # cut short by a kill
    assert not demo_stages.finished(tmp_path, stage)
    assert demo_stages.run_stage(tmp_path, stage) is not None and demo_stages.finished(tmp_path, stage)
    adapter = tmp_path / "adapter"
    (adapter / "checkpoint-2").mkdir(parents=True)
    (adapter / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "stages" / "train-seed-0.started").write_text('{"comm')
    monkeypatch.setattr(demo_stages, "_run", lambda *a: pytest.fail("resumed checkpoints of unknown settings"))
    with pytest.raises(UserError, match="whose settings train-seed-0.started does not say"):
        demo_stages.run_stage(tmp_path, demo_stages.train_stage(tmp_path, adapter))


def test_another_seed_reports_into_its_own_folder(tmp_path, monkeypatch):
    """Evaluation resumes what its --out holds: seed 1's report beside seed 0's, never over it."""
    ran = []
    monkeypatch.setattr(demo, "run_stage", lambda work, stage, **kw: ran.append(stage))
    monkeypatch.setattr(demo, "pick_examples", lambda *a: [])
    assert demo.demo_plan(tmp_path).report == "report"
    plan = demo.demo_plan(tmp_path, seed=1)
    marker = demo.build(tmp_path, plan)
    assert marker["report"] == json.loads((tmp_path / DEMO_MARKER).read_text())["report"] == "report-seed1"
    evaluate = ran[-1].args
    assert evaluate[evaluate.index("--out") + 1] == str(tmp_path / "report-seed1")
    assert evaluate[evaluate.index("--adapter") + 1] == str(tmp_path / "adapter-seed1")


@pytest.mark.parametrize("flags", [["--epochs", "0"], ["--epochs", "-1"], ["--base-steps", "0"]])
def test_zero_epochs_or_base_steps_are_usage_errors(flags, tmp_path, monkeypatch, run_cli):
    monkeypatch.setattr(demo, "build", lambda *a, **k: pytest.fail("built with 0 epochs or steps"))
    code, line = run_cli(demo.main, [str(tmp_path / "demo"), *flags])
    assert code == 2 and "--epochs must be > 0 and --base-steps >= 1" in line


SLEEPER = """import os, pathlib, subprocess, time
grandchild = subprocess.Popen(["sleep", "60"])
pathlib.Path(PIDS).write_text(f"{os.getpid()} {grandchild.pid} {os.nice(0)}")
time.sleep(60)"""
BUILDER = """import sys
from pathlib import Path
from finetune import demo
from finetune.demo_stages import Stage

out = Path(sys.argv[1])
quick = Stage("release", "timeit", ["-n", "1", "-r", "1", "pass"])
names = ("tiny", "release", "base release")
sleep = [sys.argv[2].replace("PIDS", repr(str(out / name))) for name in names]
tiny, release, base_release = [Stage(name, "timeit", ["-n", "1", "-r", "1", stmt]) for name, stmt in zip(names, sleep)]
demo.stop_on_sigterm()
demo.build(out, demo.Plan([tiny, release, quick, base_release, quick], quick, quick, quick))"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_sigterm_during_the_stages_side_by_side_kills_them_and_what_they_started(tmp_path):
    """The app stops a build with SIGTERM while the base's release runs, the tiny model beside it and the adapter's
    release at a lower priority, both in threads: the three stages (and their own children) end with the builder
    instead of running on, orphaned."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    builder = subprocess.Popen([sys.executable, "-c", BUILDER, str(tmp_path), SLEEPER], cwd=REPO, env=env)
    pids: list[int] = []
    try:
        for _ in range(600):  # both stages started and wrote their pids (a loaded machine may take a while)
            files = [tmp_path / "tiny", tmp_path / "release", tmp_path / "base release"]
            if all(f.is_file() and f.read_text() for f in files):
                written = [f.read_text().split() for f in files]
                pids = [int(pid) for pid_, grandchild, _ in written for pid in (pid_, grandchild)]
                break
            assert builder.poll() is None, "the builder ended before its stages started"
            time.sleep(0.1)
        assert len(pids) == 6 and all(_alive(pid) for pid in pids)
        niceness = {f.name: int(line[2]) for f, line in zip(files, written, strict=True)}
        # the adapter's release yields its core to the stages the first page waits for
        assert niceness["release"] - niceness["tiny"] == demo.LOWER_PRIORITY or niceness["release"] == 19
        assert niceness["base release"] == niceness["tiny"]
        builder.send_signal(signal.SIGTERM)
        assert builder.wait(timeout=30) == 128 + signal.SIGTERM
        for _ in range(50):  # the grandchildren, killed with their group, are reaped by whoever adopted them
            if not any(_alive(pid) for pid in pids):
                break
            time.sleep(0.1)
        assert [pid for pid in pids if _alive(pid)] == []
    finally:
        builder.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _prepared_build(out: Path) -> None:
    """What a finished build leaves (empty stand-ins for the model files)."""
    for name in ("speaking-base/merged", "adapter-seed0", "examples"):
        (out / name).mkdir(parents=True)
    (out / "examples" / "examples.json").write_text("[]")
    stages = [s.identity for s in demo.demo_plan(out.resolve()).stages]
    marker = {"format": DEMO_FORMAT, "complete": True, "base": "speaking-base/merged", "adapter": "adapter-seed0",
              "examples": "examples/examples.json", "stages": stages}  # fmt: skip
    (out / DEMO_MARKER).write_text(json.dumps(marker))


def test_a_complete_build_is_detected_and_nothing_runs(tmp_path, monkeypatch, capsys):
    _prepared_build(tmp_path / "demo")
    monkeypatch.setattr(demo_stages, "_run", lambda *a, **k: pytest.fail("a stage ran on a complete build"))
    demo.main([str(tmp_path / "demo")])
    assert "already built" in capsys.readouterr().out
    assert demo_build(tmp_path / "demo")["adapter"] == "adapter-seed0"


def test_an_incomplete_or_other_build_is_built_again(tmp_path, monkeypatch):
    _prepared_build(tmp_path / "demo")
    built = []
    monkeypatch.setattr(demo, "build", lambda out, plan, **kw: built.append(plan.train.identity))
    demo.main([str(tmp_path / "demo"), "--seed", "1"])  # another trainer seed: its own adapter
    assert built and built[0][built[0].index("--seed") + 1] == "1"
    assert not (tmp_path / "demo" / DEMO_MARKER).exists()  # gone until that build completes
    _prepared_build(tmp_path / "other")
    (tmp_path / "other" / "adapter-seed0").rmdir()
    assert demo_build(tmp_path / "other") is None and demo_build(tmp_path / "empty") is None
    assert demo_build(tmp_path / "other", serving=True)  # no adapter yet: it can serve while the adapter trains
    (tmp_path / "other" / DEMO_MARKER).write_text("[1, 2]")  # not a marker at all
    assert demo_build(tmp_path / "other") is None


def test_one_process_builds_a_folder_at_a_time(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "build", lambda *a, **k: pytest.fail("a second build started"))
    lock = demo.hold_lock(tmp_path / "demo")  # as a running builder (or an app's) holds it
    try:
        demo.main([str(tmp_path / "demo")])
        assert "another process is building the demo" in capsys.readouterr().out
    finally:
        lock.close()
    assert demo.hold_lock(tmp_path / "demo") is not None  # released when its holder ends


def _row(study: str, view: str, findings: dict[str, str], shade: int) -> dict:
    qa = [{"question": f"Is there {name}?", "answer": f"{label.capitalize()}, {name}.", "kind": "closed",
           "finding": name, "label": label} for name, label in findings.items()]  # fmt: skip
    qa.append({"question": "What abnormalities are seen?", "answer": "x.", "kind": "open", "finding": None,
               "label": None})  # fmt: skip
    return {
        "messages": conversation_from_qa([(p["question"], p["answer"]) for p in qa]),
        "images": [Image.new("RGB", (16, 16), (shade,) * 3)], "qa": qa, "patient_id": study.split("/")[0],
        "study_id": study, "image_path": f"{study}.png", "view": view, "source": "labels",
    }  # fmt: skip


def test_examples_are_held_out_films_showing_one_finding_each(tmp_path):
    from datasets import Dataset, DatasetDict

    test = [
        _row("p1/s1", "PA", {"Cardiomegaly": "yes", "Pneumothorax": "yes", "No Finding": "no"}, 10),  # two findings
        _row("p2/s1", "lateral", {"Cardiomegaly": "yes", "No Finding": "no"}, 20),  # not frontal
        _row("p3/s1", "AP", {"Cardiomegaly": "yes", "Consolidation": "no", "No Finding": "no"}, 30),
        _row("p4/s1", "PA", {"Support Devices": "yes", "No Finding": "yes", "Pneumothorax": "no"}, 40),  # device only
        _row("p5/s1", "PA", {"No Finding": "yes", "Cardiomegaly": "no"}, 50),
        _row("p6/s1", "PA", {"Cardiomegaly": "yes", "No Finding": "no"}, 60),  # a second one: the first is kept
    ]
    train = [_row("p9/s1", "PA", {"Pneumothorax": "yes", "No Finding": "no"}, 90)]  # trained on: never an example
    splits = {"train": train, "validation": train, "test": test}
    data = DatasetDict({name: Dataset.from_list(splits[name], features=features()) for name in SPLITS})
    data.save_to_disk(str(tmp_path / "data"))

    index = demo.pick_examples(tmp_path / "data", tmp_path / "examples")
    assert [(e["file"], e["findings"], e["study_id"]) for e in index] == [
        ("normal.png", [], "p5/s1"),
        ("cardiomegaly.png", ["Cardiomegaly"], "p3/s1"),
        ("support_devices.png", ["Support Devices"], "p4/s1"),
    ]
    assert index[1]["question"] == "Is there Cardiomegaly?" and index[1]["answer"] == "Yes, Cardiomegaly."
    assert Image.open(tmp_path / "examples" / "cardiomegaly.png").getpixel((0, 0)) == (30, 30, 30)
    assert json.loads((tmp_path / "examples" / "examples.json").read_text()) == index


def test_the_whole_build_on_a_handful_of_patients(smoke_demo):
    """The real command line end to end, small: every stage runs once, demo.json comes last, a rerun does nothing."""
    out, command, env, first = smoke_demo
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert [line for line in first.stdout.splitlines() if line.startswith("stage")] == [
        f"stages 1-3/8: base release and tiny model; release and dataprep beside them, at a lower priority (output: "
        f"{out / 'logs'})", "stage 6/8: base", "stage 7/8: train (seed 0)",
        "stage 8/8: evaluate (adapter-seed0)"]  # fmt: skip
    assert (out / "logs" / "release.log").is_file()  # made beside the base: its output kept apart
    marker = demo_build(out)
    assert marker and marker["complete"] and marker["trained"]
    assert (out / marker["adapter"] / "adapter_config.json").is_file()
    assert (out / marker["base"] / "config.json").is_file()  # the merged base
    assert json.loads((out / marker["report"] / "metrics.json").read_text())["models"]["tuned"]
    card = (out / marker["adapter"] / "README.md").read_text()
    assert "A **demo** LoRA adapter" in card and "synthetic phantoms drawn by dataprep.synthetic, not patients" in card
    examples = json.loads((out / marker["examples"]).read_text())
    # the base's own held-out films: the base never trained on them, the adapter never saw that release
    test_studies = set(open_splits(out / "base-data")["test"]["study_id"])
    assert examples and all(e["study_id"] in test_studies for e in examples)
    base_args = next(s for s in marker["stages"] if s[0] == "finetune" and "tiny-llava" in str(s))
    assert base_args[base_args.index("--dataset") + 1] == str((out / "base-data").resolve())
    # started beside its data, it waited for the records of the stages it reads
    waited = base_args[base_args.index("--wait_for") + 1 : base_args.index("--wait_for") + 3]
    assert [Path(p).name for p in waited] == ["tiny-model.json", "base-dataprep.json"]
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already built" in again.stdout


def test_the_demos_release_keeps_each_frontal_film_and_drops_the_rest(tmp_path):
    """--no-laterals draws the same first films (and rows) as a full release, without the second, lateral views no
    dataset keeps; --valid-patients 0 leaves no official valid split to prepare for nothing."""
    import csv

    import numpy as np

    from dataprep.synthetic import write_release

    full = write_release(tmp_path / "full", patients=12, image_size=96, defects=False, workers=1)
    lean = write_release(tmp_path / "lean", patients=12, image_size=96, defects=False, workers=1, laterals=False,
                         valid_patients=0)  # fmt: skip

    def films(root: Path) -> dict[str, Path]:  # by patient, study and view, whatever the split
        return {"/".join(p.parts[-3:]): p for p in root.rglob("*.png")}

    first, kept = films(tmp_path / "full"), films(tmp_path / "lean")
    assert full["images"] > lean["images"] == len(kept) and any(name.endswith("view2_lateral.png") for name in first)
    assert set(kept) == {name for name in first if "/view1_" in name}  # every study's first film, no second view
    for name, path in kept.items():
        assert np.array_equal(np.asarray(Image.open(first[name])), np.asarray(Image.open(path)))
    with open(tmp_path / "lean" / "df_chexpert_plus_240401.csv", newline="") as file:
        assert {row["split"] for row in csv.DictReader(file)} == {"train"}


def test_finetune_waits_for_its_inputs_records_before_reading_them(tmp_path):
    import threading

    from finetune.__main__ import wait_for

    record = tmp_path / "stages" / "base-dataprep.json"
    threading.Timer(0.3, lambda: (record.parent.mkdir(), record.write_text("{}"))).start()
    started = time.monotonic()
    wait_for([str(record)], every=0.02)
    assert record.is_file() and time.monotonic() - started >= 0.25

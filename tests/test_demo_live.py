"""The demo serves while it learns: a stub trainer writes checkpoints on cue into a demo folder, and the fine-tuned
answers follow them between two answers, never during one; a checkpoint still being written is never loaded; the
final adapter replaces the last checkpoint when training ends; the page says all this in words."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from pathlib import Path

import pytest
from conftest import _random_adapter

from app_lib import demo as demo_models
from app_lib.blind import Blind
from app_lib.handlers import Handlers
from app_lib.maps import Maps
from app_lib.votes import VoteStore
from cxr_vqa.contract import DEMO_FORMAT, DEMO_MARKER, TRAINING_PROGRESS
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.model import load_model
from cxr_vqa.template import add_question
from cxr_vqa.vqa import BASE, TUNED

FILM = Path(__file__).resolve().parents[1] / "assets" / "examples" / "cardiomegaly.png"
SETTINGS = GenerationSettings(max_new_tokens=8)
QUESTION = add_question(None, "Is there cardiomegaly?")


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """Two adapters of one shape, as two checkpoints of one training would be."""
    return [_random_adapter(tiny_model_dir, tmp_path_factory.mktemp(f"ckpt{seed}"), seed=seed) for seed in (3, 4)]


@pytest.fixture(scope="module")
def expected(tiny_model_dir, adapters):
    """What each adapter answers, loaded the ordinary way."""
    answers = []
    for adapter in adapters:
        vqa = load_model(tiny_model_dir, adapter, load_in_4bit=False, device="cpu")
        answers.append(vqa.compare(vqa.prepare_film(FILM).image, QUESTION, SETTINGS)[TUNED].text)
    assert answers[0] != answers[1], "the two stand-in checkpoints must answer differently"
    return answers


class StubTrainer:
    """Writes what `python -m finetune` leaves in its output_dir, on cue: checkpoint-N/ with the adapter files first
    and trainer_state.json last (or not at all: killed while saving), progress.json, the final adapter."""

    def __init__(self, out: Path):
        self.out = out / "adapter-seed0"

    def checkpoint(self, step: int, adapter: str, *, epoch: int, complete: bool = True) -> None:
        target = self.out / f"checkpoint-{step}"
        shutil.copytree(adapter, target)
        if complete:
            (target / "trainer_state.json").write_text(json.dumps({"epoch": float(epoch), "global_step": step}))

    def progress(self, step: int, epoch: float, epochs: int = 8, max_steps: int = 80) -> None:
        record = {"step": step, "max_steps": max_steps, "epoch": epoch, "epochs": epochs, "seconds_per_step": 0.5}
        (self.out / TRAINING_PROGRESS).write_text(json.dumps(record))

    def finish(self, adapter: str, out: Path) -> None:
        shutil.copytree(adapter, self.out, dirs_exist_ok=True)
        marker = json.loads((out / DEMO_MARKER).read_text())
        (out / DEMO_MARKER).write_text(json.dumps({**marker, "trained": True}))


@pytest.fixture
def served(tmp_path, tiny_model_dir):
    """A demo folder that can serve (base and examples, no adapter yet), the model the app loads, and its Live."""
    out = tmp_path / "demo"
    shutil.copytree(tiny_model_dir, out / "base")
    (out / "examples").mkdir()
    shutil.copy(FILM, out / "examples" / "cardiomegaly.png")
    (out / "examples" / "examples.json").write_text(
        json.dumps(
            [
                {
                    "file": "cardiomegaly.png",
                    "findings": ["Cardiomegaly"],
                    "question": "Is there cardiomegaly?",
                    "answer": "Yes.",
                    "source": "Held-out phantom",
                }
            ]
        )
    )
    marker = {"format": DEMO_FORMAT, "complete": False, "trained": False, "base": "base", "adapter": "adapter-seed0",
              "examples": "examples/examples.json", "report": "report"}  # fmt: skip
    (out / DEMO_MARKER).write_text(json.dumps(marker))
    (out / "adapter-seed0").mkdir()
    demo = demo_models.read(out)
    vqa = load_model(demo.base, [], load_in_4bit=False, device="cpu")
    return out, vqa, demo_models.Live(demo, vqa), StubTrainer(out)


def ask(vqa, on_text=None) -> dict[str, str]:
    answers = vqa.compare(vqa.prepare_film(FILM).image, QUESTION, SETTINGS, on_text=on_text)
    return {name: answer.text for name, answer in answers.items()}


def test_checkpoints_are_picked_up_between_answers_never_during_one(served, adapters, expected):
    out, vqa, live, trainer = served
    assert set(ask(vqa)) == {BASE} and live.notes()[TUNED].startswith("no checkpoint yet")

    trainer.checkpoint(10, adapters[0], epoch=1)
    assert set(ask(vqa)) == {BASE}  # picked up by this answer, which asked the models loaded when it came in
    assert ask(vqa)[TUNED] == expected[0] and live.notes()[TUNED] == "answered by the epoch-1 checkpoint"

    # checkpoint 2 arrives while an answer is being written: that answer finishes on checkpoint 1, and a look for
    # new checkpoints from another thread waits for it to end
    looked, seen_during = [], []

    def on_text(texts):
        if not seen_during:
            trainer.checkpoint(20, adapters[1], epoch=2)
            threading.Thread(target=lambda: (live.refresh(), looked.append(True))).start()
            time.sleep(0.2)  # time enough for the look to run, were it not waiting for this answer
        seen_during.append(bool(looked))

    first = ask(vqa, on_text)
    assert first[TUNED] == expected[0]  # the whole answer came from checkpoint 1
    assert len(seen_during) >= 2 and not any(seen_during)  # the look waited for the answer's end
    deadline = time.monotonic() + 30
    while not looked and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ask(vqa)[TUNED] == expected[1] and live.state()["serving"] == "the epoch-2 checkpoint"

    trainer.checkpoint(30, adapters[0], epoch=3, complete=False)  # still being written: no trainer_state.json
    assert ask(vqa)[TUNED] == expected[1] and live.state()["serving"] == "the epoch-2 checkpoint"

    trainer.finish(adapters[0], out)  # training ended: the final adapter, not the newest checkpoint
    assert ask(vqa)[TUNED] == expected[0]
    state = live.state()
    assert state["final"] and state["serving"] == "the final adapter"


def test_a_checkpoint_rotated_away_while_loading_is_passed_over_for_the_next(served, adapters, monkeypatch):
    out, vqa, live, trainer = served
    trainer.checkpoint(10, adapters[0], epoch=1)
    import cxr_vqa.model

    tried = []

    def gone(vqa, path):
        tried.append(Path(path).name)
        raise FileNotFoundError(f"{path}/adapter_model.safetensors")  # the trainer's rotation deleted it

    monkeypatch.setattr(cxr_vqa.model, "use_adapter", gone)
    live.refresh()
    live.refresh()  # every answer looks: the one that failed is not tried again
    assert tried == ["checkpoint-10"] and live.served is None and not vqa.has_adapter  # nothing claimed
    monkeypatch.undo()
    trainer.checkpoint(20, adapters[1], epoch=2)  # what rotated it away
    live.refresh()
    assert live.served[0].name == "checkpoint-20" and live.label == "the epoch-2 checkpoint" and vqa.has_adapter


def cut_short(checkpoint: Path) -> None:
    """The checkpoint's weights file as a full disk or a killed copy leaves it: its first half."""
    weights = checkpoint / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def test_a_checkpoint_that_cannot_be_read_is_skipped_and_the_old_one_answers(served, adapters, expected, caplog):
    out, vqa, live, trainer = served
    trainer.checkpoint(10, adapters[0], epoch=1)
    assert set(ask(vqa)) == {BASE} and ask(vqa)[TUNED] == expected[0]
    trainer.checkpoint(20, adapters[1], epoch=2)
    cut_short(trainer.out / "checkpoint-20")
    with caplog.at_level("WARNING", logger="app_lib.demo"):
        assert ask(vqa)[TUNED] == expected[0] and ask(vqa)[TUNED] == expected[0]  # no error in anyone's answer
    assert live.state()["serving"] == "the epoch-1 checkpoint"
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "kept the epoch-1 checkpoint" in warned[0] and "checkpoint-20" in warned[0]
    trainer.checkpoint(30, adapters[1], epoch=3)  # a newer one is tried
    assert ask(vqa)[TUNED] == expected[1] and live.state()["serving"] == "the epoch-3 checkpoint"


def test_use_adapter_leaves_the_model_as_it_was_when_it_fails(served, adapters, expected, second_adapter_dir):
    from cxr_vqa.model import use_adapter
    from cxr_vqa.sources import ModelLoadError

    out, vqa, live, trainer = served
    base = ask(vqa)[BASE]
    trainer.checkpoint(10, adapters[0], epoch=1, complete=False)
    cut_short(trainer.out / "checkpoint-10")
    with pytest.raises(ModelLoadError, match="checkpoint-10"):  # the first attach: PEFT had wrapped the layers
        use_adapter(vqa, trainer.out / "checkpoint-10")
    assert not vqa.has_adapter and ask(vqa) == {BASE: base}
    import peft.peft_model

    def misfit(*args, **kwargs):
        raise RuntimeError("size mismatch for lora_A")  # after PEFT wrapped the base's layers in their LoRA ones

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(peft.peft_model, "set_peft_model_state_dict", misfit)
        with pytest.raises(ModelLoadError, match="does not fit"):
            use_adapter(vqa, adapters[0])
    assert not vqa.has_adapter and ask(vqa) == {BASE: base}  # those layers would change the base's answers
    use_adapter(vqa, adapters[0])
    assert ask(vqa) == {BASE: base, TUNED: expected[0]}
    with pytest.raises(ModelLoadError, match="checkpoint-10"):  # a swap
        use_adapter(vqa, trainer.out / "checkpoint-10")
    with pytest.raises(ModelLoadError, match="does not fit"):  # rank 4 for rank 8: nothing copied, not half
        use_adapter(vqa, second_adapter_dir)
    shutil.rmtree(trainer.out / "checkpoint-10")
    gone = Path(adapters[1]).parent / "gone"
    shutil.copytree(adapters[1], gone)
    from cxr_vqa.sources import resolve

    source = resolve(str(gone), "adapter")
    shutil.rmtree(gone)  # deleted after it was checked
    with pytest.raises(ModelLoadError, match="gone"):
        use_adapter(vqa, source)
    assert ask(vqa) == {BASE: base, TUNED: expected[0]} and vqa.adapters[TUNED] == adapters[0]


def test_the_watcher_loads_a_checkpoint_before_anyone_asks(served, adapters):
    out, vqa, live, trainer = served
    live.watch(every=0.1)
    trainer.checkpoint(10, adapters[0], epoch=1)
    deadline = time.monotonic() + 30
    while live.state()["serving"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live.state()["serving"] == "the epoch-1 checkpoint" and vqa.has_adapter
    assert vqa.adapters[TUNED] == str(trainer.out / "checkpoint-10")  # a str: a blind vote stores it in SQLite


def test_the_watcher_outlives_a_failed_look(served, adapters, monkeypatch):
    out, vqa, live, trainer = served
    looks = []

    def refresh():
        looks.append(True)
        if len(looks) == 1:
            raise RuntimeError("the disk went away for a moment")
        Live.refresh(live)

    Live = demo_models.Live
    monkeypatch.setattr(live, "refresh", refresh)
    watcher = live.watch(every=0.05)
    trainer.checkpoint(10, adapters[0], epoch=1)
    deadline = time.monotonic() + 30
    while live.state()["serving"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(looks) > 1 and watcher.is_alive() and live.state()["serving"] == "the epoch-1 checkpoint"


def test_the_note_the_map_and_the_vote_name_the_checkpoint_that_answered(served, adapters, tmp_path):
    out, vqa, live, trainer = served
    trainer.checkpoint(10, adapters[0], epoch=1)
    live.refresh()
    looks = []

    def notes(weights=None):  # the watcher swaps in checkpoint 20 after the answer, before its note is written
        looks.append(weights)
        if len(looks) == 2:
            trainer.checkpoint(20, adapters[1], epoch=2)
            live.refresh()
        return live.notes(weights)

    votes = VoteStore(tmp_path / "votes.sqlite")
    h = Handlers(vqa, votes, settings=SETTINGS, notes=notes)
    film = h.load_film(str(FILM))[1]
    *_, tuned_stats, chats, _ = list(h.ask(film, "Is there cardiomegaly?", None, 8, 0.0, 1.0))[-1]
    assert tuned_stats.endswith("answered by the epoch-1 checkpoint") and live.label == "the epoch-2 checkpoint"

    maps = Maps(vqa, votes, settings=SETTINGS, names=live.names)
    _, status = maps.show_maps(film, chats)  # drawn with checkpoint 20, for an answer of checkpoint 10
    assert "**Fine-tuned**: drawn with the epoch-2 checkpoint; the answer came from the epoch-1 checkpoint" in status
    assert "Base" not in status  # its weights did not change
    *_, chats, _ = list(h.ask(film, "Is the heart enlarged?", chats, 8, 0.0, 1.0))[-1]
    assert "drawn with" not in maps.show_maps(film, chats)[1]  # a map of an answer of these weights

    blind = Blind(vqa, votes, settings=SETTINGS, rng=random.Random(0))
    *_, trial, _ = blind.answer(film, "Is there cardiomegaly?", 8, 0.0, 1.0)
    trainer.checkpoint(30, adapters[0], epoch=3)
    live.refresh()  # before the vote is cast
    blind.vote("A", trial)
    (vote,) = votes.all()
    sources = {vote["model_a"]: vote["source_a"], vote["model_b"]: vote["source_b"]}
    assert sources == {BASE: vqa.base_name, TUNED: str(trainer.out / "checkpoint-20")}

    explain = maps.explain

    def explain_after_a_swap(*args):  # `/maps`: checkpoint 40 comes between the answer and its map
        trainer.checkpoint(40, adapters[1], epoch=4)
        live.refresh()
        return explain(*args)

    maps.explain = explain_after_a_swap
    found = maps.maps(str(FILM), "Is there cardiomegaly?")
    assert found[TUNED]["note"] == "drawn with the epoch-4 checkpoint; the answer came from the epoch-3 checkpoint"
    assert "note" not in found[BASE] and found[TUNED]["available"]


def test_blind_a_b_before_the_first_checkpoint_says_the_fine_tuned_model_is_training(served, adapters, tmp_path):
    import gradio as gr

    out, vqa, live, trainer = served
    blind = Blind(vqa, VoteStore(tmp_path / "votes.sqlite"), settings=SETTINGS, notes=live.notes)
    film = vqa.prepare_film(FILM)
    with pytest.raises(gr.Error) as refused:
        blind.answer(film, "Is there cardiomegaly?", 8, 0.0, 1.0)
    assert "still training (no checkpoint yet" in refused.value.message and "--adapter" not in refused.value.message
    trainer.checkpoint(10, adapters[0], epoch=1)
    live.refresh()
    assert blind.answer(film, "Is there cardiomegaly?", 8, 0.0, 1.0)[2].model_a in (BASE, TUNED)


def test_the_page_says_what_happens_in_words(served, adapters):
    out, vqa, live, trainer = served
    (out / "status.json").write_text(json.dumps({"running": ["train (seed 0)"]}))
    from finetune.demo import hold_lock  # the builder's lock, held as a running build holds it

    lock = hold_lock(out)
    try:
        assert "no checkpoint yet" in live.markdown() and "Preparing" in live.markdown()
        trainer.checkpoint(20, adapters[0], epoch=2)
        trainer.progress(step=25, epoch=2.5)
        live.refresh()
        text = live.markdown()
        assert "epoch 3 of 8" in text and "about 30 s left" in text and "epoch-2 checkpoint" in text
        state = live.state()
        assert (state["stage"], state["building"], state["epoch"], state["final"]) == (
            "train (seed 0)",
            True,
            2.5,
            False,
        )
    finally:
        lock.close()
    stopped = live.markdown()
    assert "The build stopped" in stopped and "Restart the app" in stopped and not live.state()["building"]

"""llava-1.5-7b-hf's real tokenizer and processor files (built from the npm package by `finetune/llama_tokenizer.py`):
they load as the Hub snapshot does and give Llama's known ids; an older snapshot (no `num_additional_image_tokens`, no
`extra_special_tokens`) is repaired at load, and the app still answers on it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from app_lib.handlers import Handlers
from app_lib.votes import VoteStore
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.images import load_film
from cxr_vqa.model import ModelLoadError, image_tokens, load_model, load_processor
from cxr_vqa.questions import clean_question
from cxr_vqa.template import add_question
from cxr_vqa.vqa import BASE, TUNED

FILM = Path(__file__).resolve().parents[1] / "assets" / "examples" / "cardiomegaly.png"
SETTINGS = GenerationSettings(max_new_tokens=8)


def edit_copy(src: str, dest: Path, **removed_or_set: dict) -> str:
    """A copy of checkpoint `src` with keys of its JSON files removed (value None) or set."""
    shutil.copytree(src, dest)
    for name, changes in removed_or_set.items():
        path = dest / f"{name}.json"
        config = json.loads(path.read_text())
        for key, value in changes.items():
            if value is None:
                del config[key]
            else:
                config[key] = value
        path.write_text(json.dumps(config))
    return str(dest)


@pytest.fixture(scope="module")
def old_snapshot_dir(llama_model_dir, tmp_path_factory):
    """The 7B model's files as Hub snapshots from before 2025 have them."""
    return edit_copy(
        llama_model_dir,
        tmp_path_factory.mktemp("old") / "snapshot",
        processor_config={"num_additional_image_tokens": None},
        tokenizer_config={"extra_special_tokens": None},
    )


def test_loads_like_the_7b_model_with_llamas_ids(llama_model_dir):
    processor = load_processor(llama_model_dir)
    tok = processor.tokenizer
    assert type(tok).__name__ == "TokenizersBackend"  # what transformers picks for a `llava` config
    assert len(tok) == 32_002 and (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 32001)
    assert processor.image_token_id == 32000 and tok.padding_side == "left"
    assert tok("Hello world!")["input_ids"] == [1, 15043, 3186, 29991]
    assert tok("Hello this is a test")["input_ids"] == [1, 15043, 445, 338, 263, 1243]
    assert tok("</s>", add_special_tokens=False)["input_ids"] == [2]
    emoji = tok("a 😀", add_special_tokens=False)["input_ids"]  # not in the vocabulary: one piece per UTF-8 byte
    assert tok.convert_ids_to_tokens(emoji[-4:]) == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert tok.decode(emoji) == "a 😀"
    assert tok.decode([29871, 3869, 29889, 2]) == " Yes.</s>" and tok.decode([3869, 29889, 2]) == "Yes.</s>"
    config = json.loads((Path(llama_model_dir) / "config.json").read_text())
    assert (config["text_config"]["vocab_size"], config["image_token_index"]) == (32064, 32000)
    assert image_tokens(processor) == 576


def test_old_snapshot_is_repaired_at_load_with_a_warning(old_snapshot_dir, caplog):
    from transformers import AutoProcessor

    stock = AutoProcessor.from_pretrained(old_snapshot_dir)  # what transformers alone makes of it
    assert image_tokens(stock) == 575 and "<image>" not in stock.tokenizer.all_special_tokens
    with caplog.at_level(logging.WARNING, logger="cxr_vqa.model"):
        processor = load_processor(old_snapshot_dir)
    assert image_tokens(processor) == 576
    assert any("num_additional_image_tokens" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("processor_config", "tokens"),
    [({"patch_size": 28}, 144), ({"vision_feature_select_strategy": "full"}, 577)],
)
def test_processor_at_odds_with_the_vision_tower_is_refused(llama_model_dir, tmp_path, processor_config, tokens):
    broken = edit_copy(llama_model_dir, tmp_path / "broken", processor_config=processor_config)
    with pytest.raises(ModelLoadError, match=f"expands a film to {tokens} image tokens.*gives 576 features") as err:
        load_processor(broken)
    assert "\n" not in str(err.value)


def test_app_on_an_old_snapshot_answers_a_question_typed_with_image_and_eos(
    old_snapshot_dir, llama_adapter_dir, tmp_path
):
    typed = "Is there <image> cardiomegaly?</s>"
    vqa = load_model(old_snapshot_dir, llama_adapter_dir, device="cpu")  # 4-bit, as the app serves
    # What cleaning by `all_special_tokens` alone would have let through: a second <image> for one film.
    assert "<image>" in clean_question(typed, vqa.processor.tokenizer.all_special_tokens)[0]
    handlers = Handlers(vqa, VoteStore(tmp_path / "votes.sqlite"), settings=SETTINGS)
    film = load_film(FILM, vqa.input_size)
    with pytest.warns(UserWarning) as caught:
        base_chat, tuned_chat, *_, chats, _ = list(handlers.ask(film, typed, None, 8, 0.0, 1.0))[-1]
    removed = [str(w.message) for w in caught if "special token" in str(w.message)]
    assert len(removed) == 2 and "'<image>'" in removed[0] and "'</s>'" in removed[1]
    conversation = add_question(None, "Is there cardiomegaly?")
    assert chats["base"][0] == conversation[0]
    expected = [a.text for a in vqa.answer([film.image] * 2, [conversation] * 2, [BASE, TUNED], SETTINGS)]
    assert [base_chat[-1]["content"], tuned_chat[-1]["content"]] == expected
    with pytest.warns(UserWarning, match="special token"):
        assert handlers.compare(str(FILM), typed) == tuple(expected)


def test_without_npm_or_its_registry_the_error_is_one_line(tmp_path, monkeypatch, run_cli):
    from finetune import tiny_model
    from finetune.llama_tokenizer import TokenizerSourceError, fetch_package

    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on it
    code, line = run_cli(tiny_model.main, [str(tmp_path / "out"), "--llama-tokenizer"])
    assert code == 2 and "npm not found" in line and "apt-get install npm" in line
    fake_npm = tmp_path / "npm"  # an npm that cannot reach its registry
    fake_npm.write_text("#!/bin/sh\necho 'npm error code ENOTFOUND' >&2\nexit 1\n")
    fake_npm.chmod(0o755)
    with pytest.raises(TokenizerSourceError, match=r"failed \(npm error code ENOTFOUND\)") as err:
        fetch_package(tmp_path / "cache")
    assert "\n" not in str(err.value)

"""`findings_alone` (finetune/examples.py): a row that opens with a findings turn trains as two examples, the turn
alone with its film and the rest with the same film, so no yes/no answer is trained with the findings text before
it; every answer is still trained once, and rows without such a turn are trained whole."""

from __future__ import annotations

import pytest
import torch
from test_train import config, contract_row, save_dataset

from cxr_vqa.contract import check_row, open_splits
from cxr_vqa.findings import FINDINGS_KIND, is_findings_question
from cxr_vqa.template import conversation_from_qa
from finetune.collator import AnswerOnlyCollator
from finetune.examples import FINDINGS, REST, WHOLE, FindingsAlone
from finetune.train import build_trainer, train

NO_CACHE = ["--eval_strategy", "no", "--load_in_4bit", "false", "--dataloader_num_workers", "0"]


@pytest.fixture(scope="module")
def train_split(synthetic_data):
    return open_splits(synthetic_data)["train"]


def questions(row: dict) -> list[str]:
    return [part["text"] for turn in row["messages"] if turn["role"] == "user"
            for part in turn["content"] if part["type"] == "text"]  # fmt: skip


def test_a_row_that_opens_with_findings_becomes_two_valid_rows_that_keep_every_turn(train_split):
    examples = FindingsAlone(train_split)
    opening = [i for i, row in enumerate(train_split) if row["qa"][0]["kind"] == FINDINGS_KIND and len(row["qa"]) > 1]
    assert opening and examples.split == len(opening) and len(examples) == len(train_split) + len(opening)
    for n in range(len(examples)):
        example, (i, part) = examples[n], examples.parts[n]
        check_row(example)  # one image, in the first turn; turns alternate
        assert example["messages"] == conversation_from_qa([(p["question"], p["answer"]) for p in example["qa"]])
        kinds = [p["kind"] for p in example["qa"]]
        if part == FINDINGS:
            assert kinds == [FINDINGS_KIND]
        elif part == REST:
            assert FINDINGS_KIND not in kinds and not any(map(is_findings_question, questions(example)))
            whole = train_split[i]
            assert examples[n - 1]["qa"] + example["qa"] == whole["qa"]  # the two parts are the row, in order
        else:
            assert i not in opening
    assert {part for _, part in examples.parts} == {FINDINGS, REST} | ({WHOLE} if len(opening) < len(train_split)
                                                                        else set())  # fmt: skip


def test_rows_without_a_findings_turn_or_with_nothing_after_it_train_whole(tmp_path):
    rows = [contract_row(0, [("Is there cardiomegaly?", "Yes."), ("Is there edema?", "No.")]),
            contract_row(1, [("What are the findings on this chest X-ray?", "The heart is enlarged.")]),
            contract_row(2, [("Is there edema?", "No."), ("What are the findings on this chest X-ray?", "Clear.")])]
    data = save_dataset(tmp_path / "data", {"train": rows})
    examples = FindingsAlone(open_splits(data)["train"])
    assert examples.parts == [(0, WHOLE), (1, WHOLE), (2, WHOLE)] and examples.split == 0


@pytest.mark.parametrize("cached", [False, True], ids=["collated", "film cache"])
def test_training_sees_each_answer_once_and_no_yes_no_turn_after_a_findings_text(
    tiny_model_dir, synthetic_data, train_split, tmp_path, cached
):
    extra = [*NO_CACHE, "--findings_alone", *(["--cache_film_features"] if cached else [])]
    trainer, stats = build_trainer(*config(tiny_model_dir, synthetic_data, tmp_path / "out", *extra))
    examples = FindingsAlone(train_split)
    assert len(trainer.train_dataset) == len(examples) and stats["findings_alone"] == examples.split
    batch = trainer.data_collator([{"row": n} for n in range(len(examples))])
    whole = AnswerOnlyCollator(trainer.processing_class)([train_split[i] for i in range(len(train_split))])
    # every answer token trained once: the split rows' answer tokens add up to the whole rows'
    assert int((batch["labels"] != -100).sum()) == int((whole["labels"] != -100).sum())
    tokenizer = trainer.processing_class.tokenizer
    for n, (_, part) in enumerate(examples.parts):
        text = tokenizer.decode(batch["input_ids"][n][batch["attention_mask"][n].bool()])
        asked = [q for q in questions(examples[n]) if q in text]
        assert len(asked) == len(questions(examples[n]))  # the example's own conversation, all of it
        if part == REST:
            assert not any(is_findings_question(q) for q in asked)
    assert torch.equal(batch["input_ids"][0][: int(batch["attention_mask"][0].sum())],
                       AnswerOnlyCollator(trainer.processing_class)([examples[0]])["input_ids"][0])  # fmt: skip


def test_a_findings_alone_run_trains_and_says_so_in_its_model_card(tiny_model_dir, synthetic_data, tmp_path):
    extra = [*NO_CACHE, "--findings_alone", "--cache_film_features", "--max_steps", "2",
             "--per_device_train_batch_size", "2"]  # fmt: skip
    trainer = train(*config(tiny_model_dir, synthetic_data, tmp_path / "out", *extra))
    assert trainer.state.global_step == 2
    card = (tmp_path / "out" / "README.md").read_text()
    assert "- findings turn: trained alone with its film (" in card and " training rows split in two)" in card


def test_without_the_film_cache_a_findings_alone_run_evaluates_its_validation_rows(tiny_model_dir, synthetic_data,
                                                                                 tmp_path):  # fmt: skip
    extra = ["--load_in_4bit", "false", "--dataloader_num_workers", "0", "--findings_alone", "--max_steps", "1",
             "--per_device_train_batch_size", "2", "--eval_strategy", "steps", "--eval_steps", "1"]  # fmt: skip
    trainer = train(*config(tiny_model_dir, synthetic_data, tmp_path / "out", *extra))
    assert any("eval_loss" in entry for entry in trainer.state.log_history)

"""The answer-only collator on the tiny checkpoint's processor: exact label positions, padding, image tokens, and
that the tokens it trains on are the tokens the model core serves."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from cxr_vqa.errors import UserError
from cxr_vqa.model import load_processor
from cxr_vqa.template import add_question, conversation_from_qa
from cxr_vqa.vqa import encode, render
from finetune.collator import IGNORE_INDEX, AnswerOnlyCollator

TWO_TURNS = [("Is there cardiomegaly?", "Yes."), ("What abnormalities are seen?", "Left lower lobe consolidation.")]
IMAGE_TOKENS = 576  # 336 px / 14 px patches, squared


def film(shade: int) -> Image.Image:
    img = Image.new("RGB", (336, 336), (shade,) * 3)
    img.paste((255 - shade,) * 3, (90, 80, 240, 280))
    return img


def row(pairs, shade=60) -> dict:
    return {"messages": conversation_from_qa(pairs), "images": [film(shade)], "qa": [], "study_id": "s1"}


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return load_processor(tiny_model_dir)


def tokens(processor, text: str) -> list[int]:
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_two_turn_row_trains_exactly_the_answers_and_their_eos(processor):
    batch = AnswerOnlyCollator(processor)([row(TWO_TURNS)])
    (q1, a1), (q2, a2) = TWO_TURNS
    image = [processor.tokenizer.convert_tokens_to_ids("<image>")] * IMAGE_TOKENS
    # The expected sequence, built piece by piece: (tokens, trained?) in the template's order.
    pieces = [
        ([processor.tokenizer.bos_token_id], False),
        (tokens(processor, "USER: "), False),
        (image, False),
        (tokens(processor, f"\n{q1} ASSISTANT:"), False),
        (tokens(processor, f" {a1}</s>"), True),
        (tokens(processor, f"USER: {q2} ASSISTANT:"), False),
        (tokens(processor, f" {a2}</s>"), True),
    ]
    expected_ids = [t for ids, _ in pieces for t in ids]
    expected_labels = [t if trained else IGNORE_INDEX for ids, trained in pieces for t in ids]

    assert batch["input_ids"][0].tolist() == expected_ids
    assert batch["labels"][0].tolist() == expected_labels
    # Spelled out: positions 0 .. (BOS + "USER: " + 576 image tokens + first question) are masked, then the first
    # answer and its </s>, then the second question masked, then the second answer and its </s>.
    start1 = sum(len(ids) for ids, _ in pieces[:4])
    start2 = start1 + len(pieces[4][0]) + len(pieces[5][0])
    trained = (batch["labels"][0] != IGNORE_INDEX).nonzero().flatten().tolist()
    assert trained == list(range(start1, start1 + len(pieces[4][0]))) + list(range(start2, len(expected_ids)))
    assert start1 > IMAGE_TOKENS
    ids = batch["input_ids"][0]
    answers = [ids[start1 : start1 + len(pieces[4][0])], ids[start2:]]
    assert [processor.tokenizer.decode(a) for a in answers] == [" Yes.</s>", " Left lower lobe consolidation.</s>"]


def test_batch_pads_right_masks_padding_and_image_tokens(processor):
    rows = [row(TWO_TURNS, shade=40), row(TWO_TURNS[:1], shade=200)]
    batch = AnswerOnlyCollator(processor)(rows)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")

    assert batch["pixel_values"].shape == (2, 3, 336, 336)
    assert (ids == image_id).sum(dim=1).tolist() == [IMAGE_TOKENS, IMAGE_TOKENS]  # nothing truncated
    assert labels[ids == image_id].eq(IGNORE_INDEX).all()
    short = int(mask[1].sum())
    assert mask[1, :short].all() and not mask[1, short:].any()  # right padding: real tokens first
    assert ids[1, short:].eq(processor.tokenizer.pad_token_id).all()
    assert labels[mask == 0].eq(IGNORE_INDEX).all()
    eos = processor.tokenizer.eos_token_id
    assert [(labels[i] == eos).sum().item() for i in range(2)] == [2, 1]  # every answer's </s> is trained


def test_training_tokens_are_the_served_tokens(processor):
    """Same text, same ids as the model core's render+encode; the inference prompt is a prefix of the training row."""
    image = film(90)
    batch = AnswerOnlyCollator(processor)([{"messages": conversation_from_qa(TWO_TURNS), "images": [image]}])
    text = render(processor, conversation_from_qa(TWO_TURNS), add_generation_prompt=False)
    served = encode(processor, [image], [text])
    assert torch.equal(batch["input_ids"], served["input_ids"])
    assert torch.equal(batch["pixel_values"], served["pixel_values"])

    history = conversation_from_qa(TWO_TURNS[:1])
    prompt = render(processor, add_question(history, TWO_TURNS[1][0]), add_generation_prompt=True)
    prompt_ids = encode(processor, [image], [prompt])["input_ids"][0]
    assert torch.equal(batch["input_ids"][0][: len(prompt_ids)], prompt_ids)
    # ... and the first trained token of the second answer comes right after that prompt.
    assert batch["labels"][0][len(prompt_ids) - 1] == IGNORE_INDEX
    assert batch["labels"][0][len(prompt_ids)] != IGNORE_INDEX


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(images=[film(1), film(2)]), "exactly one image"),
        (lambda r: r.update(messages=r["messages"][:1]), "at least one user question"),
        (lambda r: r.update(messages=r["messages"][1:] + r["messages"][:1]), "turn 0"),
        (lambda r: r.update(messages=r["messages"] + conversation_from_qa(TWO_TURNS)), "exactly once"),
        (lambda r: r.update(messages=r["messages"] + [r["messages"][2]]), "last turn"),
    ],
)
def test_rows_off_contract_fail_with_one_line(processor, change, message):
    bad = row(TWO_TURNS)
    change(bad)
    with pytest.raises(UserError, match=message) as err:
        AnswerOnlyCollator(processor)([bad])
    assert "\n" not in str(err.value)

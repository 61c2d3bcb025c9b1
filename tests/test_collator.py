"""The answer-only collator on both tokenizers (the tiny checkpoint's and llava-1.5-7b-hf's real one): exact label
positions, padding, image tokens, and that the tokens it trains on are the tokens the model core serves.

Expected positions come from tokenizing prefixes of the whole rendered text, never pieces on their own: a real
Llama tokenizer puts "▁" in front of every text it is given alone, so `" Yes.</s>"` alone is 4 ids and 3 in context.
"""

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
def processor(checkpoint):
    return load_processor(checkpoint[0])


def answer_spans(processor, image, pairs) -> list[tuple[int, int]]:
    """[start, end) token positions of each ` {answer}</s>` in the rendered row: the ids of the text before the
    answer, and of the text up to its `</s>`, counted in the whole row's encoding."""
    text = render(processor, conversation_from_qa(pairs), add_generation_prompt=False)
    full = encode(processor, [image], [text])["input_ids"][0].tolist()
    spans, searched = [], 0
    for _, answer in pairs:
        start = text.index(f"ASSISTANT: {answer}</s>", searched) + len("ASSISTANT:")
        searched = start + len(f" {answer}</s>")
        cuts = [encode(processor, [image], [text[:cut]])["input_ids"][0].tolist() for cut in (start, searched)]
        assert all(full[: len(ids)] == ids for ids in cuts), "an answer's edge is not a token boundary"
        spans.append((len(cuts[0]), len(cuts[1])))
    return spans


def test_two_turn_row_trains_exactly_the_answers_and_their_eos(processor):
    image = film(60)
    batch = AnswerOnlyCollator(processor)([{**row(TWO_TURNS), "images": [image]}])
    (s1, e1), (s2, e2) = answer_spans(processor, image, TWO_TURNS)
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()

    # BOS, "USER: ", the 576 image tokens and the first question are masked, then the first answer and its </s>,
    # then "USER: {q2} ASSISTANT:" masked, then the second answer and its </s> (the row's last token).
    trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert trained == list(range(s1, e1)) + list(range(s2, e2))
    assert e2 == len(ids) and s1 > ids.index(processor.image_token_id) + IMAGE_TOKENS - 1
    assert [labels[i] for i in trained] == [ids[i] for i in trained]
    eos = processor.tokenizer.eos_token_id
    assert ids[e1 - 1] == ids[e2 - 1] == eos and ids[s1:e1].count(eos) == ids[s2:e2].count(eos) == 1
    answers = [processor.tokenizer.decode(ids[s:e], skip_special_tokens=True).strip() for s, e in ((s1, e1), (s2, e2))]
    assert answers == [a for _, a in TWO_TURNS]


def test_real_tokenizer_trains_yes_as_one_piece_then_eos(llama_model_dir):
    """llava-1.5-7b-hf's ids: after `ASSISTANT:` (... 13566, 29901) the answer starts with "▁Yes" (3869), with no
    separate space token, and ends with </s> (2)."""
    processor = load_processor(llama_model_dir)
    batch = AnswerOnlyCollator(processor)([row(TWO_TURNS)])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert ids[first - 2 : first + 3] == [13566, 29901, 3869, 29889, 2]  # "ANT", ":", "▁Yes", ".", "</s>"
    assert labels[first : first + 4] == [3869, 29889, 2, IGNORE_INDEX]


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

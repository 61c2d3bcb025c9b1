"""P(yes) comes from the first decoding step of the same batched generate that writes the answers: it must equal
what a plain single-row forward gives for each row, base and adapter rows mixed, short and long prompts mixed."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from cxr_vqa.answers import Answer, YesNoIds, p_yes
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.model import load_model
from cxr_vqa.template import add_question, assistant_turn
from cxr_vqa.vqa import BASE, TUNED

SETTINGS = GenerationSettings(max_new_tokens=4)


def film(shade: int) -> Image.Image:
    image = Image.new("RGB", (336, 336), (shade, shade, shade))
    ImageDraw.Draw(image).rectangle((100, 120, 240, 300), fill=(255 - shade,) * 3)
    return image


@pytest.fixture(scope="module")
def vqa(checkpoint):
    """Once with the tiny byte-level tokenizer, once with llava-1.5-7b-hf's Llama tokenizer."""
    return load_model(*checkpoint, load_in_4bit=False, device="cpu")


def single_row_p_yes(vqa, image, conversation, model) -> float:
    inputs = vqa._inputs([image], [conversation], [model])
    with torch.inference_mode():
        logits = vqa.model(**inputs).logits[:, -1]
    return p_yes(logits, vqa.yes_no)[0]


def test_yes_no_ids_cover_both_casings_and_the_space_piece(vqa):
    tok = vqa.processor.tokenizer
    ids = YesNoIds.from_tokenizer(tok)
    spelled = {tok.decode([i]).strip() for i in ids.yes} | {tok.decode([i]).strip() for i in ids.no}
    assert spelled <= {"Yes", "yes", "YES", "No", "no", "NO"} and {"Yes", "No"} <= spelled
    # the piece an answer starts with after "ASSISTANT:" in the training text is one of them
    encoded = tok("ASSISTANT: Yes.", add_special_tokens=False)["input_ids"]
    assert any(i in ids.yes for i in encoded)


def test_batched_p_yes_equals_a_single_row_forward_row_by_row(vqa):
    short = add_question(None, "Is there cardiomegaly?")
    long = add_question(short + [assistant_turn("No, the heart is normal in size.")], "Is there a pleural effusion?")
    rows = [(film(40), short, BASE), (film(90), long, TUNED), (film(140), short, TUNED), (film(200), long, BASE)]
    answers = vqa.answer(*map(list, zip(*rows, strict=True)), SETTINGS)
    alone = [single_row_p_yes(vqa, image, conv, model) for image, conv, model in rows]
    assert [a.p_yes for a in answers] == pytest.approx(alone, abs=1e-5)
    assert len({round(a.p_yes, 6) for a in answers}) > 1  # the rows really differ, so the check can fail


def test_streaming_gives_the_same_answers_and_p_yes(vqa):
    image, conv = film(70), add_question(None, "Is there a pneumothorax?")
    steps: list[list[str]] = []
    streamed = vqa.answer([image, image], [conv, conv], [BASE, TUNED], SETTINGS, on_text=steps.append)
    assert len(steps) >= 2 and all(len(step) == 2 for step in steps)
    assert streamed == vqa.answer([image, image], [conv, conv], [BASE, TUNED], SETTINGS)
    assert steps[-1] == [a.text for a in streamed]


def test_compare_answers_every_model_by_name(vqa):
    image, conv = film(120), add_question(None, "Is there edema?")
    answers = vqa.compare(image, conv, SETTINGS)
    assert list(answers) == vqa.model_names == [BASE, TUNED]
    assert all(isinstance(a, Answer) and 0.0 <= a.p_yes <= 1.0 for a in answers.values())
    assert answers[BASE].text == vqa.answer([image], [conv], [BASE], SETTINGS)[0].text


def test_an_unknown_model_name_is_refused(vqa):
    with pytest.raises(ValueError, match="unknown model"):
        vqa.answer([film(10)], [add_question(None, "x")], ["nope"], SETTINGS)

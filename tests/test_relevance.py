"""Relevance maps (`cxr_vqa.relevance` through `VQAModel.relevance`) on the tiny checkpoint, whose vision tower has
the 7B's geometry (336 px, 14 px patches: 24 x 24 = 576 image tokens): shape and normalisation, a row's map alone and
inside a mixed base/adapter batch, the forward it runs is the model's own, and visual attention sinks found as Kang
et al. define them (on hidden states built with the 7B's 4,096 dimensions, and injected into the tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cxr_vqa import relevance
from cxr_vqa.model import load_model
from cxr_vqa.relevance import RelevanceMap, grid_side, overlay, sink_tokens
from cxr_vqa.template import add_question, assistant_turn
from cxr_vqa.vqa import BASE, TUNED


@pytest.fixture(scope="module")
def vqa(tiny_model_dir, random_adapter_dir):
    return load_model(tiny_model_dir, random_adapter_dir, load_in_4bit=False, device="cpu")


def film(shift: int = 0) -> Image.Image:
    image = Image.new("RGB", (336, 336), (30, 30, 30))
    ImageDraw.Draw(image).ellipse((40 + shift, 60, 200 + shift, 300), fill=(210, 210, 210))
    return image


QUESTION = add_question(None, "Is there a pleural effusion?")


def test_a_map_per_row_on_the_patch_grid_with_its_peak_at_one(vqa):
    maps = vqa.relevance([film(), film()], [QUESTION, QUESTION], ["Yes, there is.", "No"], [BASE, TUNED])
    assert len(maps) == 2 and maps[0].grid.shape == (24, 24) == maps[1].attention.shape
    for found in maps:
        for grid in (found.grid, found.attention):
            assert grid.dtype == np.float32 and grid.min() >= 0 and grid.max() == pytest.approx(1.0)
        assert found.sinks == () and 0 < found.first_peak < 8  # a 64-wide model: activation/RMS <= sqrt(64)
        top = found.top(3)
        assert len(set(top)) == 3 and found.grid.ravel()[top[0]] == pytest.approx(1.0)
    assert not np.allclose(maps[0].grid, maps[1].grid)  # the adapter changes where the answer comes from


def test_a_row_gets_the_same_map_alone_and_inside_a_mixed_batch(vqa):
    rows = [  # different films, conversations and answer lengths: the batch is left-padded
        (film(), QUESTION, "Yes, there is a small left pleural effusion with a meniscus.", BASE),
        (film(60), QUESTION, "No.", TUNED),
        (film(30), [*QUESTION[:1], assistant_turn("No."), {"role": "user", "content": "Is the heart enlarged?"}],
         "Yes.", TUNED),
    ]  # fmt: skip
    together = vqa.relevance(*[list(column) for column in zip(*rows, strict=True)])
    for (image, conversation, answer, model), mixed in zip(rows, together, strict=True):
        (alone,) = vqa.relevance([image], [conversation], [answer], [model])
        np.testing.assert_allclose(mixed.grid, alone.grid, atol=1e-4)
        np.testing.assert_allclose(mixed.attention, alone.attention, atol=1e-4)


def test_the_maps_inputs_are_built_under_the_models_lock(vqa, monkeypatch):
    """A demo attaches its first adapter under that lock, replacing `vqa.model`: inputs built outside it could name
    an adapter, a device or a dtype of another model than the one they run on."""
    owned = []
    for name in ("_inputs", "_answer_tokens"):
        real = getattr(vqa, name)

        def spy(*args, real=real, **kwargs):
            owned.append(vqa.lock._is_owned())  # by this thread: a use_adapter elsewhere waits for the map
            return real(*args, **kwargs)

        monkeypatch.setattr(vqa, name, spy)
    vqa.relevance([film()], [QUESTION], ["Yes."], [TUNED])
    assert owned == [True, True]


def test_the_maps_forward_is_the_models_own_and_sdpa_comes_back(vqa):
    texts = [[*QUESTION, assistant_turn("Yes, there is a large one on the left.")], [*QUESTION, assistant_turn("No")]]
    batch = vqa._inputs([film(), film(40)], texts, [BASE, TUNED], add_generation_prompt=False)
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        expected = vqa.model(**batch, position_ids=positions).logits
        with relevance._relevance_mode(vqa.model):
            got = vqa.model(**batch, position_ids=positions).logits
    real = batch["attention_mask"].bool()  # padding rows differ (eager vs sdpa masks), and nobody reads them
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=1e-4)
    assert vqa.model.get_base_model().config.text_config._attn_implementation == "sdpa"


@pytest.mark.parametrize("answer", ["Yes, there is a pleural effusion.", "No.", ""])
def test_the_answer_span_is_the_answer_and_its_end(checkpoint, answer):
    model_dir, adapter_dir = checkpoint
    vqa = load_model(model_dir, adapter_dir, load_in_4bit=False, device="cpu")
    count = vqa._answer_tokens(QUESTION, answer)
    batch = vqa._inputs([film()], [[*QUESTION, assistant_turn(answer)]], [TUNED], add_generation_prompt=False)
    span = vqa.processor.tokenizer.decode(batch["input_ids"][0, -count:])
    assert span.strip() == f"{answer}</s>".strip() or span.replace(" ", "") == f"{answer}</s>".replace(" ", "")


def test_visual_sinks_at_the_7b_geometry_are_the_tokens_massive_in_the_first_tokens_dimensions():
    """LLaVA-1.5-7B: 4,096 dimensions, a BOS token, 5 prompt tokens, 576 image tokens; the massive dimensions of
    LLaMA-2 (1415, 2533) appear from an early layer on (Kang et al. 2025), in BOS and in a few image tokens."""
    torch.manual_seed(0)
    n, hidden, image = 1 + 5 + 576 + 20, 4096, torch.arange(6, 6 + 576)
    states = [torch.randn(n, hidden) for _ in range(4)]
    for layer in states[2:]:
        layer[0, [1415, 2533]] = torch.tensor([600.0, -450.0])  # the first token's massive activations
        layer[6 + 7, 1415] = 300.0  # image tokens 7 and 400 share them: sinks
        layer[6 + 400, 2533] = -280.0
        layer[6 + 100, 17] = 300.0  # massive, but in a dimension the first token does not use: not a sink
    states[0][6 + 250, 1415] = 900.0  # in the embeddings only: nothing is massive there yet, left out
    sinks, first_peak = sink_tokens(states, 0, image)
    assert sinks == [7, 400] and first_peak > relevance.SINK_TAU
    assert sink_tokens(states[:2], 0, image)[0] == []  # before the massive dimensions appear
    side, skip = grid_side(len(image))
    assert (side, skip) == (24, 0) and grid_side(577) == (24, 1)


def test_a_sink_injected_into_the_tiny_model_is_left_out_of_its_map(vqa, monkeypatch):
    """A visual sink made the way LLaVA's arise: after the first decoder layer, BOS and one image token get a massive
    activation in one dimension. A 64-wide model's activation/RMS cannot pass sqrt(64) = 8, so Kang et al.'s 20 (for
    4,096 dimensions) is lowered to 6 here: the check, not the threshold, is under test."""
    monkeypatch.setattr(relevance, "SINK_TAU", 6.0)
    sink, dim = 77, 5
    layer = vqa.model.get_base_model().model.language_model.layers[0]

    def massive(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        ids = batch_ids[0]
        first_image = int((ids == vqa.processor.image_token_id).nonzero()[0])
        hidden = hidden.clone()
        hidden[0, 0, dim] = 400.0
        hidden[0, first_image + sink, dim] = 300.0
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    batch_ids = vqa._inputs([film()], [[*QUESTION, assistant_turn("Yes.")]], [TUNED], False)["input_ids"]
    (plain,) = vqa.relevance([film()], [QUESTION], ["Yes."], [TUNED])
    handle = layer.register_forward_hook(massive)
    try:
        (found,) = vqa.relevance([film()], [QUESTION], ["Yes."], [TUNED])
    finally:
        handle.remove()
    assert plain.sinks == () and found.sinks == (sink,)
    assert found.grid.ravel()[sink] == 0.0 and found.grid.max() == pytest.approx(1.0)
    assert found.attention.ravel()[sink] > 0  # raw attention keeps it: only the relevance map leaves it out


def test_the_overlay_is_the_film_with_the_map_on_its_patches():
    image = film()
    grid = np.zeros((24, 24), np.float32)
    grid[3, 20] = 1.0
    picture = np.asarray(overlay(image, grid)).astype(int)
    assert picture.shape == (336, 336, 3)
    hot, cold = picture[3 * 14 + 7, 20 * 14 + 7], picture[3 * 14 + 7, 2 * 14 + 7]
    assert hot.sum() > cold.sum() + 200  # the hot patch is bright, its neighbours in the same row dark


def test_an_empty_map_stays_zero():
    found = RelevanceMap(relevance.normalise(np.zeros((2, 2))), np.zeros((2, 2)), ())
    assert found.grid.max() == 0 and found.side == 2


def test_a_base_without_adapter_maps_without_touching_its_weights(tiny_model_dir):
    vqa = load_model(tiny_model_dir, load_in_4bit=False, device="cpu")
    flags = {name: p.requires_grad for name, p in vqa.model.named_parameters()}
    (found,) = vqa.relevance([film()], [QUESTION], ["Yes."], [BASE])
    assert found.grid.shape == (24, 24) and found.grid.max() == pytest.approx(1.0)
    assert {name: p.requires_grad for name, p in vqa.model.named_parameters()} == flags and any(flags.values())
    assert all(p.grad is None for p in vqa.model.parameters())

"""The model core on the tiny checkpoint: 4-bit loading, one template for training and serving, mixed-adapter
batches, streaming, and one-line errors for unusable models and adapters. The template and batch tests run on both
tokenizers (the `checkpoint` fixture): the tiny one and llava-1.5-7b-hf's real one."""

from __future__ import annotations

import re
import shutil

import bitsandbytes as bnb
import pytest
import torch
from PIL import Image

from cxr_vqa.generation import GenerationSettings
from cxr_vqa.model import (
    LANGUAGE_LORA_TARGETS,
    ModelLoadError,
    load_base_model,
    load_model,
    load_processor,
    pick_device,
)
from cxr_vqa.template import add_question, assistant_turn, conversation_from_qa
from cxr_vqa.vqa import BASE, TUNED, encode, render

SETTINGS = GenerationSettings(max_new_tokens=8)


def film(shade: int) -> Image.Image:
    img = Image.new("RGB", (336, 336), (shade, shade, shade))
    img.paste((255 - shade,) * 3, (100, 100, 220, 260))
    return img


@pytest.fixture(scope="module")
def vqa(checkpoint):
    return load_model(checkpoint[0], adapter=checkpoint[1], load_in_4bit=True, device="cpu")


def test_4bit_quantizes_the_language_model_only(tiny_model_dir):
    model = load_base_model(tiny_model_dir, load_in_4bit=True, device="cpu")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    quantized = {n for n, m in linears.items() if isinstance(m, bnb.nn.Linear4bit)}
    language = {n for n in linears if ".language_model." in n}
    assert language and quantized == language
    assert not any("vision_tower" in n or "multi_modal_projector" in n or n == "lm_head" for n in quantized)
    assert {"lm_head", "model.multi_modal_projector.linear_1"} <= set(linears) - quantized


def test_unquantized_load_has_no_4bit_layers(tiny_model_dir):
    model = load_base_model(tiny_model_dir, load_in_4bit=False, device="cpu")
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert model.dtype == torch.float32


def test_training_text_and_inference_prompt_agree(checkpoint):
    processor = load_processor(checkpoint[0])
    qa = [("Is there cardiomegaly?", "Yes."), ("What abnormalities are seen?", "Enlarged heart.")]
    full = render(processor, conversation_from_qa(qa), add_generation_prompt=False)
    assert full == (
        "USER: <image>\nIs there cardiomegaly? ASSISTANT: Yes.</s>"
        "USER: What abnormalities are seen? ASSISTANT: Enlarged heart.</s>"
    )
    first = render(processor, add_question(None, qa[0][0]), add_generation_prompt=True)
    history = add_question(add_question(None, qa[0][0]) + [assistant_turn(qa[0][1])], qa[1][0])
    second = render(processor, history, add_generation_prompt=True)
    assert full.startswith(first) and full.startswith(second)

    # Same prefix in tokens too (with 576 image tokens expanded), not only in characters.
    image = film(90)
    ids_full = encode(processor, [image], [full])["input_ids"][0].tolist()
    for prompt in (first, second):
        ids_prompt = encode(processor, [image], [prompt])["input_ids"][0].tolist()
        assert ids_full[: len(ids_prompt)] == ids_prompt
    assert ids_full.count(processor.image_token_id) == 576


def test_mixed_adapter_batch_equals_base_only_and_adapter_only_runs(vqa):
    images = [film(60), film(120), film(180)]
    convs = [add_question(None, q) for q in ("Is there cardiomegaly?", "Is there edema?", "What is seen?")]
    mixed = [a.text for a in vqa.answer(images, convs, [BASE, TUNED, BASE], SETTINGS)]
    base_only = [a.text for a in vqa.answer(images, convs, [BASE] * 3, SETTINGS)]
    tuned_only = [a.text for a in vqa.answer(images, convs, [TUNED] * 3, SETTINGS)]
    assert mixed == [base_only[0], tuned_only[1], base_only[2]]
    assert base_only != tuned_only  # the adapter really changes the answers, so the check above can fail

    with vqa.model.disable_adapter():  # PEFT's own way of running the plain base
        plain = vqa.processor.batch_decode(
            vqa.model.generate(
                **vqa._inputs(images[:1], convs[:1], None) | {"adapter_names": None},
                **vqa._generate_kwargs(SETTINGS),
            )[:, -SETTINGS.max_new_tokens :],
            skip_special_tokens=True,
        )
    assert plain[0].strip() == base_only[0]


def test_rows_of_different_lengths_batch_like_single_rows(vqa):
    """Follow-up questions give the two panes different histories: left padding must not change answers."""
    image = film(100)
    short = add_question(None, "Is there edema?")
    long = add_question(short + [assistant_turn("No, the lungs are clear and the heart is normal.")], "Any effusion?")
    batched = [a.text for a in vqa.answer([image, image], [short, long], [BASE, TUNED], SETTINGS)]
    alone = [
        vqa.answer([image], [short], [BASE], SETTINGS)[0].text,
        vqa.answer([image], [long], [TUNED], SETTINGS)[0].text,
    ]
    assert batched == alone


def test_stream_ends_with_the_generated_answers(vqa):
    image, conv = film(80), add_question(None, "Is there a pneumothorax?")
    steps: list[dict[str, str]] = []
    answers = vqa.compare(image, conv, SETTINGS, on_text=steps.append)
    assert len(steps) >= 2 and all(list(step) == [BASE, TUNED] for step in steps)
    assert steps[-1] == {m: a.text for m, a in answers.items()}
    direct = vqa.answer([image] * 2, [conv] * 2, [BASE, TUNED], SETTINGS)
    assert [a.text for a in answers.values()] == [a.text for a in direct]
    assert all(len(a[BASE]) <= len(b[BASE]) for a, b in zip(steps, steps[1:], strict=False))


def test_compare_without_adapter_returns_no_tuned_answer(tiny_model_dir):
    vqa = load_model(tiny_model_dir, load_in_4bit=False, device="cpu")
    answers = vqa.compare(film(70), add_question(None, "Is the heart enlarged?"), settings=SETTINGS)
    assert list(answers) == [BASE] and isinstance(answers[BASE].text, str)
    with pytest.raises(ValueError, match="no adapter is loaded"):
        vqa.answer([film(70)], [add_question(None, "x")], [TUNED], SETTINGS)


def test_sampling_settings_are_validated():
    assert GenerationSettings().generate_kwargs() == {"max_new_tokens": 128, "do_sample": False}
    assert GenerationSettings(temperature=0.7, top_p=0.9).generate_kwargs()["do_sample"] is True
    for bad in ({"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}):
        with pytest.raises(ValueError):
            GenerationSettings(**bad)


@pytest.mark.parametrize(
    "name, message",
    [
        ("./no/such/model", "not found"),
        ("no-such-model-anywhere", "not found"),
        ("nobody/llava-that-does-not-exist", "HF_HUB_OFFLINE=1"),
    ],
)
def test_unknown_model_is_one_line_error(name, message):
    with pytest.raises(ModelLoadError, match=message) as err:
        load_model(name, load_in_4bit=False, device="cpu")
    assert "\n" not in str(err.value)


def test_checkpoint_without_processor_files(tiny_model_dir, tmp_path):
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(f"{tiny_model_dir}/{f}", weights_only / f)
    with pytest.raises(ModelLoadError, match="processor") as err:
        load_model(str(weights_only), load_in_4bit=False, device="cpu")
    assert "\n" not in str(err.value)

    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path), load_in_4bit=False, device="cpu")


def test_adapter_for_another_base_is_refused(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from finetune.tiny_model import build_tiny_llava

    wider = build_tiny_llava(tmp_path / "wider", hidden=128)
    foreign = tmp_path / "foreign-adapter"
    model = load_base_model(str(wider), load_in_4bit=False, device="cpu")
    get_peft_model(model, LoraConfig(r=4, target_modules=LANGUAGE_LORA_TARGETS)).save_pretrained(foreign)
    with pytest.raises(ModelLoadError, match="does not fit base model") as err:
        load_model(tiny_model_dir, adapter=str(foreign), load_in_4bit=False, device="cpu")
    assert str(wider) in str(err.value) and "\n" not in str(err.value)

    with pytest.raises(ModelLoadError, match="no adapter_config.json"):
        load_model(tiny_model_dir, adapter=str(tmp_path), load_in_4bit=False, device="cpu")


@pytest.mark.parametrize("adapter", ["runs/typo/adapter", "no-such-adapter", "./runs/x"])
def test_a_missing_adapter_is_named_before_the_base_loads(tiny_model_dir, adapter, monkeypatch):
    import cxr_vqa.model as core

    monkeypatch.setattr(core, "load_base_model", lambda *a, **k: pytest.fail("the base loaded first"))
    with pytest.raises(ModelLoadError, match=f"adapter '{re.escape(adapter)}' not found: no such directory") as err:
        load_model(tiny_model_dir, adapter=adapter, load_in_4bit=False, device="cpu")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("device", ["gpu", "cuda:x"])
def test_an_unknown_device_is_one_line(device):
    with pytest.raises(ModelLoadError, match="unknown device"):
        pick_device(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a CPU-only machine gives")
def test_gpu_device_on_cpu_machine(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        load_model(tiny_model_dir, device="cuda")


def test_non_llava_checkpoint_is_refused(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4).save_pretrained(
        tmp_path
    )
    with pytest.raises(ModelLoadError, match="not LLaVA"):
        load_base_model(str(tmp_path), load_in_4bit=False, device="cpu")


def test_tiny_model_with_large_patches_and_sincos_positions(tmp_path):
    from finetune.tiny_model import build_tiny_llava, sincos_position_embeddings

    out = build_tiny_llava(tmp_path / "p56", patch_size=56, sincos_positions=True)
    vqa = load_model(out, load_in_4bit=False, device="cpu")
    prompt = render(vqa.processor, add_question(None, "Is there cardiomegaly?"), add_generation_prompt=True)
    batch = encode(vqa.processor, [film(90)], [prompt])
    assert batch["input_ids"][0].tolist().count(vqa.processor.image_token_id) == 36  # (336 / 56) ** 2
    positions = vqa.model.model.vision_tower.embeddings.position_embedding.weight
    assert positions.shape == (37, 64)
    torch.testing.assert_close(positions, sincos_position_embeddings(6, 64))
    assert positions[1:].norm(dim=1).mean() > 3  # comparable to a patch embedding, unlike CLIP's random init
    distances = torch.cdist(positions[1:], positions[1:]) + torch.eye(36) * 1e3
    assert distances.min() > 0.3  # every patch position has its own embedding
    answers = [
        a.text for a in vqa.answer([film(90)], [add_question(None, "Is there cardiomegaly?")], settings=SETTINGS)
    ]
    assert len(answers) == 1 and isinstance(answers[0], str)  # answers through the app's path
    with pytest.raises(ValueError, match="must divide 336"):
        build_tiny_llava(tmp_path / "bad", patch_size=50)

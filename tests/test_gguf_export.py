"""`python -m finetune.export_gguf` on the tiny LLaVA, read back with the `gguf` package (no llama.cpp needed):
llama.cpp's tensor names and keys, the projector as mm.0 / mm.2 (llama.cpp #3637), the vision tower up to its
feature layer, a trained projector carried into the mmproj rather than left behind (#14867), the refusals (#7823: a
tensor that maps to nothing; another vision strategy; a non-LoRA adapter), the serving template, the Ollama Modelfile
and the option errors. tests/test_gguf_serving.py loads the files in llama.cpp itself."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from finetune import export_gguf

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf==0.19.0)")


def reader(path):
    found = gguf.GGUFReader(path)
    return {t.name: t for t in found.tensors}, {name: field.contents() for name, field in found.fields.items()}


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "base"
    export_gguf.main(["--base", tiny_model_dir, "--out", str(out), "--quant", "f16"])
    return out


def test_export_writes_llama_cpp_names_keys_and_a_manifest_last(exported, tiny_model_dir):
    manifest = json.loads((exported / "export.json").read_text())
    assert manifest == {"format": 1, "model": "model-f16.gguf", "mmproj": "mmproj-f16.gguf", "quant": "f16",
                        "source": tiny_model_dir}  # fmt: skip
    assert not (exported / ".work").exists() and not list(exported.glob("*.partial"))
    tensors, fields = reader(exported / "model-f16.gguf")
    assert fields["general.architecture"] == "llama" and fields["llama.block_count"] == 2
    assert {"token_embd.weight", "output.weight", "output_norm.weight", "blk.1.attn_q.weight",
            "blk.1.ffn_down.weight", "blk.1.attn_norm.weight"} <= set(tensors)  # fmt: skip
    assert len(tensors) == 3 + 2 * 9  # nothing of the vision side, nothing missing
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.add_bos_token"] is True and "</s>" in fields["tokenizer.chat_template"]
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["output_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32

    tensors, fields = reader(exported / "mmproj-f16.gguf")
    assert fields["general.architecture"] == "clip" and fields["clip.projector_type"] == "mlp"
    assert fields["clip.vision.image_size"] == 336 and fields["clip.vision.patch_size"] == 14  # 576 tokens
    # vision_feature_layer -2 of 2 layers: llama.cpp runs layer 0 only, and takes its output
    assert fields["clip.vision.block_count"] == 1 and list(fields["clip.vision.feature_layer"]) == [1]
    assert {"mm.0.weight", "mm.0.bias", "mm.2.weight", "mm.2.bias", "v.class_embd", "v.patch_embd.weight",
            "v.position_embd.weight", "v.pre_ln.weight", "v.blk.0.attn_q.weight", "v.blk.0.ffn_up.weight"} <= set(
        tensors
    )  # fmt: skip
    assert not any(name.startswith(("v.blk.1.", "v.post_ln", "mm.1")) for name in tensors)
    assert tensors["v.patch_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16


def test_query_and_key_weights_are_permuted_to_llama_cpps_rotary_layout(exported, tiny_model_dir):
    from safetensors import safe_open

    tensors, _ = reader(exported / "model-f16.gguf")
    with safe_open(f"{tiny_model_dir}/model.safetensors", "pt") as f:
        q = f.get_tensor("language_model.model.layers.0.self_attn.q_proj.weight").float().numpy()
        v = f.get_tensor("language_model.model.layers.0.self_attn.v_proj.weight").float().numpy()
    heads, half = 4, q.shape[0] // 4 // 2
    pairs = q.reshape(heads, 2, half, -1).swapaxes(1, 2).reshape(q.shape)  # rows (h, i, j): halves interleaved
    got = np.asarray(tensors["blk.0.attn_q.weight"].data).reshape(q.shape)
    assert np.array_equal(got, pairs.astype(np.float16)) and not np.array_equal(got, q.astype(np.float16))
    assert np.array_equal(np.asarray(tensors["blk.0.attn_v.weight"].data).reshape(v.shape), v.astype(np.float16))


def test_a_trained_projector_goes_into_the_mmproj_instead_of_the_bases(tiny_model_dir, tmp_path):
    """llama.cpp #14867: converting the base's files beside a LoRA loses an adapter's saved projector; merged first,
    the mmproj holds the adapter's."""
    from peft import LoraConfig, get_peft_model

    from cxr_vqa.model import LANGUAGE_LORA_TARGETS, load_base_model

    torch.manual_seed(3)
    model = load_base_model(tiny_model_dir, load_in_4bit=False, device="cpu")
    base_projector = model.model.multi_modal_projector.linear_1.weight.detach().clone()
    config = LoraConfig(r=4, target_modules=LANGUAGE_LORA_TARGETS, init_lora_weights=False,
                        modules_to_save=["multi_modal_projector.linear_1", "multi_modal_projector.linear_2"])
    peft_model = get_peft_model(model, config)
    trained = peft_model.base_model.model.model.multi_modal_projector.linear_1.modules_to_save["default"].weight
    with torch.no_grad():
        trained.add_(0.5)
    peft_model.save_pretrained(tmp_path / "adapter")

    export_gguf.main(["--base", tiny_model_dir, "--adapter", str(tmp_path / "adapter"), "--out",
                      str(tmp_path / "tuned"), "--quant", "f16"])  # fmt: skip
    tensors, _ = reader(tmp_path / "tuned" / "mmproj-f16.gguf")
    got = np.asarray(tensors["mm.0.weight"].data).reshape(base_projector.shape)
    assert np.array_equal(got, trained.detach().numpy().astype(np.float16))
    assert not np.allclose(got, base_projector.numpy(), atol=0.1)


def test_a_resumed_export_remakes_its_work_when_the_base_changed(tiny_model_dir, random_adapter_dir, tmp_path):
    """OUT/.work is reused only when made from the same inputs: a base rewritten in place (same path, new weights) is
    not the same input, and its merged model must be made again rather than exported stale."""
    from safetensors.torch import load_file, save_file

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    args = ["--base", str(base), "--adapter", random_adapter_dir, "--out", str(tmp_path / "out"), "--quant", "f16",
            "--keep-work"]  # fmt: skip
    export_gguf.main(args)
    weights = load_file(base / "model.safetensors")
    norm = "language_model.model.norm.weight"
    weights[norm] = weights[norm] * 2 + 1  # no LoRA reaches the final norm: the export holds it as the base has it
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    export_gguf.main(args)
    tensors, _ = reader(tmp_path / "out" / "model-f16.gguf")
    got = np.asarray(tensors["output_norm.weight"].data)
    assert np.array_equal(got, weights[norm].float().numpy().astype(got.dtype))


def test_refusals_come_in_one_line_before_anything_is_written(tiny_model_dir, tmp_path, run_cli):
    from safetensors.torch import load_file, save_file

    odd = tmp_path / "odd"
    shutil.copytree(tiny_model_dir, odd)
    weights = load_file(odd / "model.safetensors")
    weights["language_model.model.layers.0.self_attn.gate.weight"] = torch.zeros(4, 4)  # maps to nothing
    save_file(weights, odd / "model.safetensors", metadata={"format": "pt"})
    status, line = run_cli(export_gguf.main, ["--base", str(odd), "--out", str(tmp_path / "a"), "--quant", "f16"])
    assert status == 2 and "map to nothing llama.cpp" in line and "self_attn.gate.weight" in line and "#7823" in line
    assert not (tmp_path / "a" / "export.json").exists() and not list((tmp_path / "a").glob("*.gguf"))

    full = tmp_path / "full"
    shutil.copytree(tiny_model_dir, full)
    config = json.loads((full / "config.json").read_text())
    (full / "config.json").write_text(json.dumps({**config, "vision_feature_select_strategy": "full"}))
    status, line = run_cli(export_gguf.main, ["--base", str(full), "--out", str(tmp_path / "b"), "--quant", "f16"])
    assert status == 2 and "vision_feature_select_strategy 'full'" in line

    ia3 = tmp_path / "ia3"
    ia3.mkdir()
    (ia3 / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3", "base_model_name_or_path": "x"}))
    (ia3 / "adapter_model.safetensors").write_bytes(b"")
    status, line = run_cli(export_gguf.main, ["--base", tiny_model_dir, "--adapter", str(ia3), "--out",
                                              str(tmp_path / "c"), "--quant", "f16"])  # fmt: skip
    assert status == 2 and "IA3" in line and "only LoRA" in line


def test_modelfile_and_template_say_the_projects_turns(exported, capsys):
    modelfile = (exported / "Modelfile").read_text()
    assert "FROM ./model-f16.gguf\nFROM ./mmproj-f16.gguf\n" in modelfile
    assert 'USER: {{ .Content }} ' in modelfile and "ASSISTANT: {{ .Content }}</s>" in modelfile
    assert 'PARAMETER stop "</s>"' in modelfile and "not for diagnosis" in modelfile
    assert "ASSISTANT: ' ~ message['content'] ~ '</s>'" in (exported / "chat_template.jinja").read_text()
    with pytest.raises(SystemExit) as done:
        export_gguf.main(["--help"])
    assert done.value.code == 0 and "mmproj" in capsys.readouterr().out


def test_gguf_and_mps_options_fail_in_one_line_before_anything_loads(tmp_path, run_cli, exported):
    import app
    from cxr_vqa.model import pick_device, pick_dtype
    from cxr_vqa.sources import ModelLoadError
    from evaluation import __main__ as ev

    status, line = run_cli(app.main, ["--base", "none", "--gguf", f"g={tmp_path}"])
    assert status == 2 and f"--gguf g: {tmp_path} is not a finished GGUF export" in line
    status, line = run_cli(app.main, ["--base", "none", "--gguf", f"base={exported}"])
    assert status == 2 and "already a model's" in line
    status, line = run_cli(ev.main, ["--dataset", "d", "--out", str(tmp_path / "r"), "--gguf", "g_blank=x"])
    assert status == 2 and "--gguf: give NAME=EXPORT_DIR" in line
    if not torch.backends.mps.is_available():
        with pytest.raises(ModelLoadError, match="no Apple-silicon GPU"):
            pick_device("mps")
    assert pick_dtype(torch.device("mps")) == torch.float16


@pytest.mark.parametrize("manifest", [{"format": 1}, [1], {"format": 1, "model": None, "mmproj": "m.gguf"}])
def test_a_broken_manifest_is_one_line_not_a_traceback(tmp_path, manifest):
    from cxr_vqa.errors import UserError
    from cxr_vqa.llama_server import read_export

    (tmp_path / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="export.json (does not name its model|is format None)"):
        read_export(tmp_path)


def test_serving_template_renders_the_projects_prompt_as_llama_cpp_is_sent_it(tiny_model_dir):
    """The chat template the GGUF carries and the server uses gives, for OpenAI messages, the text the project's own
    template gives the model (with the film where `<image>` is): follow-ups, `</s>` after answers, no system turn."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from cxr_vqa.llama_server import MEDIA_MARKER, SERVE_TEMPLATE
    from cxr_vqa.model import load_processor
    from cxr_vqa.remote import openai_messages
    from cxr_vqa.template import add_question, assistant_turn
    from cxr_vqa.vqa import render

    processor = load_processor(tiny_model_dir)
    conversation = add_question(add_question(None, "Is there edema?") + [assistant_turn("No, none.")], "Any effusion?")
    want = render(processor, conversation, add_generation_prompt=True)
    template = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(SERVE_TEMPLATE)
    messages = openai_messages(conversation, "data:image/png;base64,AAAA")
    got = template.render(messages=messages, add_generation_prompt=True)
    assert got.replace("data:image/png;base64,AAAA", "<image>") == want
    assert want == "USER: <image>\nIs there edema? ASSISTANT: No, none.</s>USER: Any effusion? ASSISTANT:"
    # llama-server hands the template the film as a text part holding its marker
    messages[0]["content"][0] = {"type": "text", "text": MEDIA_MARKER}
    assert template.render(messages=messages, add_generation_prompt=True).replace(MEDIA_MARKER, "<image>") == want

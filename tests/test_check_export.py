"""`python -m finetune.check_export`: will an adapter serve in vLLM? Real PEFT adapters of the tiny LLaVA with the
module names of the shipped recipes (LlavaForConditionalGeneration, transformers 5), and each way one can fail."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml

from finetune import check_export as ce

ROOT = Path(__file__).resolve().parents[1]
RECIPE_7B = ROOT / "finetune" / "configs" / "llava-1.5-7b-qlora.yaml"
RECIPE_TINY = ROOT / "finetune" / "configs" / "tiny-cpu.yaml"


def make_adapter(model_dir: str, out: Path, **lora) -> str:
    from peft import LoraConfig, get_peft_model

    from cxr_vqa.model import load_base_model

    model = load_base_model(model_dir, load_in_4bit=False, device="cpu")
    get_peft_model(model, LoraConfig(**lora)).save_pretrained(out)
    return str(out)


def recipe(path: Path) -> dict:
    """A shipped recipe's LoRA settings, as finetune.train turns them into a LoraConfig."""
    config = yaml.safe_load(path.read_text())
    return {"r": config["lora_r"], "lora_alpha": config["lora_alpha"], "target_modules": config["lora_target_modules"],
            "modules_to_save": config.get("lora_modules_to_save")}  # fmt: skip


def rename(adapter: str, out: Path, old: str, new: str) -> str:
    """A copy of `adapter` with its tensor names rewritten (the header of the safetensors file)."""
    data = (Path(adapter) / "adapter_model.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = {k.replace(old, new): v for k, v in json.loads(data[8 : 8 + size]).items()}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    out.mkdir()
    (out / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + size :])
    (out / "adapter_config.json").write_text((Path(adapter) / "adapter_config.json").read_text())
    return str(out)


@pytest.fixture(scope="module")
def recipe_adapter(tiny_model_dir, tmp_path_factory):
    """The 7B recipe's LoRA (rank 64 on the language model's attention and MLP) on the tiny model: same names."""
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("recipe-7b"), **recipe(RECIPE_7B))


def test_the_7b_recipes_adapter_serves_and_the_command_is_printed(recipe_adapter, capsys):
    verdict = ce.check_adapter(recipe_adapter, max_lora_rank=64)
    assert verdict.ok and verdict.rank == 64 and verdict.problems == []
    # 2 layers x 7 projections, named as vLLM's LLaVA names them
    assert len(verdict.served) == 14 and "language_model.model.layers.1.mlp.down_proj" in verdict.served
    ce.main([recipe_adapter])
    out = capsys.readouterr().out
    assert out.startswith("yes:") and f"--enable-lora --lora-modules cxr={recipe_adapter} --max-lora-rank 64" in out


def test_the_random_adapter_fixture_serves_too(random_adapter_dir):
    assert ce.check_adapter(random_adapter_dir, max_lora_rank=8).ok


def test_a_rank_above_the_servers_limit_says_which_limit_would_do(recipe_adapter, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ce.main([recipe_adapter, "--max-lora-rank", "32"])
    assert exit_info.value.code == 1
    assert (
        "rank 64 is above --max-lora-rank 32: vLLM refuses it; serve with --max-lora-rank 64"
        in capsys.readouterr().out
    )


def test_the_tiny_recipes_saved_projector_is_refused(tiny_model_dir, tmp_path):
    verdict = ce.check_adapter(make_adapter(tiny_model_dir, tmp_path / "a", **recipe(RECIPE_TINY)))
    assert not verdict.ok
    assert any(p.startswith("modules_to_save ['multi_modal_projector.linear_1'") for p in verdict.problems)
    assert any("not LoRA weights, e.g. base_model.model.model.multi_modal_projector" in p for p in verdict.problems)


def test_lora_on_the_vision_tower_or_projector_is_dropped_unless_the_experimental_flag_is_set(
    tiny_model_dir, tmp_path
):
    targets = r".*(language_model.*\.(q_proj|v_proj)|multi_modal_projector\.linear_[12]|vision_tower.*\.q_proj)"
    adapter = make_adapter(tiny_model_dir, tmp_path / "a", r=8, lora_alpha=16, target_modules=targets)
    dropped = ce.check_adapter(adapter)
    assert not dropped.ok and len(dropped.problems) == 1
    assert dropped.problems[0].startswith("LoRA on the vision tower or projector (multi_modal_projector.linear_1, ")
    assert (
        "vLLM drops it unless the server runs with the experimental --enable-tower-connector-lora"
        in dropped.problems[0]
    )
    flagged = ce.check_adapter(adapter, tower_connector_lora=True)
    assert {"multi_modal_projector.linear_1", "multi_modal_projector.linear_2"} <= set(flagged.served)
    # transformers 5 names the CLIP layers vision_tower.encoder...; vLLM's are vision_tower.vision_model.encoder...
    assert not flagged.ok and "e.g. vision_tower.encoder.layers.0.self_attn.q_proj" in flagged.problems[0]


@pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers`")  # PEFT saves the LM head beside its LoRA
def test_lora_on_the_lm_head_and_dora_are_refused(tiny_model_dir, tmp_path):
    targets = r".*(language_model.*\.q_proj|lm_head)"
    verdict = ce.check_adapter(
        make_adapter(tiny_model_dir, tmp_path / "a", r=8, target_modules=targets, use_dora=True)
    )
    assert "DoRA (use_dora): vLLM does not support it" in verdict.problems
    assert any(p.startswith("LoRA on language_model.lm_head: not a LoRA target of vLLM") for p in verdict.problems)


def test_names_vllm_would_not_match_are_reported_as_served_silently_as_the_base(random_adapter_dir, tmp_path):
    # as if trained on the language model alone (LlamaForCausalLM): model.layers.N... (vLLM #34186, #48019)
    text_only = rename(random_adapter_dir, tmp_path / "text", "model.model.language_model.", "model.model.")
    verdict = ce.check_adapter(text_only)
    assert not verdict.ok and verdict.served == []
    assert "14 module name(s) match no module of vLLM's LLaVA, e.g. model.layers." in verdict.problems[0]
    assert "serves the base model" in verdict.problems[0]
    # the layout of transformers < 4.52 (language_model.model.layers...) maps to the same modules: it serves
    old_layout = rename(
        random_adapter_dir, tmp_path / "old", "model.model.language_model.", "model.language_model.model."
    )
    assert ce.check_adapter(old_layout).served == ce.check_adapter(random_adapter_dir).served


def header_only(out: Path, header: bytes, rank: int = 8) -> str:
    """An adapter folder whose safetensors file holds `header` after its 8-byte length (no weights: none are read)."""
    out.mkdir()
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 16}))
    (out / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return str(out)


def test_a_rank_no_vllm_server_accepts_is_said_in_one_line(tmp_path, capsys):
    q_proj = "base_model.model.model.language_model.layers.0.self_attn.q_proj"
    header = {f"{q_proj}.lora_A.weight": {"dtype": "F32", "shape": [1024, 64], "data_offsets": [0, 0]},
              f"{q_proj}.lora_B.weight": {"dtype": "F32", "shape": [64, 1024], "data_offsets": [0, 0]}}  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        ce.main([header_only(tmp_path / "a", json.dumps(header).encode(), rank=1024), "--max-lora-rank", "512"])
    assert exit_info.value.code == 1
    assert "rank 1024 is above vLLM's largest --max-lora-rank (512): no server can load it" in capsys.readouterr().out


@pytest.mark.parametrize("cut", ["length", "header", "json"])
def test_a_truncated_or_garbled_weights_file_is_a_usage_error(cut, random_adapter_dir, tmp_path, run_cli):
    data = (Path(random_adapter_dir) / "adapter_model.safetensors").read_bytes()
    out = tmp_path / "a"
    header_only(out, b"")
    broken = {"length": data[:5], "header": data[:40], "json": struct.pack("<Q", 9) + b"{not json"}[cut]
    (out / "adapter_model.safetensors").write_bytes(broken)
    code, line = run_cli(ce.main, [str(out)])
    assert code == 2 and "adapter_model.safetensors is not a whole safetensors file (cut short" in line


def test_a_missing_adapter_is_a_usage_error(tmp_path, run_cli):
    code, line = run_cli(ce.main, [str(tmp_path / "nothing-here")])
    assert code == 2 and "not found" in line
    (tmp_path / "empty").mkdir()
    code, line = run_cli(ce.main, [str(tmp_path / "empty")])
    assert code == 2 and "adapter_config.json" in line

"""Will this LoRA adapter serve in vLLM? Yes, or exactly why not, read from its adapter_config.json and the names and
shapes of its weights (nothing is loaded, no GPU, no vLLM needed).

    python -m finetune.check_export runs/llava-1.5-7b-cxr-qlora                   # against --max-lora-rank 64
    python -m finetune.check_export runs/a --max-lora-rank 16 --enable-tower-connector-lora
    python -m finetune.check_export user/llava-cxr                                # a Hub id: two small downloads

Exit status 0: it serves, and the `vllm serve` command is printed; 1: it would not (each reason on its own line);
2: no such adapter. The rules are vLLM's for `LlavaForConditionalGeneration` (LoRA since PR #31513), as its source
reads in 2026 (vllm/lora/peft_helper.py, vllm/lora/lora_model.py, vllm/model_executor/models/llava.py):

- refused at load: `modules_to_save` ("vLLM only supports modules_to_save being None"), DoRA, a bias, a rank above
  the server's `--max-lora-rank`, and LoRA on `embed_tokens` or `lm_head` (not LoRA targets of vLLM's LLaVA);
- dropped with only a log line: LoRA on the vision tower or the projector, unless the server runs with the
  experimental `--enable-tower-connector-lora`; even then, vLLM's CLIP modules are named `vision_tower.vision_model.`
  and transformers 5 writes `vision_tower.encoder.`, so only the projector's LoRA matches (read from the source: that
  flag was not run here);
- served silently as the base: weights whose names map to no module of the served model, e.g. an adapter trained on
  the language model alone (`model.layers.N...`: vLLM issues #34186, #48019);
- scaled wrongly: `rank_pattern` / `alpha_pattern` (vLLM scales every module by lora_alpha / r).
vLLM maps PEFT's names (after `base_model.model.`) as its LLaVA does: `model.language_model.` → `language_model.model.`
(transformers >= 4.52 layout; the older `language_model.model.` is kept), `model.vision_tower.` → `vision_tower.`,
`model.multi_modal_projector.` → `multi_modal_projector.`, `lm_head.` → `language_model.lm_head.`.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cxr_vqa.cli import user_errors
from cxr_vqa.errors import UserError
from cxr_vqa.sources import ADAPTER, resolve

MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's --max-lora-rank accepts
PEFT_PREFIX = "base_model.model."
LLAVA_MAPPING = {
    "model.language_model.": "language_model.model.",
    "model.vision_tower.": "vision_tower.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "lm_head.": "language_model.lm_head.",
}
LANGUAGE_TARGET = re.compile(r"language_model\.model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)")
TOWER = ("vision_tower.", "multi_modal_projector.")
# vLLM's own module names there: its CLIP keeps `vision_model.`, which transformers 5 no longer writes
TOWER_MODULE = re.compile(r"vision_tower\.vision_model\..*|multi_modal_projector\.linear_[12]")
WEIGHT = re.compile(r"\.lora_[AB](\.\w+)?\.(weight|bias)$|\.lora_embedding_[AB](\.\w+)?$")  # PEFT's saved names


@dataclass
class Verdict:
    served: list[str] = field(default_factory=list)  # module names vLLM applies the LoRA to
    problems: list[str] = field(default_factory=list)
    rank: int = 0
    base: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.served)


def vllm_module(tensor_name: str) -> tuple[str, bool]:
    """(the module a PEFT tensor belongs to, as vLLM names it, whether it is a LoRA weight at all)."""
    name = tensor_name.removeprefix(PEFT_PREFIX)
    for old, new in LLAVA_MAPPING.items():
        if name.startswith(old):
            name = new + name[len(old) :]
            break
    match = WEIGHT.search(name)
    return name[: match.start()] if match else name.rsplit(".", 1)[0], match is not None


def tensor_shapes(adapter: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from the safetensors header (or a torch .bin): no weights are read."""
    file = adapter / "adapter_model.safetensors"
    if file.is_file():
        try:
            with open(file, "rb") as handle:
                (size,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(size))
            return {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}
        except (struct.error, ValueError, AttributeError, KeyError, TypeError) as err:  # ValueError: JSON, UTF-8
            raise UserError(f"{file} is not a whole safetensors file (cut short, or another format: "
                            f"{type(err).__name__}): save or download the adapter again") from None  # fmt: skip
    if (adapter / "adapter_model.bin").is_file():
        import torch

        state = torch.load(adapter / "adapter_model.bin", map_location="cpu", weights_only=True)
        return {k: list(v.shape) for k, v in state.items()}
    raise UserError(f"{adapter} has no adapter_model.safetensors or adapter_model.bin: vLLM finds no weights there")


def check_adapter(adapter: str | Path, *, max_lora_rank: int = 64, tower_connector_lora: bool = False) -> Verdict:
    adapter = _local(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    verdict, say = Verdict(base=config.get("base_model_name_or_path") or ""), []
    if config.get("peft_type", "LORA") != "LORA":
        say.append(f"peft_type {config.get('peft_type')}: vLLM serves LoRA adapters only")
    if config.get("modules_to_save"):
        say.append(f"modules_to_save {config['modules_to_save']}: vLLM refuses it (\"only supports modules_to_save "
                   "being None\"); retrain without, or merge the adapter (python -m finetune.merge) and serve the "
                   "merged model")  # fmt: skip
    if config.get("use_dora"):
        say.append("DoRA (use_dora): vLLM does not support it")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        say.append("a bias (bias / lora_bias): vLLM's LoRA has none")
    if config.get("trainable_token_indices"):
        say.append("trainable_token_indices: vLLM cannot load trained token embeddings")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        say.append("rank_pattern / alpha_pattern: vLLM scales every module by lora_alpha / r, so these modules "
                   "would be scaled wrongly")  # fmt: skip
    shapes = tensor_shapes(adapter)
    dropped, refused, unmatched, other = [], [], [], []
    for tensor, shape in shapes.items():
        module, is_lora = vllm_module(tensor)
        if not is_lora:
            other.append(tensor)
        elif module.endswith(("embed_tokens", "lm_head")):
            refused.append(module)
        elif module.startswith(TOWER) and not tower_connector_lora:
            dropped.append(module)
        elif LANGUAGE_TARGET.fullmatch(module) or TOWER_MODULE.fullmatch(module) and tower_connector_lora:
            verdict.served.append(module)
        else:
            unmatched.append(module)
        if ".lora_A" in tensor and shape:
            verdict.rank = max(verdict.rank, shape[0])
    verdict.served = sorted(set(verdict.served))
    verdict.rank = verdict.rank or int(config.get("r", 0))
    if verdict.rank > MAX_LORA_RANKS[-1]:
        say.append(f"rank {verdict.rank} is above vLLM's largest --max-lora-rank ({MAX_LORA_RANKS[-1]}): no server "
                   f"can load it; retrain with lora_r {MAX_LORA_RANKS[-1]} or less, or merge the adapter")  # fmt: skip
    elif verdict.rank > max_lora_rank:
        say.append(f"rank {verdict.rank} is above --max-lora-rank {max_lora_rank}: vLLM refuses it; serve with "
                   f"--max-lora-rank {min(r for r in MAX_LORA_RANKS if r >= verdict.rank)}")  # fmt: skip
    if refused:
        say.append(f"LoRA on {_few(refused)}: not a LoRA target of vLLM's LLaVA, refused at load")
    if dropped:
        say.append(f"LoRA on the vision tower or projector ({_few(dropped)}): vLLM drops it unless the server runs "
                   "with the experimental --enable-tower-connector-lora")  # fmt: skip
    if unmatched:
        say.append(f"{len(set(unmatched))} module name(s) match no module of vLLM's LLaVA, e.g. {unmatched[0]}: vLLM "
                   "loads them without a word and serves the base model (vLLM #34186, #48019); train on "
                   "LlavaForConditionalGeneration so names read model.language_model.layers.N...")  # fmt: skip
    if other:
        say.append(
            f"{len(other)} tensor(s) that are not LoRA weights, e.g. {other[0]}: whole modules vLLM cannot load"
        )
    if not verdict.served and not say:
        say.append("no LoRA weights on the language model's layers: nothing to serve")
    verdict.problems = say
    return verdict


def _few(names: list[str]) -> str:
    names = sorted(set(names))
    return ", ".join(names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else "")


def _local(adapter: str | Path) -> Path:
    """The adapter's folder: a local one, or its files from the Hub (the local cache first)."""
    source = resolve(str(adapter), ADAPTER)  # one line if it is neither
    if source.local:
        return Path(source.name)
    from huggingface_hub import snapshot_download

    files = ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"]
    return Path(snapshot_download(source.name, allow_patterns=files))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m finetune.check_export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("adapter", help="the adapter's directory (as `python -m finetune` wrote it) or Hub id")
    parser.add_argument("--max-lora-rank", type=int, default=64, choices=MAX_LORA_RANKS,
                        help="the --max-lora-rank the vLLM server runs with")  # fmt: skip
    parser.add_argument("--enable-tower-connector-lora", action="store_true",
                        help="the server runs with vLLM's experimental flag of that name")  # fmt: skip
    parser.add_argument("--name", default="cxr", help="the adapter's model name in the printed vllm command")
    args = parser.parse_args(argv)
    with user_errors():
        verdict = check_adapter(args.adapter, max_lora_rank=args.max_lora_rank,
                                tower_connector_lora=args.enable_tower_connector_lora)  # fmt: skip
    if not verdict.ok:
        print(f"no: {args.adapter} would not serve in vLLM as trained:")
        print("\n".join(f"  - {problem}" for problem in verdict.problems))
        sys.exit(1)
    base = verdict.base or "llava-hf/llava-1.5-7b-hf"
    print(f"yes: {args.adapter} serves in vLLM: LoRA rank {verdict.rank} on {len(verdict.served)} modules of the "
          "language model, names as vLLM maps them")  # fmt: skip
    flags = " --enable-tower-connector-lora" if args.enable_tower_connector_lora else ""
    print(f"  vllm serve {base} --enable-lora --lora-modules {args.name}={args.adapter} "
          f"--max-lora-rank {args.max_lora_rank} --max-loras 4{flags}")  # fmt: skip


if __name__ == "__main__":
    main()

"""What a "Where did it look?" costs: the maps of the side-by-side panes (one forward with eager attention and one
backward over the base and adapter rows, `VQAModel.relevance`) against the answer they explain (one mixed-adapter
generate), timed side by side on the demo's tiny models on this CPU; and the extra memory for LLaVA-1.5-7B in 4-bit,
from the bytes one of its decoder layers saves for the backward, measured here on one layer of the 7B's width.

    python bench/relevance_cost.py                  # the demo in runs/demo (built first if missing), 5 repeats
    python bench/relevance_cost.py --repeats 3 --layer-tokens 616,744

Times: the two calls alternate, best of --repeats each, for a yes/no-length answer (16 new tokens) and the app's
default (128: today's untrained demo base babbles to the cap). Memory: a LLaMA-2-7B decoder layer (hidden 4,096, MLP
11,008, 32 heads) in bf16 with eager attention runs forward on n tokens under `saved_tensors_hooks`; the storages it
keeps for the backward, weights left out (a 4-bit layer keeps its inputs as a bf16 one does), times 32 layers, plus
the two n x n maps per layer the relevance keeps, the logits and one layer's gradients in flight during the backward.
The answer itself keeps only its KV cache (printed beside). Last line:
`RESULT time_ratio_short=<maps/answer> time_ratio_long=<maps/answer> extra_gib_7b=<one row, n=616>`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from cxr_vqa.contract import demo_build, read_examples
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.model import load_model
from cxr_vqa.vqa import BASE

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
# llava-hf/llava-1.5-7b-hf's language model (config.json): LLaMA-2-7B geometry, the real tokenizer's 32,064 rows
LAYERS, HIDDEN, MLP, HEADS, VOCAB, IMAGE_TOKENS = 32, 4096, 11008, 32, 32064, 576


def demo_models(demo: Path):
    if demo_build(demo) is None:
        subprocess.run([sys.executable, "-m", "finetune.demo", str(demo)], cwd=ROOT, check=True)
    marker = demo_build(demo)
    vqa = load_model(str(demo / marker["base"]), str(demo / marker["adapter"]), load_in_4bit=False, device="cpu")
    return vqa, read_examples(demo / Path(marker["examples"]).parent)


def time_tiny(vqa, examples, max_new_tokens: int, repeats: int) -> tuple[float, float, int]:
    """(best seconds of the panes' answer, best seconds of their maps, answer tokens of the longest row)."""
    example = next(e for e in examples if e.answer and e.answer.startswith("Yes"))
    film = vqa.prepare_film(example.film).image
    conversation = vqa.conversation(None, example.question)
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    answer_s, maps_s = [], []
    for _ in range(repeats):
        began = time.perf_counter()
        answers = vqa.compare(film, conversation, settings)
        answer_s.append(time.perf_counter() - began)
        began = time.perf_counter()
        vqa.relevance([film] * len(answers), [conversation] * len(answers), [a.text for a in answers.values()],
                      list(answers))  # fmt: skip
        maps_s.append(time.perf_counter() - began)
    longest = max(vqa._answer_tokens(conversation, a.text) for a in answers.values())
    return min(answer_s), min(maps_s), longest


def saved_bytes_per_layer(tokens: int) -> int:
    """Bytes one 7B-wide decoder layer (bf16, eager attention) keeps for its backward on `tokens` tokens, weights
    left out; storages counted once however many views of them are saved."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=HIDDEN, intermediate_size=MLP, num_attention_heads=HEADS,
                         num_key_value_heads=HEADS, num_hidden_layers=1, attn_implementation="eager")  # fmt: skip
    torch.manual_seed(0)
    layer = LlamaDecoderLayer(config, layer_idx=0).to(torch.bfloat16).eval()
    weights = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    x = torch.randn(1, tokens, HIDDEN, dtype=torch.bfloat16, requires_grad=True)
    positions = torch.arange(tokens)[None]
    rotary = LlamaRotaryEmbedding(config)(x, positions)
    mask = torch.full((tokens, tokens), float("-inf")).triu(1)[None, None].to(torch.bfloat16)
    kept: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x, attention_mask=mask, position_embeddings=rotary, position_ids=positions)
    del out
    return sum(kept.values())


def memory_7b(tokens: int, per_layer: int) -> dict[str, float]:
    """GiB the maps add for one row of `tokens` tokens, by part."""
    maps = LAYERS * 2 * tokens * tokens * 4  # attention mean and mean_h (grad x attention)^+, fp32, per layer
    logits = tokens * VOCAB * 2  # bf16, every position (the answer's own forward keeps one position's)
    in_flight = per_layer  # about one layer's activation gradients at a time during the backward
    dequantized = MLP * HIDDEN * 2  # bitsandbytes dequantises one 4-bit weight for its input gradient
    parts = {"saved activations": LAYERS * per_layer, "relevance maps": maps, "logits": logits,
             "backward in flight": in_flight + dequantized}  # fmt: skip
    return {name: value / GIB for name, value in parts.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", default=str(ROOT / "runs" / "demo"), help="the demo build (built if missing)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each, best taken")
    parser.add_argument("--layer-tokens", default="616,744", help="7B rows to size: 576 image + ~24 prompt + answer")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    vqa, examples = demo_models(Path(args.demo).resolve())
    print(f"tiny demo models (CPU, {torch.get_num_threads()} threads): the panes' answer (one mixed generate, base + "
          "tuned) vs their maps (one forward + backward)")  # fmt: skip
    ratios = {}
    for label, new_tokens in (("short", 16), ("long", 128)):
        answer_s, maps_s, longest = time_tiny(vqa, examples, new_tokens, args.repeats)
        ratios[label] = maps_s / answer_s
        print(f"  max {new_tokens:>3} new tokens (longest answer {longest:>3} tokens): answer {answer_s:.3f} s, "
              f"maps {maps_s:.3f} s, maps/answer {ratios[label]:.2f}x")  # fmt: skip
    print(f"\nLLaVA-1.5-7B in 4-bit, one row ({BASE} or an adapter; a mixed batch adds as much per row):")
    extra = {}
    for tokens in (int(t) for t in args.layer_tokens.split(",")):
        per_layer = saved_bytes_per_layer(tokens)
        parts = memory_7b(tokens, per_layer)
        extra[tokens] = sum(parts.values())
        kv = LAYERS * 2 * tokens * HIDDEN * 2 / GIB
        detail = ", ".join(f"{name} {gib:.2f}" for name, gib in parts.items())
        print(f"  n={tokens} tokens: {per_layer / 2**20:.0f} MiB saved per layer; extra {extra[tokens]:.2f} GiB "
              f"({detail}); the answer's own KV cache {kv:.2f} GiB")  # fmt: skip
    first = next(iter(extra))
    print(
        f"RESULT time_ratio_short={ratios['short']:.2f} time_ratio_long={ratios['long']:.2f} "
        f"extra_gib_7b={extra[first]:.2f}"
    )


if __name__ == "__main__":
    main()

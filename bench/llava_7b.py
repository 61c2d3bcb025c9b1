"""llava-hf/llava-1.5-7b-hf without downloading it, for the benches that need its real size (`bench/gpu.py`,
`bench/real_size.py`): its architecture, and a random-weight checkpoint of it laid out as the Hub ships it (16-bit
safetensors shards of up to 5 GB + model.safetensors.index.json, the parameter names `save_pretrained` writes for
`LlavaForConditionalGeneration`) beside the 7B model's own tokenizer and processor files
(`finetune/llama_tokenizer.py`).

The shards are written tensor by tensor from the architecture on the meta device, so building the 14 GB checkpoint
holds one tensor at a time (the largest, the 32,064 x 4,096 embeddings, is about 0.5 GB while drawn), never the model.
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import torch

IMAGE_TOKEN = 32000  # llava-1.5-7b-hf's <image> id; 32001 is <pad>
SHARD_SIZE = "5GB"  # the Hub's shard size: llava-1.5-7b-hf ships 3 shards
INDEX = "model.safetensors.index.json"
CHECKPOINT = "llava-1.5-7b-random"  # its folder in a bench's --workdir
SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


def llava_7b_config(tiny: bool = False):
    """The architecture of llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at 336 px, a 2-layer GELU projector, Vicuna-7B.
    `tiny`: the same config (vocabulary, ids, 336 px / patch 14, 576 image tokens) at widths of 64 and 2 layers, for
    runs that test plumbing in seconds (widths >= 64: bitsandbytes 4-bit on CPU needs them)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    width, layers, heads = (64, 2, 4) if tiny else (None, None, None)
    vision = CLIPVisionConfig(
        hidden_size=width or 1024,
        intermediate_size=2 * width if tiny else 4096,
        num_hidden_layers=layers or 24,
        num_attention_heads=heads or 16,
        image_size=336,
        patch_size=14,
        projection_dim=width or 768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=width or 4096,
        intermediate_size=2 * width if tiny else 11008,
        num_hidden_layers=layers or 32,
        num_attention_heads=heads or 32,
        num_key_value_heads=heads or 32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=32001,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=IMAGE_TOKEN,
        image_seq_length=576,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def checkpoint_layout(config, dtype: torch.dtype, max_shard_size: str | int = SHARD_SIZE):
    """{shard file: {parameter name: meta tensor}} as `save_pretrained(max_shard_size=...)` would write this config:
    the names after transformers reverts its loading renames (the checkpoint format, not the module tree), split
    by the same function."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from transformers import LlavaForConditionalGeneration
    from transformers.core_model_loading import revert_weight_conversion

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config).to(dtype)
    state = revert_weight_conversion(model, model.state_dict())
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    return {file: {name: state[name] for name in names} for file, names in split.filename_to_tensors.items()}


def random_tensor(name: str, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Values of the scale the architecture's own init gives: norms' weights 1, biases 0, the rest N(0, 0.02)."""
    if name.endswith("bias"):
        return torch.zeros(like.shape, dtype=like.dtype)
    if "norm" in name.rsplit(".", 2)[-2]:  # input_layernorm, layer_norm1, pre_layrnorm, post_layernorm, norm
        return torch.ones(like.shape, dtype=like.dtype)
    return (torch.randn(like.shape, generator=generator) * 0.02).to(like.dtype)


def write_shard(path: Path, tensors: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    """One safetensors file, its header first and then each tensor as it is drawn (the format is an 8-byte header
    length, a JSON header of dtype/shape/byte offsets padded to 8 bytes, then the raw little-endian data)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, like in tensors.items():
        size = like.numel() * like.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[like.dtype], "shape": list(like.shape),
                        "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for name, like in tensors.items():
            f.write(random_tensor(name, like, generator).contiguous().view(torch.uint8).numpy().tobytes())
    partial.rename(path)  # a killed build leaves no file that looks whole


def checkpoint_complete(out: Path) -> bool:
    """The index is written last, so a checkpoint is whole when the index and every shard it names are there."""
    if not (out / INDEX).is_file() or not (out / "tokenizer.json").is_file():
        return False
    shards = set(json.loads((out / INDEX).read_text())["weight_map"].values())
    return all((out / shard).is_file() for shard in shards)


def write_random_checkpoint(
    out: str | Path,
    npm_dir: str | Path,
    *,
    tiny: bool = False,
    dtype: torch.dtype = torch.float16,
    max_shard_size: str | int = SHARD_SIZE,
    seed: int = 0,
    layers: int | None = None,
) -> Path:
    """A random-weight llava-1.5-7b-hf (or its `tiny` twin) in `out`, reused when a whole one is there already: the
    config, the generation config, the shards and their index, the 7B model's tokenizer and processor files. `layers`
    overrides the language model's depth (keep such a checkpoint in a folder of its own)."""
    from transformers import GenerationConfig

    from finetune.llama_tokenizer import fetch_package, write_processor_files

    out = Path(out)
    if checkpoint_complete(out):
        print(f"reusing the random checkpoint in {out}")
        return out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    config = llava_7b_config(tiny)
    config.dtype = dtype
    if layers:  # the 7B's widths with fewer language-model layers: a full-size bench's steps at a fraction of the cost
        config.text_config.num_hidden_layers = layers
    config.save_pretrained(out)  # first: transformers picks the tokenizer class from it
    text = config.text_config
    GenerationConfig(bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id,
                     pad_token_id=text.pad_token_id).save_pretrained(out)  # fmt: skip
    write_processor_files(out, fetch_package(npm_dir))
    layout = checkpoint_layout(config, dtype, max_shard_size)
    generator = torch.Generator().manual_seed(seed)
    weight_map, total_size, total_parameters = {}, 0, 0
    for i, (file, tensors) in enumerate(layout.items()):
        if not (out / file).is_file():  # a shard from a killed build is kept: the values do not matter, the sizes do
            write_shard(out / file, tensors, generator)
        size = os.path.getsize(out / file) / 1e9
        print(f"  shard {i + 1}/{len(layout)}: {file}, {len(tensors)} tensors, {size:.2f} GB", flush=True)
        weight_map.update(dict.fromkeys(tensors, file))
        total_parameters += sum(t.numel() for t in tensors.values())
        total_size += sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_parameters": total_parameters, "total_size": total_size}, "weight_map": weight_map}
    (out / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    print(f"wrote a random {'tiny ' if tiny else ''}llava-1.5-7b checkpoint, {total_parameters / 1e9:.2f}B parameters "
          f"in {len(layout)} shards, in {time.perf_counter() - start:.0f} s: {out}")  # fmt: skip
    return out

"""A LLaVA-1.5 checkpoint (16-bit safetensors, adapters already merged) as the two GGUF files llama.cpp serves: the
language model (`llama` architecture, with its tokenizer) and the vision tower with the projector (an mmproj file,
`clip` architecture, projector type `mlp`). Called by `python -m finetune.export_gguf`; nothing here merges or
quantizes.

    from finetune.gguf_convert import read_checkpoint, write_language_model, write_mmproj
    checkpoint = read_checkpoint("runs/merged")            # refuses, in one line, what it cannot map
    write_language_model(checkpoint, "out/model-f16.gguf")
    write_mmproj(checkpoint, "out/mmproj-f16.gguf")

Names come from the `gguf` package (llama.cpp's own tensor map, `gguf.get_tensor_name_map`) except the projector's:
that map turns `multi_modal_projector.linear_1` into `mm.1` and knows no `linear_2`, while llama.cpp's LLaVA-1.5 graph
(`clip.cpp`, projector type mlp) reads `mm.0` and `mm.2` (llama.cpp #3637: "missing mm.0.weight"); the legacy
`convert_image_encoder_to_gguf.py` writes those, and so does this. As that script does, the vision tower is written up
to its feature layer (`vision_feature_layer=-2`: the last layer and the post-layernorm are never used), 2-D weights
in f16, the patch embedding in f16 (ggml's convolution needs it), everything else in f32. The language model's q and
k weights are permuted from Hugging Face's rotary layout to llama.cpp's, as `convert_hf_to_gguf.py` does. Tensors are
read one at a time from the shards and streamed to the file, so a 7B model is never whole in memory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr_vqa.errors import UserError
from cxr_vqa.files import share
from finetune.gguf_vocab import add_tokenizer

# the layouts of LlavaForConditionalGeneration's checkpoint names (the Hub's, transformers 5's, its module tree's), to
# one: language_model.*, lm_head.*, vision_tower.*, multi_modal_projector.*
RENAMES = [(r"^model\.(language_model|vision_tower|multi_modal_projector)\.", r"\1."),
           (r"^language_model\.model\.", "language_model."), (r"^language_model\.lm_head\.", "lm_head."),
           (r"^vision_tower\.vision_model\.", "vision_tower.")]  # fmt: skip
PROJECTOR = {"linear_1": "mm.0", "linear_2": "mm.2"}  # what clip.cpp's mlp projector reads (llama.cpp #3637)
SKIPPED = re.compile(r"vision_tower\.(post_layernorm\..*|embeddings\.position_ids)|.*rotary_emb\.inv_freq")
TOKENIZER_KINDS = ("llama", "gpt2")


class ExportRefused(UserError):
    """What llama.cpp's LLaVA-1.5 route would lose or could not load; one line, nothing written."""


@dataclass
class Checkpoint:
    """A merged LLaVA-1.5 checkpoint on disk: its config and, for each tensor (under its canonical name), the shard
    that holds it."""

    folder: Path
    config: dict
    shards: dict[str, tuple[Path, str]] = field(default_factory=dict)  # canonical name -> (file, name in the file)

    @property
    def text(self) -> dict:
        return self.config["text_config"]

    @property
    def vision(self) -> dict:
        return self.config["vision_config"]

    @property
    def vision_layers(self) -> int:
        """Vision layers llama.cpp runs: up to the feature layer (23 of CLIP-L's 24 at vision_feature_layer -2)."""
        layer = self.config.get("vision_feature_layer", -2)
        return layer if layer >= 0 else self.vision["num_hidden_layers"] + layer + 1

    def tensor(self, name: str) -> np.ndarray:
        from safetensors import safe_open

        file, key = self.shards[name]
        with safe_open(file, framework="pt") as handle:
            return handle.get_tensor(key).float().numpy()


def canonical(name: str) -> str:
    for pattern, replacement in RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def read_checkpoint(folder: str | Path) -> Checkpoint:
    """The checkpoint's config and tensor index; refuses what the route cannot carry whole (ExportRefused)."""
    from safetensors import safe_open

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    checkpoint = Checkpoint(folder, config)
    check_config(config)
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(file, framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                checkpoint.shards[canonical(key)] = (file, key)
    if not checkpoint.shards:
        raise ExportRefused(f"{folder} has no safetensors weights: save the merged model with save_pretrained")
    names = set(checkpoint.shards)
    unmapped = sorted(n for n in names if gguf_name(checkpoint, n) is None)
    if unmapped:
        raise ExportRefused(f"{len(unmapped)} tensor(s) map to nothing llama.cpp's LLaVA-1.5 loads, e.g. "
                            f"{unmapped[0]}: they would be lost in the export (llama.cpp #7823)")  # fmt: skip
    for needed in ("multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.bias",
                   "multi_modal_projector.linear_2.weight", "multi_modal_projector.linear_2.bias"):  # fmt: skip
        if needed not in names:
            raise ExportRefused(f"{needed} is missing: llama.cpp's mlp projector needs both layers with biases")
    return checkpoint


def check_config(config: dict) -> None:
    """LLaVA-1.5 exactly: what llama.cpp's mlp projector graph computes, or a refusal that says what differs."""
    text, vision = config.get("text_config") or {}, config.get("vision_config") or {}
    problems = []
    if config.get("model_type") != "llava" or text.get("model_type", "llama") != "llama":
        problems.append(f"model_type {config.get('model_type')}/{text.get('model_type')} (a LLaVA-1.5 is llava/llama)")
    if vision.get("model_type", "clip_vision_model") != "clip_vision_model":
        problems.append(f"vision tower {vision.get('model_type')} (LLaVA-1.5's is CLIP)")
    if config.get("vision_feature_select_strategy", "default") != "default":
        problems.append("vision_feature_select_strategy 'full' (llama.cpp drops the CLS feature)")
    if not isinstance(config.get("vision_feature_layer", -2), int):
        problems.append("several vision feature layers (LLaVA-1.5 takes one)")
    if config.get("projector_hidden_act", "gelu") != "gelu" or config.get("multimodal_projector_bias") is False:
        problems.append("a projector other than linear-GELU-linear with biases")
    if text.get("rope_scaling") or (text.get("rope_parameters") or {}).get("rope_type", "default") != "default":
        problems.append("scaled rotary positions")
    if problems:
        raise ExportRefused("not the LLaVA-1.5 architecture llama.cpp's mlp projector serves: " + "; ".join(problems))


def gguf_name(checkpoint: Checkpoint, name: str) -> str | None:
    """The GGUF tensor name of a canonical checkpoint name (language model or mmproj), or None."""
    import gguf

    if SKIPPED.fullmatch(name):
        return "unused"  # the post-layernorm (hidden_states[-2] comes before it), buffers
    stem, _, suffix = name.rpartition(".")
    if name.startswith("multi_modal_projector."):
        layer = PROJECTOR.get(stem.removeprefix("multi_modal_projector."))
        return f"{layer}.{suffix}" if layer else None
    if name.startswith("vision_tower."):
        match = re.match(r"vision_tower\.encoder\.layers\.(\d+)\.", name)
        if match and int(match[1]) >= checkpoint.vision_layers:
            return "unused"  # past the feature layer: never computed, by transformers either
        table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, checkpoint.vision["num_hidden_layers"])
        found = table.get_name("vision_tower.vision_model." + name.removeprefix("vision_tower."), (".weight", ".bias"))
        return found
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, checkpoint.text["num_hidden_layers"])
    key = name if name.startswith("lm_head") else "model." + name.removeprefix("language_model.")
    return table.get_name(key, (".weight", ".bias"))


def permute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rotary layout (halves) to llama.cpp's (pairs), as convert_hf_to_gguf.py's LlamaModel.permute."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _stream(path: Path, writer, tensors: list[tuple[str, str, np.dtype]], read) -> Path:
    """Write `tensors` (gguf name, checkpoint name, dtype) one at a time after the header: `read(name)` gives each."""
    shapes = {}
    for gname, cname, dtype in tensors:
        shape = read(cname, shape_only=True)
        shapes[gname] = shape
        writer.add_tensor_info(gname, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
    partial = path.with_name(path.name + ".partial")
    writer.write_header_to_file(partial)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _gname, cname, dtype in tensors:
        writer.write_tensor_data(np.ascontiguousarray(read(cname).astype(dtype)))
    writer.close()
    partial.replace(path)  # a killed export leaves no file that looks whole
    return share(path)


def _reader(checkpoint: Checkpoint, transform=None):
    from safetensors import safe_open

    def read(name: str, shape_only: bool = False):
        file, key = checkpoint.shards[name]
        with safe_open(file, framework="pt") as handle:
            if shape_only:
                shape = handle.get_slice(key).get_shape()
                return tuple(shape) if name != "vision_tower.embeddings.class_embedding" else (shape[-1],)
            data = handle.get_tensor(key).float().numpy()
        return transform(name, data) if transform else data

    return read


def write_language_model(checkpoint: Checkpoint, path: str | Path, name: str = "llava-1.5") -> Path:
    """The language model (f16 weights, f32 norms) with its tokenizer and the project's serving template."""
    import gguf

    from cxr_vqa.llama_server import SERVE_TEMPLATE

    text, path = checkpoint.text, Path(path)
    heads, kv_heads = text["num_attention_heads"], text.get("num_key_value_heads") or text["num_attention_heads"]
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    writer = gguf.GGUFWriter(None, "llama")
    writer.add_name(name)
    writer.add_context_length(text.get("max_position_embeddings", 4096))
    writer.add_embedding_length(text["hidden_size"])
    writer.add_block_count(text["num_hidden_layers"])
    writer.add_feed_forward_length(text["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    theta = text.get("rope_theta") or (text.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(text.get("rms_norm_eps", 1e-5)))
    writer.add_vocab_size(text["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    add_tokenizer(writer, checkpoint.folder, text["vocab_size"])
    writer.add_chat_template(SERVE_TEMPLATE)

    def transform(cname: str, data: np.ndarray) -> np.ndarray:
        if cname.endswith("self_attn.q_proj.weight"):
            return permute(data, heads)
        if cname.endswith("self_attn.k_proj.weight"):
            return permute(data, kv_heads)
        return data

    names = [n for n in sorted(checkpoint.shards, key=_order) if n.startswith(("language_model.", "lm_head."))]
    tensors = [(gguf_name(checkpoint, n), n, np.float16 if n.endswith(".weight") and "norm" not in n else np.float32)
               for n in names]  # fmt: skip
    return _stream(path, writer, tensors, _reader(checkpoint, transform))


def write_mmproj(checkpoint: Checkpoint, path: str | Path, image_mean=None, image_std=None) -> Path:
    """The vision tower up to its feature layer and the projector, with the keys clip.cpp reads for LLaVA-1.5."""
    import gguf

    vision, path = checkpoint.vision, Path(path)
    processor = _processor_config(checkpoint.folder)
    writer = gguf.GGUFWriter(None, "clip")
    writer.add_name("llava-1.5 vision tower and projector")
    writer.add_description("image encoder for LLaVA")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_text_encoder", False)
    writer.add_bool("clip.has_llava_projector", True)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_uint32("clip.vision.image_size", vision["image_size"])
    writer.add_uint32("clip.vision.patch_size", vision["patch_size"])
    writer.add_uint32("clip.vision.embedding_length", vision["hidden_size"])
    writer.add_uint32("clip.vision.feed_forward_length", vision["intermediate_size"])
    writer.add_uint32("clip.vision.projection_dim", vision.get("projection_dim", checkpoint.text["hidden_size"]))
    writer.add_uint32("clip.vision.attention.head_count", vision["num_attention_heads"])
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", float(vision.get("layer_norm_eps", 1e-5)))
    writer.add_uint32("clip.vision.block_count", checkpoint.vision_layers)
    writer.add_array("clip.vision.feature_layer", [checkpoint.vision_layers])
    writer.add_array("clip.vision.image_mean", list(image_mean or processor.get("image_mean")))
    writer.add_array("clip.vision.image_std", list(image_std or processor.get("image_std")))
    writer.add_bool("clip.use_gelu", vision.get("hidden_act", "quick_gelu") == "gelu")

    def dtype(cname: str, gname: str):
        return np.float16 if gname.endswith(".weight") and ("patch_embd" in gname or _is_matrix(cname)) else np.float32

    names = [n for n in sorted(checkpoint.shards, key=_order) if n.startswith(("vision_tower.", "multi_modal_"))]
    tensors = [(g, n, dtype(n, g)) for n in names if (g := gguf_name(checkpoint, n)) not in (None, "unused")]
    read = _reader(checkpoint, lambda n, d: d.reshape(-1) if n.endswith("class_embedding") else d)
    return _stream(path, writer, tensors, read)


def _is_matrix(name: str) -> bool:
    return not re.search(r"(layer_?norm|pre_layrnorm)", name) and not name.endswith(("bias", "class_embedding"))


def _order(name: str) -> tuple:
    """Layers in numeric order (10 after 9), as the converters write them."""
    return tuple(int(p) if p.isdigit() else p for p in name.split("."))


def _processor_config(folder: Path) -> dict:
    for file in ("preprocessor_config.json", "processor_config.json"):
        if (folder / file).is_file():
            data = json.loads((folder / file).read_text(encoding="utf-8"))
            data = data.get("image_processor", data)
            if "image_mean" in data:
                return data
    raise ExportRefused(f"{folder} has no image processor config (image_mean, image_std): save the processor beside "
                        "the weights")  # fmt: skip

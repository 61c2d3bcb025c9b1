"""Write a tiny LLaVA-1.5-architecture checkpoint with random weights, fully offline.

    python -m finetune.tiny_model OUT                          # tests and smoke runs (hidden 64, 2 layers)
    python -m finetune.tiny_model OUT --hidden 512 --layers 4  # benchmarks: small enough for CPU, not trivial
    python -m finetune.tiny_model OUT --patch-size 28 --sincos-positions --layers 4  # learn_synthetic: 144 tokens
    python -m finetune.tiny_model OUT --llama-tokenizer        # the 7B model's real tokenizer and processor files

The checkpoint has the real LLaVA-1.5 geometry where it matters: a CLIP vision tower at 336 px with 14 px patches
(576 image tokens, `vision_feature_layer=-2`), a GELU projector and a Llama language model, plus a processor
(CLIP image processor + a byte-level BPE tokenizer trained here with `tokenizers`, holding `<image>`, `<s>`, `</s>`,
`<pad>`). It loads with `from_pretrained` exactly like `llava-hf/llava-1.5-7b-hf`, so tests exercise the real path.
With `--llama-tokenizer` it gets the 7B model's own tokenizer and processor files instead (fetched with npm, see
`finetune/llama_tokenizer.py`) and its vocabulary ids: 32,064 embedding rows, `<image>` 32000, `<pad>` 32001.

A model that must learn to see in minutes on a CPU (bench/learn_synthetic.py) can take larger patches (fewer image
tokens, same 336 px input) and fixed 2-D sine-cosine position embeddings: CLIP's random init gives position
embeddings ~40x smaller than a patch's embedding, so after the tower's first LayerNorm a random tower barely knows
where anything is.
"""

from __future__ import annotations

import argparse
import itertools
import random
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from cxr_vqa.cli import user_errors
from cxr_vqa.files import share
from cxr_vqa.template import CHAT_TEMPLATE
from finetune import llama_tokenizer as llama

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
IMAGE_SIZE = 336

# Words the tokenizer should keep whole: the vocabulary of the synthetic reports and questions. Anything else still
# tokenizes (byte-level BPE covers every string), just in more pieces.
_WORDS = """
yes no the a an is are there of in on at with without and or not any evidence seen visible present image chest
film x-ray radiograph frontal lateral view pa ap patient heart size normal enlarged cardiomegaly cardiac silhouette
pleural effusion effusions blunted costophrenic angle angles consolidation opacity opacities lung lungs lesion
nodule mass edema pulmonary vascular congestion pneumonia atelectasis pneumothorax fracture rib ribs support device
devices tube line catheter pacemaker lead endotracheal enteric central venous what abnormalities abnormality are
seen acute finding findings no acute cardiopulmonary process clear mediastinum mediastinal contour within limits
left right bilateral base bases upper lower lobe mild moderate severe small large trace does show have this does
free focal airspace disease osseous structures intact impression describe which side where is there any sign signs
""".split()
_TEMPLATES = [
    "USER: <image>\nIs there {w}? ASSISTANT: Yes.</s>",
    "USER: <image>\nDoes this film show {w}? ASSISTANT: No.</s>",
    "What abnormalities are seen? {w} {v}.",
    "The {w} is {v}. No {v} {w}.",
]


def train_tokenizer(vocab_size: int = 1024, seed: int = 0) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a small generated corpus: deterministic and offline."""
    rng = random.Random(seed)
    corpus = [t.format(w=rng.choice(_WORDS), v=rng.choice(_WORDS)) for t in _TEMPLATES for _ in range(400)]
    corpus += [" ".join(rng.sample(_WORDS, 12)) for _ in range(800)]
    corpus += [w.capitalize() for w in _WORDS] + [w.upper() for w in _WORDS]

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    # Like Llama's tokenizer: BOS in front of every encoded text, nothing after.
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        model_max_length=4096,
    )


def sincos_position_embeddings(grid: int, dim: int, scale: float = 0.7) -> torch.Tensor:
    """(1 + grid*grid, dim) fixed 2-D sine-cosine positions (x in the first half, y in the second), a zero row for
    CLS; `scale` sets a row's norm (~4 at dim 64) near a patch embedding's (3-13 for flat patches of 14-28 px)."""
    quarter = dim // 4
    freqs = 1.0 / (100 ** (torch.arange(quarter) / quarter))
    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")

    def encode(coord: torch.Tensor) -> torch.Tensor:
        angles = coord.flatten()[:, None].float() * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.zeros(1 + grid * grid, dim)
    table[1:, : 4 * quarter] = torch.cat([encode(xs), encode(ys)], dim=1) * scale
    return table


def build_tiny_llava(
    out: str | Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    vision_hidden: int = 64,
    vision_layers: int = 2,
    patch_size: int = 14,
    sincos_positions: bool = False,
    position_scale: float = 0.7,
    image_mean: tuple[float, float, float] | None = None,
    seed: int = 0,
    llama_package: str | Path | None = None,
) -> Path:
    """Write model + processor to `out` and return the path. Widths >= 64 so bitsandbytes 4-bit works on CPU.
    `llama_package`: the tarball of `llama_tokenizer.fetch_package`, for the 7B model's tokenizer and ids."""
    if IMAGE_SIZE % patch_size:
        raise ValueError(f"patch_size must divide {IMAGE_SIZE}, got {patch_size}")
    out = Path(out)
    torch.manual_seed(seed)
    if llama_package:
        vocab_size, image_token_id, pad = llama.EMBEDDING_ROWS, llama.IMAGE_TOKEN_ID, llama.PAD_TOKEN_ID
        bos, eos = 1, 2
    else:
        tokenizer = train_tokenizer(seed=seed)
        vocab_size, image_token_id = len(tokenizer), tokenizer.convert_tokens_to_ids("<image>")
        bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id

    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=patch_size,
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_hidden_layers=vision_layers,
        num_attention_heads=4,
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_seq_length=(IMAGE_SIZE // patch_size) ** 2,  # 576 at LLaVA-1.5's 14 px
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config).eval()
    # Random init gives near-zero logits everywhere; a larger spread makes greedy decoding of the untrained model
    # produce varied, non-degenerate text, closer to how a real base model disagrees with a fine-tuned one.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 0.5)
        if sincos_positions:
            positions = model.model.vision_tower.embeddings.position_embedding.weight
            positions.copy_(sincos_position_embeddings(IMAGE_SIZE // patch_size, vision_hidden, position_scale))
    model.generation_config.pad_token_id = pad
    model.generation_config.eos_token_id = eos
    model.generation_config.bos_token_id = bos
    model.save_pretrained(out)  # config.json first: it tells transformers how to read the tokenizer files
    if llama_package:
        return share(llama.write_processor_files(out, llama_package, patch_size=patch_size))

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_mean=[0.48145466, 0.4578275, 0.40821073] if image_mean is None else list(image_mean),
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return share(out)  # safetensors saves 0600


def _three_floats(text: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="directory to write the checkpoint to")
    parser.add_argument("--hidden", type=int, default=64, help="language model width (>= 64)")
    parser.add_argument("--layers", type=int, default=2, help="language model layers")
    parser.add_argument("--vision-hidden", type=int, default=64, help="vision tower width (>= 64)")
    parser.add_argument("--vision-layers", type=int, default=2, help="vision tower layers (>= 2: layer -2 is used)")
    parser.add_argument(
        "--patch-size", type=int, default=14, help=f"vision patch px; must divide {IMAGE_SIZE} (14: 576 tokens)"
    )
    parser.add_argument(
        "--sincos-positions", action="store_true", help="fixed 2-D sine-cosine vision positions instead of random"
    )
    parser.add_argument(
        "--position-scale",
        type=float,
        default=0.7,
        help="sine-cosine position size: a row's norm is scale * sqrt(width / 2)",
    )
    parser.add_argument(
        "--image-mean",
        type=_three_floats,
        default=None,
        help="the processor's pixel means R,G,B (default CLIP's 0.48,0.46,0.41)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--llama-tokenizer", action="store_true", help=f"the 7B model's tokenizer (from npm {llama.NPM_PACKAGE})"
    )
    args = parser.parse_args(argv)
    if min(args.hidden, args.vision_hidden) < 64 or args.vision_layers < 2:
        parser.error("widths must be >= 64 (4-bit blocks) and the vision tower needs >= 2 layers")
    if args.patch_size < 1 or IMAGE_SIZE % args.patch_size:
        parser.error(f"--patch-size must divide {IMAGE_SIZE} (e.g. 14, 28, 56), got {args.patch_size}")
    if args.image_mean and args.llama_tokenizer:
        parser.error("--image-mean applies to the tiny tokenizer's processor; --llama-tokenizer writes the 7B one")
    options = vars(args)  # the other flags are build_tiny_llava's keyword arguments
    with user_errors(), tempfile.TemporaryDirectory() as npm_dir:
        package = llama.fetch_package(npm_dir) if options.pop("llama_tokenizer") else None
        out = build_tiny_llava(**options, llama_package=package)
    n_files = sum(1 for _ in itertools.islice(out.iterdir(), 100))
    print(f"wrote a tiny LLaVA-1.5 checkpoint ({n_files} files) to {out}")


if __name__ == "__main__":
    main()

"""The processor files of llava-hf/llava-1.5-7b-hf, with its real tokenizer, built offline: the Llama-1/2
SentencePiece-BPE vocabulary (32,000 pieces, 61,249 merges) comes from the npm package llama-tokenizer-js, which
embeds Meta's vocabulary; it is fetched with `npm pack` when needed and never committed.

    python -m finetune.tiny_model OUT --llama-tokenizer   # a tiny random LLaVA that tokenizes like the 7B model

The files say what the Hub snapshot says, so transformers loads them the way it loads the 7B model's (for a `llava`
config, `TokenizersBackend` straight from `tokenizer.json`): a BPE model with byte fallback, a normalizer that puts
"▁" in front of every text between special tokens and for every space, `<s>` in front of each text, a decoder that
strips the leading space again; `<image>` 32000 and `<pad>` 32001 added after the 32,000 pieces. `old_snapshot=True`
writes the pre-2025 form: no `num_additional_image_tokens` (so a film expands to 575 tokens against 576 features
unless the loader repairs it) and no `extra_special_tokens` (so `<image>` is not among `all_special_tokens`).
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

from cxr_vqa.errors import UserError

NPM_PACKAGE = "llama-tokenizer-js@1.2.2"
PIECES, MERGES = 32_000, 61_249
IMAGE_TOKEN_ID, PAD_TOKEN_ID = 32_000, 32_001
SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")
EMBEDDING_ROWS = 32_064  # llava-1.5-7b-hf's text vocab_size: its embeddings have rows past the tokenizer's 32,002
# A chat template in the Hub's style (no </s> after answers), so that nothing can lean on the file's template: the
# project renders every prompt with its own (cxr_vqa/template.py), and load_processor sets that one.
HUB_STYLE_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for c in message['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


class TokenizerSourceError(UserError):
    """npm, the registry or the package cannot give the Llama vocabulary; the message says what to install."""


def fetch_package(dest: str | Path) -> Path:
    """`npm pack` the package into `dest` (once: an existing tarball there is reused) and return the tarball."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if found := sorted(dest.glob("llama-tokenizer-js-*.tgz")):
        return found[-1]
    npm = shutil.which("npm")
    if npm is None:
        raise TokenizerSourceError(
            f"npm not found: the real Llama tokenizer is built from the npm package {NPM_PACKAGE}; "
            "install Node.js and npm (e.g. `apt-get install npm`)"
        )
    try:
        done = subprocess.run(
            [npm, "pack", NPM_PACKAGE, "--pack-destination", str(dest), "--silent"],
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise TokenizerSourceError(f"`npm pack {NPM_PACKAGE}` took over 180 s: can npm reach its registry?") from None
    tarball = dest / (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode != 0 or not tarball.is_file():
        why = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise TokenizerSourceError(f"`npm pack {NPM_PACKAGE}` failed ({why}): is the npm registry reachable?")
    return tarball


def read_vocabulary(tarball: str | Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(the 32,000 pieces in id order, the 61,249 merges in priority order) from the package's JavaScript source,
    where they sit as base64 constants: pieces joined by newlines, merges as little-endian uint16 pairs of ids."""
    with tarfile.open(tarball) as tar:
        source = tar.extractfile("package/llama-tokenizer.js").read().decode("utf-8")

    def constant(name: str) -> bytes:
        match = re.search(rf'const {name} = "([A-Za-z0-9+/=]+)"', source)
        if match is None:
            raise TokenizerSourceError(f"{tarball} has no {name}: not the package {NPM_PACKAGE}")
        return base64.b64decode(match.group(1))

    pieces = constant("llama_vocab_base64").decode("utf-8").split("\n")
    raw = constant("llama_merges_binary")
    ids = struct.unpack(f"<{len(raw) // 2}H", raw)
    merges = [(pieces[a], pieces[b]) for a, b in zip(ids[::2], ids[1::2], strict=True)]
    if (len(pieces), len(set(pieces)), len(merges)) != (PIECES, PIECES, MERGES):
        raise TokenizerSourceError(
            f"{tarball} holds {len(pieces)} pieces and {len(merges)} merges, not Llama's {PIECES} and {MERGES}"
        )
    return pieces, merges


def build_tokenizer(pieces: list[str], merges: list[tuple[str, str]]):
    """The `tokenizers` pipeline of the 7B model's tokenizer.json."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    tok = Tokenizer(
        models.BPE(
            vocab={p: i for i, p in enumerate(pieces)}, merges=merges, unk_token="<unk>", fuse_unk=True,
            byte_fallback=True,
        )
    )  # fmt: skip
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<image>", "<pad>")])
    if (tok.token_to_id("<image>"), tok.token_to_id("<pad>")) != (IMAGE_TOKEN_ID, PAD_TOKEN_ID):
        raise TokenizerSourceError("the added tokens did not get llava-1.5's ids: the vocabulary is not Llama's")
    return tok


def write_processor_files(out: str | Path, tarball: str | Path, *, patch_size: int = 14, old_snapshot=False) -> Path:
    """Write the 7B model's tokenizer and processor files into `out` (beside a config.json with model_type llava:
    transformers picks the tokenizer class from it, as it does for the Hub repository)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(*read_vocabulary(tarball)).save(str(out / "tokenizer.json"))
    added = {
        str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                 "special": True}
        for i, t in [(0, "<unk>"), (1, "<s>"), (2, "</s>"), (IMAGE_TOKEN_ID, "<image>"), (PAD_TOKEN_ID, "<pad>")]
    }  # fmt: skip
    tokenizer_config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "extra_special_tokens": {"image_token": "<image>"},
        "legacy": False,
        "pad_token": "<pad>",
        "padding_side": "left",
        "processor_class": "LlavaProcessor",
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    processor_config = {
        "image_token": "<image>",
        "num_additional_image_tokens": 1,  # CLIP's CLS: 576 patches + CLS, minus CLS under the "default" strategy
        "patch_size": patch_size,
        "processor_class": "LlavaProcessor",
        "vision_feature_select_strategy": "default",
    }
    if old_snapshot:
        del tokenizer_config["extra_special_tokens"], processor_config["num_additional_image_tokens"]
    preprocessor_config = {
        "crop_size": {"height": 336, "width": 336},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "CLIPImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "processor_class": "LlavaProcessor",
        "resample": 3,  # bicubic
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": 336},
    }
    files = {
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": {k: tokenizer_config[k] for k in SPECIAL_KEYS},
        "processor_config.json": processor_config,
        "preprocessor_config.json": preprocessor_config,
        "chat_template.json": {"chat_template": HUB_STYLE_TEMPLATE},
    }
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    return out

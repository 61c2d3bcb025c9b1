"""A checkpoint's tokenizer (its `tokenizer.json`) as llama.cpp's GGUF vocabulary, for `finetune.gguf_convert`.

Two kinds are carried, each as llama.cpp tokenizes it:
- `llama`: Llama's SentencePiece-BPE with byte fallback (llava-1.5-7b-hf, and the tiny checkpoint built with its
  tokenizer). llama.cpp's SPM tokenizer merges the pair whose result has the highest score, so each piece scores
  minus the rank of the merge that makes it: the order `tokenizer.json`'s merges give (a Hub snapshot's
  `tokenizer.model` gives the same order). Byte pieces are BYTE, `<unk>` UNKNOWN, special tokens CONTROL, other added
  tokens USER_DEFINED; rows past the tokenizer (llava-1.5-7b-hf's 32,064 embedding rows against 32,002 tokens) are
  `[PADn]` placeholders, as `convert_hf_to_gguf.py` writes them.
- `gpt2`: a byte-level BPE whose pre-tokenizer is GPT-2's (the tiny test checkpoint's, trained on the spot), with its
  merges and llama.cpp's `gpt-2` pre-tokenizer: the same regular expression, so no hash of a known tokenizer is needed.
Anything else is refused in one line: llama.cpp would tokenize the prompts differently from the model's training.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cxr_vqa.errors import UserError

BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def tokenizer_kind(data: dict) -> str:
    """`llama` or `gpt2` for a tokenizer.json llama.cpp can reproduce; UserError otherwise."""
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    pres = pre.get("pretokenizers", [pre]) if pre else []
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return "llama"
    if model.get("type") == "BPE" and any(p.get("type") == "ByteLevel" and p.get("use_regex", True) for p in pres):
        return "gpt2"
    raise UserError(f"a {model.get('type')} tokenizer with pre-tokenizer {pre.get('type')}: llama.cpp's GGUF route "
                    "carries Llama's SentencePiece-BPE or a GPT-2 byte-level BPE only")  # fmt: skip


def _token_id(value, ids: dict[str, int]) -> int | None:
    if isinstance(value, dict):
        value = value.get("content")
    return ids.get(value) if value else None


def add_tokenizer(writer, folder: Path, vocab_size: int) -> str:
    """Write the vocabulary, its merges or scores, and its special tokens to `writer`; returns its kind."""
    import gguf
    from tokenizers import Tokenizer

    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    kind = tokenizer_kind(data)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    vocab: dict[str, int] = dict(data["model"]["vocab"])
    added = {a["content"]: a for a in data.get("added_tokens", [])}
    ids = vocab | {content: a["id"] for content, a in added.items()}
    size = max(vocab_size, max(ids.values()) + 1)
    if size > vocab_size:
        raise UserError(f"the tokenizer has {size} tokens but the model {vocab_size} embedding rows")
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"].get("merges", [])]
    rank = {m.replace(" ", ""): i for i, m in reversed(list(enumerate(merges)))}  # a piece's first merge
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    scores = [-1e9] * size
    for piece, i in vocab.items():
        tokens[i], types[i] = piece, gguf.TokenType.NORMAL
        if kind == "llama":
            scores[i] = -float(rank.get(piece, len(merges) + i)) if len(piece) > 1 else 0.0
            if BYTE_PIECE.fullmatch(piece):
                types[i] = gguf.TokenType.BYTE
    for content, a in added.items():
        tokens[a["id"]] = content
        types[a["id"]] = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
        scores[a["id"]] = 0.0
    special = {key: _token_id(config.get(f"{key}_token"), ids) for key in ("bos", "eos", "unk", "pad")}
    if special["unk"] is not None and kind == "llama":
        types[special["unk"]] = gguf.TokenType.UNKNOWN
    writer.add_tokenizer_model(kind)
    writer.add_tokenizer_pre("default" if kind == "llama" else "gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    if kind == "llama":
        writer.add_token_scores(scores)
        writer.add_add_space_prefix(True)  # Llama's normalizer: "▁" in front of each text between special tokens
    else:
        writer.add_token_merges(merges)
    for key, token in special.items():
        if token is not None:
            getattr(writer, f"add_{key}_token_id")(token)
    encoded = Tokenizer.from_str(json.dumps(data)).encode("a").ids
    writer.add_add_bos_token(bool(encoded) and encoded[0] == special["bos"])
    writer.add_add_eos_token(bool(encoded) and encoded[-1] == special["eos"])
    return kind

"""Merge a trained LoRA adapter into its base and save a plain 16-bit LLaVA checkpoint, for serving without PEFT.

    python -m finetune.merge runs/llava-cxr runs/llava-cxr/merged            # base read from adapter_config.json
    python -m finetune.merge runs/llava-cxr OUT --base llava-hf/llava-1.5-7b-hf --dtype bfloat16
    python -m finetune --config ... --merge                                  # the same, right after training

The base is reloaded unquantized: LoRA deltas cannot be folded into 4-bit weights. A model trained as QLoRA then
differs slightly from the merged one (the adapter learned on top of rounded weights); serve the adapter on the 4-bit
base when exact parity matters. Merging runs on CPU, so it needs RAM for one 16-bit copy (about 14 GB for 7B), not
GPU memory.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from cxr_vqa.cli import user_errors
from cxr_vqa.files import share
from cxr_vqa.model import attach_adapter, load_base_model, load_processor
from cxr_vqa.sources import ADAPTER, ModelLoadError, resolve

logger = logging.getLogger(__name__)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def adapter_base(adapter: str | Path) -> str:
    """The base model an adapter was trained on, from its adapter_config.json."""
    base = resolve(str(adapter), ADAPTER).config.get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{adapter}/adapter_config.json does not name its base model: pass --base")
    return base


def merge_adapter(base: str, adapter: str | Path, out: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write base + adapter, merged, with the processor (and the project template), to `out`."""
    out = Path(out)
    base = resolve(base)  # checked once for both loads
    processor = load_processor(base)
    model = load_base_model(base, load_in_4bit=False, device="cpu", dtype=dtype)
    merged = attach_adapter(model, str(adapter)).merge_and_unload()
    merged.save_pretrained(out)
    processor.save_pretrained(out)
    share(out)  # safetensors saves 0600
    logger.info("merged %s + %s into %s (%s)", base.name, adapter, out, dtype)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter", help="adapter directory written by `python -m finetune`")
    parser.add_argument("out", help="directory for the merged checkpoint")
    parser.add_argument("--base", help="base model (default: the one named in adapter_config.json)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16", help="dtype of the saved weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors():
        out = merge_adapter(args.base or adapter_base(args.adapter), args.adapter, args.out, DTYPES[args.dtype])
    print(f"wrote a merged {args.dtype} model to {out}: load it with cxr_vqa.model.load_model({str(out)!r})")


if __name__ == "__main__":
    main()

"""Export a LLaVA-1.5 base, or a base with its fine-tuned adapter, for llama.cpp: a laptop, a Mac, a CPU Space.

    python -m finetune.export_gguf --base llava-hf/llava-1.5-7b-hf --adapter runs/llava-cxr --out runs/gguf-q4
    python -m finetune.export_gguf --adapter runs/llava-cxr --out runs/gguf-q8 --quant q8_0   # base from the adapter
    python -m finetune.export_gguf --base runs/demo/speaking-base/merged --out runs/gguf-base --quant f16

OUT then holds `model-<quant>.gguf` (the language model), `mmproj-f16.gguf` (the vision tower and projector), an
Ollama `Modelfile`, `chat_template.jinja` and `export.json` (written last: a folder without it is unfinished). Serve
it with `python -m cxr_vqa.gguf_serve OUT`, or let the app start it: `python app.py --gguf tuned=OUT`.

The adapter is merged into a 16-bit base first (`finetune.merge`: LoRA cannot be folded into quantized weights, as
llama.cpp and Ollama advise for QLoRA), and both files are written from the merged model, so a trained projector
(`modules_to_save`, the demo's recipe) or LoRA on the vision tower goes into the mmproj instead of being left behind
(llama.cpp #14867). What the route cannot carry is refused in one line before anything is written: a module no
llama.cpp tensor name maps (#7823), a projector without `mm.0` / `mm.2` (#3637), a tokenizer llama.cpp would split
differently, another vision feature strategy. Once written, every tensor is read back and checked against the merged
model (the mmproj's and the f16 language model's values exactly, a quantized model's names). Quantization (q8_0,
q4_k_m) is llama.cpp's own (`llama_model_quantize` of llama-cpp-python); f16 needs only the `gguf` package. A killed
export resumes: the merged model and the f16 language model under OUT/.work are reused when made from the same
inputs.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
from pathlib import Path

import numpy as np

from cxr_vqa.cli import user_errors
from cxr_vqa.errors import UserError
from cxr_vqa.files import write_text_atomic
from cxr_vqa.llama_server import EXPORT_FORMAT, MANIFEST, SERVE_TEMPLATE
from cxr_vqa.sources import ADAPTER, resolve
from finetune.gguf_convert import (
    ExportRefused,
    gguf_name,
    permute,
    read_checkpoint,
    write_language_model,
    write_mmproj,
)

QUANTS = {"f16": None, "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
MMPROJ = "mmproj-f16.gguf"
# Ollama's Go template for the project's LLaVA-1.5 turns (cxr_vqa/template.py): </s> after answers, none after the
# prompt; Ollama puts the film where its runner puts a message's images
MODELFILE = '''# Ollama: ollama create {name} -f Modelfile && ollama run {name} "Is there cardiomegaly? ./film.png"
# A research demo model, not for diagnosis. Not run here (no Ollama on the machines this was built on).
FROM ./{model}
FROM ./{mmproj}
TEMPLATE """{{{{- range .Messages }}}}{{{{- if eq .Role "user" }}}}USER: {{{{ .Content }}}} \
{{{{ else if eq .Role "assistant" }}}}ASSISTANT: {{{{ .Content }}}}</s>{{{{ end }}}}{{{{- end }}}}ASSISTANT:"""
PARAMETER stop "</s>"
PARAMETER temperature 0
PARAMETER repeat_penalty 1
PARAMETER num_ctx 4096
'''


def fingerprint(base: str, adapter: str | None) -> dict:
    """What the reusable work was made from, by content (`cxr_vqa.identity`, digests cached): a base or an adapter
    rewritten in place (retrained, rebuilt) invalidates it, whatever its path."""
    from cxr_vqa.identity import model_identity

    return {"base": base, "adapter": adapter, "base_content": model_identity(base),
            "adapter_content": model_identity(adapter, ADAPTER) if adapter else None}  # fmt: skip


def merged_source(base: str, adapter: str | None, work: Path, made_from: dict) -> Path:
    """The 16-bit checkpoint to export: the base's own folder, or base + adapter merged into `work`/merged
    (`made_from`: their `fingerprint`)."""
    if adapter is None:
        source = resolve(base)
        if source.local:
            return Path(source.name)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source.name, allow_patterns=["*.json", "*.safetensors", "tokenizer*"]))
    config = resolve(adapter, ADAPTER).config
    if config.get("peft_type", "LORA") != "LORA":
        raise ExportRefused(f"{adapter} is a {config.get('peft_type')} adapter: only LoRA merges into the weights")
    merged, done = work / "merged", work / "merged.json"
    if done.is_file() and json.loads(done.read_text()) == made_from:
        print(f"reusing the merged model in {merged}")
        return merged
    from finetune.merge import merge_adapter

    done.unlink(missing_ok=True)  # the old merge is being replaced: a kill now must not leave it marked done
    shutil.rmtree(merged, ignore_errors=True)
    print(f"merging {adapter} into a 16-bit {base} (RAM for one 16-bit copy: about 14 GB for the 7B)")
    merge_adapter(base, adapter, merged)
    write_text_atomic(done, json.dumps(made_from))
    return merged


def quantize(source: Path, target: Path, quant: str) -> Path:
    """llama.cpp's quantizer, as `llama-quantize` runs it (K-quants fall back where rows are not 256-divisible)."""
    try:
        import llama_cpp
    except ImportError:
        raise UserError(f"--quant {quant} needs llama.cpp's quantizer: pip install llama-cpp-python==0.3.36 (it "
                        "compiles llama.cpp, minutes), or export --quant f16") from None  # fmt: skip
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    params.nthread = os.cpu_count() or 1
    partial = target.with_name(target.name + ".partial")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
        raise UserError(f"llama.cpp could not quantize {source} to {quant}")
    partial.replace(target)
    return target


def verify(checkpoint, model: Path, mmproj: Path, exact_model: bool) -> None:
    """Read both files back: every tensor the checkpoint maps is there (nothing lost), and the mmproj's values (and
    the f16 model's) are the merged model's, cast as written; ExportRefused otherwise."""
    from gguf import GGUFReader

    from finetune.gguf_convert import _reader

    heads = checkpoint.text["num_attention_heads"]
    kv_heads = checkpoint.text.get("num_key_value_heads") or heads
    read = _reader(checkpoint)
    for path, prefix, exact in ((mmproj, ("vision_tower.", "multi_modal_"), True),
                                (model, ("language_model.", "lm_head."), exact_model)):  # fmt: skip
        written = {t.name: t for t in GGUFReader(path).tensors}
        expected = {g: n for n in checkpoint.shards if n.startswith(prefix)
                    if (g := gguf_name(checkpoint, n)) not in (None, "unused")}  # fmt: skip
        if missing := sorted(set(expected) - set(written)):
            raise ExportRefused(f"{path.name} lacks {len(missing)} tensor(s) of the merged model, e.g. {missing[0]}")
        for gname, cname in expected.items() if exact else ():
            want = read(cname).reshape(-1) if cname.endswith("class_embedding") else read(cname)
            if cname.endswith(("q_proj.weight", "k_proj.weight")) and cname.startswith("language_model."):
                want = permute(want, heads if "q_proj" in cname else kv_heads)
            got = np.asarray(written[gname].data)
            if not np.array_equal(got.reshape(want.shape), want.astype(got.dtype)):
                raise ExportRefused(f"{path.name}: {gname} does not hold the merged model's {cname}")


def export(base: str, adapter: str | None, out: str | Path, quant: str = "q4_k_m", keep_work: bool = False) -> Path:
    out = Path(out)
    work = out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # unfinished until written again
    made_from = fingerprint(base, adapter)
    source = merged_source(base, adapter, work, made_from)
    checkpoint = read_checkpoint(source)  # refusals come here, before any GGUF is written
    model = out / f"model-{quant}.gguf"
    f16 = model if quant == "f16" else work / "model-f16.gguf"
    f16_done = work / "model-f16.json"
    if not (f16.is_file() and f16_done.is_file() and json.loads(f16_done.read_text()) == made_from):
        f16_done.unlink(missing_ok=True)
        print(f"writing the language model ({checkpoint.text['num_hidden_layers']} layers) to {f16.name}")
        write_language_model(checkpoint, f16, name=Path(base).name)
        write_text_atomic(f16_done, json.dumps(made_from))
    if quant != "f16":
        print(f"quantizing it to {quant} with llama.cpp")
        quantize(f16, model, quant)
    print("writing the vision tower and projector to " + MMPROJ)
    write_mmproj(checkpoint, out / MMPROJ)
    verify(checkpoint, model, out / MMPROJ, exact_model=quant == "f16")
    name = (Path(adapter).name if adapter else Path(base).name).lower().replace("_", "-") or "cxr"
    write_text_atomic(out / "Modelfile", MODELFILE.format(name=name, model=model.name, mmproj=MMPROJ))
    write_text_atomic(out / "chat_template.jinja", SERVE_TEMPLATE + "\n")
    manifest = {"format": EXPORT_FORMAT, "model": model.name, "mmproj": MMPROJ, "quant": quant,
                "source": f"{base} + {adapter}" if adapter else base}  # fmt: skip
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    write_text_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return out


def serve_commands(out: Path, name: str) -> list[str]:
    manifest = json.loads((out / MANIFEST).read_text())
    return [
        f"python -m cxr_vqa.gguf_serve {out} --port 8081 --name {name}     # llama-cpp-python, the project's template",
        f"python app.py --base none --gguf {name}={out}      # the app starts and stops that server itself",
        f"python -m evaluation --dataset DATA --base none --gguf {name}={out} --out REPORT",
        f"llama-server -m {out}/{manifest['model']} --mmproj {out}/{MMPROJ} --jinja --port 8081   # not run here",
        f"ollama create {name} -f {out}/Modelfile      # not run here",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m finetune.export_gguf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--base", help="the 16-bit base: Hub id or folder (default: the adapter's base)")
    parser.add_argument("--adapter", help="a LoRA adapter folder, merged into the base first")
    parser.add_argument("--out", required=True, help="the export folder")
    parser.add_argument("--quant", choices=sorted(QUANTS), default="q4_k_m", help="the language model's weights "
                        "(the mmproj stays f16, as llama.cpp ships LLaVA's)")  # fmt: skip
    parser.add_argument("--keep-work", action="store_true", help="keep OUT/.work (the merged model, the f16 file)")
    args = parser.parse_args(argv)
    if not (args.base or args.adapter):
        parser.error("give --base, --adapter, or both")
    with user_errors():
        if args.base is None:
            from finetune.merge import adapter_base

            args.base = adapter_base(args.adapter)
        out = export(args.base, args.adapter, args.out, args.quant, args.keep_work)
    name = "tuned" if args.adapter else "base"
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir() if p.is_file()))}\nserve it:")
    print("\n".join(f"  {line}" for line in serve_commands(out, name)))


if __name__ == "__main__":
    main()

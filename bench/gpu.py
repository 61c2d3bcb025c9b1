"""GPU numbers for the real LLaVA-1.5-7B architecture without downloading it: random weights built from the
llava-hf/llava-1.5-7b-hf config, saved once, loaded back in 4-bit nf4 through the model core (the training and
serving path), then a QLoRA training step (the 7B recipe: LoRA r=64 on the language model, paged 8-bit AdamW,
activation checkpointing, bf16/fp16) and 4-bit decoding.

    python bench/gpu.py                                     # random checkpoint in a temp dir (~14 GB of disk)
    python bench/gpu.py --workdir /scratch/llava7b-random   # keep the checkpoint there and reuse it next time
    python bench/gpu.py --seq-len 700 --steps 5 --new-tokens 64 --batch 2

Random weights give meaningless text but real shapes, so memory and time are those of the real model. Inputs are
real: the 7B model's own tokenizer and processor files beside the weights (from the npm package, as the tests build
them: `finetune/llama_tokenizer.py`), an example film, and a multi-turn QA conversation through the training
collator (576 image tokens, labels on the answers only), with turns added until `--seq-len` tokens and cut there.
Needs one CUDA GPU with >= 16 GB free, and npm. Last line:
`RESULT qlora_step_s=<s> peak_train_gib=<GiB> decode_tok_s=<tokens/s>`.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

IMAGE_TOKEN = 32000  # llava-1.5-7b-hf's <image> id; 32001 is <pad>
GIB = 1024**3
FILM = Path(__file__).resolve().parents[1] / "assets" / "examples" / "cardiomegaly.png"
QA = [
    ("Is there cardiomegaly?", "Yes."),
    ("Is there a pleural effusion?", "No."),
    ("What abnormalities are seen?", "The cardiac silhouette is enlarged; the lungs are clear."),
]


def llava_7b_config():
    """The architecture of llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at 336 px, a 2-layer GELU projector, Vicuna-7B."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    text = LlamaConfig(
        vocab_size=32064,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
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


def build_random_checkpoint(out: Path, dtype: torch.dtype) -> Path:
    """Random 16-bit weights, initialised on the GPU (fast) and saved, so the 4-bit load below is the real one; the
    7B model's tokenizer and processor files beside them."""
    from transformers import LlavaForConditionalGeneration

    from finetune.llama_tokenizer import fetch_package, write_processor_files

    if (out / "config.json").is_file():
        print(f"reusing the random checkpoint in {out}")
    else:
        start = time.perf_counter()
        with torch.device("cuda"):
            model = LlavaForConditionalGeneration._from_config(llava_7b_config(), dtype=dtype)
        model.save_pretrained(out)
        del model
        gc.collect()
        torch.cuda.empty_cache()
        print(f"built and saved a random llava-1.5-7b checkpoint in {time.perf_counter() - start:.0f} s")
    if not (out / "tokenizer.json").is_file():
        write_processor_files(out, fetch_package(out / "npm"))
    return out


def real_batch(model_dir: str | Path, batch: int, seq_len: int) -> dict:
    """`batch` copies of a training row of exactly `seq_len` tokens (CPU tensors): QA turns about an example film
    through the model core's processor and the answer-only collator, more turns until long enough, then cut."""
    from cxr_vqa.images import load_film
    from cxr_vqa.model import load_processor
    from cxr_vqa.template import conversation_from_qa
    from finetune.collator import AnswerOnlyCollator

    collate, film = AnswerOnlyCollator(load_processor(str(model_dir))), load_film(FILM, 336).image
    for repeats in itertools.count(1):
        row = collate([{"messages": conversation_from_qa(QA * repeats), "images": [film]}])
        if row["input_ids"].size(1) >= seq_len:
            break
    return {k: v[:, :seq_len].repeat(batch, 1) if v.dim() == 2 else v.repeat(batch, 1, 1, 1) for k, v in row.items()}


def on_gpu(batch: dict, dtype: torch.dtype) -> dict:
    return {k: v.to("cuda", dtype) if v.is_floating_point() else v.cuda() for k, v in batch.items()}


def qlora_step(model_dir: Path, dtype: torch.dtype, args) -> tuple[float, float, float]:
    """(median step seconds, peak GiB allocated, trainable millions) of the 7B QLoRA recipe at batch 1."""
    import bitsandbytes as bnb
    from peft import get_peft_model, prepare_model_for_kbit_training

    from cxr_vqa.model import load_base_model
    from finetune.config import ScriptArguments
    from finetune.train import lora_config

    torch.cuda.reset_peak_memory_stats()
    model = load_base_model(str(model_dir), load_in_4bit=True, device="cuda:0", dtype=dtype)
    print(f"4-bit model loaded: {torch.cuda.memory_allocated() / GIB:.1f} GiB on the GPU")
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    model.config.use_cache = False
    model = get_peft_model(model, lora_config(ScriptArguments()))  # the 7B config's LoRA: r=64, alpha=16
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # as SFTTrainer does for QLoRA: adapters in the compute dtype
        p.data = p.data.to(dtype)
    optimizer = bnb.optim.PagedAdamW8bit(params, lr=2e-4)
    batch = on_gpu(real_batch(model_dir, 1, args.seq_len), dtype)
    times = []
    model.train()
    for step in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    trainable = sum(p.numel() for p in params) / 1e6
    peak = torch.cuda.max_memory_allocated() / GIB
    return statistics.median(times), peak, trainable


@torch.inference_mode()
def decode_speed(model_dir: Path, dtype: torch.dtype, args) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) of greedy 4-bit generation, `--batch` rows at once."""
    from cxr_vqa.model import load_base_model

    model = load_base_model(str(model_dir), load_in_4bit=True, device="cuda:0", dtype=dtype)
    batch = on_gpu(real_batch(model_dir, args.batch, args.seq_len), dtype)
    batch.pop("labels")

    def timed(new_tokens: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        # min_new_tokens: random weights may emit EOS at any point; every run must decode the same length.
        model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(4)  # warm-up: kernels, cache allocation
    prefill = statistics.median(timed(1) for _ in range(3))
    full = statistics.median(timed(args.new_tokens) for _ in range(3))
    return prefill, args.batch * (args.new_tokens - 1) / (full - prefill)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", help="where the random checkpoint is kept (default: a temp dir, deleted)")
    parser.add_argument("--seq-len", type=int, default=700, help="tokens per row, 576 of them image tokens (>= 640)")
    parser.add_argument("--steps", type=int, default=5, help="timed QLoRA steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed QLoRA steps first")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per row")
    parser.add_argument("--batch", type=int, default=2, help="rows decoded at once (2 = the app's base | tuned)")
    args = parser.parse_args(argv)
    if min(args.steps, args.new_tokens - 1, args.batch) < 1 or args.seq_len < 640:
        parser.error("--steps and --batch must be >= 1, --new-tokens >= 2, --seq-len >= 640 (576 image tokens + QA)")

    if not torch.cuda.is_available():
        sys.exit(
            "error: bench/gpu.py needs a CUDA GPU and this machine has none (the CPU benchmark is bench/train_step.py)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        sys.exit("error: bench/gpu.py needs bitsandbytes for 4-bit: pip install bitsandbytes")
    free, total = torch.cuda.mem_get_info()
    if free < 16 * GIB:
        sys.exit(f"error: {free / GIB:.1f} GiB free on the GPU; the 7B QLoRA step needs about 16 GiB")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="llava7b-random-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "config.json").is_file() and shutil.disk_usage(workdir).free < 16 * GIB:
        sys.exit(f"error: {workdir} has under 16 GB free for the random 16-bit checkpoint: pass --workdir elsewhere")

    print(
        f"{torch.cuda.get_device_name()} ({total / GIB:.0f} GiB), {str(dtype).removeprefix('torch.')}, "
        f"seq {args.seq_len} tokens"
    )
    try:
        build_random_checkpoint(workdir, dtype)
        step_s, peak, trainable = qlora_step(workdir, dtype, args)
        gc.collect()  # the training model goes out of scope; free its GPU memory before loading the next one
        torch.cuda.empty_cache()
        print(f"QLoRA step (batch 1, {trainable:.0f}M trainable): {step_s:.3f} s, peak {peak:.1f} GiB allocated")
        prefill_s, tok_s = decode_speed(workdir, dtype, args)
        print(f"4-bit generate, {args.batch} rows: prefill {prefill_s:.3f} s, decode {tok_s:.1f} tokens/s")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"RESULT qlora_step_s={step_s:.3f} peak_train_gib={peak:.2f} decode_tok_s={tok_s:.1f}")


if __name__ == "__main__":
    main()

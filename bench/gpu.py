"""What users wait for, on one GPU, for the real LLaVA-1.5-7B architecture without downloading it: random weights
built from the llava-hf/llava-1.5-7b-hf config in 16-bit shards as the Hub ships them, with the 7B model's own
tokenizer and processor files (from the npm package, as the tests build them): `bench/llava_7b.py`, shared with
`bench/real_size.py` (the same model at full size on a CPU). They are loaded in 4-bit nf4 exactly as the app, the
evaluation and the trainer load them. Three parts, one `RESULT` line each (the parts are in `bench/gpu_parts.py`):

- compare: one mixed base/adapter `generate` (the app's two panes) vs two sequential single-row calls vs the base
  alone on one row; 128 new tokens forced, the same film (576 image tokens) and question.
- eval: questions/s of `python -m evaluation`'s batched answering (`evaluation.predictions.answer_all`) at batch 8
  and 32.
- train: QLoRA steps of the shipped 7B config at micro-batch 1, 2, 4, 8 on rows of 750 tokens (a film + 5 QA turns),
  stopping at the first over 22 GiB or failing; MFU = 6 x (trainable + frozen params) x tokens/s / dense bf16 peak.

    python bench/gpu.py                        # one CUDA GPU with >= 16 GB free, ~15 GB of disk, npm
    python bench/gpu.py --workdir /scratch/l7  # keep the random checkpoint there and reuse it next time
    python bench/gpu.py --npm-dir tmp/npm      # no npm registry: a folder holding the tarball that
                                               # `npm pack llama-tokenizer-js@1.2.2` wrote where npm works
    python bench/gpu.py --smoke                # every part on the tiny checkpoint, on CPU, in under a minute

On a GPU machine without network whose image has torch, accelerate and huggingface_hub but not this project's other
pins, carry the wheels of bitsandbytes, transformers, peft, trl, datasets (+ dill, multiprocess) and pydicom in .whl
and the tarball in tmp/npm, then (the sizes are planned for ~8 minutes of one H100/H200; not yet run on one):

    set -o pipefail; pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
        PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 bench/gpu.py --npm-dir tmp/npm 2>&1 | tee $OUT/gpu.log

Random weights give meaningless text but real shapes, so memory and time are those of the real model; every generate
call is forced to its full length (random weights may emit EOS anywhere). Prints the GPU and library versions first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would crowd the figures out of a short log

import torch
from gpu_parts import GIB, compare_part, eval_part, free_memory, random_adapter, train_part
from llava_7b import CHECKPOINT, checkpoint_complete, write_random_checkpoint

LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes")
# Dense bf16 tensor-core peaks (TFLOP/s, NVIDIA datasheets, sparsity not counted; the T4 has fp16 only), by a pattern
# of torch's device name, first match wins: "NVIDIA H100 80GB HBM3" is the SXM part.
PEAK_TFLOPS = [
    (r"\bH[12]00 NVL\b", 835),
    (r"\bH100 PCIe\b", 756),
    (r"\bH[12]00\b", 989),
    (r"\bA100\b", 312),
    (r"\bA10G?\b", 125),
    (r"\bL4\b", 121),
    (r"\bT4\b", 65),
]
# option: (full run, --smoke, what it sets); the full run's are planned for ~8 minutes of one H100, build included
SIZES = {
    "new_tokens": (128, 32, "compare: tokens decoded a row"),
    "repeats": (3, 3, "compare: timed runs of each method"),
    "warmup": (1, 1, "train: untimed steps a micro-batch"),
    "steps": (3, 1, "train: timed steps a micro-batch"),
    "eval_questions": (16, 8, "eval: questions answered at each batch size"),
    "eval_tokens": (64, 8, "eval: tokens an answer"),
}


def peak_tflops(name: str, given: float | None) -> float | None:
    import re

    if given:
        return given
    return next((tflops for pattern, tflops in PEAK_TFLOPS if re.search(pattern, name)), None)


def describe_machine(smoke: bool) -> str:
    """One line for the machine, one for the libraries; returns the device name."""
    if smoke or not torch.cuda.is_available():
        name = "CPU (smoke run: tiny checkpoint)" if smoke else "CPU"
    else:
        name = torch.cuda.get_device_name()
        name += f" ({torch.cuda.get_device_properties(0).total_memory / GIB:.0f} GiB)"
    print(f"device: {name}")

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "absent"

    print("versions: " + ", ".join(f"{p} {installed(p)}" for p in LIBRARIES))
    return name


def check_gpu_machine(workdir: Path) -> None:
    """What the full run needs, each missing piece in one line, before minutes of building."""
    if not torch.cuda.is_available():
        sys.exit("error: bench/gpu.py needs a CUDA GPU and this machine has none: run it with --smoke on a CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        sys.exit("error: bench/gpu.py needs bitsandbytes for 4-bit: pip install bitsandbytes")
    if (free := torch.cuda.mem_get_info()[0]) < 16 * GIB:
        sys.exit(f"error: {free / GIB:.1f} GiB free on the GPU; the 7B QLoRA steps need about 16 GiB")
    if not checkpoint_complete(workdir / CHECKPOINT) and shutil.disk_usage(workdir).free < 16 * GIB:
        sys.exit(f"error: {workdir} has under 16 GB free for the random 16-bit checkpoint: pass --workdir elsewhere")


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the tiny checkpoint on CPU: tests the plumbing only")
    parser.add_argument("--workdir", help="where the random checkpoint is kept (default: a temp dir, deleted)")
    parser.add_argument("--npm-dir", help="folder with the llama-tokenizer-js tarball, or where npm puts it")
    parser.add_argument("--seq-len", type=int, default=750, help="training row tokens, 576 of them image tokens")
    parser.add_argument("--micro-batches", default="1,2,4,8", help="training micro-batches to try, in order")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for a GPU not in the table")
    for name, (full, smoke, what) in SIZES.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, help=f"{what} (default {full}; --smoke {smoke})")
    args = parser.parse_args(argv)
    for name, (full, smoke, _) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else full)
    try:
        args.micro_batches = [int(m) for m in args.micro_batches.split(",")]
    except ValueError:
        parser.error(f"--micro-batches takes comma-separated integers, got {args.micro_batches!r}")
    if min(args.micro_batches + [args.repeats, args.steps, args.eval_questions, args.eval_tokens]) < 1:
        parser.error("--micro-batches, --repeats, --steps, --eval-questions and --eval-tokens must be >= 1")
    if args.warmup < 0 or args.new_tokens < 2 or args.seq_len < 640:
        parser.error("--warmup must be >= 0, --new-tokens >= 2, --seq-len >= 640 (576 image tokens + QA)")
    return args


def run_part(part: str, measure, *args) -> None:
    start = time.perf_counter()
    result = measure(*args)
    print(f"{part} took {time.perf_counter() - start:.0f} s")
    print(f"RESULT part={part} " + " ".join(f"{key}={value}" for key, value in result.items()))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.smoke:  # as the test suite runs: no GPU even where one is present
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    from cxr_vqa.cli import user_errors
    from cxr_vqa.model import load_model
    from finetune.tiny_model import build_tiny_llava

    device = describe_machine(args.smoke)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="llava7b-random-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with user_errors():
            if args.smoke:
                model_dir = build_tiny_llava(workdir / "tiny")
            else:
                check_gpu_machine(workdir)
                model_dir = write_random_checkpoint(workdir / CHECKPOINT, args.npm_dir or workdir / "npm")
            adapter = random_adapter(model_dir, workdir / "random-adapter")
            start = time.perf_counter()
            vqa = load_model(str(model_dir), adapter=str(adapter), load_in_4bit=True)
            print(f"load_model: 4-bit base + LoRA r=64 on {vqa.device} in {time.perf_counter() - start:.0f} s")
            run_part("compare", compare_part, vqa, args)
            run_part("eval", eval_part, vqa, args)
            del vqa
            free_memory()
            if args.smoke and not args.peak_tflops:
                args.peak_tflops = 1.0
                print("train: MFU against a nominal 1 TFLOP/s (a CPU has no entry in the table): plumbing only")
            run_part("train", train_part, model_dir, args, peak_tflops(device, args.peak_tflops))
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

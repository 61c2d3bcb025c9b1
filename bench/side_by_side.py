"""Base and fine-tuned answers side by side: one mixed-adapter batched `generate` vs two sequential calls on one
model vs two separate model copies. CPU, offline, on a small-but-not-trivial LLaVA-1.5-shaped model.

    python bench/side_by_side.py                    # hidden 512, 4 layers, 64 new tokens, fp32
    python bench/side_by_side.py --4bit --repeats 3  # the 4-bit nf4 path (slower on CPU)

Each method runs in its own process. Its memory is the bytes of the weights it holds (every parameter and buffer,
LoRA included) plus the growth of resident memory while it answers (activations, KV cache), so the Python/torch
runtime that every method shares and the transient copies made while loading do not blur the comparison.
Last line:
`RESULT speedup=<sequential time / batched time> memory_ratio=<batched peak / one model answering one question>`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = {
    "one_model": "one model, base only, one question (memory reference)",
    "batched": "one model + adapter, ONE mixed-adapter generate for both rows",
    "sequential": "one model + adapter, base call then adapter call",
    "two_copies": "two model copies (base, base+adapter), one call each",
}


def memory_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident since the last reset) of this process, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("needs Linux /proc")


def reset_peak() -> None:
    """Reset VmHWM, so the peak covers the answering only, not the transient copies made while loading."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(method: str, model_dir: str, adapter_dir: str, new_tokens: int, repeats: int, four_bit: bool) -> dict:
    import torch
    from PIL import Image

    from finetune.model import BASE, TUNED, GenerationSettings, load_model
    from finetune.template import add_question

    torch.set_num_threads(os.cpu_count() or 1)
    settings = GenerationSettings(max_new_tokens=new_tokens)
    image = Image.new("RGB", (336, 336), (90, 90, 90))
    conv = add_question(None, "Is there cardiomegaly?")

    def load(adapter):
        return load_model(model_dir, adapter=adapter, load_in_4bit=four_bit, device="cpu")

    models = []
    if method == "one_model":
        vqa = load(None)
        models = [vqa]

        def run():
            return vqa.generate([image], [conv], [BASE], settings)
    elif method == "batched":
        vqa = load(adapter_dir)
        models = [vqa]

        def run():
            return vqa.generate([image, image], [conv, conv], [BASE, TUNED], settings)
    elif method == "sequential":
        vqa = load(adapter_dir)
        models = [vqa]

        def run():
            return vqa.generate([image], [conv], [BASE], settings) + vqa.generate([image], [conv], [TUNED], settings)
    else:
        base, vqa = load(None), load(adapter_dir)
        models = [base, vqa]

        def run():
            return base.generate([image], [conv], [BASE], settings) + vqa.generate([image], [conv], [TUNED], settings)

    # Memory = the weights held (exact bytes of every parameter and buffer, LoRA included) + the growth of resident
    # memory while answering (activations, KV cache), from a fresh peak after a warm-up run: large blocks go back to
    # the OS when freed, so one-time lazy initialisation is left out and each run's own peak is what is measured.
    weights_mb = sum(t.numel() * t.element_size() for m in models for t in (*m.model.parameters(), *m.model.buffers()))
    weights_mb /= 2**20
    answers = run()
    before = memory_mb("VmRSS")
    reset_peak()
    assert run() == answers
    activations_mb = memory_mb("VmHWM") - before
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        assert run() == answers
        times.append(time.perf_counter() - start)
    return {
        "method": method,
        "answers": answers,
        "seconds": statistics.median(times),
        "peak_mb": weights_mb + activations_mb,
        "weights_mb": weights_mb,
    }


def build_models(workdir: Path, hidden: int, layers: int) -> tuple[str, str]:
    import torch
    from peft import LoraConfig, get_peft_model

    from finetune.model import LANGUAGE_LORA_TARGETS, load_base_model
    from finetune.tiny_model import build_tiny_llava

    model_dir = build_tiny_llava(workdir / "model", hidden=hidden, layers=layers, vision_hidden=256, vision_layers=4)
    torch.manual_seed(0)
    model = load_base_model(str(model_dir), load_in_4bit=False, device="cpu")
    lora = LoraConfig(r=64, lora_alpha=16, target_modules=LANGUAGE_LORA_TARGETS, init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(workdir / "adapter")
    return str(model_dir), str(workdir / "adapter")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--4bit", dest="four_bit", action="store_true", help="load the base in 4-bit nf4")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--adapter", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = worker(args.worker, args.model, args.adapter, args.new_tokens, args.repeats, args.four_bit)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, adapter_dir = build_models(Path(tmp), args.hidden, args.layers)
        print(f"model: hidden {args.hidden}, {args.layers} layers, LoRA r=64, {'4-bit' if args.four_bit else 'fp32'}")
        print(f"{args.new_tokens} new tokens per answer, median of {args.repeats} runs, CPU threads {os.cpu_count()}")
        results = {}
        for method, what in METHODS.items():
            cmd = [sys.executable, __file__, "--worker", method, "--model", model_dir, "--adapter", adapter_dir]
            cmd += ["--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
            cmd += ["--4bit"] if args.four_bit else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"worker {method} failed:\n{out.stderr[-3000:]}")
            results[method] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[method]
            memory = f"peak {r['peak_mb']:6.1f} MB (weights {r['weights_mb']:.1f})"
            print(f"  {method:<11} {r['seconds']:7.3f} s  {memory}  {what}")

    batched, sequential = results["batched"], results["sequential"]
    assert batched["answers"] == sequential["answers"] == results["two_copies"]["answers"], "methods disagree"
    speedup = sequential["seconds"] / batched["seconds"]
    memory_ratio = batched["peak_mb"] / results["one_model"]["peak_mb"]
    copies_ratio = results["two_copies"]["peak_mb"] / results["one_model"]["peak_mb"]
    print(f"batched vs two copies: {results['two_copies']['seconds'] / batched['seconds']:.2f}x faster")
    print(f"memory vs one model: batched {memory_ratio:.2f}x, two copies {copies_ratio:.2f}x")
    print(f"RESULT speedup={speedup:.2f} memory_ratio={memory_ratio:.2f}")


if __name__ == "__main__":
    main()

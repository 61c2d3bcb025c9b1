"""Base and fine-tuned answers side by side: one mixed-adapter batched `generate` vs two sequential calls on one
model vs two separate model copies. CPU, offline, on a small-but-not-trivial LLaVA-1.5-shaped model.

    python bench/side_by_side.py                    # hidden 512, 4 layers, 64 new tokens, fp32
    python bench/side_by_side.py --4bit --repeats 3  # the 4-bit nf4 path (slower on CPU)

Memory is measured for each method in its own process: the bytes of the weights it holds (every parameter and
buffer, LoRA included) plus the growth of resident memory while it answers (activations, KV cache), so the
Python/torch runtime that every method shares and the transient copies made while loading do not blur it. The
reference "one model" is the model the app serves (base + adapter) answering one question. Times are taken in one
process, methods interleaved, best of N. Last line:
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = {
    "one_model": "one model + adapter, one question (memory reference: the model the app serves)",
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


def setup(model_dir: str, adapter_dir: str, new_tokens: int, four_bit: bool, methods: list[str]):
    """Load the models `methods` need and return ({method: run()}, [models held])."""
    import torch
    from PIL import Image

    from cxr_vqa.generation import GenerationSettings
    from cxr_vqa.model import load_model
    from cxr_vqa.template import add_question
    from cxr_vqa.vqa import BASE, TUNED

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    settings = GenerationSettings(max_new_tokens=new_tokens)
    image = Image.new("RGB", (336, 336), (90, 90, 90))
    conv = add_question(None, "Is there cardiomegaly?")
    base = load_model(model_dir, load_in_4bit=four_bit, device="cpu") if "two_copies" in methods else None
    tuned = load_model(model_dir, adapter=adapter_dir, load_in_4bit=four_bit, device="cpu")

    def ask(vqa, adapters):
        return vqa.generate([image] * len(adapters), [conv] * len(adapters), adapters, settings)

    runs = {
        "one_model": lambda: ask(tuned, [TUNED]),
        "batched": lambda: ask(tuned, [BASE, TUNED]),
        "sequential": lambda: ask(tuned, [BASE]) + ask(tuned, [TUNED]),
        "two_copies": lambda: ask(base, [BASE]) + ask(tuned, [TUNED]),
    }
    return {m: runs[m] for m in methods}, [m for m in (base, tuned) if m is not None]


def measure_memory(method: str, model_dir: str, adapter_dir: str, new_tokens: int, four_bit: bool) -> dict:
    """Weights held (exact bytes of every parameter and buffer, LoRA included) + the growth of resident memory while
    answering (activations, KV cache), from a fresh peak after a warm-up run: large blocks go back to the OS when
    freed, so one-time lazy initialisation is left out and the run's own peak is what is measured."""
    runs, models = setup(model_dir, adapter_dir, new_tokens, four_bit, [method])
    weights_mb = sum(t.numel() * t.element_size() for m in models for t in (*m.model.parameters(), *m.model.buffers()))
    weights_mb /= 2**20
    answers = runs[method]()
    before = memory_mb("VmRSS")
    reset_peak()
    assert runs[method]() == answers
    return {"answers": answers, "peak_mb": weights_mb + memory_mb("VmHWM") - before, "weights_mb": weights_mb}


def measure_time(model_dir: str, adapter_dir: str, new_tokens: int, four_bit: bool, repeats: int) -> dict:
    """The timed methods interleaved in one process, best of `repeats` each: a busy neighbour on a shared machine
    slows whichever method it overlaps, and the minimum is the run it disturbed least."""
    methods = ["batched", "sequential", "two_copies"]
    runs, _ = setup(model_dir, adapter_dir, new_tokens, four_bit, methods)
    answers = {m: runs[m]() for m in methods}  # warm-up
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            start = time.perf_counter()
            assert runs[m]() == answers[m]
            times[m].append(time.perf_counter() - start)
    return {
        m: {"answers": answers[m], "seconds": min(times[m]), "median": statistics.median(times[m])} for m in methods
    }


def build_models(workdir: Path, hidden: int, layers: int) -> tuple[str, str]:
    import torch
    from peft import LoraConfig, get_peft_model

    from cxr_vqa.model import LANGUAGE_LORA_TARGETS, load_base_model
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
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch CPU threads (1 = steadier on a busy machine)"
    )
    parser.add_argument("--4bit", dest="four_bit", action="store_true", help="load the base in 4-bit nf4")
    parser.add_argument("--worker", choices=[*METHODS, "timing"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--adapter", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "timing":
        print(json.dumps(measure_time(args.model, args.adapter, args.new_tokens, args.four_bit, args.repeats)))
        return
    if args.worker:
        print(json.dumps(measure_memory(args.worker, args.model, args.adapter, args.new_tokens, args.four_bit)))
        return

    def run_worker(name: str) -> dict:
        cmd = [sys.executable, __file__, "--worker", name, "--model", model_dir, "--adapter", adapter_dir]
        cmd += ["--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats)]
        cmd += ["--4bit"] if args.four_bit else []
        # A fixed mmap threshold: glibc otherwise raises it after the first large free and keeps later blocks on its
        # heap, so resident memory would track the allocator's history instead of the live tensors.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
        env["BENCH_THREADS"] = str(args.threads)
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        if out.returncode != 0:
            sys.exit(f"worker {name} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, adapter_dir = build_models(Path(tmp), args.hidden, args.layers)
        print(f"model: hidden {args.hidden}, {args.layers} layers, LoRA r=64, {'4-bit' if args.four_bit else 'fp32'}")
        print(
            f"{args.new_tokens} new tokens per answer, best of {args.repeats} interleaved runs, {args.threads} threads"
        )
        memory = {method: run_worker(method) for method in METHODS}
        timing = run_worker("timing")

    for method, what in METHODS.items():
        t = timing.get(method)
        seconds = f"{t['seconds']:6.3f} s (median {t['median']:6.3f})" if t else " " * 24
        mem = memory[method]
        print(f"  {method:<11} {seconds}  peak {mem['peak_mb']:6.1f} MB (weights {mem['weights_mb']:5.1f})  {what}")
    answers = [r["answers"] for r in (*timing.values(), memory["batched"], memory["sequential"], memory["two_copies"])]
    assert all(a == answers[0] for a in answers), "the methods gave different answers"
    speedup = timing["sequential"]["seconds"] / timing["batched"]["seconds"]
    memory_ratio = memory["batched"]["peak_mb"] / memory["one_model"]["peak_mb"]
    copies_ratio = memory["two_copies"]["peak_mb"] / memory["one_model"]["peak_mb"]
    print(f"batched vs two copies: {timing['two_copies']['seconds'] / timing['batched']['seconds']:.2f}x faster")
    print(f"memory vs one model: batched {memory_ratio:.2f}x, two copies {copies_ratio:.2f}x")
    print(f"RESULT speedup={speedup:.2f} memory_ratio={memory_ratio:.2f}")


if __name__ == "__main__":
    main()

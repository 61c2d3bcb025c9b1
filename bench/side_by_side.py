"""Every model's answer side by side: one mixed-adapter batched `generate` for the base + N adapters (N+1 rows,
same film and question) vs N+1 sequential single-row calls on the same model, and, for N=1, vs two separate model
copies. CPU, offline, on a small-but-not-trivial LLaVA-1.5-shaped model with random LoRA r=64 adapters (seed i for
the i-th, so their weights differ).

    python bench/side_by_side.py                     # base + 1 adapter; hidden 512, 4 layers, 64 new tokens, fp32
    python bench/side_by_side.py --adapters 4        # base + 4 adapters in one generate vs 5 sequential calls
    python bench/side_by_side.py --4bit --repeats 3  # the 4-bit nf4 path (slower on CPU)
    python bench/side_by_side.py --smoke             # 1 layer, 64 wide, 4 tokens, 1 repeat, 1 worker: plumbing only

Memory is measured for each method in its own process: the bytes of the weights it holds (every parameter and
buffer, LoRA included) plus the growth of resident memory while it answers (activations, KV cache), so the
Python/torch runtime that every method shares and the transient copies made while loading do not blur it. The
reference "one model" is the model the app serves with one adapter (base + adapter) answering one question, whatever
N is. Times are taken in one process, methods interleaved, best of N. Last line:
`RESULT adapters=<N> speedup=<sequential time / batched time> memory_ratio=<batched peak / one model answering one
question>`.
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

METHOD_NAMES = ["one_model", "batched", "sequential", "two_copies"]


def methods(adapters: int) -> dict[str, str]:
    """The methods compared for base + `adapters` adapters, described. Two model copies only for one adapter: the
    base-vs-tuned pair that served two panes before mixed-adapter batches."""
    if adapters == 1:
        return {
            "one_model": "one model + adapter, one question (memory reference: the model the app serves)",
            "batched": "one model + adapter, ONE mixed-adapter generate for both rows",
            "sequential": "one model + adapter, base call then adapter call",
            "two_copies": "two model copies (base, base+adapter), one call each",
        }
    return {
        "one_model": "one model + 1 adapter, one question (memory reference: the model the app serves)",
        "batched": f"one model + {adapters} adapters, ONE mixed-adapter generate for the {adapters + 1} rows",
        "sequential": f"one model + {adapters} adapters, {adapters + 1} single-row calls (base, then each adapter)",
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


def setup(model_dir: str, adapters: list[str], new_tokens: int, four_bit: bool, wanted: list[str]):
    """Load what the `wanted` methods need (`adapters`: NAME=PATH values); return ({method: run()}, [models held])."""
    import torch
    from PIL import Image

    from cxr_vqa.generation import GenerationSettings
    from cxr_vqa.model import load_model
    from cxr_vqa.template import add_question
    from cxr_vqa.vqa import BASE

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)))
    settings = GenerationSettings(max_new_tokens=new_tokens)
    image = Image.new("RGB", (336, 336), (90, 90, 90))
    conv = add_question(None, "Is there cardiomegaly?")
    base = load_model(model_dir, load_in_4bit=four_bit, device="cpu") if "two_copies" in wanted else None
    # the reference holds one adapter, the model the app serves; every other method holds all of them
    held = adapters[:1] if wanted == ["one_model"] else adapters
    tuned = load_model(model_dir, held, load_in_4bit=four_bit, device="cpu")
    names = tuned.model_names  # the base first, then every adapter in load order

    def ask(vqa, models):  # the texts: what the methods must agree on, and what a worker's JSON carries
        return [a.text for a in vqa.answer([image] * len(models), [conv] * len(models), models, settings)]

    runs = {
        "one_model": lambda: ask(tuned, names[1:2]),
        "batched": lambda: ask(tuned, names),
        "sequential": lambda: [answer for name in names for answer in ask(tuned, [name])],
        "two_copies": lambda: ask(base, [BASE]) + ask(tuned, names[1:]),
    }
    return {m: runs[m] for m in wanted}, [m for m in (base, tuned) if m is not None]


def measure_memory(method: str, model_dir: str, adapters: list[str], new_tokens: int, four_bit: bool) -> dict:
    """Weights held (exact bytes of every parameter and buffer, LoRA included) + the growth of resident memory while
    answering (activations, KV cache), from a fresh peak after a warm-up run: large blocks go back to the OS when
    freed, so one-time lazy initialisation is left out and the run's own peak is what is measured."""
    runs, models = setup(model_dir, adapters, new_tokens, four_bit, [method])
    weights_mb = sum(t.numel() * t.element_size() for m in models for t in (*m.model.parameters(), *m.model.buffers()))
    weights_mb /= 2**20
    answers = runs[method]()
    before = memory_mb("VmRSS")
    reset_peak()
    assert runs[method]() == answers
    return {"answers": answers, "peak_mb": weights_mb + memory_mb("VmHWM") - before, "weights_mb": weights_mb}


def measure_time(model_dir: str, adapters: list[str], new_tokens: int, four_bit: bool, repeats: int) -> dict:
    """The timed methods interleaved in one process, best of `repeats` each: a busy neighbour on a shared machine
    slows whichever method it overlaps, and the minimum is the run it disturbed least."""
    timed = [m for m in methods(len(adapters)) if m != "one_model"]
    runs, _ = setup(model_dir, adapters, new_tokens, four_bit, timed)
    answers = {m: runs[m]() for m in timed}  # warm-up
    times: dict[str, list[float]] = {m: [] for m in timed}
    for _ in range(repeats):
        for m in timed:
            start = time.perf_counter()
            assert runs[m]() == answers[m]
            times[m].append(time.perf_counter() - start)
    return {m: {"answers": answers[m], "seconds": min(times[m]), "median": statistics.median(times[m])} for m in timed}


def build_adapters(model_dir: str, workdir: Path, count: int) -> list[str]:
    """`count` random LoRA r=64 adapters on the bench model, seed i for the i-th (seed 0 is the bench's one adapter,
    the same as before there could be several), so that each really differs."""
    import torch
    from peft import LoraConfig, get_peft_model

    from cxr_vqa.model import LANGUAGE_LORA_TARGETS, load_base_model

    paths = []
    for seed in range(count):
        path = workdir / ("adapter" if seed == 0 else f"adapter{seed + 1}")
        torch.manual_seed(seed)
        model = load_base_model(model_dir, load_in_4bit=False, device="cpu")  # fresh: get_peft_model edits it
        lora = LoraConfig(r=64, lora_alpha=16, target_modules=LANGUAGE_LORA_TARGETS, init_lora_weights=False)
        get_peft_model(model, lora).save_pretrained(path)
        paths.append(str(path))
    return paths


def build_model(workdir: Path, hidden: int, layers: int) -> str:
    from finetune.tiny_model import build_tiny_llava

    return str(build_tiny_llava(workdir / "model", hidden=hidden, layers=layers, vision_hidden=256, vision_layers=4))


def build_models(workdir: Path, hidden: int, layers: int) -> tuple[str, str]:
    """The bench model and its one adapter (bench/app_latency.py serves the same)."""
    model_dir = build_model(workdir, hidden, layers)
    return model_dir, build_adapters(model_dir, workdir, 1)[0]


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapters", type=positive, default=1, help="N: answer for the base + N adapters")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch CPU threads (1 = steadier on a busy machine)"
    )
    parser.add_argument("--4bit", dest="four_bit", action="store_true", help="load the base in 4-bit nf4")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes (hidden 64, 1 layer, 4 tokens, 1 repeat, 1 thread), every method's memory in one worker: "
        "the plumbing only, figures meaningless",
    )
    parser.add_argument("--worker", choices=[*METHOD_NAMES, "timing", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--adapter", action="append", help=argparse.SUPPRESS)  # NAME=PATH, once per adapter
    args = parser.parse_args()
    if args.smoke:
        args.hidden, args.layers, args.new_tokens, args.repeats, args.threads = 64, 1, 4, 1, 1

    if args.worker == "timing":
        print(json.dumps(measure_time(args.model, args.adapter, args.new_tokens, args.four_bit, args.repeats)))
        return
    if args.worker:  # one method's memory, or (a smoke run) each method's in turn in this one process
        wanted = methods(len(args.adapter)) if args.worker == "memory" else [args.worker]
        found = {m: measure_memory(m, args.model, args.adapter, args.new_tokens, args.four_bit) for m in wanted}
        print(json.dumps(found if args.worker == "memory" else found[args.worker]))
        return

    def run_worker(name: str) -> dict:
        cmd = [sys.executable, __file__, "--worker", name, "--model", model_dir]
        cmd += [arg for i, path in enumerate(adapter_dirs, 1) for arg in ("--adapter", f"lora{i}={path}")]
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

    n = args.adapters
    compared = methods(n)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp), args.hidden, args.layers)
        adapter_dirs = build_adapters(model_dir, Path(tmp), n)
        lora = "LoRA r=64" if n == 1 else f"{n} LoRA r=64 adapters"
        print(f"model: hidden {args.hidden}, {args.layers} layers, {lora}, {'4-bit' if args.four_bit else 'fp32'}")
        print(
            f"{args.new_tokens} new tokens per answer, best of {args.repeats} interleaved runs, {args.threads} threads"
        )
        # each method in its own process, so that one's peak is not another's leftovers; a smoke run checks the
        # plumbing only, in one process
        memory = run_worker("memory") if args.smoke else {method: run_worker(method) for method in compared}
        timing = run_worker("timing")

    for method, what in compared.items():
        t = timing.get(method)
        seconds = f"{t['seconds']:6.3f} s (median {t['median']:6.3f})" if t else " " * 24
        mem = memory[method]
        print(f"  {method:<11} {seconds}  peak {mem['peak_mb']:6.1f} MB (weights {mem['weights_mb']:5.1f})  {what}")
    answers = [r["answers"] for r in (*timing.values(), *(memory[m] for m in compared if m != "one_model"))]
    assert all(a == answers[0] for a in answers), "the methods gave different answers"
    # the reference holds one adapter: its answer must be that adapter's row of the mixed batch
    assert memory["one_model"]["answers"] == answers[0][1:2], "one adapter alone answered differently"
    if n > 1:
        print(f"{len(set(answers[0]))} distinct answers from the {n + 1} models")
    speedup = timing["sequential"]["seconds"] / timing["batched"]["seconds"]
    memory_ratio = memory["batched"]["peak_mb"] / memory["one_model"]["peak_mb"]
    if n == 1:
        copies_ratio = memory["two_copies"]["peak_mb"] / memory["one_model"]["peak_mb"]
        print(f"batched vs two copies: {timing['two_copies']['seconds'] / timing['batched']['seconds']:.2f}x faster")
        print(f"memory vs one model: batched {memory_ratio:.2f}x, two copies {copies_ratio:.2f}x")
    else:
        print(f"memory vs one model + 1 adapter: batched {memory_ratio:.2f}x")
    print(f"RESULT adapters={n} speedup={speedup:.2f} memory_ratio={memory_ratio:.2f}")


if __name__ == "__main__":
    main()

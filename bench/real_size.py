"""The real llava-1.5-7b-hf architecture at full size, on a CPU: what loading it the way the app does costs in memory
and time, and whether one mixed base/adapter answer fits in minutes. No GPU, no download.

    nice -n 19 python bench/real_size.py            # 14 GB of disk in /work/realsize-cache, npm, >= 12 GiB free RAM
    python bench/real_size.py --workdir /scratch/l7  # keep the random checkpoint elsewhere (reused next time)
    python bench/real_size.py --npm-dir tmp/npm      # the llama-tokenizer-js tarball is already there
    python bench/real_size.py --smoke --workdir tmp/rs   # the same code path on a tiny twin of the 7B, in seconds

It writes a random-weight checkpoint of the 7B model as the Hub ships it (16-bit safetensors shards, the 7B model's
tokenizer and processor: `bench/llava_7b.py`, tensor by tensor, never the whole model in memory) and a random LoRA
adapter of the shipped 7B recipe (r=64), then loads both in a fresh process through `cxr_vqa.model.load_model(path,
adapter, load_in_4bit=True, device="cpu")`, as the app loads them on a machine without a GPU, and prints:

- load time; the process's peak resident memory during the load (VmHWM), of which anonymous (RssAnon: what cannot be
  dropped, unlike the mmapped shards' file pages), and its resident memory after the load;
- the loaded model part by part (4-bit language model, vision tower, projector, embeddings, lm_head, LoRA), their sum
  against what the load added to the process;
- one `compare` (the app's two panes: base and adapter in one batched generate) of `--new-tokens` tokens, forced to
  that length, with its time; `nan` if it passes `--generate-limit` seconds.

A sampler thread watches the machine's available memory and stops the load in one line before it falls under
`--memory-floor-gib`: the machine is shared. Random weights give meaningless text but the real shapes and bytes.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

GIB = 1024**3
DEFAULT_WORKDIR = "/work/realsize-cache"


def memory_status(path: str = "/proc/self/status") -> dict[str, int]:
    """Bytes of VmRSS, VmHWM, RssAnon, RssFile (a process's status) or MemAvailable, MemTotal (/proc/meminfo)."""
    fields = {}
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


class MemoryWatch(threading.Thread):
    """Samples the process's resident memory every 50 ms (peaks of RssAnon and RssFile, which VmHWM does not split)
    and ends the process in one line if the machine's available memory falls under `floor` bytes."""

    def __init__(self, floor: float):
        super().__init__(daemon=True)
        self.floor, self.peak_anon, self.peak_file = floor, 0, 0

    def run(self) -> None:
        while True:
            status, available = memory_status(), memory_status("/proc/meminfo")["MemAvailable"]
            self.peak_anon = max(self.peak_anon, status["RssAnon"])
            self.peak_file = max(self.peak_file, status["RssFile"])
            if available < self.floor:
                print(f"error: stopped: the machine's available memory fell to {available / GIB:.1f} GiB (floor "
                      f"{self.floor / GIB:.1f} GiB) with this process holding {status['VmRSS'] / GIB:.1f} GiB: "
                      "free memory or pass --memory-floor-gib", flush=True)  # fmt: skip
                os._exit(3)
            time.sleep(0.05)


def part_of(name: str) -> str:
    for key, part in [("lora_", "LoRA adapter"), ("vision_tower", "vision tower"), ("multi_modal_projector",
                      "projector"), ("embed_tokens", "embeddings"), ("lm_head", "lm_head")]:  # fmt: skip
        if key in name:
            return part
    return "language model"


def part_sizes(model) -> dict[str, dict]:
    """Parameters, bytes and dtypes of each part, every storage counted once; a 4-bit weight counts its packed bytes
    and its quantization state (absmax, nested absmax, code tables)."""
    import bitsandbytes as bnb

    parts: dict[str, dict] = {}
    seen: set[int] = set()

    def add(part: str, tensor, params: int, kind: str) -> None:
        entry = parts.setdefault(part, {"params": 0, "bytes": 0, "dtypes": set()})
        entry["params"] += params
        entry["dtypes"].add(kind)
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            entry["bytes"] += tensor.numel() * tensor.element_size()

    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        part = part_of(name)
        if isinstance(p, bnb.nn.Params4bit) and p.quant_state is not None:
            state = p.quant_state
            add(part + ", 4-bit", p, state.shape.numel(), state.quant_type)
            extra = [state.absmax, state.code] + ([state.state2.absmax, state.state2.code] if state.nested else [])
            for tensor in extra:
                add(part + ", 4-bit", tensor, 0, state.quant_type)
        else:
            add(part, p, p.numel(), str(p.dtype).removeprefix("torch."))
    return parts


def measure(args) -> None:
    """The fresh process: load as the app does, measure, write the figures to `args.measure_out` as they come."""
    watch = MemoryWatch(args.memory_floor_gib * GIB)
    watch.start()
    import torch
    from gpu_parts import FILM, QA, forced_length

    from cxr_vqa.generation import GenerationSettings
    from cxr_vqa.model import load_model

    figures: dict = {"baseline_gib": memory_status()["VmRSS"] / GIB}
    print(f"fresh process, libraries imported: {figures['baseline_gib']:.2f} GiB resident; {torch.get_num_threads()} "
          "torch threads")  # fmt: skip
    start = time.perf_counter()
    vqa = load_model(args.model_dir, adapter=args.adapter, load_in_4bit=True, device="cpu")
    figures["load_s"] = time.perf_counter() - start
    status = memory_status()
    figures |= {"peak_rss_gib": status["VmHWM"] / GIB, "resident_gib": status["VmRSS"] / GIB,
                "peak_anon_gib": watch.peak_anon / GIB, "peak_file_gib": watch.peak_file / GIB,
                "anon_gib": status["RssAnon"] / GIB, "file_gib": status["RssFile"] / GIB}  # fmt: skip
    parts = part_sizes(vqa.model)
    figures["parts"] = {part: {**entry, "dtypes": sorted(entry["dtypes"])} for part, entry in parts.items()}
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the allocator kept of memory freed during the load, given back
    figures["trimmed_gib"] = memory_status()["VmRSS"] / GIB
    Path(args.measure_out).write_text(json.dumps(figures))
    print(f"loaded in {figures['load_s']:.0f} s", flush=True)

    film, conversation = vqa.prepare_film(FILM).image, vqa.conversation(None, QA[0][0])
    settings = GenerationSettings(max_new_tokens=args.new_tokens)
    start = time.perf_counter()
    with forced_length(vqa, args.new_tokens):
        base, tuned = vqa.compare(film, conversation, settings=settings)
    figures["generate_s"] = time.perf_counter() - start
    figures["generate_peak_rss_gib"] = memory_status()["VmHWM"] / GIB
    figures["generate_peak_anon_gib"] = watch.peak_anon / GIB
    Path(args.measure_out).write_text(json.dumps(figures))
    print(f"compare: base {base!r}, adapter {tuned!r}", flush=True)


def run_measurement(args, model_dir: Path, adapter: Path) -> dict:
    """`measure` in a fresh process (nothing of the build in its memory); stopped if the generate passes its limit."""
    out = Path(args.workdir) / "real-size-figures.json"
    out.unlink(missing_ok=True)
    options = {"--measure-out": out, "--model-dir": model_dir, "--adapter": adapter, "--new-tokens": args.new_tokens,
               "--memory-floor-gib": args.memory_floor_gib}  # fmt: skip
    child = subprocess.Popen([sys.executable, __file__, *(str(x) for item in options.items() for x in item)])
    loaded_at = None
    while child.poll() is None:
        if loaded_at is None and out.is_file():
            loaded_at = time.monotonic()
        if loaded_at is not None and time.monotonic() - loaded_at > args.generate_limit:
            print(f"the generate passed {args.generate_limit} s: stopped, generate_s=nan", flush=True)
            child.kill()
            child.wait()
            break
        time.sleep(1)
    if not out.is_file():
        sys.exit(f"error: the measuring process ended with status {child.returncode} before the load finished")
    figures = json.loads(out.read_text())
    if "generate_s" not in figures and child.returncode not in (0, -9):
        sys.exit(f"error: the measuring process failed (status {child.returncode}) during the generate")
    return figures


def report(figures: dict, new_tokens: int) -> None:
    print("\nloaded model, part by part (each storage counted once):")
    total = 0
    for part, entry in sorted(figures["parts"].items(), key=lambda kv: -kv[1]["bytes"]):
        total += entry["bytes"]
        print(f"  {part:<22} {entry['params'] / 1e6:>9.1f}M params  {entry['bytes'] / GIB:>6.3f} GiB  "
              f"{', '.join(entry['dtypes'])}")  # fmt: skip
    added = figures["resident_gib"] - figures["baseline_gib"]
    print(f"  {'sum':<22} {'':>17} {total / GIB:>6.3f} GiB; the load added {added:.2f} GiB to the process")
    print(f"\nload: {figures['load_s']:.0f} s; peak resident {figures['peak_rss_gib']:.2f} GiB (of it at most "
          f"{figures['peak_anon_gib']:.2f} GiB anonymous, {figures['peak_file_gib']:.2f} GiB mmapped shard pages); "
          f"resident after {figures['resident_gib']:.2f} GiB ({figures['anon_gib']:.2f} anonymous, "
          f"{figures['file_gib']:.2f} file), {figures['trimmed_gib']:.2f} GiB after malloc_trim")  # fmt: skip
    if "generate_s" in figures:
        print(f"compare (base + adapter, one batched generate, {new_tokens} new tokens a row): "
              f"{figures['generate_s']:.0f} s; peaks by its end: resident {figures['generate_peak_rss_gib']:.2f} GiB, "
              f"anonymous {figures['generate_peak_anon_gib']:.2f} GiB")  # fmt: skip
    anon, peak = figures["peak_anon_gib"] * GIB / 1e9, figures["peak_rss_gib"] * GIB / 1e9
    print(
        f"t4-small (15 GB RAM), were the model held in RAM as here: anonymous peak {anon:.1f} GB: "
        f"{'fits' if anon < 15 else 'does NOT fit'}; whole peak with the mapped shard pages {peak:.1f} GB: "
        f"{'fits' if peak < 15 else 'over 15 GB, but those pages are clean page cache, dropped under pressure'}"
    )


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny twin of the 7B config: tests the plumbing only")
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR, help="where the checkpoint is kept and reused")
    parser.add_argument("--npm-dir", help="folder with the llama-tokenizer-js tarball, or where npm puts it")
    parser.add_argument("--new-tokens", type=int, default=4, help="tokens each answer is forced to")
    parser.add_argument("--generate-limit", type=float, default=1200, help="seconds the generate may take")
    parser.add_argument("--min-available-gib", type=float, help="refuse to start under this much available memory "
                        "(default 12; --smoke 0)")  # fmt: skip
    parser.add_argument("--memory-floor-gib", type=float, default=1.5, help="stop when the machine has less free")
    for hidden in ("--measure-out", "--model-dir", "--adapter"):  # the fresh measuring process's own arguments
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.new_tokens < 1 or args.generate_limit <= 0:
        parser.error("--new-tokens must be >= 1 and --generate-limit > 0")
    if args.min_available_gib is None:
        args.min_available_gib = 0 if args.smoke else 12
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.measure_out:
        return measure(args)
    import torch
    from gpu import describe_machine
    from gpu_parts import random_adapter
    from llava_7b import CHECKPOINT, write_random_checkpoint

    from cxr_vqa.cli import user_errors

    describe_machine(args.smoke)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")  # fmt: skip
    meminfo = memory_status("/proc/meminfo")
    print(f"machine: {cpu}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), "
          f"{meminfo['MemTotal'] / GIB:.1f} GiB RAM, {meminfo['MemAvailable'] / GIB:.1f} GiB available")  # fmt: skip
    workdir = Path(args.workdir)
    with user_errors():
        model_dir = write_random_checkpoint(workdir / ("tiny-7b" if args.smoke else CHECKPOINT),
                                            args.npm_dir or workdir / "npm", tiny=args.smoke,
                                            max_shard_size="2MB" if args.smoke else "5GB")  # fmt: skip
        adapter = workdir / ("tiny-adapter" if args.smoke else "random-adapter")
        if not (adapter / "adapter_model.safetensors").is_file():
            random_adapter(model_dir, adapter)
    if (available := memory_status("/proc/meminfo")["MemAvailable"] / GIB) < args.min_available_gib:
        sys.exit(f"error: {available:.1f} GiB of memory available, under the {args.min_available_gib:g} GiB this load "
                 "is given (--min-available-gib): not started")  # fmt: skip
    figures = run_measurement(args, model_dir, adapter)
    report(figures, args.new_tokens)
    generate = f"{figures['generate_s']:.3g}" if "generate_s" in figures else "nan"  # a smoke run's is ~0.05 s
    print(f"RESULT part=real_size load_s={figures['load_s']:.1f} peak_rss_gib={figures['peak_rss_gib']:.2f} "
          f"resident_gib={figures['resident_gib']:.2f} generate_s={generate}")  # fmt: skip


if __name__ == "__main__":
    main()

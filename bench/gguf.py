"""The real llava-1.5-7b-hf architecture at full size on a CPU: one findings-length answer from llama.cpp (the q4_k_m
GGUF export, served as the app serves it) against today's CPU path (bitsandbytes 4-bit, `load_model(...,
device="cpu")`), in the same run, with each phase set against this machine's limits measured in the same run.

    nice -n 19 python bench/gguf.py          # ~18 GiB RAM at the bnb load's peak, ~32 GB disk at the export's, ~30 min
    python bench/gguf.py --layers 2          # the 7B's widths, vocabulary and vision tower, 2 of its 32 layers
    python bench/gguf.py --smoke --workdir tmp/gg --npm-dir tmp/npm     # the same steps on a tiny twin, in a minute

Steps: a random-weight checkpoint of the 7B as the Hub ships it (`bench/llava_7b.py`, drawn as `bench/real_size.py`
draws it, reused from --workdir), its GGUF export (`python -m finetune.export_gguf --quant q4_k_m`, reused), then
one film and "Describe the findings" answered with exactly --new-tokens tokens by both paths (EOS banned on both:
min and max new tokens on the transformers side, logit_bias on llama.cpp's): llama.cpp's through its OpenAI server
on a loopback port (`cxr_vqa.gguf_serve`, streamed: the prompt's time is the time to the first token), the
bitsandbytes one in a fresh process (a streamer timestamps the first token). Peak memory is each process's VmHWM
(mapped model pages included). The machine's limits: fp32 matrix multiply (torch, 2048^3, all threads) and memory
read bandwidth (a sum over 1 GiB). Last line: `RESULT part=gguf answer_tokens=... prompt_s=... tok_s=... answer_s=...
bnb_prompt_s=... bnb_tok_s=... bnb_answer_s=... speedup=... peak_rss_gib=...` (speedup: bnb_answer_s / answer_s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
GIB = 1024**3
ROOT = Path(__file__).resolve().parents[1]
# this file is named like the `gguf` package the export imports: bench/ must not shadow it
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))
FILM = ROOT / "assets" / "examples" / "cardiomegaly.png"
QUESTION = "Describe the findings of this chest X-ray."


def machine_limits(smoke: bool) -> tuple[float, float]:
    """(fp32 matmul GFLOP/s, memory read GB/s), each the best of a few runs."""
    import numpy as np
    import torch

    n, size = (512, 64 * 2**20) if smoke else (2048, GIB)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(3 if smoke else 5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    data = np.ones(size // 4, dtype=np.float32)
    read = min(_time(data.sum) for _ in range(3 if smoke else 5))
    return 2 * n**3 / best / 1e9, size / read / 1e9


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def vm_hwm(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def prompt_flops(config: dict, prompt_tokens: int) -> float:
    """Multiply-adds x 2 of the prompt's forward: the vision tower to its feature layer over 577 positions, the
    projector over 576, every language-model layer over the prompt (attention scores included)."""
    text, vision = config["text_config"], config["vision_config"]
    h, ff, layers = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
    d, vff = vision["hidden_size"], vision["intermediate_size"]
    positions = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
    tower = (vision["num_hidden_layers"] - 1) * positions * (4 * d * d + 2 * d * vff + 2 * positions * d)
    projector = (positions - 1) * (d * h + h * h)
    language = layers * prompt_tokens * (4 * h * h + 3 * h * ff + prompt_tokens * h)
    return 2.0 * (tower + projector + language)


def run_gguf(export_dir: Path, new_tokens: int, eos: int, threads: int) -> dict:
    """One streamed answer from a fresh llama.cpp server: time to the first token, to the last, its peak memory."""
    import base64
    import io

    import openai

    from cxr_vqa.images import load_film
    from cxr_vqa.llama_server import LlamaServer, read_export

    server = LlamaServer("gguf", read_export(export_dir), threads=threads, log=export_dir.parent / "gguf-server.log")
    try:
        server.wait_ready(600)
        film = load_film(FILM, 336).image
        buffer = io.BytesIO()
        film.save(buffer, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        client = openai.OpenAI(base_url=server.url, api_key="unused", timeout=3600)
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                 {"type": "text", "text": QUESTION}]}]  # fmt: skip
        start, first, usage, text = time.perf_counter(), None, None, []
        stream = client.chat.completions.create(model="gguf", messages=messages, max_tokens=new_tokens,
                                                temperature=0.0, logit_bias={str(eos): -100}, stream=True,
                                                stream_options={"include_usage": True})  # fmt: skip
        for chunk in stream:
            usage = chunk.usage or usage
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                text.append(chunk.choices[0].delta.content)
        end = time.perf_counter()
        peak = vm_hwm(server.process.pid)
    finally:
        server.stop()
    tokens = usage.completion_tokens if usage else len(text)  # a chunk a token
    return {"prompt_s": first - start, "answer_s": end - start, "tokens": tokens, "peak_rss_gib": peak,
            "prompt_tokens": usage.prompt_tokens if usage else None, "text": "".join(text)}  # fmt: skip


def measure_bnb(model_dir: str, new_tokens: int, out: str) -> None:
    """The fresh process of the bitsandbytes path: load as the app does on a CPU, one forced-length answer."""
    from transformers.generation.streamers import BaseStreamer

    from cxr_vqa.generation import GenerationSettings
    from cxr_vqa.model import load_model

    start = time.perf_counter()
    vqa = load_model(model_dir, None, load_in_4bit=True, device="cpu")
    load_s = time.perf_counter() - start
    film, conversation = vqa.prepare_film(FILM).image, vqa.conversation(None, QUESTION)
    stamps: list[float] = []
    prompt_tokens: list[int] = []

    class Stamp(BaseStreamer):
        def put(self, value):
            stamps.append(time.perf_counter())
            prompt_tokens.append(value.shape[-1])

        def end(self):
            pass

    generate = vqa.model.generate
    vqa.model.generate = lambda **kw: generate(**{**kw, "streamer": Stamp(), "min_new_tokens": new_tokens})
    start = time.perf_counter()
    answer = vqa.answer([film], [conversation], settings=GenerationSettings(max_new_tokens=new_tokens))[0]
    end = time.perf_counter()
    # put() comes once with the prompt, then once a new token: the second stamp is the first token's
    figures = {"load_s": load_s, "prompt_s": stamps[1] - start, "answer_s": end - start, "tokens": len(stamps) - 1,
               "peak_rss_gib": vm_hwm(), "text": answer.text, "prompt_tokens": prompt_tokens[0]}  # fmt: skip
    Path(out).write_text(json.dumps(figures))


def run_bnb(model_dir: Path, new_tokens: int, workdir: Path) -> dict:
    out = workdir / "bnb-figures.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, __file__, "--measure-bnb", str(model_dir), "--new-tokens", str(new_tokens),
                           "--measure-out", str(out)], env=env)  # fmt: skip
    if done.returncode != 0 or not out.is_file():
        sys.exit(f"error: the bitsandbytes process failed (status {done.returncode})")
    return json.loads(out.read_text())


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny twin of the 7B config: tests the plumbing only")
    parser.add_argument("--layers", type=int, help="the 7B's widths with this many language-model layers")
    parser.add_argument("--workdir", default="/work/gguf-bench-cache", help="checkpoint and export, reused")
    parser.add_argument("--npm-dir", help="folder with the llama-tokenizer-js tarball, or where npm puts it")
    parser.add_argument("--new-tokens", type=int, default=64, help="answer length, forced on both paths (>= 50)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads")
    parser.add_argument("--min-available-gib", type=float, help="refuse to start under this (default 19; else 0)")
    parser.add_argument("--measure-bnb", help=argparse.SUPPRESS)
    parser.add_argument("--measure-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.new_tokens < (2 if args.smoke or args.measure_bnb else 50):
        parser.error("--new-tokens must be >= 50: a findings paragraph")
    if args.layers is not None and not 1 <= args.layers <= 32:
        parser.error("--layers must be in 1..32")
    if args.min_available_gib is None:
        args.min_available_gib = 0 if args.smoke or args.layers else 19
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.measure_bnb:
        return measure_bnb(args.measure_bnb, args.new_tokens, args.measure_out)
    from bench.llava_7b import CHECKPOINT, write_random_checkpoint
    from bench.real_size import memory_status
    from cxr_vqa.cli import user_errors
    from finetune.export_gguf import export

    available = memory_status("/proc/meminfo")["MemAvailable"] / GIB
    if available < args.min_available_gib:
        sys.exit(f"error: {available:.1f} GiB available, under the {args.min_available_gib:g} GiB this run needs "
                 "(--min-available-gib): not started")  # fmt: skip
    workdir = Path(args.workdir)
    kind = "tiny-7b" if args.smoke else CHECKPOINT + (f"-{args.layers}l" if args.layers else "")
    with user_errors():
        model_dir = write_random_checkpoint(
            workdir / kind,
            args.npm_dir or workdir / "npm",
            tiny=args.smoke,
            max_shard_size="2MB" if args.smoke else "5GB",
            layers=args.layers,
        )
        export_dir = workdir / f"{kind}-q4_k_m"
        if not (export_dir / "export.json").is_file():
            start = time.perf_counter()
            export(str(model_dir), None, export_dir, "q4_k_m")
            print(f"exported q4_k_m in {time.perf_counter() - start:.0f} s")
    config = json.loads((model_dir / "config.json").read_text())
    model_bytes = sum(p.stat().st_size for p in export_dir.glob("model-*.gguf"))
    gflops, gbs = machine_limits(args.smoke)
    print(f"machine: fp32 matmul {gflops:.1f} GFLOP/s, memory read {gbs:.1f} GB/s; load {os.getloadavg()[0]:.2f}")
    gguf = run_gguf(export_dir, args.new_tokens, config["text_config"]["eos_token_id"], args.threads)
    print(f"llama.cpp: {gguf['tokens']} tokens in {gguf['answer_s']:.1f} s, first after {gguf['prompt_s']:.1f} s")
    bnb = run_bnb(model_dir, args.new_tokens, workdir)
    print(f"bitsandbytes: load {bnb['load_s']:.0f} s; {bnb['tokens']} tokens in {bnb['answer_s']:.1f} s, first "
          f"after {bnb['prompt_s']:.1f} s")  # fmt: skip
    if gguf["tokens"] != args.new_tokens or bnb["tokens"] != args.new_tokens:
        sys.exit(f"error: asked both for {args.new_tokens} tokens, got {gguf['tokens']} and {bnb['tokens']}")
    rate = {k: (args.new_tokens - 1) / (f["answer_s"] - f["prompt_s"]) for k, f in (("gguf", gguf), ("bnb", bnb))}
    prompt_tokens = gguf["prompt_tokens"] or bnb["prompt_tokens"]  # the streamed reply has no usage
    bound_prompt = prompt_flops(config, prompt_tokens) / (gflops * 1e9)
    bound_token = model_bytes / (gbs * 1e9)
    print(f"prompt ({prompt_tokens} tokens, 576 the film): llama.cpp {gguf['prompt_s']:.1f} s, bitsandbytes "
          f"{bnb['prompt_s']:.1f} s; its {prompt_flops(config, prompt_tokens) / 1e12:.2f} TFLOP at the measured "
          f"fp32 matmul rate: {bound_prompt:.1f} s")  # fmt: skip
    print(
        f"a new token: llama.cpp {1000 / rate['gguf']:.0f} ms, bitsandbytes {1000 / rate['bnb']:.0f} ms; reading "
        f"the {model_bytes / GIB:.2f} GiB model file once at the measured bandwidth: {1000 * bound_token:.0f} ms"
    )
    print(f"peak memory (VmHWM): llama.cpp server {gguf['peak_rss_gib']:.2f} GiB, bitsandbytes process "
          f"{bnb['peak_rss_gib']:.2f} GiB")  # fmt: skip
    print(f"RESULT part=gguf answer_tokens={args.new_tokens} prompt_s={gguf['prompt_s']:.2f} tok_s={rate['gguf']:.3g} "
          f"answer_s={gguf['answer_s']:.2f} bnb_prompt_s={bnb['prompt_s']:.2f} bnb_tok_s={rate['bnb']:.3g} "
          f"bnb_answer_s={bnb['answer_s']:.2f} speedup={bnb['answer_s'] / gguf['answer_s']:.2f} "
          f"peak_rss_gib={gguf['peak_rss_gib']:.2f} bnb_peak_rss_gib={bnb['peak_rss_gib']:.2f} "
          f"matmul_gflops={gflops:.1f} bandwidth_gbs={gbs:.1f} prompt_bound_s={bound_prompt:.2f} "
          f"token_bound_ms={1000 * bound_token:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()

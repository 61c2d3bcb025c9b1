"""Time to both answers through the app's HTTP API (`/compare` via gradio_client: upload, queue, image loading,
checks, one batched generate, result) vs calling the model core directly (`VQAModel.compare` on the already loaded
film), same film, same question, same tokens. Goal: overhead <= 1.25x. CPU, offline.

    python bench/app_latency.py                            # bench-size tiny LLaVA (hidden 512, 4 layers), fp32
    python bench/app_latency.py --4bit --new-tokens 32     # the 4-bit nf4 path the app serves by default
    python bench/app_latency.py --model M --adapter A      # an existing checkpoint and adapter

The model is the one bench/side_by_side.py builds (vocabulary padded to llava-1.5's 32064 rows). fp32 is the default
because the faster the model, the larger the app's fixed cost looks: the harder test. The two paths alternate, after
one warm-up each, and every answer pair must match the direct one exactly. Last line: `RESULT overhead=<x>`, the
median HTTP time over the median direct time.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

FILM = ROOT / "assets" / "examples" / "cardiomegaly.png"
QUESTION = "Is there cardiomegaly?"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512, help="width of the built model (without --model)")
    parser.add_argument("--layers", type=int, default=4, help="layers of the built model (without --model)")
    parser.add_argument("--new-tokens", type=int, default=64, help="max new tokens per answer")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per path")
    parser.add_argument("--4bit", dest="four_bit", action="store_true", help="load the base in 4-bit nf4")
    parser.add_argument("--model", help="existing LLaVA-1.5 checkpoint directory")
    parser.add_argument("--adapter", help="existing LoRA adapter directory (with --model)")
    args = parser.parse_args()
    if bool(args.model) != bool(args.adapter):
        parser.error("give both --model and --adapter, or neither")

    import torch
    from gradio_client import Client, handle_file

    import app
    from cxr_vqa.generation import GenerationSettings
    from cxr_vqa.model import load_model
    from cxr_vqa.template import add_question

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model_dir, adapter_dir = args.model, args.adapter
        else:
            from side_by_side import build_models  # the same bench model as bench/side_by_side.py

            model_dir, adapter_dir = build_models(Path(tmp), args.hidden, args.layers)
        vqa = load_model(model_dir, adapter_dir, load_in_4bit=args.four_bit, device="cpu")
        settings = GenerationSettings(max_new_tokens=args.new_tokens)
        demo = app.create_demo(vqa, votes_db=Path(tmp) / "votes.sqlite", settings=settings)
        launch = {"prevent_thread_lock": True, "quiet": True}
        _, url, _ = app.serve(demo, host="127.0.0.1", port=free_port(), queue_size=4, max_file_size="20mb", **launch)
        try:
            client = Client(url, verbose=False)
            film = vqa.prepare_film(str(FILM))
            conversation = add_question(None, QUESTION)

            def direct():
                return tuple(a.text for a in vqa.compare(film.image, conversation, settings=settings).values())

            def http():
                return tuple(client.predict(handle_file(str(FILM)), QUESTION, api_name="/compare"))

            expected = direct()
            assert http() == expected, "the app and the model core answered differently"
            times: dict[str, list[float]] = {"direct": [], "http": []}
            for _ in range(args.repeats):
                for name, fn in (("direct", direct), ("http", http)):
                    seconds, answers = timed(fn)
                    assert answers == expected, f"{name} answers changed between runs"
                    times[name].append(seconds)
        finally:
            demo.close()

    tokens = [len(vqa.processor.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in expected]
    shape = args.model or f"bench LLaVA-1.5 shape, hidden {args.hidden}, {args.layers} layers"
    print(f"model: {shape} + LoRA, {'4-bit nf4' if args.four_bit else 'fp32'}, CPU threads {os.cpu_count()}")
    print(f"answers: ~{tokens[0]} and ~{tokens[1]} tokens (max {args.new_tokens}), identical on both paths")
    for name, values in times.items():
        print(f"  {name:<6} median {statistics.median(values):.3f} s  (min {min(values):.3f}, max {max(values):.3f})")
    overhead = statistics.median(times["http"]) / statistics.median(times["direct"])
    print(f"RESULT overhead={overhead:.3f}")


if __name__ == "__main__":
    main()

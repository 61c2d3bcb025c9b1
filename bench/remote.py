"""Does a remote model cost the app anything beyond its own latency? `/compare_all` over HTTP for base + adapter + a
loopback OpenAI-compatible vision endpoint that takes 2 s an answer, against the slower of the local pair alone
(`/compare` of the same app: the same batched generate over the same HTTP path) and the remote model alone
(`/compare_all` of a second app serving only it, `--base none`), in one run. The remote call overlaps the local
generate (its own thread, never under the local model's lock), so the goal is within 10%.

    python bench/remote.py                              # bench-size tiny LLaVA (hidden 512, 4 layers), fp32, CPU
    python bench/remote.py --new-tokens 96 --latency 2  # a longer local answer; the endpoint's seconds per answer

The model is the one bench/side_by_side.py builds; the endpoint is tests/vision_server.py (streamed, its answer spread
over its 2 s). Each path is timed --repeats times after one warm-up, in turn, and the medians are compared. Last line:
`RESULT ratio=<compare_all / max(local, remote)> compare_all=<s> local=<s> remote=<s>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from app_latency import free_port, timed  # bench/ is on the path of a script run from it

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the loopback vision server is a test helper, not part of the packages
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

FILM = ROOT / "assets" / "examples" / "cardiomegaly.png"
QUESTION = "Is there cardiomegaly?"


def serve(app, demo) -> str:
    _, url, _ = app.serve(demo, host="127.0.0.1", port=free_port(), queue_size=4, max_file_size="20mb",
                          prevent_thread_lock=True, quiet=True)  # fmt: skip
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512, help="width of the built model")
    parser.add_argument("--layers", type=int, default=4, help="layers of the built model")
    parser.add_argument("--new-tokens", type=int, default=64, help="max new tokens per answer (local and remote)")
    parser.add_argument("--latency", type=float, default=2.0, help="the endpoint's seconds per answer")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per path")
    args = parser.parse_args()

    import torch
    from gradio_client import Client, handle_file
    from side_by_side import build_models
    from vision_server import VisionServer

    import app
    from cxr_vqa.generation import GenerationSettings
    from cxr_vqa.model import load_model
    from cxr_vqa.remote import RemoteModel, parse_remote

    torch.set_num_threads(os.cpu_count() or 1)
    settings = GenerationSettings(max_new_tokens=args.new_tokens)
    with tempfile.TemporaryDirectory() as tmp, VisionServer({"bench"}, latency=args.latency) as server:
        model_dir, adapter_dir = build_models(Path(tmp), args.hidden, args.layers)
        vqa = load_model(model_dir, adapter_dir, load_in_4bit=False, device="cpu")
        remote = RemoteModel(parse_remote(f"remote={server.url}#bench"), timeout=30)
        demos = [app.create_demo(models, remotes=[remote], votes_db=Path(tmp) / f"votes{i}.sqlite", settings=settings)
                 for i, models in enumerate([vqa, None])]  # fmt: skip
        try:
            both, remote_only = (Client(serve(app, demo), verbose=False) for demo in demos)
            paths = {
                "compare_all": lambda: both.predict(handle_file(str(FILM)), QUESTION, api_name="/compare_all"),
                "local": lambda: both.predict(handle_file(str(FILM)), QUESTION, api_name="/compare"),
                "remote": lambda: remote_only.predict(handle_file(str(FILM)), QUESTION, api_name="/compare_all"),
            }
            first = {name: fn() for name, fn in paths.items()}  # warm-up, and every answer is checked below
            assert list(first["compare_all"].values())[:2] == list(first["local"]), "local answers differ"
            assert first["compare_all"]["remote"] == first["remote"]["remote"], "remote answers differ"
            times: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(args.repeats):
                for name, fn in paths.items():
                    seconds, answer = timed(fn)
                    assert answer == first[name], f"{name} answers changed between runs"
                    times[name].append(seconds)
        finally:
            for demo in demos:
                demo.close()

    print(f"model: bench LLaVA-1.5 shape, hidden {args.hidden}, {args.layers} layers + LoRA, fp32, CPU threads "
          f"{os.cpu_count()}; endpoint: loopback, {args.latency:g} s an answer, streamed")  # fmt: skip
    median = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"  {name:<12} median {median[name]:.3f} s  (min {min(values):.3f}, max {max(values):.3f})")
    slower = max(median["local"], median["remote"])
    print(f"RESULT ratio={median['compare_all'] / slower:.3f} compare_all={median['compare_all']:.3f} "
          f"local={median['local']:.3f} remote={median['remote']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()

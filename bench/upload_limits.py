"""Crafted uploads against the real app over HTTP: each one's reply must be one line, and the app process's peak
memory (VmHWM) above its idle RSS must stay small; the app must still answer a real film afterwards.

    python bench/upload_limits.py                  # every case in tests/crafted.py (a few minutes on a CPU)
    python bench/upload_limits.py --smoke          # the small set tests/test_upload_limits.py runs
    python bench/upload_limits.py --only strip,bomb    # cases whose name holds "strip" or "bomb"
    python bench/upload_limits.py --root /other/checkout --only "strip 1x30"   # another checkout's app.py (before)

It builds a tiny LLaVA-1.5 checkpoint offline (`python -m finetune.tiny_model`) and a random LoRA adapter (or takes
--model and --adapter), starts `python app.py --no-4bit --device cpu` on a free loopback port as a subprocess,
warms it up with a real film, and reads its idle RSS. Then, for each case, it resets the process's peak (writing 5
to /proc/PID/clear_refs), sends the file through gradio_client (films to /compare; zips, and one list of crafted
films, to /batch) and prints: the case, the reply's first line, MiB of peak above idle. Linux only (/proc).

Last line: `RESULT worst_extra_mib=W cases=N one_line=K expected=E real_film_answered=1 idle_mib=I`; the goal is
every reply one line (K = N), each as the case expects (E = N), W <= 300, and the real film answered.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the crafted films are a test helper, not part of the packages
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REAL_FILM = ROOT / "assets" / "real" / "nih-00000001_000.png"
QUESTION = "Is there cardiomegaly?"
GOAL_MIB = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for process {pid}")


def build_models(work: Path) -> tuple[str, str]:
    """The tiny checkpoint (the command line's own builder) and a random LoRA adapter on it."""
    import torch
    from peft import LoraConfig, get_peft_model

    from cxr_vqa.model import LANGUAGE_LORA_TARGETS, load_base_model

    model = work / "tiny-llava"
    subprocess.run([sys.executable, "-m", "finetune.tiny_model", str(model)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    torch.manual_seed(1)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=LANGUAGE_LORA_TARGETS, init_lora_weights=False)
    get_peft_model(load_base_model(str(model), load_in_4bit=False, device="cpu"), config).save_pretrained(
        work / "adapter"
    )
    return str(model), str(work / "adapter")


def start_app(root: Path, model: str, adapter: str, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "app.py", "--base", model, "--adapter", adapter, "--no-4bit", "--device", "cpu",
               "--host", "127.0.0.1", "--port", str(port), "--votes-db", str(work / "votes.sqlite"),
               "--max-new-tokens", "4"]  # fmt: skip
    if "rate_per_minute" in (root / "app_lib" / "config.py").read_text():  # an app with per-visitor limits: this
        command += ["--rate-per-minute", "0"]  # bench sends ~30 uploads a minute from one address, on purpose
    env = {**os.environ, "PYTHONPATH": str(root)}
    with open(work / "app.log", "w") as log:  # the child keeps its own copy of the descriptor
        app = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 600
    while time.time() < deadline:
        if app.poll() is not None:
            raise SystemExit(f"the app exited ({app.returncode}): {(work / 'app.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return app, url
        except OSError:
            time.sleep(1)
    app.kill()
    raise SystemExit("the app did not start within 10 minutes")


def ask(client, case, path: Path) -> tuple[str, bool]:
    """(the reply's text, whether it was answered) for one upload: a refusal's message, or the answers."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    try:
        if case.suffix == ".zip" or isinstance(path, list):
            paths = path if isinstance(path, list) else [path]
            result = client.predict([handle_file(str(p)) for p in paths], QUESTION, api_name="/batch")
            errors = "".join(f"; {e['film']}: {e['error']}" for e in result["errors"])
            return f"{len(result['rows'])} answered, {len(result['errors'])} refused{errors}", bool(result["rows"])
        base, tuned = client.predict(handle_file(str(path)), QUESTION, api_name="/compare")
        return f"answered: base {base!r}, fine-tuned {tuned!r}", True
    except AppError as err:
        return str(err), False


def matches(case, text: str, answered: bool) -> bool:
    if case.suffix == ".zip" and not case.expect:  # a zip of bombs: every member refused, each in one line
        return not answered and "refused" in text
    return (case.expect in text and not answered) if case.expect else answered


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the small set of cases (tests run it)")
    parser.add_argument("--only", default="", help="only the cases whose name holds one of these texts (a,b,...)")
    parser.add_argument("--model", help="an existing tiny LLaVA-1.5 checkpoint (else one is built)")
    parser.add_argument("--adapter", help="an existing LoRA adapter for --model")
    parser.add_argument("--root", default=str(ROOT), help="the checkout whose app.py is started (default: this one)")
    args = parser.parse_args(argv)
    if bool(args.model) != bool(args.adapter):
        parser.error("give both --model and --adapter, or neither")
    if not Path("/proc/self/clear_refs").exists():
        parser.error("this bench reads the app's peak memory from /proc: Linux only")

    from crafted import FILMS, ZIPS, Case
    from gradio_client import Client

    names = args.only.split(",")
    wanted = [c for c in FILMS + ZIPS if (c.smoke or not args.smoke) and any(t in c.name for t in names)]
    cases, refused = list(wanted), [c for c in wanted if c.expect and c.suffix != ".zip"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, adapter = (args.model, args.adapter) if args.model else build_models(work)
        files = {}
        for i, case in enumerate(cases):
            files[case.name] = work / f"case{i:02d}{case.suffix}"
            files[case.name].write_bytes(case.make())
        if len(refused) > 1:  # several crafted films in one /batch request
            cases.append(Case(f"batch of {len(refused)} crafted films", ".list", lambda: b"", ""))
            files[cases[-1].name] = [files[c.name] for c in refused]
        app, url = start_app(Path(args.root), model, adapter, work)
        try:
            client = Client(url, verbose=False)
            warm, answered = ask(client, Case("warm-up", ".png", bytes, ""), REAL_FILM)
            if not answered:
                raise SystemExit(f"the app did not answer the real film before the cases: {warm}")
            idle = status_mib(app.pid, "VmRSS")
            print(f"app pid {app.pid}: idle RSS {idle:.0f} MiB; {len(cases)} cases; load average "
                  f"{Path('/proc/loadavg').read_text().split()[0]}")  # fmt: skip
            worst, one_line, expected = 0.0, 0, 0
            for case in cases:
                Path(f"/proc/{app.pid}/clear_refs").write_text("5")  # the peak starts again from now
                text, answered = ask(client, case, files[case.name])
                extra = status_mib(app.pid, "VmHWM") - idle
                worst = max(worst, extra)
                single = bool(text) and "\n" not in text
                one_line += single
                if case.name.startswith("batch of"):  # every crafted film refused, none answered
                    good = not answered and f"{len(refused)} refused" in text
                else:
                    good = matches(case, text, answered)
                expected += good
                line = text if len(text) <= 160 else text[:157] + "..."
                print(f"{case.name:<48} {'ok ' if good else 'BAD'} +{extra:6.1f} MiB  {line!r}", flush=True)
            real, real_answered = ask(client, Case("real film", ".png", bytes, ""), REAL_FILM)
            print(f"{'real film after the cases':<48} {'ok ' if real_answered else 'BAD'} {real[:100]!r}")
        finally:
            app.terminate()
            try:
                app.wait(30)
            except subprocess.TimeoutExpired:
                app.kill()
    print(f"RESULT worst_extra_mib={worst:.1f} cases={len(cases)} one_line={one_line} expected={expected} "
          f"real_film_answered={int(real_answered)} idle_mib={idle:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()

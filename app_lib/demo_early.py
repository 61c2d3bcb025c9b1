"""`python app.py --demo` starts its build first thing, from app.py's `__main__` block, before the app's own imports:
light on purpose (nothing but the standard library and app_lib.demo), so that the build is not kept waiting.

    start_early(sys.argv[1:])     # then, after the imports, app_lib.demo.start(out) adopts the build
"""

from __future__ import annotations

import atexit
import time
from pathlib import Path

from app_lib import demo
from cxr_vqa.contract import DEMO_STATUS

EARLY_WAIT_SECONDS = 120  # at most, for the base's data before the app's imports (about 15 s on 2 idle cores)


def start_early(argv: list[str]) -> None:
    """`python app.py --demo [--demo-dir DIR]`: start (or continue) the build before the app's own imports (gradio,
    torch, transformers: 5-6 CPU-seconds), and hold them until the base trains, so that they run beside the base's
    training instead of before the build or beside the base's data; `start` adopts the build. Anything else on the
    command line that could name the folder (--config) or ends the app first (--help) leaves the start to `start`.
    A build the app never adopts (it exits on a usage error) is stopped."""
    if "--demo" not in argv or any(a.split("=")[0] in ("-h", "--help", "--config") for a in argv):
        return
    out = Path(demo.DEMO_DIR)
    for i, arg in enumerate(argv):
        if arg == "--demo-dir" and i + 1 < len(argv):
            out = Path(argv[i + 1])
        elif arg.startswith("--demo-dir="):
            out = Path(arg.split("=", 1)[1])
    out = out.resolve()
    found = demo.read(out)
    if (found is not None and found.marker.get("complete")) or demo.building(out):
        return
    builder = demo.early_builds[out] = demo.spawn(out)
    atexit.register(lambda: demo.stop(demo.early_builds.pop(out, None)))
    print(f"building the demo models in {out}: its data first, then this app's own imports", flush=True)
    # The base's data, the tiny model and the base's imports are the first page's path, two cores' worth of work:
    # the app's imports wait until the base trains (one core), as they did when they came first, but now beside it.
    deadline = time.monotonic() + EARLY_WAIT_SECONDS
    while builder.poll() is None and time.monotonic() < deadline and demo.read(out) is None:
        if "base" in demo.read_json(out / DEMO_STATUS).get("running", []):
            break
        time.sleep(0.2)

"""The three releases' figures from their synthetic stand-ins: studies, rows, rejects by reason, QA pairs, time.

    python bench/release_figures.py [--patients 200] [--image-size 256] [--workdir runs/release-figures] [--smoke]

For each of CheXpert Plus, MIMIC-CXR-JPG and IU X-ray: `python -m dataprep.synthetic OUT --layout SOURCE --patients N`
(for IU X-ray N reports, for the others N patients of 1-3 studies), then `python -m dataprep --source SOURCE --root
OUT --generator labels` (run in this process, timed from reading the release to the written dataset; the imports
are paid once before). Prints the table docs/data.md shows, then one line:
    RESULT chexpert_plus_rows=... mimic_cxr_rows=... iu_xray_rows=... *_rejected=... *_qa_pairs=... *_seconds=...
--smoke: 12 patients, 64 px films.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

SOURCES = ("chexpert-plus", "mimic-cxr", "iu-xray")


def figures(source: str, work: Path, patients: int, image_size: int) -> dict:
    from dataprep import synthetic
    from dataprep.__main__ import main as dataprep

    root, out = work / source, work / f"{source}-data"
    if not (root / "SYNTHETIC.json").is_file():
        synthetic.main([str(root), "--layout", source, "--patients", str(patients), "--image-size", str(image_size)])
    start = time.perf_counter()
    code = dataprep(["--source", source, "--root", str(root), "--out", str(out), "--generator", "labels",
                     "--no-progress"])  # fmt: skip
    seconds = time.perf_counter() - start
    if code != 0:
        sys.exit(f"python -m dataprep failed on the {source} stand-in")
    stats = json.loads((out / "stats.json").read_text())
    return {**stats, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=200, help="patients (IU X-ray: reports) per stand-in")
    parser.add_argument("--image-size", type=int, default=256, help="width of the stand-ins' films in pixels")
    parser.add_argument("--workdir", help="where stand-ins and datasets go (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="12 patients, 64 px films")
    args = parser.parse_args()
    if args.smoke:
        args.patients, args.image_size = 12, 64
    if args.patients < 1 or args.image_size < 64:
        parser.error("--patients must be >= 1 and --image-size >= 64")
    import datasets  # noqa: F401 - imported before the clock starts, as a long run pays it once

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        results = {source: figures(source, work, args.patients, args.image_size) for source in SOURCES}
    print(f"\n| stand-in ({args.patients} patients; IU X-ray: reports) | studies | rows (train/val/test) "
          "| rejected: by reason | QA pairs (yes/no/open) | seconds |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for source, s in results.items():
        splits = "/".join(str(s["splits"][name]["rows"]) for name in ("train", "validation", "test"))
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["reject_reasons"].items(), key=lambda kv: -kv[1]))
        answers = "/".join(str(s["answers"][k]) for k in ("yes", "no", "open"))
        print(f"| {source} | {s['studies']} | {s['rows']} ({splits}) | {s['rejected']}: {reasons} | {s['qa_pairs']} "
              f"({answers}) | {s['seconds']:.1f} |")  # fmt: skip
    keys = []
    for source, s in results.items():
        name = source.replace("-", "_")
        keys += [f"{name}_studies={s['studies']}", f"{name}_rows={s['rows']}", f"{name}_rejected={s['rejected']}",
                 f"{name}_qa_pairs={s['qa_pairs']}", f"{name}_seconds={s['seconds']:.1f}"]  # fmt: skip
    print("RESULT " + " ".join(keys))


if __name__ == "__main__":
    main()

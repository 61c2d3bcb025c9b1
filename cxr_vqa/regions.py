"""Where each finding of a synthetic film was drawn: written beside a release by `python -m dataprep.synthetic`,
read by the pointing game (bench/pointing_game.py) to score relevance maps against them.

    records = read_regions("runs/demo/release")                   # {image key: {finding: mask}}, or None
    inside = patch_grid(records[key]["Pleural Effusion"], 336, 12)  # (12, 12) bool: patches that show it

`regions.jsonl` holds one line per drawn film: its `path_to_image` (the CSV's key), the film's `width` and `height`
and, per finding drawn on it, a `box` [x0, y0, x1, y1] (pixels, end exclusive) and a `mask` in COCO's uncompressed
run-length encoding (`size` [height, width], `counts` alternating background/finding runs in column-major order,
background first), so pycocotools can read it too. A film without findings has an empty `regions`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_vqa.images import letterbox

REGIONS_FILE = "regions.jsonl"
DRAWN_AT = 0.5  # a pixel belongs to a finding where the finding's paint weight (0..1) is at least this


def encode_mask(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a boolean (height, width) mask."""
    flat = np.asarray(mask, bool).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]  # runs start with background
    return {"size": list(mask.shape), "counts": counts}


def decode_mask(rle: dict) -> np.ndarray:
    height, width = rle["size"]
    values = np.zeros(len(rle["counts"]), bool)
    values[1::2] = True
    flat = np.repeat(values, rle["counts"])
    return flat.reshape((height, width), order="F")


def region_record(path_to_image: str, size: tuple[int, int], weights: dict[str, np.ndarray]) -> dict:
    """One line of regions.jsonl: for each finding its paint weights on the film (width, height) made a mask."""
    regions = {}
    for name, weight in sorted(weights.items()):
        mask = np.asarray(weight) >= DRAWN_AT
        if not mask.any():
            continue
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        box = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
        regions[name] = {"box": box, "mask": encode_mask(mask)}
    return {"path_to_image": path_to_image, "width": size[0], "height": size[1], "regions": regions}


def write_regions(folder: str | Path, records: list[dict]) -> Path:
    path = Path(folder) / REGIONS_FILE
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records), encoding="utf-8")
    return path


def region_key(path: str) -> str:
    """The key a film is known by in any of the release's files: the CSV's `train/patientN/studyM/viewK_frontal.jpg`
    and the dataset's `PNG/PNG/train/.../viewK_frontal.png` are both `train/patientN/studyM/viewK_frontal`."""
    stem = os.path.splitext(path.strip().replace("\\", "/").lstrip("/"))[0]
    for root in ("PNG/PNG/", "PNG/"):
        if stem.startswith(root):
            return stem[len(root) :]
    return stem


def read_regions(folder: str | Path) -> dict[str, dict[str, np.ndarray]] | None:
    """{image key: {finding: boolean mask at the film's size}} from `folder`/regions.jsonl, or None without one."""
    path = Path(folder) / REGIONS_FILE
    if not path.is_file():
        return None
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        found[region_key(record["path_to_image"])] = {
            name: decode_mask(region["mask"]) for name, region in record["regions"].items()
        }
    return found


def patch_grid(mask: np.ndarray, input_size: int, side: int) -> np.ndarray:
    """(side, side) bool: the patches of the model's input that show any of `mask`, after the film's own transform
    (letterboxed and resized to `input_size`, as dataprep and the app do), one patch per image token."""
    picture = Image.fromarray(np.asarray(mask, np.uint8) * 255)
    square = np.asarray(letterbox(picture, size=input_size))[..., 0] >= 128  # bicubic: its half-way is the edge
    edges = np.linspace(0, input_size, side + 1).round().astype(int)
    return np.array([[square[edges[r]:edges[r + 1], edges[c]:edges[c + 1]].any() for c in range(side)]
                     for r in range(side)])  # fmt: skip

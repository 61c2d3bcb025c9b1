"""Procedurally drawn chest-film look-alikes whose labelled findings are plainly visible.

    film = draw_film({"Cardiomegaly": {}, "Pleural Effusion": {"side": "left"}}, "PA", 384, np.random.default_rng(0))

Not anatomy, a test pattern with anatomy's layout: each finding has one strong, consistent signature so that a
tiny model trained on a few hundred films can learn it (and cannot from a blank image):
- Cardiomegaly: the heart shadow is ~60% of the chest width instead of ~35%.
- Pleural Effusion: the lung base is white up to a meniscus, highest at the side wall (blunted angle).
- Consolidation: a dense, lumpy white patch inside a lung.
- Pneumothorax: the lateral lung and apex are black and featureless, with a thin pleural line at the edge.
- Support Devices: bright lines (endotracheal tube, central line) or a pacemaker box with its lead.
Left and right follow the radiological convention: the patient's left is on the image's right.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DRAWN = ("Cardiomegaly", "Pleural Effusion", "Consolidation", "Pneumothorax", "Support Devices")
ASPECT = 1.15  # films are taller than wide; the builder letterboxes them
DEVICES = ("endotracheal tube", "central line", "pacemaker")
# Aerated lung: a mid grey, so that a pneumothorax (black) differs from it by more than a random CLIP tower keeps of
# "darker than dark" (its LayerNorm maps black and dark grey to nearly one vector). Lungs at 0.15 left the tiny
# model's pneumothorax answers at their prior (0.56); at 0.28 it learns them (0.99-1.00 over three trainer seeds,
# bench/learn_synthetic.py).
LUNG = 0.28


def _ellipse(xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, ax: float, ay: float, edge: float = 0.04):
    """Soft mask of an ellipse: 1 inside, 0 outside, a ramp of relative width `edge` at the border."""
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    return np.clip((1.0 - r) / edge, 0.0, 1.0)


def _paint(img: np.ndarray, mask: np.ndarray, value: float) -> np.ndarray:
    return img * (1.0 - mask) + value * mask


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, radius: float) -> np.ndarray:
    """Blobby noise in [-1, 1] (blurred white noise), for lung markings and irregular patch edges."""
    field = Image.fromarray((rng.random(shape) * 255).astype(np.uint8))
    arr = np.asarray(field.filter(ImageFilter.GaussianBlur(radius)), np.float32)
    return (arr - arr.mean()) / (np.abs(arr - arr.mean()).max() + 1e-6)


def _lines(size: tuple[int, int], strokes: list[tuple[list[tuple[float, float]], float]]) -> np.ndarray:
    """Rasterise polylines given in [0, 1] coordinates (x by width, y by height) with widths in pixels."""
    overlay = Image.new("L", size)
    draw = ImageDraw.Draw(overlay)
    w, h = size
    for points, width in strokes:
        draw.line([(x * w, y * h) for x, y in points], fill=255, width=max(int(width), 1), joint="curve")
    return np.asarray(overlay, np.float32) / 255.0


def _curve(p0, p1, p2, n: int = 24) -> list[tuple[float, float]]:
    """Quadratic Bezier from p0 to p2 bent towards p1."""
    t = np.linspace(0, 1, n)[:, None]
    pts = (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t**2 * np.array(p2)
    return [tuple(p) for p in pts]


def draw_film(
    findings: dict[str, dict], view: str, size: int, rng: np.random.Generator, regions: dict | None = None
) -> Image.Image:
    """An 8-bit grayscale film of `size` px width showing `findings` (label -> details such as side). `regions`, if
    given, receives where each finding was drawn: its paint weight (0..1) per pixel, by finding name. Recording them
    draws nothing and takes no random number: the film is the same with or without."""

    def drawn(name: str, weight: np.ndarray) -> np.ndarray:
        if regions is not None:
            regions[name] = np.maximum(regions[name], weight) if name in regions else weight
        return weight

    w, h = size, int(round(size * ASPECT))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx, yy = xx / w, yy / h
    px = size / 384  # stroke widths scale with the film
    s = rng.uniform(0.96, 1.04)
    dx, dy = rng.uniform(-0.02, 0.02, 2)
    xx, yy = (xx - 0.5 - dx) / s + 0.5, (yy - 0.5 - dy) / s + 0.5  # jitter position and scale
    lateral = view == "lateral"

    img = np.full((h, w), 0.04, np.float32)
    img = _paint(img, _ellipse(xx, yy, 0.5, 0.62, 0.46, 0.55), 0.42)  # torso
    img = _paint(img, _ellipse(xx, yy, 0.5, 0.2, 0.48, 0.12), 0.42)  # shoulders
    img = _paint(img, ((np.abs(xx - 0.5) < 0.09) & (yy < 0.2)).astype(np.float32), 0.42)  # neck
    if lateral:
        lungs = {"both": (0.48, 0.3)}
        axes = (0.28, 0.3)
    else:
        lungs = {"right": (0.32, 0.45), "left": (0.68, 0.45)}  # patient's right on the image's left
        axes = (0.14, 0.29)
    markings = 0.05 * _smooth_noise((h, w), rng, 2.0 * px)
    masks = {}
    for side, (cx, cy) in lungs.items():
        masks[side] = _ellipse(xx, yy, cx, cy, *axes, edge=0.06)
        img = _paint(img, masks[side], LUNG) + masks[side] * markings
    spine_x = 0.82 if lateral else 0.5
    img = _paint(img, np.clip((0.045 - np.abs(xx - spine_x)) / 0.01, 0, 1), 0.5)
    big = "Cardiomegaly" in findings
    heart_ax, heart_ay = (0.21, 0.15) if big else (0.12, 0.11)
    heart_cx = 0.38 if lateral else 0.5 + 0.3 * heart_ax  # the heart sits mostly on the patient's left
    heart = _ellipse(xx, yy, heart_cx, 0.64, heart_ax, heart_ay, edge=0.05)
    img = _paint(img, drawn("Cardiomegaly", heart) if big else heart, 0.62)

    ribs = []
    for cx, cy in lungs.values():
        for k in range(7):
            y0 = cy - axes[1] * 0.75 + k * axes[1] * 0.22
            xs = np.linspace(cx - axes[0], cx + axes[0], 12)
            ribs.append(([(x, y0 + 0.05 * ((x - cx) / axes[0]) ** 2) for x in xs], 2 * px))
    if not lateral:
        ribs += [([(0.45, 0.19), (0.2, 0.15)], 5 * px), ([(0.55, 0.19), (0.8, 0.15)], 5 * px)]  # clavicles
    img = img + 0.08 * _lines((w, h), ribs) * (img > 0.1)

    def shows(name: str, side: str) -> bool:  # a lateral film superimposes both sides
        return name in findings and (lateral or findings[name].get("side", "both") in (side, "both"))

    for side, mask in masks.items():
        cx, cy = lungs[side]
        out = 1.0 if lateral else np.sign(cx - 0.5)  # towards the side wall (the back on a lateral)
        towards_wall = np.clip(out * (xx - cx) / axes[0], 0, 1)
        if shows("Pleural Effusion", side):
            level = cy + 0.1 - 0.16 * towards_wall**1.5  # meniscus: fluid climbs the side wall
            img = _paint(img, drawn("Pleural Effusion", mask * np.clip((yy - level) / 0.01, 0, 1)), 0.6)
        if shows("Consolidation", side):
            zone_y = cy - 0.12 if findings["Consolidation"].get("zone") == "upper" else cy + 0.04
            bx = cx + rng.uniform(-0.04, 0.04)
            blob = _ellipse(xx, yy, bx, zone_y, 0.11, 0.1, edge=0.6)  # 0 outside, rising to 1 at the centre
            lumpy = np.clip((blob - 0.15 + 0.3 * _smooth_noise((h, w), rng, 3 * px)) * 4, 0, 1) * (blob > 0)
            img = _paint(img, drawn("Consolidation", mask * lumpy), 0.62)
        if shows("Pneumothorax", side):
            gone = ((out * (xx - cx) > 0.02) | (yy < cy - axes[1] * 0.55)).astype(np.float32)
            img = _paint(img, drawn("Pneumothorax", mask * gone), 0.02)
            edge = [(cx + out * 0.02, cy - axes[1] * 0.55), (cx + out * 0.02, cy + axes[1] * 0.8)]
            img = _paint(img, drawn("Pneumothorax", mask * _lines((w, h), [(edge, 2 * px)])), 0.45)

    device = findings.get("Support Devices", {}).get("device")
    if device:
        strokes = []
        if device == "endotracheal tube":
            strokes = [([(0.5, 0.0), (0.5, 0.34)], 6 * px)]
        elif device == "central line":
            strokes = [(_curve((0.22, 0.1), (0.44, 0.14), (0.53, 0.4)), 4 * px)]
        elif device == "pacemaker":
            box = ([(0.69, 0.2), (0.79, 0.2)], 18 * px)  # left chest wall: the image's right
            strokes = [(_curve((0.74, 0.2), (0.6, 0.3), (0.5, 0.66)), 3 * px), box]
        img = np.maximum(img, 0.97 * drawn("Support Devices", _lines((w, h), strokes)))

    img = img * rng.uniform(0.92, 1.08) + rng.uniform(-0.03, 0.03) + rng.normal(0, 0.015, img.shape)
    film = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8), "L")
    return film.filter(ImageFilter.GaussianBlur(0.7 * px))

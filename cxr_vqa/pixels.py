"""Pixel steps whose memory does not grow past the film's own: 8-bit conversion band by band, and a letterbox that
scales before it pads.

    gray = to_uint8(arr, low, high)              # float32 one band of rows at a time, never the whole film
    square = letterbox(image, size=336)          # the same pixels as padding to max(w, h)² and resizing, without it

The letterbox used to pad to a max(w, h)² canvas at full resolution and resize that: a 1 x 30,000 strip made a
30,000² canvas (3.4 GB). Now a canvas of a real film's size (up to `FAST_CANVAS_PIXELS`) is still built, and for a
larger one the film's long axis is resampled by Pillow as before, and its short (padded) axis by
`_resample`, a port of Pillow's bicubic pass (its coefficients, 22-bit fixed point, rounding and clipping) that
reads the padding as `fill` without storing it. The result is the same bytes as the canvas version (checked over
hundreds of sizes and real films by tests/test_upload_limits.py) at the cost of one band of the film at a time.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from cxr_vqa.film_limits import LIMITS, ImageLoadError

BAND_PIXELS = 1 << 20  # a band of rows of about 1 M pixels: its float32/float64 temporaries are 4-8 MB each
BICUBIC_SUPPORT = 2.0  # Pillow's bicubic filter reaches 2 input pixels (times the scale when shrinking)
# A canvas up to this many pixels (9.4 M: 9 MB grey, 28 MB RGB; a real chest film's) is built and resized by Pillow,
# the bytes `_resample` reproduces at 3-5x the CPU; only a larger one (a strip, a forged size) goes band by band.
FAST_CANVAS_PIXELS = 3072 * 3072


def bands(arr: np.ndarray):
    """Slices of about `BAND_PIXELS` pixels each along the first axis (rows)."""
    row = arr[0].size if arr.ndim > 1 and arr.shape[0] else 1
    step = max(1, BAND_PIXELS // max(1, row))
    return (slice(start, start + step) for start in range(0, arr.shape[0], step))


def to_uint8(arr: np.ndarray, low, high) -> np.ndarray:
    """Map [low, high] linearly onto 0..255 (clipping outside); a flat range gives black. Band by band, so a 50 M-pixel
    film needs 4 MB of float32 at a time, not 200 MB. `low` and `high` keep the caller's types: numpy promotes a
    numpy scalar differently from a Python float, and the result must not change."""
    if high <= low:
        return np.zeros(arr.shape, np.uint8)
    out = np.empty(arr.shape, np.uint8)
    for band in bands(arr):
        scaled = (arr[band].astype(np.float32) - low) * (255.0 / (high - low))
        out[band] = np.clip(np.rint(scaled), 0, 255)
    return out


def letterbox(image: Image.Image, size: int | None = None, fill: int = 0) -> Image.Image:
    """Pad to a centred square with `fill` grey, then resize to `size` x `size` if given; always RGB.

    Padding instead of the processor's centre crop keeps the costophrenic angles and apices in view. With `size`,
    a full-resolution square over `FAST_CANVAS_PIXELS` is never allocated (see the module docstring)."""
    if size is not None and size < 1:
        raise ValueError(f"letterbox size must be a positive number of pixels, got {size}")
    if image.mode not in ("L", "RGB"):  # grey stays grey until the end: a third of the memory, the same pixels
        image = image.convert("RGB")
    width, height = image.size
    side = max(width, height)
    if size is None or size == side:
        if side * side > LIMITS.max_canvas_pixels:
            raise ImageLoadError(f"image too large: letterboxed to a square it is {side}x{side}, over the "
                                 f"{LIMITS.max_canvas_pixels:,} pixel limit; downscale it")  # fmt: skip
        return _padded(image, side, fill).convert("RGB")
    # bicubic like CLIPImageProcessor, so pixels match what the vision tower was trained on
    if width == height:
        return image.resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
    if side * side <= FAST_CANVAS_PIXELS:
        return _padded(image, side, fill).resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
    short = min(width, height)
    offset = (side - short) // 2  # where the film starts on the short axis of the side x side canvas
    taps = _taps(side, size, offset, offset + short)
    if height > width:  # pad columns: Pillow's first pass (horizontal) is the padded one, done here band by band
        base = ROUND + fill * taps[2][None, :]
        rows = [_resample(np.asarray(image.crop((0, top, width, min(top + step, height)))), taps, base)
                for top, step in _row_steps(height, max(width, size))]  # fmt: skip
        half = Image.fromarray(np.concatenate(rows), image.mode)
        return half.resize((size, size), Image.Resampling.BICUBIC).convert("RGB")  # its vertical pass only
    # pad rows: Pillow's horizontal pass (exact: the canvas's rows of film are these rows), then the padded one here
    half = np.asarray(image.resize((size, height), Image.Resampling.BICUBIC))
    padding_row = np.clip((ROUND + fill * _taps(side, size, 0, 0)[2]) >> SHIFT, 0, 255)  # a padding row, resized
    base = ROUND + padding_row[:, None] * taps[2][None, :]
    out = _resample(np.swapaxes(half, 0, 1), taps, base)
    return Image.fromarray(np.ascontiguousarray(np.swapaxes(out, 0, 1)), image.mode).convert("RGB")


def _padded(image: Image.Image, side: int, fill: int) -> Image.Image:
    """`image` centred on a `side` x `side` square of `fill` grey, in its own mode."""
    square = Image.new(image.mode, (side, side), fill if image.mode == "L" else (fill,) * 3)
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square


SHIFT = 22  # Pillow's PRECISION_BITS for 8-bit images
ROUND = 1 << (SHIFT - 1)


def _row_steps(height: int, width: int):
    """Bands of rows of about `BAND_PIXELS` in and out (a 1-pixel-wide film still makes 336 int64 sums a row)."""
    step = max(1, BAND_PIXELS // width)
    return ((top, step) for top in range(0, height, step))


def _bicubic(x: float) -> float:
    """Pillow's bicubic_filter (a = -0.5), the same operations in the same order."""
    x = -x if x < 0.0 else x
    if x < 1.0:
        return ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * -0.5
    return 0.0


def _taps(side: int, size: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's fixed-point bicubic taps for resampling a line of `side` pixels to `size` (precompute_coeffs with
    in0 = 0, in1 = side, then normalize_coeffs_8bpc): (index into [start, stop), weight) of each output pixel's taps on
    the film, and the sum of its weights that fall on the padding outside [start, stop)."""
    scale = float(side) / size
    filterscale = max(scale, 1.0)
    support, ss = BICUBIC_SUPPORT * filterscale, 1.0 / filterscale
    width = int(math.ceil(support)) * 2 + 1
    index, weight = np.zeros((size, width), np.int64), np.zeros((size, width), np.int64)
    padding = np.zeros(size, np.int64)
    for xx in range(size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), side) - xmin
        ks = [_bicubic((x + xmin - center + 0.5) * ss) for x in range(count)]
        total = 0.0
        for k in ks:  # summed in order, as C does (Python's sum() may compensate)
            total += k
        for x, k in enumerate(ks):
            k = k / total if total != 0.0 else k
            fixed = int(-0.5 + k * (1 << SHIFT)) if k < 0 else int(0.5 + k * (1 << SHIFT))
            if start <= xmin + x < stop:
                index[xx, x], weight[xx, x] = xmin + x - start, fixed
            else:
                padding[xx] += fixed
    return index, weight, padding


def _resample(band: np.ndarray, taps, base: np.ndarray) -> np.ndarray:
    """One bicubic pass along axis 1 of `band` (rows, film pixels[, channels]) onto the taps' output pixels, with
    `base` (the rounding and the padding's share) added: Pillow's integer arithmetic, exactly."""
    index, weight, _ = taps
    base = base if band.ndim == 2 else base[..., None]  # the same for every channel
    acc = np.broadcast_to(base, (band.shape[0], *index.shape[:1], *band.shape[2:])).copy()
    for t in range(index.shape[1]):
        column = weight[:, t] if band.ndim == 2 else weight[:, t, None]
        acc += band[:, index[:, t]] * column
    return np.clip(acc >> SHIFT, 0, 255).astype(np.uint8)

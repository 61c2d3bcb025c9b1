"""Load any chest X-ray the project meets (PNG, JPEG, DICOM) as an 8-bit RGB PIL image, and letterbox it.

One loader for dataprep, evaluation and the app, so a film looks the same in training and in serving.

    from cxr_vqa.images import load_film, load_image, letterbox
    image = letterbox(load_image("view1_frontal.dcm"), size=336)
    film = load_film("upload.png", size=336)     # the same, plus the file's SHA-256 and its original size

Decisions:
- 16-bit grayscale PNGs are stretched from their own min to max: exports often keep 10-14-bit data in a 16-bit
  container, which the full 0-65535 range would render almost black.
- Transparency is composited on black, the colour of an X-ray's background and of the letterbox padding.
- DICOM: Modality LUT / rescale, then the file's VOI LUT or window mapped over the window's own output range (not
  re-stretched, which would undo the chosen window); min/max only when the file has no window. MONOCHROME1 is
  inverted so bone is bright. Multi-frame files give their first frame.
- Tiny images are accepted: the model input is 336 px anyway and rejecting them is the caller's policy.
- Formats other than PNG, JPEG and DICOM are refused rather than decoded by whichever Pillow plugin matches.
- PIL's own decompression-bomb limits (89M pixels warns, 179M raises) still apply above `max_pixels`; the warning
  is not silenced because `warnings.catch_warnings` is process-global and the app loads images in threads.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, get_decoder, pixel_array
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cxr_vqa.errors import UserError

logger = logging.getLogger(__name__)

MAX_PIXELS: int = 50_000_000
PIL_FORMATS = ("PNG", "JPEG")
MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


class ImageLoadError(UserError):
    """An image that cannot be used; str(err) is one line for the user naming the problem and what to do."""


@dataclass(frozen=True)
class Film:
    """A film ready for the model: letterboxed RGB, the SHA-256 of the file's bytes, and its size before."""

    image: Image.Image
    sha256: str
    original_size: tuple[int, int]  # (width, height) before letterboxing


def load_film(source: ImageSource, size: int) -> Film:
    """Decode `source` and letterbox it to `size` (the model's input side): what the app and evaluation feed in."""
    image = load_image(source)
    return Film(image=letterbox(image, size=size), sha256=image_sha256(source), original_size=image.size)


def load_image(source: ImageSource, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `source` (a path, raw bytes or a binary file) into a fully loaded 8-bit RGB image."""
    data, name = _read(source)
    if not data:
        raise ImageLoadError("empty file: it has 0 bytes; choose the image again")
    is_named_dicom = name.lower().endswith(".dcm") and not data.startswith(tuple(MAGIC))
    if data[128:132] == b"DICM" or is_named_dicom:
        image = _load_dicom(data, max_pixels)
    else:
        image = _load_pil(data, max_pixels)
    logger.debug("loaded %s: %dx%d", name or "<bytes>", *image.size)
    return image


def image_sha256(source: ImageSource) -> str:
    """SHA-256 hex digest of the raw file bytes, to refer to an image without storing it."""
    return hashlib.sha256(_read(source)[0]).hexdigest()


def letterbox(image: Image.Image, size: int | None = None, fill: int = 0) -> Image.Image:
    """Pad to a centred square with `fill` grey, then resize to `size` x `size` if given; always RGB.

    Padding instead of the processor's centre crop keeps the costophrenic angles and apices in view.
    """
    if size is not None and size < 1:
        raise ValueError(f"letterbox size must be a positive number of pixels, got {size}")
    image = image.convert("RGB")
    width, height = image.size
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), (fill, fill, fill))
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    if size is not None and size != side:
        # bicubic like CLIPImageProcessor, so pixels match what the vision tower was trained on
        canvas = canvas.resize((size, size), Image.Resampling.BICUBIC)
    return canvas


def _read(source: ImageSource) -> tuple[bytes, str]:
    """Return the file bytes and a name (for DICOM detection by extension); file objects keep their position."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), ""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            with open(path, "rb") as file:
                return file.read(), str(path)
        except FileNotFoundError:
            raise ImageLoadError(f"image file not found: {path}; check the path") from None
        except IsADirectoryError:
            raise ImageLoadError(f"{path} is a directory, not an image file; pass the image file itself") from None
        except OSError as exc:
            raise ImageLoadError(f"cannot read {path}: {exc.strerror or exc}; check that it is readable") from exc
    start = source.tell() if source.seekable() else None
    data = source.read()
    if start is not None:
        source.seek(start)  # so a caller can hash and then load the same handle
    return data, str(getattr(source, "name", ""))


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageLoadError(
            f"image too large: {width}x{height} is {width * height:,} pixels, over the {max_pixels:,} limit; "
            "downscale it and try again"
        )


def _to_uint8(arr: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto 0..255 (clipping outside); a flat range gives black."""
    if high <= low:
        return np.zeros(arr.shape, np.uint8)
    scaled = (arr.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _load_pil(data: bytes, max_pixels: int) -> Image.Image:
    kind = next((fmt for magic, fmt in MAGIC.items() if data.startswith(magic)), None)
    try:
        image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"image too large: {exc}; downscale it and try again") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if kind is None:
            raise ImageLoadError("not an image: expected PNG, JPEG or DICOM; convert the file and retry") from exc
        raise ImageLoadError(f"{kind} file is truncated or corrupt (bad header); export it again") from exc
    _check_size(*image.size, max_pixels)  # from the header, before any pixel is decoded
    try:
        # a full decode now, so truncation surfaces here rather than as a half-grey image later
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(f"{image.format} image is truncated or corrupt ({exc}); export it again") from exc
    image = ImageOps.exif_transpose(image)  # phone photos of films carry their rotation in EXIF
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # convert("L") would clip everything above 255 to white; stretch the real range instead
        arr = np.asarray(image)
        return Image.fromarray(_to_uint8(arr, arr.min(), arr.max())).convert("RGB")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return image.convert("RGB")  # also CMYK (Pillow undoes Adobe's inverted CMYK when decoding), P, 1, L


def _load_dicom(data: bytes, max_pixels: int) -> Image.Image:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many exception types on malformed files
        raise ImageLoadError(f"could not read DICOM file ({_one_line(exc)}); it may be truncated or corrupt") from exc
    if not any(tag in ds for tag in PIXEL_DATA_TAGS):
        raise ImageLoadError(
            "DICOM file has no pixel data (a structured report or presentation state?); export the image instead"
        )
    _check_size(int(ds.get("Columns") or 0), int(ds.get("Rows") or 0), max_pixels)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:  # a bare dataset without file meta: decode it as it was read
        syntax = ImplicitVRLittleEndian if ds.original_encoding[0] else ExplicitVRLittleEndian
        ds.file_meta.TransferSyntaxUID = syntax
    if syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise ImageLoadError(f"unsupported DICOM transfer syntax {syntax.name}; convert the file to PNG") from None
        if not decoder.is_available:
            missing = "; ".join(decoder.missing_dependencies)
            raise ImageLoadError(
                f"cannot decode DICOM compressed as {syntax.name}: no decoder plugin installed ({missing}); "
                "e.g. pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
            )
    try:
        arr = pixel_array(ds, index=0)  # decode only the first frame of a multi-frame file
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
        if arr.ndim == 3:  # colour; pydicom has already converted YBR to RGB
            return Image.fromarray(arr if arr.dtype == np.uint8 else _to_uint8(arr, arr.min(), arr.max()), "RGB")
        arr, low, high = _apply_voi(apply_modality_lut(arr, ds), ds)
    except Exception as exc:  # same reason as dcmread: many failure modes, one user message
        raise ImageLoadError(f"could not decode DICOM pixel data ({_one_line(exc)}); it may be corrupt") from exc
    gray = _to_uint8(arr, low, high)
    if photometric == "MONOCHROME1":  # MONOCHROME1 stores bone dark; the model expects bone bright
        gray = 255 - gray
    return Image.fromarray(gray).convert("RGB")


def _apply_voi(arr: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, float, float]:
    """Apply the VOI LUT or window; return the pixels and the values that become black and white."""
    voi = ds.get("VOILUTSequence")
    if voi and "LUTDescriptor" in voi[0] and "LUTData" in voi[0]:
        entries, first = voi[0].LUTDescriptor[0] or 2**16, voi[0].LUTDescriptor[1]
        # apply_voi indexes the LUT with integers and wraps out-of-range values, so clip them first
        index = np.clip(np.rint(arr), first, first + entries - 1).astype(np.int64)
        lut = apply_voi(np.arange(first, first + entries), ds)
        return apply_voi(index, ds), float(lut.min()), float(lut.max())
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        try:
            # the window's output range: stretching to the image's min/max instead would undo the window
            low, high = apply_windowing(np.array([-np.inf, np.inf]), ds)
            return apply_windowing(arr, ds), float(low), float(high)
        except ValueError as exc:
            logger.warning("ignoring invalid DICOM window (%s); using the pixel range", exc)
    return arr, float(arr.min()), float(arr.max())


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__

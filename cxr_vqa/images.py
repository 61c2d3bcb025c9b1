"""Load any chest X-ray the project meets (PNG, JPEG, DICOM) as an 8-bit RGB PIL image, and letterbox it.

One loader for dataprep, evaluation and the app, so a film looks the same in training and in serving; and every film
that comes in goes through it, so every one is checked from its header first (`cxr_vqa.film_limits`: size, shape,
the letterboxed square, bits and samples, frames, the decoder's raster, DICOM's transfer syntax and deflate).

    from cxr_vqa.images import load_film, load_image, letterbox
    image = letterbox(load_image("view1_frontal.dcm"), size=336)
    film = load_film("upload.png", size=336)     # the same, plus the file's SHA-256 and its original size

Decisions:
- Nothing is decoded before its header passes `FilmLimits`; PNG and JPEG headers are read here, not by Pillow (whose
  PNG reader inflates text chunks on the way). A JPEG whose raster would pass the decode limit is decoded reduced
  (Image.draft: 1/2, 1/4 or 1/8, in libjpeg's IDCT), so a 48 MP phone photo costs what a 12 MP one does.
- 16-bit grayscale PNGs are stretched from their own min to max: exports often keep 10-14-bit data in a 16-bit
  container, which the full 0-65535 range would render almost black. Band by band (`pixels.to_uint8`).
- Transparency is composited on black, the colour of an X-ray's background and of the letterbox padding.
- A grey film stays one byte a pixel until the letterbox has shrunk it (the same pixels as converting first).
- DICOM: `cxr_vqa.dicom` (LUTs and windows, MONOCHROME1, first frame of several, deflate through a cap).
- Tiny images are accepted: the model input is 336 px anyway and rejecting them is the caller's policy.
- Formats other than PNG, JPEG and DICOM are refused rather than decoded by whichever Pillow plugin matches.
- PIL's own decompression-bomb limits (89M pixels warns, 179M raises) still apply above the limits; the warning
  is not silenced because `warnings.catch_warnings` is process-global and the app loads images in threads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxr_vqa.dicom import read_dicom
from cxr_vqa.film_limits import LIMITS, MIB, FilmLimits, ImageLoadError, check_header, probe_jpeg, probe_png
from cxr_vqa.pixels import BAND_PIXELS, letterbox, to_uint8

__all__ = ["Film", "FilmLimits", "ImageLoadError", "LIMITS", "image_sha256", "letterbox", "load_film", "load_image"]

logger = logging.getLogger(__name__)

MAX_PIXELS: int = LIMITS.max_pixels
PIL_FORMATS = ("PNG", "JPEG")
MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG"}
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


@dataclass(frozen=True)
class Film:
    """A film ready for the model: letterboxed RGB, the SHA-256 of the file's bytes, and its size before."""

    image: Image.Image
    sha256: str
    original_size: tuple[int, int]  # (width, height) before letterboxing


def load_film(source: ImageSource, size: int, *, limits: FilmLimits = LIMITS) -> Film:
    """Decode `source` and letterbox it to `size` (the model's input side): what the app and evaluation feed in."""
    data, name = _read(source, limits)
    sha256 = hashlib.sha256(data).hexdigest()
    image = _decode(data, name, limits)
    del data  # the file's bytes are not needed while the film is letterboxed
    return Film(image=letterbox(image, size=size), sha256=sha256, original_size=image.size)


def load_image(source: ImageSource, *, max_pixels: int | None = None, limits: FilmLimits = LIMITS) -> Image.Image:
    """Decode `source` (a path, raw bytes or a binary file) into a fully loaded 8-bit RGB image."""
    if max_pixels is not None:
        limits = dataclasses.replace(limits, max_pixels=max_pixels)
    data, name = _read(source, limits)
    image = _decode(data, name, limits)
    return image if image.mode == "RGB" else image.convert("RGB")


def image_sha256(source: ImageSource) -> str:
    """SHA-256 hex digest of the raw file bytes, to refer to an image without storing it."""
    return hashlib.sha256(_read(source, LIMITS)[0]).hexdigest()


def _decode(data: bytes, name: str, limits: FilmLimits) -> Image.Image:
    """The film as an 8-bit "L" or "RGB" image, every limit checked from its header first."""
    if not data:
        raise ImageLoadError("empty file: it has 0 bytes; choose the image again")
    is_named_dicom = name.lower().endswith(".dcm") and not data.startswith(tuple(MAGIC))
    image = read_dicom(data, limits) if data[128:132] == b"DICM" or is_named_dicom else _load_pil(data, limits)
    logger.debug("loaded %s: %dx%d", name or "<bytes>", *image.size)
    return image


def _read(source: ImageSource, limits: FilmLimits) -> tuple[bytes, str]:
    """Return the file bytes (never more than `limits.max_file_bytes`) and a name (for DICOM detection by
    extension); file objects keep their position."""
    most = limits.max_file_bytes
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), ""
    elif isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        try:
            with open(name, "rb") as file:
                if os.fstat(file.fileno()).st_size > most:  # the size on disk, before reading any of it
                    _too_big(os.fstat(file.fileno()).st_size, most)
                data = file.read(most + 1)
        except FileNotFoundError:
            raise ImageLoadError(f"image file not found: {name}; check the path") from None
        except IsADirectoryError:
            raise ImageLoadError(f"{name} is a directory, not an image file; pass the image file itself") from None
        except OSError as exc:
            raise ImageLoadError(f"cannot read {name}: {exc.strerror or exc}; check that it is readable") from exc
    else:
        start = source.tell() if source.seekable() else None
        data, name = source.read(most + 1), str(getattr(source, "name", ""))
        if start is not None:
            source.seek(start)  # so a caller can hash and then load the same handle
    if len(data) > most:
        _too_big(len(data), most)
    return data, name


def _too_big(size: int, most: int) -> None:
    raise ImageLoadError(f"file too large: {size / MIB:,.1f} MiB or more, over the {most // MIB} MiB limit for one "
                         "film; export a smaller file")  # fmt: skip


def _load_pil(data: bytes, limits: FilmLimits) -> Image.Image:
    header = probe_png(data) or probe_jpeg(data)
    if header is None:
        raise ImageLoadError("not an image: expected PNG, JPEG or DICOM; convert the file and retry")
    reduce = 1
    if header.kind == "JPEG":  # decoded reduced rather than refused, while the reduced raster is over the limit
        while reduce < 8 and _reduced(header, reduce).raster_bytes > limits.max_decode_bytes:
            reduce *= 2
    check_header(_reduced(header, reduce), limits)
    try:
        image = Image.open(io.BytesIO(data), formats=PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"image too large: {exc}; downscale it and try again") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(f"{header.kind} file is truncated or corrupt (bad header); export it again") from exc
    if image.size != (header.width, header.height):  # Pillow read another header than ours: check its numbers too
        check_header(dataclasses.replace(header, width=image.width, height=image.height, decode_bytes=0), limits)
    if reduce > 1:
        image.draft(image.mode, (max(1, image.width // reduce), max(1, image.height // reduce)))
    try:
        # a full decode now, so truncation surfaces here rather than as a half-grey image later
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageLoadError(f"{image.format} image is truncated or corrupt ({exc}); export it again") from exc
    ImageOps.exif_transpose(image, in_place=True)  # phone photos carry their rotation in EXIF; in place: no copy
    if image.mode in SIXTEEN_BIT:
        # convert("L") would clip everything above 255 to white; stretch the real range instead
        return _stretched(image)
    if image.has_transparency_data:
        return _on_black(image)
    return image if image.mode in ("L", "RGB") else image.convert("RGB")  # CMYK (Pillow undoes Adobe's), P, 1


def _reduced(header, reduce: int):
    """The header's raster when libjpeg decodes at 1/`reduce` (its coefficients, if progressive, stay full size)."""
    if reduce == 1:
        return header
    full = header.width * header.height * (1 if header.samples == 1 else 4)
    small = -(-header.width // reduce) * -(-header.height // reduce) * (1 if header.samples == 1 else 4)
    return dataclasses.replace(header, decode_bytes=header.raster_bytes - full + small)


def _rows(image: Image.Image):
    """The image in bands of about `BAND_PIXELS` pixels: (top, band as an array)."""
    step = max(1, BAND_PIXELS // image.width)
    for top in range(0, image.height, step):
        yield top, np.asarray(image.crop((0, top, image.width, min(top + step, image.height))))


def _stretched(image: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit) grey film stretched from its min to its max onto 8 bits, one band at a time."""
    low = high = None
    for _, band in _rows(image):
        low = band.min() if low is None else min(low, band.min())  # numpy scalars, as the whole array's would be
        high = band.max() if high is None else max(high, band.max())
    out = np.empty((image.height, image.width), np.uint8)
    for top, band in _rows(image):
        out[top : top + len(band)] = to_uint8(band, low, high)
    return Image.fromarray(out)


def _on_black(image: Image.Image) -> Image.Image:
    """Transparency composited on black, band by band (four RGBA copies of a whole film would be 16 bytes a pixel)."""
    out = Image.new("RGB", image.size)
    step = max(1, BAND_PIXELS // image.width)
    for top in range(0, image.height, step):
        rgba = image.crop((0, top, image.width, min(top + step, image.height))).convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        out.paste(Image.alpha_composite(black, rgba).convert("RGB"), (0, top))
    return out

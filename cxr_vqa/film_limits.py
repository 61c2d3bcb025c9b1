"""What a film may ask of the machine, judged from its header before a single pixel is decoded or a byte inflated.

    header = probe_png(data) or probe_jpeg(data)   # FilmHeader from the bytes, nothing decoded (DICOM: cxr_vqa.dicom)
    check_header(header, LIMITS)                   # ImageLoadError, one line: what is wrong and what to do
    body = inflate(deflated, cap=64 << 20)         # zlib through a cap: a bomb is refused at the cap, not after

Why these limits (measured with `python bench/upload_limits.py`, see docs/upload-limits.md). Real chest films are at
most ~4,300 x 3,500 (15 M pixels, 30 MB as 16-bit); phone photos of films are 12-50 M pixels, and JPEG ones are
decoded reduced (Image.draft), so a 48 MP photo costs what a 12 MP one does. A film's memory is its decoded raster
plus one copy of the same size (the 8-bit conversion, or the narrow letterbox strip), so the decode limit bounds
the peak at about twice it.

- max_pixels 50 M: the long-standing limit; every real film and phone photo is under it.
- max_aspect 4, from a long side of 1,024 px (aspect_from): a chest film is ~0.7-1.4 wide per tall; past 4:1 the
  lungs would be < 84 px across at 336 px. It is no longer what bounds memory (the letterbox scales first) but it
  names the problem of the 138-byte 1 x 30,000 strip (3.4 GB as a 30,000² canvas before). Smaller pictures (test
  patterns, thumbnails) cost nothing whatever their shape, so they are let through.
- max_canvas_pixels 100 M (a side of 10,000 px): the square the film is letterboxed into, at full resolution.
  `letterbox` never allocates it (it scales first), but nothing larger is a film, and `letterbox(size=None)`,
  which does allocate it, refuses past it.
- max_decode_bytes 100 MiB: the raster the decoder holds for the one frame used (Pillow keeps RGB in 4 bytes a
  pixel; progressive JPEG also keeps 2 bytes a pixel per component of coefficients): a 15 M-pixel 16-bit film is
  30 MB, a 50 M-pixel 8-bit one 50 MB. Measured peak of the largest accepted film of each kind: < 250 MiB.
- max_bits 16, max_samples 4 (grey, grey+alpha, RGB, RGBA): what PNG and chest DICOM use; 32- and 64-bit or
  float samples are CT/RT data, not films.
- max_frames 100: only the first frame is used; a longer file is a cine or CT series, not one film.
- max_inflated_bytes 64 MiB: a deflated DICOM's dataset after inflating (two copies live while it is parsed);
  the header is read from its first `HEADER_BYTES` inflated, and the rest is inflated only up to what that header
  declares.
- max_file_bytes 128 MiB: what is read of one file before anything else (the app's upload limit is lower).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from cxr_vqa.errors import UserError

MIB = 1 << 20
HEADER_BYTES = 4 * MIB  # a deflated DICOM's header (overlays and private tags included) inflates within this
PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"
# Pillow's bytes a pixel by PNG colour type (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA): RGB and the alpha modes
# are stored 4 bytes a pixel, 16-bit grey ("I;16") 2, the rest 1; RGB 16-bit is decoded to 8-bit
PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


class ImageLoadError(UserError):
    """An image that cannot be used; str(err) is one line for the user naming the problem and what to do."""


@dataclass(frozen=True)
class FilmLimits:
    """The bounds every film is checked against from its header (the module docstring gives the reasons)."""

    max_pixels: int = 50_000_000
    max_aspect: float = 4.0
    aspect_from: int = 1024  # the long side from which the shape is checked
    max_canvas_pixels: int = 100_000_000
    max_decode_bytes: int = 100 * MIB
    max_bits: int = 16
    max_samples: int = 4
    max_frames: int = 100
    max_inflated_bytes: int = 64 * MIB
    max_file_bytes: int = 128 * MIB


LIMITS = FilmLimits()


@dataclass(frozen=True)
class FilmHeader:
    """What a file says it holds: the numbers every check reads, and the raster decoding it would allocate."""

    kind: str  # PNG, JPEG, DICOM
    width: int
    height: int
    bits: int = 8  # per sample, as stored (DICOM: BitsAllocated)
    samples: int = 1  # per pixel
    frames: int = 1
    decode_bytes: int = 0  # the raster decoding the first frame allocates; 0: width x height x samples x bytes

    @property
    def raster_bytes(self) -> int:
        return self.decode_bytes or self.width * self.height * self.samples * max(1, (self.bits + 7) // 8)


def check_header(header: FilmHeader, limits: FilmLimits = LIMITS) -> None:
    """Refuse, in one line, a film whose header asks for more than `limits`; nothing has been decoded yet."""
    w, h, kind = header.width, header.height, header.kind
    if w < 1 or h < 1:
        raise ImageLoadError(f"{kind} header declares {w}x{h} pixels: the file is corrupt; export it again")
    if header.frames > limits.max_frames:
        raise ImageLoadError(f"{kind} file holds {header.frames:,} frames (a cine or series?), over the limit of "
                             f"{limits.max_frames}; export the one film to ask about")  # fmt: skip
    if header.samples > limits.max_samples:
        raise ImageLoadError(f"{header.samples} samples per pixel, over the limit of {limits.max_samples}; save the "
                             "film as greyscale or RGB")  # fmt: skip
    if header.bits > limits.max_bits:
        raise ImageLoadError(f"{header.bits}-bit samples, over the {limits.max_bits}-bit limit for a film; save it "
                             "as 8- or 16-bit")  # fmt: skip
    if w * h > limits.max_pixels:
        raise ImageLoadError(f"image too large: {w}x{h} is {w * h:,} pixels, over the {limits.max_pixels:,} limit; "
                             "downscale it and try again")  # fmt: skip
    if max(w, h) > limits.max_aspect * min(w, h) and max(w, h) > limits.aspect_from:
        ratio = max(w, h) / min(w, h)
        raise ImageLoadError(f"image shape {w}x{h} is {ratio:,.0f}:1, over the {limits.max_aspect:g}:1 limit for a "
                             "film; crop it to the chest and try again")  # fmt: skip
    side = max(w, h)
    if side * side > limits.max_canvas_pixels:
        raise ImageLoadError(f"image too large: letterboxed to a square it is {side}x{side} ({side * side:,} "
                             f"pixels), over the {limits.max_canvas_pixels:,} limit; downscale it")  # fmt: skip
    if header.raster_bytes > limits.max_decode_bytes:
        raise ImageLoadError(f"image too large to decode: {w}x{h} x {header.samples} samples of {header.bits} bits "
                             f"needs {header.raster_bytes / MIB:,.0f} MiB, over the {limits.max_decode_bytes // MIB} "
                             "MiB limit; downscale it or save it as 8-bit")  # fmt: skip


def probe_png(data: bytes) -> FilmHeader | None:
    """The IHDR (and an animated PNG's acTL frame count) of a PNG, or None when `data` is no PNG; checked here, not
    by the decoder, which would inflate text chunks on the way."""
    if not data.startswith(PNG_MAGIC):
        return None
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageLoadError("PNG file is truncated or corrupt (bad header); export it again")
    width, height, bits, colour = struct.unpack(">IIBB", data[16:26])
    if colour not in PNG_SAMPLES or bits not in (1, 2, 4, 8, 16):
        raise ImageLoadError(f"PNG header declares colour type {colour} at {bits} bits: corrupt; export it again")
    frames, at = 1, 8
    while at + 8 <= len(data):  # chunks before the pixels: only their lengths and types are read
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"acTL" and length >= 8:
            frames = struct.unpack(">I", data[at + 8 : at + 12])[0]
        at += 12 + length
    samples = PNG_SAMPLES[colour]
    pixel = 2 if (colour, bits) == (0, 16) else 4 if samples > 1 and colour != 3 else 1
    return FilmHeader("PNG", width, height, bits, samples, frames, decode_bytes=width * height * pixel)


def probe_jpeg(data: bytes) -> FilmHeader | None:
    """The frame header (SOFn) of a JPEG, or None when `data` is no JPEG: size, precision, components, and whether
    it is progressive (then libjpeg keeps every coefficient of the full-size film: 2 bytes a pixel a component)."""
    if not data.startswith(JPEG_MAGIC):
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            break
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = struct.unpack(">H", data[at + 2 : at + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and at + 10 <= len(data):
            bits, height, width, components = struct.unpack(">BHHB", data[at + 4 : at + 10])
            progressive = marker in (0xC2, 0xC6, 0xCA)
            coefficients = 2 * width * height * components if progressive else 0
            pixel = 1 if components == 1 else 4
            return FilmHeader("JPEG", width, height, bits, components,
                              decode_bytes=coefficients + width * height * pixel)  # fmt: skip
        if marker == 0xDA:  # scan data before any frame header
            break
        at += 2 + length
    raise ImageLoadError("JPEG file is truncated or corrupt (no frame header); export it again")


def inflate(data: bytes, cap: int, *, what: str = "deflated data") -> bytes:
    """Raw deflate `data`, refusing (one line) once the output would pass `cap` bytes: at most `cap` + 1 bytes are
    ever inflated, whatever the input claims."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, cap + 1)
    except zlib.error as exc:
        raise ImageLoadError(f"{what} is corrupt ({exc}); export the file again") from None
    if len(out) > cap or inflater.unconsumed_tail:
        raise ImageLoadError(f"{what} inflates past {cap / MIB:,.1f} MiB, more than a film needs; save it "
                             "uncompressed or as PNG")  # fmt: skip
    return out

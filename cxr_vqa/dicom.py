"""Read a DICOM film as 8-bit grey or RGB, its header checked before its pixels are read, decoded or inflated.

    image = read_dicom(data, LIMITS)    # PIL image, "L" or "RGB"; ImageLoadError (one line) for anything refused

Order: the header alone (`dcmread(stop_before_pixels=True)`: rows, columns, bits allocated, samples, frames, the
transfer syntax and its decoder) against `FilmLimits`; only then the pixel data, and of it only the first frame,
once a compressed frame's own header (JPEG's SOF, JPEG 2000's SIZ: what the decoder allocates) matches the file's.
A Deflated Explicit VR Little Endian file is inflated through caps: its first `HEADER_BYTES` to read the header,
then no more than what that header declares (and never past `max_inflated_bytes`); pydicom itself would inflate
all of it first (a 280 KB file inflated to 288 MB took 550 MB before it was refused).

Decisions: Modality LUT / rescale, then the file's VOI LUT or window mapped over the window's own output range (not
re-stretched, which would undo the chosen window); min/max only when the file has no window. MONOCHROME1 is inverted
so bone is bright. These run band by band (`pixels.bands`): rescale makes float64, 8 bytes a pixel, so the whole
film at once would be 120 MB for a 15 M-pixel film.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from itertools import islice

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import generate_fragments
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, get_decoder, pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cxr_vqa.film_limits import (
    HEADER_BYTES,
    JPEG_MAGIC,
    MIB,
    FilmHeader,
    FilmLimits,
    ImageLoadError,
    check_header,
    probe_jpeg,
)
from cxr_vqa.pixels import bands, to_uint8

logger = logging.getLogger(__name__)

PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
J2K_SIZ, J2K_SEARCH = b"\xff\x4f\xff\x51", 1 << 16  # a JPEG 2000 codestream's SOC and SIZ markers; where to look
NO_PIXELS = "DICOM file has no pixel data (a structured report or presentation state?); export the image instead"


def read_dicom(data: bytes, limits: FilmLimits) -> Image.Image:
    """The first frame of a DICOM file as an 8-bit "L" (grey) or "RGB" image."""
    if _syntax_of(data) == DeflatedExplicitVRLittleEndian:
        data = _inflated(data, limits)
    header = _header(data)
    declared = _check(header, limits)
    try:  # now the pixel data, whose size the header has vouched for
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many exception types on malformed files
        raise ImageLoadError(f"could not read DICOM file ({_one_line(exc)}); it may be truncated or corrupt") from exc
    del data
    if not any(tag in ds for tag in PIXEL_DATA_TAGS):
        raise ImageLoadError(NO_PIXELS)
    if "TransferSyntaxUID" not in ds.file_meta:  # a bare dataset without file meta: decode it as it was read
        ds.file_meta.TransferSyntaxUID = header.file_meta.TransferSyntaxUID
    _check_frame(ds, declared)
    try:
        arr = pixel_array(ds, index=0)  # decode only the first frame of a multi-frame file
        if "PixelData" in ds:
            del ds.PixelData  # the file's copy of the pixels; the frame is all that is needed now
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        if photometric == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
        if arr.ndim == 3:  # colour; pydicom has already converted YBR to RGB
            return Image.fromarray(arr if arr.dtype == np.uint8 else to_uint8(arr, arr.min(), arr.max()), "RGB")
        gray = _gray(arr, ds)
    except ImageLoadError:
        raise
    except Exception as exc:  # same reason as dcmread: many failure modes, one user message
        raise ImageLoadError(f"could not decode DICOM pixel data ({_one_line(exc)}); it may be corrupt") from exc
    if photometric == "MONOCHROME1":  # MONOCHROME1 stores bone dark; the model expects bone bright
        np.subtract(255, gray, out=gray)
    return Image.fromarray(gray)


def _syntax_of(data: bytes):
    """The transfer syntax the file meta names (None without one), read without touching the dataset."""
    try:
        fp = io.BytesIO(data)
        read_preamble(fp, True)
        return _meta(fp).get("TransferSyntaxUID")
    except Exception:  # no readable file meta: the full reader will say what is wrong
        return None


def _meta(fp) -> pydicom.Dataset:
    """The group 0002 elements from `fp` (after the preamble), leaving `fp` at the first element after them."""
    return read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=lambda tag, vr, n: tag.group != 2)


def _header(data: bytes) -> pydicom.FileDataset:
    """Every element before the pixel data; nothing of the pixels is read."""
    try:
        header = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    except Exception as exc:
        raise ImageLoadError(f"could not read DICOM file ({_one_line(exc)}); it may be truncated or corrupt") from exc
    if header.file_meta.get("TransferSyntaxUID") is None:  # a bare dataset: the encoding it was read with
        header.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if header.original_encoding[0] else ExplicitVRLittleEndian
        )
    return header


def _check(header: pydicom.Dataset, limits: FilmLimits) -> FilmHeader:
    """The header against the limits, and a transfer syntax this machine can decode; what it declares."""
    if header.get("Rows") is None or header.get("Columns") is None:
        raise ImageLoadError(NO_PIXELS)
    try:
        frames = int(header.get("NumberOfFrames") or 1)
        bits, samples = int(header.get("BitsAllocated") or 16), int(header.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError):
        raise ImageLoadError("DICOM header has an unreadable frame count or sample size; export it again") from None
    declared = FilmHeader("DICOM", int(header.Columns), int(header.Rows), bits, samples, max(frames, 1))
    check_header(declared, limits)
    if samples not in (1, 3):
        raise ImageLoadError(f"DICOM with {samples} samples per pixel (retired ARGB/CMYK?); convert it to PNG")
    syntax = header.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageLoadError(f"unsupported DICOM transfer syntax {syntax.name}; convert the file to PNG") from None
    if syntax.is_compressed and not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        raise ImageLoadError(
            f"cannot decode DICOM compressed as {syntax.name}: no decoder plugin installed ({missing}); "
            "e.g. pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
        )
    return declared


def _frame_size(ds: pydicom.Dataset) -> tuple[int, int, int] | None:
    """(width, height, components) that the first compressed frame's own header declares (JPEG's SOF, JPEG 2000's
    SIZ), or None for pixel data whose decoder allocates from the DICOM header (native, RLE)."""
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated or "PixelData" not in ds:
        return None
    try:  # the first item is the basic offset table; the frame's header opens the next one
        fragment = next(islice(generate_fragments(ds.PixelData), 1, 2), b"")
    except ValueError as exc:
        raise ImageLoadError(f"DICOM pixel data is not readable ({_one_line(exc)}); it may be corrupt") from None
    if fragment.startswith(JPEG_MAGIC):
        found = probe_jpeg(fragment)
        return found.width, found.height, found.samples
    at = fragment.find(J2K_SIZ, 0, J2K_SEARCH)  # a bare codestream, or one inside a JP2 wrapper
    if at >= 0 and len(fragment) >= at + 42:
        _, _, width, height, left, top = struct.unpack(">HHIIII", fragment[at + 4 : at + 24])
        return width - left, height - top, struct.unpack(">H", fragment[at + 40 : at + 42])[0]
    return None


def _check_frame(ds: pydicom.Dataset, declared: FilmHeader) -> None:
    """A compressed frame is decoded at the size its own header says, before pydicom compares it with the DICOM
    header's: a 1 MB file declaring 64 x 64 over an 8,000 x 8,000 RGB JPEG frame took 370 MiB first (measured)."""
    found = _frame_size(ds)
    if found is not None and found != (declared.width, declared.height, declared.samples):
        width, height, components = found
        raise ImageLoadError(f"DICOM pixel data does not match its header: its frame is {width}x{height} with "
                             f"{components} sample(s); the header declares {declared.width}x{declared.height} with "
                             f"{declared.samples}; the file is corrupt or crafted")  # fmt: skip


def _inflated(data: bytes, limits: FilmLimits) -> bytes:
    """A deflated file rewritten as Explicit VR Little Endian, inflated through caps: the header from its first
    `HEADER_BYTES`, checked, then the rest only up to what that header declares."""
    fp = io.BytesIO(data)
    read_preamble(fp, True)
    meta = _meta(fp)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    prefix = DicomBytesIO()
    prefix.is_little_endian, prefix.is_implicit_VR = True, False
    prefix.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(prefix, meta, enforce_standard=False)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        head = inflater.decompress(memoryview(data)[fp.tell() :], HEADER_BYTES)
        header = _header(prefix.getvalue() + head)
        declared = _check(header, limits)
        pixels = declared.raster_bytes * declared.frames
        cap = len(head) + pixels + MIB  # what the header declares, and room for elements after the pixels
        if cap > limits.max_inflated_bytes:
            raise ImageLoadError(f"deflated DICOM: its pixels inflate to {pixels / MIB:,.0f} MiB, over the "
                                 f"{limits.max_inflated_bytes // MIB} MiB limit for a deflated file; save it "
                                 "uncompressed or as PNG")  # fmt: skip
        rest = inflater.decompress(inflater.unconsumed_tail, cap - len(head) + 1)
    except zlib.error as exc:
        raise ImageLoadError(f"deflated DICOM is corrupt ({exc}); export it again") from None
    if len(head) + len(rest) > cap:
        raise ImageLoadError(f"deflated DICOM inflates past the {cap / MIB:,.0f} MiB its header declares; the file is "
                             "corrupt or crafted")  # fmt: skip
    return prefix.getvalue() + head + rest


def _gray(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Modality LUT, then VOI LUT or window (else the pixel range), to 8 bits, band by band."""
    voi = ds.get("VOILUTSequence")
    if voi and "LUTDescriptor" in voi[0] and "LUTData" in voi[0]:
        entries, first = voi[0].LUTDescriptor[0] or 2**16, voi[0].LUTDescriptor[1]
        lut = apply_voi(np.arange(first, first + entries), ds)

        def values(part):  # apply_voi indexes the LUT with integers and wraps out-of-range values, so clip them first
            index = np.clip(np.rint(apply_modality_lut(part, ds)), first, first + entries - 1).astype(np.int64)
            return apply_voi(index, ds)

        return _mapped(arr, values, float(lut.min()), float(lut.max()))
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        try:
            # the window's output range: stretching to the image's min/max instead would undo the window
            low, high = apply_windowing(np.array([-np.inf, np.inf]), ds)
            window = lambda part: apply_windowing(apply_modality_lut(part, ds), ds)  # noqa: E731
            return _mapped(arr, window, float(low), float(high))
        except ValueError as exc:
            logger.warning("ignoring invalid DICOM window (%s); using the pixel range", exc)
    low = high = None
    for band in bands(arr):  # the range after the modality LUT, which may reorder values (a negative slope)
        part = apply_modality_lut(arr[band], ds)
        low = part.min() if low is None else min(low, part.min())
        high = part.max() if high is None else max(high, part.max())
    return _mapped(arr, lambda part: apply_modality_lut(part, ds), float(low), float(high))


def _mapped(arr: np.ndarray, values, low: float, high: float) -> np.ndarray:
    out = np.empty(arr.shape, np.uint8)
    for band in bands(arr):
        out[band] = to_uint8(values(arr[band]), low, high)
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] or type(exc).__name__

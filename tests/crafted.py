"""Crafted films, made as an attacker would (a few bytes that claim a huge picture), for the upload-limit tests and
`bench/upload_limits.py`. Each builder returns the file's bytes; nothing here decodes them.

    data = png_strip(1, 30_000)                   # a valid 1 x 30,000 PNG of ~140 bytes
    data = deflated_dicom(12_000, 12_000, bits=16)  # ~280 KB that inflates to 288 MB
    FILMS, ZIPS                                   # [Case]: each upload and what it must get back

The costly builders are cached: a test session or a bench run makes each file once.
"""

from __future__ import annotations

import functools
import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
)

UID = "1.2.826.0.1.3680043.8.498.1"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_strip(width: int, height: int) -> bytes:
    """A real, decodable black PNG of width x height (8-bit grey): a 1 x 30,000 strip is ~140 bytes."""
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def png_forged(width: int, height: int, bit_depth: int = 8, colour: int = 0, rows: int = 4) -> bytes:
    """A PNG whose IHDR (valid CRC) claims width x height; its IDAT holds only `rows` rows of zeros."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour, 1)
    row = 1 + (min(width, 4096) * channels * bit_depth + 7) // 8
    idat = zlib.compress(b"\0" * row * rows, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_forged(width: int, height: int, mode: str = "L", progressive: bool = False) -> bytes:
    """A small real JPEG whose SOF marker is rewritten to claim width x height (JPEG has no checksum)."""
    buffer = io.BytesIO()
    Image.new(mode, (16, 16), 128).save(buffer, "JPEG", quality=50, progressive=progressive)
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _meta(syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = UID
    meta.TransferSyntaxUID = syntax
    return meta


def _header(rows: int, columns: int, bits: int, samples: int, frames: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SecondaryCaptureImageStorage, UID, "DX"
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    return ds


def _dicom(header: Dataset, syntax: str, pixel_bytes: int, fill: Callable[[int], bytes]) -> bytes:
    """Preamble, file meta, the header (Explicit VR LE) and a PixelData element of `pixel_bytes` from `fill`, the
    dataset deflated when `syntax` says so; written in pieces, so a bomb never exists inflated in memory."""
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, _meta(syntax))
    out.write(meta.getvalue())
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, header)
    vr = b"OW" if header.BitsAllocated > 8 else b"OB"
    length = pixel_bytes + pixel_bytes % 2  # values have even lengths
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15) if syntax == DeflatedExplicitVRLittleEndian else None
    write = (lambda piece: out.write(deflate.compress(piece))) if deflate else out.write
    write(body.getvalue() + b"\xe0\x7f\x10\x00" + vr + b"\0\0" + struct.pack("<I", length))
    while length:
        piece = fill(min(length, 1 << 24))
        length -= len(piece)
        write(piece)
    if deflate:
        out.write(deflate.flush())
    return out.getvalue()


def _zeros(n: int) -> bytes:
    return bytes(n)


@functools.cache
def deflated_dicom(rows: int, columns: int, bits: int = 16) -> bytes:
    """A Deflated Explicit VR Little Endian film of zeros: 12,000 x 12,000 16-bit is ~280 KB inflating to 288 MB."""
    size = rows * columns * bits // 8
    return _dicom(_header(rows, columns, bits, 1, 1), DeflatedExplicitVRLittleEndian, size, _zeros)


@functools.cache
def deflated_lying(rows: int, columns: int, size: int) -> bytes:
    """A deflated film whose header declares rows x columns 8-bit while its pixel data inflates to `size` bytes."""
    return _dicom(_header(rows, columns, 8, 1, 1), DeflatedExplicitVRLittleEndian, size, _zeros)


@functools.cache
def dicom_film(rows: int, columns: int, bits: int = 16, samples: int = 1, frames: int = 1, syntax: str = "") -> bytes:
    """An uncompressed (or deflated) film of noise, every frame stored: a real file, as large as it says."""
    rng = np.random.default_rng(0)
    size = rows * columns * samples * bits // 8 * frames

    def noise(n: int) -> bytes:
        return rng.integers(0, 256, n, dtype=np.uint8).tobytes()

    return _dicom(_header(rows, columns, bits, samples, frames), syntax or ExplicitVRLittleEndian, size, noise)


def dicom_lying_frames(rows: int, columns: int, frames: int, bits: int = 8) -> bytes:
    """A header that claims `frames` frames over pixel data holding one: only the header can be trusted to refuse."""
    return _dicom(_header(rows, columns, bits, 1, frames), ExplicitVRLittleEndian, rows * columns * bits // 8, _zeros)


def dicom_header(rows: int, columns: int, bits: int = 16, samples: int = 1) -> bytes:
    """A header claiming rows x columns over empty pixel data: only a header check can judge it."""
    return _dicom(_header(rows, columns, bits, samples, 1), ExplicitVRLittleEndian, 0, _zeros)


def _siz_forged(width: int, height: int) -> bytes:
    """A small JPEG 2000 codestream whose SIZ marker declares `width` x `height`."""
    buffer = io.BytesIO()
    Image.new("L", (32, 32), 90).save(buffer, "JPEG2000", no_jp2=True)
    data = bytearray(buffer.getvalue())
    at = data.find(b"\xff\x4f\xff\x51") + 4  # SOC, SIZ: then Lsiz, Rsiz, Xsiz, Ysiz (offsets 0 here)
    data[at + 4 : at + 12] = struct.pack(">II", width, height)
    return bytes(data)


def dicom_codestream_lying(rows: int, columns: int, width: int, height: int, syntax: str = JPEGBaseline8Bit) -> bytes:
    """A JPEG (or JPEG 2000) DICOM whose header declares rows x columns 8-bit grey while its frame's own header (SOF,
    SIZ) says width x height: the decoder allocates what the frame says, whatever the DICOM header declared."""
    ds = _header(rows, columns, 8, 1, 1)
    ds.file_meta = _meta(syntax)
    frame = jpeg_forged(width, height) if syntax == JPEGBaseline8Bit else _siz_forged(width, height)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def zip_bomb_member(name: str = "film.dcm", size: int = 200 << 20) -> bytes:
    """A zip of one member that inflates `size` bytes of zeros (~1000:1)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, archive.open(name, "w", force_zip64=True) as f:
        for _ in range(size >> 20):
            f.write(bytes(1 << 20))
    return buffer.getvalue()


def zip_lying(name: str = "film.png", claimed: int = 1000, size: int = 64 << 20) -> bytes:
    """A zip whose directory says its member is `claimed` bytes while it inflates to `size` (the CRC is of the real
    data): only a reader that reads through a cap of the declared size is not fooled."""
    out = bytearray(zip_of({name: bytes(size)}))
    central = out.rfind(b"PK\x01\x02")
    out[22:26] = out[central + 24 : central + 28] = struct.pack("<I", claimed)  # local header, central directory
    return bytes(out)


@functools.cache
def png_film(width: int, height: int, mode: str = "I;16") -> bytes:
    """A legitimate PNG film (a smooth ramp, so it stays small on disk) that decodes to its full size."""
    ramp = np.linspace(0, 60_000 if mode == "I;16" else 255, width).astype(np.uint16 if mode == "I;16" else np.uint8)
    rows = np.broadcast_to(ramp, (height, width))
    image = Image.fromarray(np.ascontiguousarray(rows)) if mode in ("I;16", "L") else Image.new(mode, (width, height))
    if mode == "RGBA":
        image.putalpha(Image.fromarray(np.ascontiguousarray(rows)))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


@functools.cache
def jpeg_film(width: int, height: int) -> bytes:
    """A legitimate RGB JPEG (a phone photo's size), decoded reduced when its raster is over the decode limit."""
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize((width, height)).convert("RGB").save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def zip_nested(inner: bytes) -> bytes:
    return zip_of({"films.zip": inner, "more/films.dcm": inner})


def zip_many_entries(count: int) -> bytes:
    """A zip of `count` empty entries: listing it with zipfile costs ~0.5 KB an entry."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for i in range(count):
            archive.writestr(zipfile.ZipInfo(f"{i:x}"), b"")
    return buffer.getvalue()


@dataclass(frozen=True)
class Case:
    """One crafted (or legitimate) upload and what it must get back: `expect` is a piece of the one-line refusal, or
    "" for a film that must be accepted (a zip: one whose every member is refused). `smoke`: part of the small run."""

    name: str
    suffix: str
    make: Callable[[], bytes]
    expect: str
    smoke: bool = False
    heavy: bool = False  # seconds to build or decode: the bench's full run only


# fmt: off
FILMS = [
    Case("png strip 1x30,000 (138 B)", ".png", lambda: png_strip(1, 30_000), "image shape 1x30000 is 30,000:1", True),
    Case("png strip 1x46,000", ".png", lambda: png_strip(1, 46_000), "image shape 1x46000 is 46,000:1"),
    Case("png IHDR 100,000x100,000", ".png", lambda: png_forged(100_000, 100_000), "100000x100000 is 10,000,000,000"),
    Case("png IHDR 7,000x7,000 RGBA 16-bit", ".png", lambda: png_forged(7_000, 7_000, 16, 6), "needs 187 MiB", True),
    Case("jpeg SOF 60,000x60,000", ".jpg", lambda: jpeg_forged(60_000, 60_000), "60000x60000 is 3,600,000,000", True),
    Case("jpeg SOF 9,000x5,000 progressive RGB", ".jpg", lambda: jpeg_forged(9_000, 5_000, "RGB", True),
         "needs 260 MiB"),
    Case("jpeg SOF 8,000x6,000 RGB, pixels missing", ".jpg", lambda: jpeg_forged(8_000, 6_000, "RGB"), "",
         heavy=True),  # accepted: libjpeg fills what is missing; decoded at 1/2 (the decode limit), not refused
    Case("dicom deflated bomb 12,000x12,000 16-bit (280 KB)", ".dcm", lambda: deflated_dicom(12_000, 12_000),
         "12000x12000 is 144,000,000 pixels", True),
    Case("dicom deflated 7,000x7,000 16-bit", ".dcm", lambda: deflated_dicom(7_000, 7_000),
         "its pixels inflate to 93 MiB, over the 64 MiB limit"),
    Case("dicom deflated, header 1,000x1,000 over 256 MB", ".dcm", lambda: deflated_lying(1_000, 1_000, 256 << 20),
         "inflates past the 6 MiB its header declares"),
    Case("dicom 1,000 frames", ".dcm", lambda: dicom_film(64, 64, 8, frames=1000), "holds 1,000 frames", True),
    Case("dicom header 1,000 frames, 1 stored", ".dcm", lambda: dicom_lying_frames(512, 512, 1000), "1,000 frames"),
    Case("dicom 16-bit 4 samples", ".dcm", lambda: dicom_header(512, 512, 16, samples=4), "with 4 samples per pixel"),
    Case("dicom 32-bit samples", ".dcm", lambda: dicom_film(256, 256, 32), "32-bit samples, over the 16-bit limit"),
    Case("dicom header 65,535x65,535", ".dcm", lambda: dicom_header(65_535, 65_535), "65535x65535 is 4,294,836,225"),
    Case("dicom JPEG, header 64x64, its frame 12,000x12,000 (2 KB)", ".dcm",
         lambda: dicom_codestream_lying(64, 64, 12_000, 12_000), "frame is 12000x12000 with 1 sample", True),
    Case("dicom JPEG 2000, header 64x64, its frame 12,000x12,000", ".dcm",
         lambda: dicom_codestream_lying(64, 64, 12_000, 12_000, JPEG2000Lossless), "frame is 12000x12000 with 1"),
    Case("dicom 16-bit RGB 1,500x1,500", ".dcm", lambda: dicom_film(1_500, 1_500, 16, samples=3), "", True),
    Case("dicom deflated 16-bit 4,300x3,500", ".dcm", lambda: deflated_dicom(3_500, 4_300), "", heavy=True),
    Case("png 16-bit 4,300x3,500 (largest real film)", ".png", lambda: png_film(3_500, 4_300), "", heavy=True),
    Case("png 16-bit 7,000x7,000 (decode limit)", ".png", lambda: png_film(7_000, 7_000), "", heavy=True),
    Case("png RGBA 5,000x5,000 (decode limit)", ".png", lambda: png_film(5_000, 5_000, "RGBA"), "", heavy=True),
    Case("jpeg RGB 8,000x6,000 (48 MP photo)", ".jpg", lambda: jpeg_film(8_000, 6_000), "", heavy=True),
]
ZIPS = [
    Case("zip of bombs", ".zip", lambda: zip_of({f"bomb{i}{c.suffix}": c.make() for i, c in enumerate(FILMS)
                                                 if c.expect and "inflate" not in c.expect}), "", True),
    Case("zip member 200 MB of zeros", ".zip", lambda: zip_bomb_member("film.dcm", 200 << 20),
         "bytes unzipped, over this app's upload limit", True),
    # CPython's zipfile stops at the declared size and fails the CRC; the cap (`app_lib.zips`) is for any other reader
    Case("zip that lies about sizes", ".zip", lambda: zip_lying("film.png"), "corrupt in its zip (Bad CRC-32", True),
    Case("zip in a zip", ".zip", lambda: zip_nested(zip_of({"a.png": png_strip(8, 8)})), "a zip inside the zip"),
    Case("zip of 200,000 entries", ".zip", lambda: zip_many_entries(200_000), "200,000 or more files and folders"),
]
# fmt: on

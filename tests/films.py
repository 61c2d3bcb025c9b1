"""Films made in memory for the image tests: PNG/JPEG bytes, a PNG header without pixels, DICOM datasets."""

import io
import struct
import zlib

import numpy as np
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxr_vqa.images import load_image

RAMP_12BIT = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (4, 1))  # 4 x 64, values 0..4032


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds no pixels: only a header check can judge it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def make_dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12, **attrs) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("test.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.set_pixel_data(pixels, photometric, bits)
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def dicom_bytes(ds: FileDataset, **save) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=save.pop("enforce_file_format", True), **save)
    return buffer.getvalue()


def gray(source, **kwargs) -> np.ndarray:
    """Load and return one channel, after checking the image is 8-bit RGB with equal channels."""
    arr = np.asarray(load_image(source, **kwargs))
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    return arr[..., 0]

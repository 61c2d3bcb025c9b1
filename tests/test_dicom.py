"""DICOM films (cxr_vqa.images): modality and VOI LUTs, windows, MONOCHROME1, multi-frame, colour, compressed
syntaxes without a decoder. Every file is made here with pydicom."""

import numpy as np
import pydicom
import pytest
from films import RAMP_12BIT, dicom_bytes, gray, make_dicom
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import HTJ2KLossless, JPEGLSLossless

from cxr_vqa.images import ImageLoadError, load_image

# --- DICOM ------------------------------------------------------------------------------------------------------


def test_dicom_monochrome2_without_window_uses_min_max():
    out = gray(dicom_bytes(make_dicom(RAMP_12BIT)))
    assert out[0, 0] == 0 and out[0, -1] == 255
    assert (np.diff(out[0].astype(int)) > 0).all()


def test_dicom_monochrome1_is_inverted():
    mono2 = gray(dicom_bytes(make_dicom(RAMP_12BIT, "MONOCHROME2")))
    mono1 = gray(dicom_bytes(make_dicom(RAMP_12BIT, "MONOCHROME1")))
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_dicom_window_sets_black_and_white_points():
    narrow = gray(dicom_bytes(make_dicom(RAMP_12BIT, WindowCenter=2048, WindowWidth=1024)))[0]
    wide = gray(dicom_bytes(make_dicom(RAMP_12BIT, WindowCenter=2048, WindowWidth=4096)))[0]
    values = RAMP_12BIT[0]
    assert (narrow[values <= 1536] == 0).all() and (narrow[values > 2559] == 255).all()
    inside = narrow[(values > 1536) & (values <= 2559)]
    assert (np.diff(inside.astype(int)) > 0).all()
    assert not np.array_equal(narrow, wide)
    # the window's own output range maps to 0..255: a window wider than the data is not re-stretched
    assert wide.min() > 0 or wide.max() < 255


def test_dicom_rescale_is_applied_before_window():
    # stored 0..4032 -> -4096..3968 "HU-like"; a window around 0 only makes sense after the rescale
    ds = make_dicom(RAMP_12BIT, RescaleSlope=2, RescaleIntercept=-4096, WindowCenter=0, WindowWidth=1000)
    out = gray(dicom_bytes(ds))[0]
    assert 120 <= out[RAMP_12BIT[0] == 2048][0] <= 135  # stored 2048 is 0 after rescale: mid-grey
    assert out[0] == 0 and out[-1] == 255


def test_dicom_voi_lut_sequence_is_applied():
    item = pydicom.Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 12])  # LUT Descriptor: entries, first value, bits
    item.add_new(0x00283006, "US", list(range(4095, -1, -1)))  # LUT Data: an inverting ramp
    ds = make_dicom(RAMP_12BIT, WindowCenter=2048, WindowWidth=200)  # the LUT wins over the window
    ds.VOILUTSequence = [item]
    out = gray(dicom_bytes(ds))[0]
    assert out[0] == 255 and (np.diff(out.astype(int)) < 0).all()


def test_dicom_signed_pixels_keep_order():
    signed = np.tile(np.arange(-1024, 1024, 32, dtype=np.int16), (2, 1))
    ds = make_dicom(signed, bits=16)
    assert ds.PixelRepresentation == 1
    out = gray(dicom_bytes(ds))[0]
    assert out[0] == 0 and out[-1] == 255 and (np.diff(out.astype(int)) > 0).all()


def test_dicom_multiframe_gives_first_frame():
    frames = np.stack([RAMP_12BIT, np.full_like(RAMP_12BIT, 4000)])
    ds = make_dicom(frames)
    assert ds.NumberOfFrames == 2
    np.testing.assert_array_equal(gray(dicom_bytes(ds)), gray(dicom_bytes(make_dicom(RAMP_12BIT))))


def test_dicom_rgb():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[:, :3, 2] = 200, 10, 255
    np.testing.assert_array_equal(np.asarray(load_image(dicom_bytes(make_dicom(rgb, "RGB", 8)))), rgb)


def test_dicom_detected_by_name_without_preamble(tmp_path):
    ds = make_dicom(RAMP_12BIT)
    ds.preamble, ds.file_meta = None, FileMetaDataset()  # a bare dataset, as old archives hold them
    data = dicom_bytes(ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert b"DICM" not in data and not data.startswith(b"\x02\x00")  # no preamble, no file meta
    path = tmp_path / "scan.dcm"
    path.write_bytes(data)
    np.testing.assert_array_equal(gray(path), gray(dicom_bytes(make_dicom(RAMP_12BIT))))


def test_dicom_compressed_without_decoder_names_plugin():
    syntax = next((uid for uid in (JPEGLSLossless, HTJ2KLossless) if not get_decoder(uid).is_available), None)
    if syntax is None:
        pytest.skip("decoders for every candidate transfer syntax are installed")
    ds = make_dicom(RAMP_12BIT)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = encapsulate([b"\xff\xd8 not really compressed"])
    ds["PixelData"].VR = "OB"
    with pytest.raises(ImageLoadError, match=r"no decoder plugin installed.*pylibjpeg") as info:
        load_image(dicom_bytes(ds))
    assert "\n" not in str(info.value)

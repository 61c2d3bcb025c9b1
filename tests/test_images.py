"""Film loading (cxr_vqa.images): PNG, JPEG, refusals and letterboxing; every image is made here (films.py), nothing
is read from disk. DICOM is in test_dicom.py."""

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from films import RAMP_12BIT, dicom_bytes, encode, gray, make_dicom, png_header_only
from PIL import Image

from cxr_vqa.errors import UserError
from cxr_vqa.images import FilmLimits, ImageLoadError, image_sha256, letterbox, load_image

UNBOUNDED = FilmLimits(max_pixels=10**9, max_canvas_pixels=10**9, max_decode_bytes=10**10)

# --- PNG and JPEG -----------------------------------------------------------------------------------------------


def test_png_8bit_gray_is_exact():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = load_image(encode(Image.fromarray(pixels)))
    assert image.mode == "RGB" and image.size == (16, 16)
    np.testing.assert_array_equal(gray(encode(Image.fromarray(pixels))), pixels)


@pytest.mark.parametrize("low, high", [(100, 4000), (0, 65535), (30000, 30010)])
def test_png_16bit_is_stretched_over_its_range_in_order(low, high):
    ramp = np.tile(np.linspace(low, high, 64).round().astype(np.uint16), (4, 1))
    data = encode(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = gray(data)
    assert out.min() == 0 and out.max() == 255  # neither all black nor all white
    assert (np.diff(out[0].astype(int)) >= 0).all() and len(np.unique(out)) >= min(64, high - low + 1)


def test_png_1bit_keeps_pattern():
    checker = (np.indices((8, 8)).sum(axis=0) % 2).astype(bool)
    out = gray(encode(Image.fromarray(checker)))
    np.testing.assert_array_equal(out, np.where(checker, 255, 0))


def test_png_palette_gives_palette_colours():
    image = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), "P")
    image.putpalette([10, 20, 30, 200, 0, 0, 0, 250, 5])
    out = np.asarray(load_image(encode(image)))
    np.testing.assert_array_equal(out, [[[10, 20, 30], [200, 0, 0]], [[0, 250, 5], [200, 0, 0]]])


def test_palette_transparency_becomes_black():
    image = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), "P")
    image.putpalette([10, 20, 30, 200, 0, 0])
    out = np.asarray(load_image(encode(image, transparency=1)))
    np.testing.assert_array_equal(out, [[[10, 20, 30], [0, 0, 0]]])


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_black(mode):
    alpha = np.array([[0, 128, 255]], dtype=np.uint8)
    colour = (200, 100, 40) if mode == "RGBA" else (200,)
    rgba = np.concatenate([np.full((1, 3, len(colour)), colour, np.uint8), alpha[..., None]], axis=2)
    out = np.asarray(load_image(encode(Image.fromarray(rgba, mode)))).astype(int)
    expected = np.array([np.broadcast_to(colour, 3) * a / 255 for a in alpha[0]])
    assert np.abs(out[0] - expected).max() <= 1


def test_jpeg_gray_and_rgb_load_close_to_original():
    pixels = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    out_l = gray(encode(Image.fromarray(pixels), "JPEG", quality=95))
    assert np.abs(out_l.astype(int) - pixels).max() <= 8
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 220, 60
    out_rgb = np.asarray(load_image(encode(Image.fromarray(rgb), "JPEG", quality=95))).astype(int)
    assert np.abs(out_rgb - rgb).max() <= 8


@pytest.mark.parametrize(
    "cmyk, rgb",
    [
        ((255, 0, 0, 0), (0, 255, 255)),
        ((0, 255, 0, 0), (255, 0, 255)),
        ((0, 0, 255, 0), (255, 255, 0)),
        ((0, 0, 0, 255), (0, 0, 0)),
        ((0, 0, 0, 0), (255, 255, 255)),
    ],
)
def test_cmyk_jpeg_colours(cmyk, rgb):
    image = load_image(encode(Image.new("CMYK", (16, 16), cmyk), "JPEG", quality=95))
    assert image.mode == "RGB"
    assert np.abs(np.subtract(image.getpixel((8, 8)), rgb)).max() <= 8


def test_exif_orientation_is_applied():
    pixels = np.zeros((20, 40), np.uint8)  # 40 wide, 20 high, bright block in the top-left corner
    pixels[:8, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    out = gray(encode(Image.fromarray(pixels), "JPEG", exif=exif, quality=95))
    assert out.shape == (40, 20)  # height, width swapped
    assert out[:6, -6:].mean() > 200 and out[:6, :6].mean() < 50  # top-left went to top-right


def test_sources_agree_and_hash_is_of_raw_bytes(tmp_path):
    data = encode(Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)))
    path = tmp_path / "image.png"
    path.write_bytes(data)
    stream = io.BytesIO(data)
    expected = np.asarray(load_image(data))
    for source in (str(path), path, data, bytearray(data), stream):
        np.testing.assert_array_equal(np.asarray(load_image(source)), expected)
        assert image_sha256(source) == hashlib.sha256(data).hexdigest()
        assert stream.tell() == 0  # file objects are left where they were


def test_result_is_decoded_not_lazy():
    stream = io.BytesIO(encode(Image.fromarray(np.full((8, 8), 77, np.uint8))))
    image = load_image(stream)
    stream.close()  # a lazily loaded image would fail to read its pixels now
    assert getattr(image, "fp", None) is None
    assert np.asarray(image).mean() == 77


# --- refusals ---------------------------------------------------------------------------------------------------


def _noise(fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    return encode(Image.fromarray(pixels), fmt)


def _dicom_without_pixels() -> bytes:
    ds = make_dicom(RAMP_12BIT)
    del ds.PixelData
    return dicom_bytes(ds)


def _dicom_huge_header() -> bytes:
    ds = make_dicom(RAMP_12BIT)
    ds.Rows, ds.Columns = 10_000, 10_000  # pixel data is far too short: decoding would fail differently
    return dicom_bytes(ds)


@pytest.mark.parametrize(
    "make, kwargs, message",
    [
        (lambda: b"", {}, "empty file: it has 0 bytes"),
        (lambda: b"patient_id,report\n1,clear lungs\n", {}, "not an image: expected PNG, JPEG or DICOM"),
        (lambda: _noise("GIF"), {}, "not an image: expected PNG, JPEG or DICOM"),
        (lambda: _noise("PNG")[:-200], {}, "PNG image is truncated or corrupt"),
        (lambda: _noise("JPEG")[: len(_noise("JPEG")) // 2], {}, "JPEG image is truncated or corrupt"),
        (lambda: b"\x89PNG\r\n\x1a\n\0\0", {}, "PNG file is truncated or corrupt (bad header)"),
        (lambda: _noise("PNG"), {"max_pixels": 64 * 63}, "image too large: 64x64 is 4,096 pixels, over the 4,032"),
        (lambda: png_header_only(8000, 8000), {}, "image too large: 8000x8000 is 64,000,000 pixels"),
        (lambda: png_header_only(20_000, 20_000), {"limits": UNBOUNDED}, "image too large: Image size"),  # PIL's own
        (_dicom_without_pixels, {}, "DICOM file has no pixel data (a structured report or presentation state?)"),
        (_dicom_huge_header, {}, "image too large: 10000x10000"),
        (lambda: dicom_bytes(make_dicom(RAMP_12BIT))[:-300], {}, "could not decode DICOM pixel data"),
    ],
    ids=[
        "empty",
        "text",
        "gif",
        "truncated-png",
        "truncated-jpeg",
        "png-header-cut",
        "over-max-pixels",
        "header-only-png",
        "pil-bomb",
        "dicom-no-pixels",
        "dicom-huge",
        "dicom-truncated",
    ],
)
def test_refusals_have_specific_one_line_messages(make, kwargs, message):
    limit_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageLoadError) as info:
        load_image(make(), **kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert limit_before == Image.MAX_IMAGE_PIXELS  # no global side effects


def test_default_limit_refuses_just_over_fifty_megapixels_from_the_header():
    buffer = io.BytesIO()
    Image.new("1", (10_000, 5_001)).save(buffer, "PNG")  # 50,010,000 pixels in a few KB: refused before decoding
    with pytest.raises(ImageLoadError, match=r"10000x5001 is 50,010,000 pixels, over the 50,000,000 limit"):
        load_image(buffer.getvalue())


def test_missing_and_directory_paths(tmp_path):
    missing = tmp_path / "nope" / "view1_frontal.png"
    with pytest.raises(ImageLoadError, match="image file not found: .*view1_frontal.png"):
        load_image(missing)
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(str(tmp_path))
    with pytest.raises(ImageLoadError, match="image file not found"):
        image_sha256(missing)


def test_image_load_error_is_a_user_error():  # the command lines and the app report it as one line
    with pytest.raises(UserError):
        load_image(b"not an image")


# --- letterbox --------------------------------------------------------------------------------------------------


def _random_rgb(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(1, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("width, height", [(40, 20), (20, 40), (41, 20), (30, 30)])
def test_letterbox_pads_to_centred_square_without_cropping(width, height):
    image = _random_rgb(width, height)
    out = letterbox(image)
    side = max(width, height)
    left, top = (side - width) // 2, (side - height) // 2
    assert out.size == (side, side) and out.mode == "RGB"
    arr = np.asarray(out)
    np.testing.assert_array_equal(arr[top : top + height, left : left + width], np.asarray(image))
    padding = np.ones((side, side), bool)
    padding[top : top + height, left : left + width] = False
    assert (arr[padding] == 0).all()
    assert abs((side - width - left) - left) <= 1 and abs((side - height - top) - top) <= 1


def test_letterbox_resizes_and_keeps_content_centred():
    out = letterbox(Image.new("RGB", (80, 40), (200, 100, 50)), size=40)
    assert out.size == (40, 40) and out.mode == "RGB"
    assert out.getpixel((20, 2)) == (0, 0, 0) and out.getpixel((20, 37)) == (0, 0, 0)
    assert np.abs(np.subtract(out.getpixel((20, 20)), (200, 100, 50))).max() <= 2
    assert np.abs(np.subtract(out.getpixel((1, 20)), (200, 100, 50))).max() <= 2  # full width kept


def test_letterbox_fill_and_gray_input():
    out = letterbox(Image.new("L", (10, 4), 128), size=20, fill=255)
    assert out.mode == "RGB" and out.size == (20, 20)
    assert out.getpixel((10, 0)) == (255, 255, 255) and out.getpixel((10, 10)) == (128, 128, 128)


@pytest.mark.parametrize("size", [0, -5])
def test_letterbox_rejects_bad_size(size):
    with pytest.raises(ValueError, match="positive"):
        letterbox(Image.new("RGB", (4, 4)), size=size)


def test_letterbox_of_loaded_dicom_is_model_ready(tmp_path):
    path = Path(tmp_path) / "view1_frontal.dcm"
    path.write_bytes(dicom_bytes(make_dicom(np.tile(RAMP_12BIT, (2, 1)))))
    out = letterbox(load_image(path), size=336)
    assert out.size == (336, 336) and out.mode == "RGB"

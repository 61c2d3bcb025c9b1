"""Films as an attacker sends them (tests/crafted.py): each is refused in one line naming the problem, or accepted
when it is a legitimate film, within a measured peak of memory; the letterbox gives the canvas version's bytes
without its canvas; the Batch's zips are bounded; the bench's smoke run over HTTP.

Peaks are read in a child process per batch of cases from /proc/self/status (VmHWM after writing 5 to
/proc/self/clear_refs resets it), which sees numpy's and Pillow's C buffers that tracemalloc misses. The child runs
with a fixed malloc mmap threshold, so a large buffer freed by one case goes back to the system instead of being
reused, unseen, by the next.
"""

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from crafted import (
    FILMS,
    ZIPS,
    deflated_dicom,
    dicom_codestream_lying,
    dicom_film,
    jpeg_forged,
    png_forged,
    png_strip,
    zip_of,
)
from PIL import Image
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

from app_lib.zips import ENTRY_BYTES, declared_entries, read_member
from cxr_vqa import pixels
from cxr_vqa.film_limits import LIMITS, MIB, ImageLoadError, check_header, probe_jpeg, probe_png
from cxr_vqa.images import load_film, load_image
from cxr_vqa.pixels import letterbox

ROOT = Path(__file__).resolve().parents[1]
REFUSED_MIB, ACCEPTED_MIB = 32, 300  # a refusal reads a header; the goal for any film
CHILD = r"""
import json, sys
from PIL import Image
from app_lib.batch import BatchLimits, list_films, read_films
from cxr_vqa.errors import UserError
from cxr_vqa.images import load_film
from cxr_vqa.pixels import letterbox

def mib(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key + ":")) / 1024

limits = BatchLimits(max_file_bytes=20 << 20)  # the app's default upload limit
for path in sys.argv[1:]:
    open("/proc/self/clear_refs", "w").write("5")
    before = mib("VmRSS")
    try:
        if path.startswith("letterbox:"):  # a strip letterboxed directly: its 9,999 x 9,999 canvas would be 95 MiB
            letterbox(Image.new("L", (1, 9_999), 255), 336)
            reply = "accepted"
        elif path.endswith(".zip"):
            films, errors = read_films(list_films([path], limits), limits, decode=lambda d: load_film(d, 336))
            reply = json.dumps([len(films), [e["error"] for e in errors]])
        else:
            load_film(path, 336)
            reply = "accepted"
    except UserError as err:
        reply = "refused: " + str(err)
    print(json.dumps({"path": path, "reply": reply, "extra": mib("VmHWM") - before}), flush=True)
"""


def measured(paths: list[str]) -> dict[str, dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", CHILD, *paths], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return {row["path"]: row for row in map(json.loads, out.stdout.splitlines())}


@pytest.fixture(scope="module")
def crafted_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crafted")
    for i, case in enumerate(c for c in FILMS + ZIPS if not c.heavy):
        (folder / f"{i:02d}{case.suffix}").write_bytes(case.make())
    return folder


def test_each_crafted_film_gets_its_one_line_within_a_measured_peak(crafted_dir):
    cases = [c for c in FILMS if not c.heavy]
    paths = [str(crafted_dir / f"{i:02d}{c.suffix}") for i, c in enumerate(cases)]
    rows = measured([*paths, "letterbox:strip"])
    for case, path in zip(cases, paths, strict=True):
        reply, extra = rows[path]["reply"], rows[path]["extra"]
        assert "\n" not in reply
        if case.expect:
            assert reply.startswith("refused: ") and case.expect in reply, (case.name, reply)
            assert extra <= REFUSED_MIB, (case.name, extra)
        else:
            assert reply == "accepted", (case.name, reply)
            assert extra <= ACCEPTED_MIB, (case.name, extra)
    strip = rows["letterbox:strip"]
    assert strip["reply"] == "accepted" and strip["extra"] <= REFUSED_MIB  # scaled first: never the 1 x 9,999 square


def test_each_crafted_zip_is_bounded_and_its_films_refused_one_line_each(crafted_dir):
    first = len([c for c in FILMS if not c.heavy])
    paths = [str(crafted_dir / f"{first + i:02d}.zip") for i in range(len(ZIPS))]
    rows = measured(paths)
    for case, path in zip(ZIPS, paths, strict=True):
        reply, extra = rows[path]["reply"], rows[path]["extra"]
        assert extra <= REFUSED_MIB, (case.name, extra)
        if reply.startswith("refused: "):  # the whole batch refused before any member is read
            assert case.expect and case.expect in reply and "\n" not in reply, (case.name, reply)
            continue
        films, errors = json.loads(reply)
        assert films == 0 and errors and all(e and "\n" not in e for e in errors), (case.name, errors)
        if case.expect:
            assert all(case.expect in e for e in errors), (case.name, errors)
        else:  # the zip of bombs: every member's own refusal
            assert len(errors) >= 10 and any("30,000:1" in e for e in errors)
            assert any("12000x12000 is 144,000,000" in e for e in errors)


@pytest.mark.parametrize("seed", range(4))
def test_png_and_jpeg_headers_are_refused_exactly_past_each_limit(seed):
    """A table of random headers, forged with valid CRCs: the probe reads back what was written, and the checks
    refuse exactly those past a limit, naming it."""
    rng = np.random.default_rng(seed)
    for _ in range(150):
        width, height = (int(v) for v in rng.choice([1, 7, 336, 1023, 4300, 7_000, 12_000, 46_000, 65_535], 2))
        if rng.random() < 0.5:
            bits, colour = [(1, 0), (8, 0), (16, 0), (8, 2), (16, 2), (8, 3), (8, 4), (16, 6)][rng.integers(8)]
            header = probe_png(png_forged(width, height, bits, colour, rows=1))
            samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
            raster = width * height * (2 if (colour, bits) == (0, 16) else 1 if samples == 1 or colour == 3 else 4)
        else:
            mode, progressive = ["L", "RGB"][rng.integers(2)], bool(rng.integers(2))
            header = probe_jpeg(jpeg_forged(width, height, mode, progressive))
            bits, samples = 8, 1 if mode == "L" else 3
            raster = width * height * ((1 if mode == "L" else 4) + (2 * samples if progressive else 0))
        assert (header.width, header.height, header.bits, header.samples) == (width, height, bits, samples)
        long, short = max(width, height), min(width, height)
        expected = ("is", "pixels, over") if width * height > LIMITS.max_pixels else \
            ("image shape",) if long > 4 * short and long > 1024 else \
            ("letterboxed to a square",) if long * long > LIMITS.max_canvas_pixels else \
            ("too large to decode",) if raster > LIMITS.max_decode_bytes else None  # fmt: skip
        try:
            check_header(header)
        except ImageLoadError as err:
            assert expected is not None and all(part in str(err) for part in expected), (width, height, str(err))
            assert "\n" not in str(err) and f"{width}x{height}" in str(err)
        else:
            assert expected is None, (width, height, bits, samples, expected)


def _canvas_letterbox(image: Image.Image, size: int, fill: int = 0) -> Image.Image:
    """The letterbox as it was: pad to the full max(w, h)² square, then resize it."""
    image = image.convert("RGB")
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), (fill,) * 3)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas.resize((size, size), Image.Resampling.BICUBIC) if size != side else canvas


@pytest.mark.parametrize("fast_canvas", [0, pixels.FAST_CANVAS_PIXELS])
def test_letterbox_gives_the_canvas_versions_bytes_without_the_canvas(fast_canvas, monkeypatch):
    """With no canvas built (0: every size band by band, as a strip or a forged size goes) and with today's limit."""
    monkeypatch.setattr(pixels, "FAST_CANVAS_PIXELS", fast_canvas)
    rng = np.random.default_rng(0)
    sizes = [(1, 2), (3, 1), (200, 100), (335, 337), (384, 442), (442, 384), (999, 1000), (1, 700)]
    sizes += [tuple(int(v) for v in rng.integers(1, 1500, 2)) for _ in range(24)]
    for i, (width, height) in enumerate(sizes):
        mode = "L" if i % 2 else "RGB"
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3)[: 2 if mode == "L" else 3], dtype=np.uint8))
        for size, fill in ((336, 0), (224, 255)):
            old, new = _canvas_letterbox(image, size, fill), letterbox(image, size, fill)
            assert new.mode == "RGB" and np.array_equal(np.asarray(old), np.asarray(new)), (width, height, mode, size)
    real = Image.open(ROOT / "assets" / "real" / "nih-00000001_000.png")
    for width, height in ((2544, 3056), (3520, 2800)):  # real chest film sizes, portrait and landscape
        film = real.resize((width, height), Image.Resampling.BICUBIC)
        assert np.array_equal(np.asarray(_canvas_letterbox(film, 336)), np.asarray(letterbox(film, 336)))


def test_a_deflated_film_decodes_as_its_uncompressed_twin_and_inflates_no_further_than_declared():
    explicit, deflated = dicom_film(300, 200), dicom_film(300, 200, syntax=DeflatedExplicitVRLittleEndian)
    assert b"1.2.840.10008.1.2.1.99" in deflated[:400] and b"1.2.840.10008.1.2.1.99" not in explicit
    assert np.array_equal(np.asarray(load_image(deflated)), np.asarray(load_image(explicit)))
    with pytest.raises(ImageLoadError, match=r"its pixels inflate to 93 MiB, over the 64 MiB limit") as info:
        load_image(deflated_dicom(7_000, 7_000))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("syntax", "honest"), [(JPEGBaseline8Bit, 16), (JPEG2000Lossless, 32)])
def test_a_compressed_dicom_frame_is_judged_by_its_own_header_before_it_is_decoded(syntax, honest):
    """The decoder allocates what the frame's SOF / SIZ says, not the DICOM header's rows and columns: a 1 MB file
    declaring 64 x 64 over an 8,000 x 8,000 RGB JPEG frame took 370 MiB before pydicom noticed the sizes differ."""
    lying = r"its frame is 12000x12000 with 1 sample\(s\); the header declares 64x64"
    with pytest.raises(ImageLoadError, match=lying):
        load_film(dicom_codestream_lying(64, 64, 12_000, 12_000, syntax), 336)
    film = load_film(dicom_codestream_lying(honest, honest, honest, honest, syntax), 336)  # as declared: decoded
    assert film.original_size == (honest, honest)


def test_every_way_in_reads_through_the_checks(tmp_path):
    """Dataset films (evaluation, Explore) are decoded by the checked loader, not by `datasets`; a file on disk is
    refused from its size before it is read."""
    from datasets import Dataset, List
    from datasets import Image as ImageFeature

    from cxr_vqa.contract import split_films

    data = Dataset.from_dict({"images": [[{"bytes": png_strip(1, 30_000), "path": None}]]})
    films = split_films(data.cast_column("images", List(ImageFeature())))
    with pytest.raises(ImageLoadError, match="image shape 1x30000 is 30,000:1"):
        films(0)
    big = tmp_path / "big.png"
    with open(big, "wb") as file:
        file.truncate(LIMITS.max_file_bytes + 1)  # sparse: nothing is written, nothing may be read
    with pytest.raises(ImageLoadError, match=r"file too large: 128.0 MiB or more, over the 128 MiB limit"):
        load_film(big, 336)


def test_a_zip_member_is_read_through_its_declared_size_and_a_zip_directory_is_counted_unopened(tmp_path):
    class Lying:  # a member reader that yields more than its entry declares (CPython's zipfile stops by itself)
        def read(self, n):
            return bytes(n)

    info = zipfile.ZipInfo("film.png")
    info.file_size = 1000
    with pytest.raises(zipfile.BadZipFile, match="inflates past its declared size"):
        read_member(Lying(), info, 20 * MIB)
    archive = tmp_path / "many.zip"
    archive.write_bytes(zip_of({f"{i}.png": b"" for i in range(300)}))
    assert declared_entries(str(archive)) == 300
    understated = bytearray(archive.read_bytes())
    end = understated.rfind(b"PK\x05\x06")
    understated[end + 8 : end + 12] = (1).to_bytes(2, "little") * 2  # the record says 1 entry; its directory holds 300
    archive.write_bytes(bytes(understated))
    directory = int.from_bytes(understated[end + 12 : end + 16], "little")
    assert declared_entries(str(archive)) == directory // ENTRY_BYTES > 1  # what the directory's bytes can hold


def test_bench_smoke_run_answers_crafted_uploads_in_one_line_and_a_real_film(tiny_model_dir, random_adapter_dir):
    models = ["--model", tiny_model_dir, "--adapter", random_adapter_dir]
    out = subprocess.run(
        [sys.executable, "bench/upload_limits.py", "--smoke", *models],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = dict(re.findall(r"(\w+)=([\d.]+)", out.stdout.splitlines()[-1]))
    assert out.stdout.splitlines()[-1].startswith("RESULT ")
    assert int(result["cases"]) >= 10 and result["one_line"] == result["expected"] == result["cases"], out.stdout
    assert float(result["worst_extra_mib"]) <= 300 and result["real_film_answered"] == "1", out.stdout

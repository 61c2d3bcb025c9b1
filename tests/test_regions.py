"""Where each finding of a synthetic film was drawn (regions.jsonl beside the release): recorded without changing a
pixel or a random draw, where the film actually changed, readable back, and mapped to the model's patch grid through
the films' own letterbox."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from cxr_vqa.regions import REGIONS_FILE, decode_mask, encode_mask, patch_grid, read_regions, region_key
from dataprep.chexpert import LABEL_DIR
from dataprep.synthetic import write_release
from dataprep.synthetic_films import DRAWN, draw_film

FINDINGS = {
    "Cardiomegaly": {},
    "Pleural Effusion": {"side": "left"},
    "Consolidation": {"side": "right", "zone": "lower"},
    "Pneumothorax": {"side": "right", "zone": "upper"},
    "Support Devices": {"device": "pacemaker"},
}


@pytest.mark.parametrize("shape", [(5, 7), (1, 1), (40, 33)])
def test_masks_survive_their_run_length_encoding(shape):
    rng = np.random.default_rng(shape[0])
    for mask in (rng.random(shape) > 0.5, np.zeros(shape, bool), np.ones(shape, bool)):
        rle = encode_mask(mask)
        assert rle["size"] == list(shape) and sum(rle["counts"]) == mask.size
        assert np.array_equal(decode_mask(json.loads(json.dumps(rle))), mask)
    starts_inside = np.zeros(shape, bool)
    starts_inside[0, 0] = True
    assert encode_mask(starts_inside)["counts"][0] == 0  # COCO's runs start with background


@pytest.mark.parametrize("view", ["PA", "lateral"])
def test_recording_regions_changes_no_pixel_and_no_random_draw(view):
    plain_rng, recorded_rng = np.random.default_rng(3), np.random.default_rng(3)
    plain = draw_film(FINDINGS, view, 96, plain_rng)
    regions: dict = {}
    recorded = draw_film(FINDINGS, view, 96, recorded_rng, regions=regions)
    assert plain.tobytes() == recorded.tobytes() and plain_rng.random() == recorded_rng.random()
    assert set(regions) == set(DRAWN) and all(w.shape == (plain.height, plain.width) for w in regions.values())


@pytest.mark.parametrize("name", DRAWN)
def test_a_region_is_where_its_finding_changed_the_film(name):
    """The same film drawn with and without one finding (same seed) differs only inside that finding's region."""
    regions: dict = {}
    shown = np.asarray(draw_film({name: FINDINGS[name]}, "PA", 160, np.random.default_rng(9), regions=regions), int)
    normal = np.asarray(draw_film({}, "PA", 160, np.random.default_rng(9)), int)
    mask = Image.fromarray((regions[name] >= 0.5).astype(np.uint8) * 255)
    near = np.asarray(mask.filter(ImageFilter.MaxFilter(5))) > 0  # the film's final blur spreads an edge a pixel
    changed = np.abs(shown - normal) > 40  # consolidation's extra draws move the noise, by far less than this
    assert changed.sum() > 50 and (changed & ~near).sum() <= 0.01 * changed.sum()


def test_a_release_records_every_intact_film_and_regions_only_redraws_the_same(tmp_path):
    counts = write_release(tmp_path / "full", patients=30, seed=2, image_size=64, workers=1)
    lines = [json.loads(line) for line in (tmp_path / "full" / REGIONS_FILE).read_text().splitlines()]
    assert len(lines) == counts["images"] - counts["defects"]["corrupt_image"]
    labels = {}
    for line in (tmp_path / "full" / LABEL_DIR / "report_fixed.json").read_text().splitlines():
        row = json.loads(line)
        labels[row["path_to_image"]] = {n for n in DRAWN if row[n] in (1.0, -1.0)}  # uncertain ones are drawn too
    checked = 0
    for line in lines:
        assert (line["width"], line["height"]) == (64, 74)
        for region in line["regions"].values():
            x0, y0, x1, y1 = region["box"]
            inside = decode_mask(region["mask"])
            assert inside.shape == (74, 64) and inside[y0:y1, x0:x1].sum() == inside.sum() > 0
        if line["path_to_image"] in labels:
            assert set(line["regions"]) == labels[line["path_to_image"]]
            checked += 1
    assert checked >= 30 and any(line["regions"] for line in lines) and any(not line["regions"] for line in lines)

    write_release(tmp_path / "again", patients=30, seed=2, image_size=64, workers=1, regions_only=True)
    assert [p.name for p in (tmp_path / "again").iterdir()] == [REGIONS_FILE]
    assert (tmp_path / "again" / REGIONS_FILE).read_bytes() == (tmp_path / "full" / REGIONS_FILE).read_bytes()
    found = read_regions(tmp_path / "full")
    key = region_key("PNG/PNG/" + lines[0]["path_to_image"].replace(".jpg", ".png"))
    assert key == region_key(lines[0]["path_to_image"]) and set(found[key]) == set(lines[0]["regions"])
    assert read_regions(tmp_path / "nowhere") is None


def test_a_region_lands_on_the_patches_of_the_letterboxed_film():
    """A 384 x 442 film is padded by 29 px a side to 442 square, then resized to 336: 22 px of padding a side."""
    left = np.zeros((442, 384), bool)
    left[:, :192] = True  # the film's left half
    grid = patch_grid(left, 336, 24)  # 14 px patches
    assert grid.shape == (24, 24)
    assert not grid[:, 0].any()  # pure padding: no film there
    assert grid[:, 1:12].all() and not grid[:, 13:].any()  # the half ends at 22 + 146 = 168 px = column 12
    assert not patch_grid(np.zeros((442, 384), bool), 336, 12).any()
    assert patch_grid(np.ones((442, 384), bool), 336, 12).all()  # 28 px patches: every one shows some film

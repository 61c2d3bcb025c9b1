"""The app's example films cannot drift from what the generator draws: assets/examples/ is redrawn here with
`python -m dataprep.synthetic --examples`'s fixed seed and must match pixel for pixel, its index word for word. The
real films of assets/real/ are NIH ChestX-ray14 radiographs, labelled as real, with their attribution beside them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_vqa.contract import read_examples
from dataprep.synthetic import write_examples

ASSETS = Path(__file__).resolve().parents[1] / "assets"
REDRAW = "python -m dataprep.synthetic --examples assets/examples"


@pytest.fixture(scope="module")
def redrawn(tmp_path_factory):
    out = tmp_path_factory.mktemp("examples")
    write_examples(out)  # the command's defaults: 384 px, seed 0
    return out


def test_the_committed_examples_are_what_the_generator_draws(redrawn):
    committed = json.loads((ASSETS / "examples" / "examples.json").read_text())
    assert committed == json.loads((redrawn / "examples.json").read_text()), f"examples.json drifted: run {REDRAW}"
    for item in committed:
        want = np.asarray(Image.open(redrawn / item["file"]))
        got = np.asarray(Image.open(ASSETS / "examples" / item["file"]))
        changed = float((want != got).mean()) if want.shape == got.shape else 1.0
        assert changed == 0.0, (
            f"{item['file']}: {changed:.1%} of its pixels differ from what the generator draws now: run {REDRAW}"
        )


def test_the_real_examples_are_labelled_real_and_attributed():
    examples = read_examples(ASSETS / "real")
    assert examples and all(e.label.startswith("Real chest X-ray (NIH ChestX-ray14)") for e in examples)
    answers = {e.answer.split(",")[0] for e in examples}
    assert answers == {"Yes", "No"} and len({e.question for e in examples}) == 1  # one question, both answers
    for example in examples:
        with Image.open(example.film) as film:
            assert film.size == (512, 512) and film.mode == "L"
    for readme in (ASSETS / "real" / "README.md", ASSETS.parent / "README.md"):
        assert "Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM" in readme.read_text(), readme

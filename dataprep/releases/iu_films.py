"""IU X-ray's films: find each report's films in NLMCXR_png.tgz (one streaming pass) or the extracted PNGs, and
choose the frontal one, which the XML does not name.

    films = scan_films(root, wanted_ids, spill=OUT/".release"/"films", image_size=336)
    choice = choose_film(report_image_ids, films, dicom_views(root, wanted_ids))

How the frontal film is chosen (stats.json "frontal_choice" counts each):
- "dicom": NLMCXR_dcm.tgz is in ROOT and the DICOM ViewPosition of the report's films is decisive: exactly one says
  PA or AP and every other one says a lateral (LL, RL, LATERAL). It is noisy in this release (both films of a report
  often say PA), hence the rule; on the real headers (torchxrayvision's nlmcxr_dicom_metadata.csv.gz) it is decisive
  for 1,038 of 3,851 reports and then agrees with torchxrayvision's published t-SNE view labels for 95%.
- "image": the film with the highest frontal score. A frontal chest film is nearly symmetric about its midline and
  has a bright central column (mediastinum and spine) between two darker lung fields; a lateral has neither (spine at
  the back, sternum at the front, one lung field across the middle). On the film shrunk to 64 x 64 and standardised,
  the score is its correlation with its own mirror image plus how much brighter the central columns (0.45-0.55 of
  the width) are than the two lung bands (0.22-0.37 and 0.63-0.78), over the middle rows. On the synthetic stand-ins
  it picks the frontal film of a pair 98-99% of the time (bench/read_releases.py measures it); on the real films its
  accuracy is unmeasured here: no labelled real PNGs were at hand.
- "order": the scores of the two best films differ by less than MIN_MARGIN: the first film the XML lists (which is
  the frontal one for 88% of two-film reports, by the same t-SNE labels).
- "single": one readable film; its view is "frontal" when its score is at least FRONTAL_SCORE, else "lateral".

Reading NLMCXR_png.tgz: a gzip tar has no random access, so it is read once, as a stream; each wanted film is
decoded, scored, letterboxed to the dataset's size and written to `spill` (the builder reads it from there), so
memory holds one film per thread, never the archive. The films not chosen are deleted after the pass.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cxr_vqa.errors import UserError
from cxr_vqa.images import ImageLoadError, letterbox, load_image

logger = logging.getLogger(__name__)

PNG_TGZ = "NLMCXR_png.tgz"
DCM_TGZ = "NLMCXR_dcm.tgz"
FRONTAL = {"PA": "PA", "AP": "AP"}
LATERAL = {"LL", "RL", "LATERAL", "LARGE LATERAL"}
FEATURE_SIDE = 64
MIN_MARGIN = 0.1  # score difference below which the XML's order decides (2% of the stand-ins' pairs)
FRONTAL_SCORE = 1.4  # a single film scoring at least this is called frontal (96% right on the stand-ins)
DICOM_HEAD = 1 << 19  # bytes of a DICOM file read for its header (its pixels come after)


def frontal_score(image) -> float:
    """Mirror symmetry plus central-column contrast (the module's docstring): higher for a frontal film."""
    small = np.asarray(image.convert("L").resize((FEATURE_SIDE, FEATURE_SIDE)), np.float32)
    small = (small - small.mean()) / (small.std() + 1e-6)
    symmetry = (small * small[:, ::-1]).mean()
    profile = small[FEATURE_SIDE // 4 : 3 * FEATURE_SIDE // 4].mean(axis=0)  # column means over the middle rows

    def band(start: float, end: float) -> float:
        return float(profile[int(start * FEATURE_SIDE) : int(end * FEATURE_SIDE) + 1].mean())

    return float(symmetry) + band(0.45, 0.55) - (band(0.22, 0.37) + band(0.63, 0.78)) / 2


@dataclass
class Films:
    """What the pass found: per image id its file (relative to `root`) and frontal score, or why it failed."""

    root: Path  # where the builder opens the chosen films
    source: str  # "NLMCXR_png.tgz" or "extracted PNGs"
    found: dict[str, tuple[str, float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def _film_id(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0]


def _tar_members(path: Path, suffix: str) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """The members of a .tgz in one forward pass (mode r|gz: no seeking, no index of the whole archive)."""
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith(suffix):
                    yield tar, member
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise UserError(f"{path} is cut short or corrupt ({type(exc).__name__}): download it again") from None


def _score_and_spill(data: bytes, spill: Path | None, name: str, size: int) -> tuple[float, str] | str:
    try:
        image = load_image(data)
    except ImageLoadError as exc:
        return str(exc)
    if spill is not None:
        square = letterbox(image, size=size)
        pixels = np.asarray(square)
        if (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all():
            square = square.convert("L")  # a grey film: one channel is the same picture, encoded in half the time
        # level 1: the spill lives for one run; level 3 costs 1.5x the time for 5% fewer bytes
        square.save(spill / name, format="PNG", compress_level=1)
    return frontal_score(image), name


def scan_films(root: Path, wanted: set[str], *, spill: Path | None, image_size: int = 336, workers: int = 8,
               progress: bool = True) -> Films:  # fmt: skip
    """Decode and score every wanted film, from ROOT/NLMCXR_png.tgz (streamed; needs `spill`) or extracted PNGs."""
    archive = root / PNG_TGZ
    if archive.is_file():
        if spill is None:
            raise ValueError("reading films from an archive needs a spill folder")
        spill.mkdir(parents=True, exist_ok=True)
        films = Films(root=spill, source=PNG_TGZ)
        jobs = ((_film_id(m.name), tar.extractfile(m).read()) for tar, m in _tar_members(archive, ".png")
                if _film_id(m.name) in wanted)  # fmt: skip
        _run(jobs, films, spill, image_size, workers, progress)
        return films
    paths = {_film_id(p.name): p for p in root.rglob("*.png") if _film_id(p.name) in wanted}
    if not paths and not any(root.rglob("*.png")):
        raise UserError(f"no {PNG_TGZ} and no extracted PNGs in {root}: download NLMCXR_png.tgz from Open-i")
    films = Films(root=root, source="extracted PNGs")
    jobs = ((film_id, path.read_bytes()) for film_id, path in paths.items())
    _run(jobs, films, None, image_size, workers, progress, rel={k: str(p.relative_to(root)) for k, p in paths.items()})
    return films


def _run(jobs, films: Films, spill: Path | None, size: int, workers: int, progress: bool, rel: dict | None = None):
    """Score the films in threads (decoding and PNG encoding release the GIL), at most 2 per thread in flight."""
    pending: list[tuple[str, Future]] = []

    def collect(film_id: str, future: Future) -> None:
        result = future.result()
        if isinstance(result, str):
            films.errors[film_id] = result
        else:
            films.found[film_id] = (rel[film_id] if rel else result[1], result[0])

    with ThreadPoolExecutor(max(workers, 1)) as pool, tqdm(desc="films", unit=" films", disable=not progress) as bar:
        for film_id, data in jobs:
            pending.append((film_id, pool.submit(_score_and_spill, data, spill, f"{film_id}.png", size)))
            while len(pending) > 2 * max(workers, 1):
                collect(*pending.pop(0))
                bar.update()
        for item in pending:
            collect(*item)
            bar.update()


def dicom_views(root: Path, wanted: set[str]) -> dict[str, str]:
    """ViewPosition by image id from ROOT/NLMCXR_dcm.tgz (headers only, one streaming pass); {} without it."""
    archive = root / DCM_TGZ
    if not archive.is_file():
        return {}
    import pydicom

    views = {}
    for tar, member in _tar_members(archive, ".dcm"):
        stem = _film_id(member.name)
        film_id = stem if stem.startswith("CXR") else f"CXR{stem}"  # the archive names them "1_IM-0001-4001.dcm"
        if film_id not in wanted:
            continue
        head = tar.extractfile(member).read(DICOM_HEAD)
        try:
            header = pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True, force=True)
            views[film_id] = " ".join(str(header.get("ViewPosition", "")).upper().split())
        except Exception as exc:  # noqa: BLE001 - a damaged header only loses this film's view, as if absent
            logger.warning("%s: unreadable DICOM header (%s)", member.name, type(exc).__name__)
    return views


@dataclass(frozen=True)
class Choice:
    film_id: str
    rel: str
    view: str  # "PA" or "AP" (from DICOM), "frontal" or "lateral"
    method: str  # "dicom", "image", "order" or "single"


def choose_film(image_ids: list[str], films: Films, dicom: dict[str, str]) -> Choice | tuple[str, str]:
    """The report's frontal film (see the module's docstring), or (reject reason, detail) when none is readable."""
    readable = [i for i in image_ids if i in films.found]
    if not readable:
        broken = [i for i in image_ids if i in films.errors]
        if broken:
            return "image_unreadable", "; ".join(f"{i}: {films.errors[i]}" for i in broken)
        return "image_missing", f"{', '.join(image_ids)} not in {films.source}"
    frontal = [i for i in readable if dicom.get(i) in FRONTAL]
    if len(frontal) == 1 and all(dicom.get(i) in LATERAL for i in readable if i != frontal[0]):
        return Choice(frontal[0], films.found[frontal[0]][0], FRONTAL[dicom[frontal[0]]], "dicom")
    if len(readable) == 1 and dicom.get(readable[0]) in LATERAL:
        return Choice(readable[0], films.found[readable[0]][0], "lateral", "dicom")
    scores = {i: films.found[i][1] for i in readable}
    if len(readable) == 1:
        view = "frontal" if scores[readable[0]] >= FRONTAL_SCORE else "lateral"
        return Choice(readable[0], films.found[readable[0]][0], view, "single")
    ranked = sorted(readable, key=lambda i: -scores[i])
    if scores[ranked[0]] - scores[ranked[1]] >= MIN_MARGIN:
        return Choice(ranked[0], films.found[ranked[0]][0], "frontal", "image")
    return Choice(readable[0], films.found[readable[0]][0], "frontal", "order")


def drop_unchosen(films: Films, chosen: set[str]) -> None:
    """Delete the spilled films that were not chosen (nothing to do for extracted PNGs, which stay in the release)."""
    if films.source != PNG_TGZ:
        return
    for film_id, (name, _) in films.found.items():
        if film_id not in chosen:
            (films.root / name).unlink(missing_ok=True)

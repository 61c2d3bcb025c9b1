"""The public medical VQA benchmarks, read as their authors ship them, as evaluation questions.

    questions, films = read_benchmark("vqa-rad", "data/VQA_RAD")     # chest questions of the test split
    questions, films = read_benchmark("slake", "data/Slake1.0", all_organs=True, all_languages=True)

- VQA-RAD (Lau et al. 2018, OSF release): `VQA_RAD Dataset Public.json`, a list of {qid, image_name, image_organ,
  question, answer, answer_type: CLOSED|OPEN, phrase_type, ...}, and the films in `VQA_RAD Image Folder/`. The test
  split is the rows whose phrase_type starts with "test" (test_freeform, test_para). Chest: image_organ CHEST (the
  release names no modality, so its chest CTs count as chest too).
- SLAKE (Liu et al. 2021): `test.json`, a list of {qid, img_id, img_name, question, answer, q_lang: en|zh, modality,
  location, answer_type, ...}, films under `imgs/`. Chest X-ray: modality X-Ray at a chest location; English only
  unless asked.

Each question becomes a record like the dataset's (id, row, study_id = the film, kind, reference, label for yes/no
answers; `film`, its path in the release folder), so the same answering, scoring, intervals (over films) and paired
tests apply.
"""

from __future__ import annotations

import json
from pathlib import Path

from cxr_vqa.answers import parse_yes_no
from cxr_vqa.errors import UserError

VQA_RAD_JSON, VQA_RAD_IMAGES = "VQA_RAD Dataset Public.json", "VQA_RAD Image Folder"
SLAKE_JSON, SLAKE_IMAGES = "test.json", "imgs"
# SLAKE's chest X-rays are located "Lung" or "Chest_heart", "Chest_lung", "Chest_mediastinal"
SLAKE_CHEST = ("lung", "chest")
BENCHMARKS = ("vqa-rad", "slake")


def _load(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"{path} not found: point --dataset at the unpacked release folder that holds {path.name}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({str(err).splitlines()[0]}): download the release again") from None
    if not isinstance(data, list):
        raise UserError(f"{path} should hold a list of questions")
    return data


def _question(i: int, entry: dict, film: str) -> dict:
    kind = "closed" if str(entry.get("answer_type", "")).strip().upper() == "CLOSED" else "open"
    answer = str(entry.get("answer", "")).strip()  # VQA-RAD stores some answers as numbers
    return {
        "id": str(entry.get("qid", i)), "study_id": film, "patient_id": film, "reference": answer, "kind": kind,
        "question": str(entry.get("question", "")).strip(), "finding": None,
        "label": parse_yes_no(answer) if kind == "closed" else None,
    }  # fmt: skip


def read_benchmark(
    name: str, root: str | Path, *, all_organs: bool = False, all_languages: bool = False
) -> tuple[list[dict], list[Path]]:
    """(questions with `row` pointing into the film list, film paths); the images must all exist."""
    root = Path(root)
    if name == "vqa-rad":
        entries = [e for e in _load(root / VQA_RAD_JSON) if str(e.get("phrase_type", "")).startswith("test")]
        if not all_organs:
            entries = [e for e in entries if str(e.get("image_organ", "")).strip().upper() == "CHEST"]
        folder, picked = root / VQA_RAD_IMAGES, [(e, e["image_name"]) for e in entries]
    elif name == "slake":
        entries = _load(root / SLAKE_JSON)
        if not all_languages:
            entries = [e for e in entries if e.get("q_lang") == "en"]
        if not all_organs:
            entries = [e for e in entries if e.get("modality") == "X-Ray"
                       and str(e.get("location", "")).strip().lower().startswith(SLAKE_CHEST)]  # fmt: skip
        folder, picked = root / SLAKE_IMAGES, [(e, e["img_name"]) for e in entries]
    else:
        raise UserError(f"--benchmark must be one of {', '.join(BENCHMARKS)}, got {name!r}")
    if not picked:
        raise UserError(f"no questions left in {root} for {name} with these filters (try --all-organs)")
    films = sorted({film for _, film in picked})
    missing = [film for film in films if not (folder / film).is_file()]
    if missing:
        raise UserError(f"{len(missing)} of {len(films)} films missing under {folder}, e.g. {missing[0]}: unpack the "
                        "release's images there")  # fmt: skip
    row = {film: i for i, film in enumerate(films)}
    questions = []
    for i, (entry, film) in enumerate(picked):
        # `film`, relative to the release folder: how the app's Explore tab finds it, even after the folder moved
        where = (folder / film).relative_to(root).as_posix()
        questions.append({**_question(i, entry, film), "row": row[film], "film": where})
    return questions, [folder / film for film in films]

"""Studies + a QA generator -> the dataset of the data contract (cxr_vqa.contract) on disk, with stats.json and
rejects.jsonl beside it.

    stats = build_dataset(studies, rejects, LabelsGenerator(), root=ROOT, out=DATA, image_size=336)
    datasets.load_from_disk(DATA)["train"][0]   # messages, images, qa, patient_id, study_id, image_path, view, source

Images are letterboxed and resized first, into a staging folder under OUT, so an unreadable film is rejected
before any money is spent on its report and the dataset is written from disk, not held in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from datasets import Dataset, DatasetDict, load_from_disk
from tqdm.auto import tqdm

from cxr_vqa.contract import SPLITS, features
from cxr_vqa.costs import estimate_tokens
from cxr_vqa.files import share
from cxr_vqa.findings import FINDINGS_KIND
from cxr_vqa.images import ImageLoadError, load_film
from cxr_vqa.template import conversation_from_qa
from dataprep.qa import QAGenerator
from dataprep.releases.study import SYNTHETIC_MARKER, Study, reject

DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
STAGING = ".staging"


def assign_split(patient_id: str, seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """train / validation / test from a hash of the patient: stable across runs, machines and Python versions."""
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).hexdigest()
    u = int(digest[:15], 16) / 16**15
    total = 0.0
    for name, fraction in zip(SPLITS, fractions, strict=True):
        total += fraction
        if u < total:
            return name
    return SPLITS[-1]


def patient_splits(studies: Sequence[Study], seed: int, fractions: Sequence[float]) -> dict[str, str]:
    """One split per patient: the release's own split where it has one (MIMIC-CXR's, which its reader has checked
    is by patient); else a patient with any study in the official `valid` set goes to validation whole; else a hash."""
    fixed = {s.patient_id: s.fixed_split for s in studies if s.fixed_split}
    official_valid = {s.patient_id for s in studies if s.official_split == "valid"}
    return {
        s.patient_id: fixed.get(s.patient_id)
        or ("validation" if s.patient_id in official_valid else assign_split(s.patient_id, seed, fractions))
        for s in studies
    }


def make_row(study: Study, image_path: str, view: str, pairs: Sequence[dict], source: str) -> dict:
    """One dataset row without its image (the caller adds `images`)."""
    return {
        "messages": conversation_from_qa([(pair["question"], pair["answer"]) for pair in pairs]),
        "qa": [dict(pair) for pair in pairs],
        "patient_id": study.patient_id,
        "study_id": study.study_id,
        "image_path": image_path,
        "view": view,
        "source": source,
    }


def stage_image(study: Study, root: Path, staging: Path, size: int) -> tuple[str, str, str] | str:
    """Letterbox the first readable view into `staging`; (release path, view, staged file) or why none worked."""
    errors = []
    for rel, view in study.images:
        try:
            image = load_film(root / rel, size).image  # grey films stay 1 byte a pixel until letterboxed
        except ImageLoadError as exc:
            errors.append(str(exc))
            continue
        name = hashlib.sha1(study.study_id.encode()).hexdigest()
        target = staging / name[:2] / f"{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, format="PNG", compress_level=3)  # as small as level 6 here, 3x faster
        return rel, view, str(target)
    return "; ".join(errors)


def _generate_rows(rows: list[dict]):
    for row in rows:
        with open(row["_staged"], "rb") as file:
            image = {"bytes": file.read(), "path": None}
        yield {**{k: v for k, v in row.items() if k != "_staged"}, "images": [image]}


def _to_dataset(rows: list[dict], split: str, cache_dir: Path) -> Dataset:
    if not rows:
        return Dataset(pa.Table.from_pylist([], schema=features().arrow_schema), split=split)
    # a fresh fingerprint: hashing 200k rows to name a cache that is deleted afterwards would be wasted time
    return Dataset.from_generator(
        _generate_rows,
        gen_kwargs={"rows": rows},
        features=features(),
        cache_dir=str(cache_dir),
        fingerprint=uuid.uuid4().hex,
        split=split,
    )


def stage_images(
    studies: Sequence[Study], root: Path, staging: Path, size: int, workers: int = 8, progress: bool = True
) -> tuple[dict[str, tuple[str, str, str]], list[dict]]:
    """Letterbox every study's image into `staging` in threads; staged files by study id, and the rejects."""
    staged, rejects = {}, []
    with ThreadPoolExecutor(max(workers, 1)) as pool:  # decoding and PNG encoding release the GIL
        jobs = pool.map(lambda study: stage_image(study, root, staging, size), studies)
        for study, result in tqdm(
            zip(studies, jobs, strict=True), total=len(studies), desc="images", disable=not progress
        ):
            if isinstance(result, str):
                rejects.append(reject(study, "image_unreadable", result))
            else:
                staged[study.study_id] = result
    return staged, rejects


def build_dataset(
    studies: Sequence[Study],
    rejects: list[dict],
    generator: QAGenerator,
    *,
    root: str | os.PathLike,
    out: str | os.PathLike,
    image_size: int = 336,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    workers: int = 8,
    progress: bool = True,
    config: dict | None = None,
    film_root: str | os.PathLike | None = None,
    release: dict | None = None,
) -> tuple[DatasetDict, dict]:
    """Write the dataset, rejects.jsonl and stats.json under `out`; return the DatasetDict and the stats. The
    studies' image paths are opened under `film_root` (default `root`: a reader that takes films out of an archive
    writes them there); `release` is the reader's summary, kept as stats.json "release"."""
    root, out = Path(root), Path(out)
    staging = out / STAGING
    rejects = list(rejects)
    splits = patient_splits(studies, seed, fractions)  # from every study: a bad image must not move a patient
    rows: dict[str, list[dict]] = {name: [] for name in SPLITS}
    try:
        films = Path(film_root) if film_root is not None else root
        staged, image_rejects = stage_images(studies, films, staging / "images", image_size, workers, progress)
        rejects += image_rejects
        usable = [s for s in studies if s.study_id in staged]
        results = generator.generate(usable)
        for study in usable:
            result = results[study.study_id]
            if not result.pairs:
                rejects.append(reject(study, result.reason or "no_qa", result.detail))
                continue
            rel, view, staged_file = staged[study.study_id]
            row = make_row(study, rel, view, result.pairs, generator.source)
            rows[splits[study.patient_id]].append({**row, "_staged": staged_file})
        stats = summarise(rows, rejects, generator, config)
        stats["synthetic"] = (root / SYNTHETIC_MARKER).is_file()
        stats["release"] = release or {}
        _save(DatasetDict({name: _to_dataset(rows[name], name, staging / "hf") for name in SPLITS}), out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    with open(out / "rejects.jsonl", "w", encoding="utf-8") as file:
        file.writelines(json.dumps(r) + "\n" for r in rejects)
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    share(out)  # readable by the trainer's or the app's user, as far as the umask allows
    return load_from_disk(str(out)), stats  # the saved copy: the staged arrow files are gone


def _save(dataset: DatasetDict, out: Path) -> None:
    for name in SPLITS:  # a rerun into the same OUT must not leave shards of the last run behind
        if (out / name / "state.json").is_file():
            shutil.rmtree(out / name)
    # an empty split must still get one (empty) shard: with none, load_from_disk fails (datasets 5.2)
    dataset.save_to_disk(str(out), num_shards={name: 1 for name, split in dataset.items() if len(split) == 0})


def summarise(rows: dict[str, list[dict]], rejects: list[dict], generator: QAGenerator, config: dict | None) -> dict:
    """What stats.json holds: counts per split, source, reject reason and answer, and the generator's own."""
    pairs = [pair for split in rows.values() for row in split for pair in row["qa"]]
    answers = Counter(pair["label"] or pair["kind"] for pair in pairs)
    n_rows = sum(len(split) for split in rows.values())
    return {
        "studies": n_rows + len(rejects),
        "rows": n_rows,
        "rejected": len(rejects),
        "splits": {
            name: {"rows": len(split), "patients": len({row["patient_id"] for row in split})}
            for name, split in rows.items()
        },
        "sources": dict(Counter(row["source"] for split in rows.values() for row in split)),
        "views": dict(Counter(row["view"] for split in rows.values() for row in split)),
        "reject_reasons": dict(Counter(r["reason"] for r in rejects)),
        "qa_pairs": len(pairs),
        "answers": {"yes": answers["yes"], "no": answers["no"], "open": answers["open"],
                    "findings": answers[FINDINGS_KIND]},  # fmt: skip
        "findings": findings_share(pairs),
        "generator": generator.stats,
        "config": config or {},
    }


def findings_share(pairs: Sequence[dict]) -> dict:
    """What the findings turns add to training: their count and their share of all answer tokens. Tokens are
    estimated as characters / 4 (`cxr_vqa.costs.estimate_tokens`, the LLM budget's proxy: dataprep does not know which
    tokenizer will train on it; Llama's runs ~1.3 tokens a word on report text), words by whitespace."""
    tokens, words = Counter(), Counter()
    for pair in pairs:
        kind = "findings" if pair["kind"] == FINDINGS_KIND else "other"
        tokens[kind] += estimate_tokens(pair["answer"])
        words[kind] += len(pair["answer"].split())
    total = tokens["findings"] + tokens["other"]
    return {
        "turns": sum(pair["kind"] == FINDINGS_KIND for pair in pairs),
        "answer_words": words["findings"],
        "answer_tokens_est": tokens["findings"],
        "share_of_answer_tokens": round(tokens["findings"] / total, 4) if total else 0.0,
        "token_proxy": "characters / 4",
    }

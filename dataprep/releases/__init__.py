"""The releases dataprep reads, behind one interface: each turns its release, as shipped, into the same studies.

    from dataprep.releases import read
    release = read("mimic-cxr", "/data/mimic-cxr-jpg/2.1.0", limit=100, work_dir=OUT / ".release")
    release.studies      # a Study per usable study (dataprep/releases/study.py): patient, study, films best first,
                         # cleaned findings and impression, 14 labels (1 / 0 / -1 / None), the release's split if any
    release.rejects      # a line per other study, with its reason
    release.film_root    # where the builder opens the studies' image paths: the release root, or, for films read
                         # from an archive (IU X-ray's NLMCXR_png.tgz), the folder they were written to
    release.summary      # stats.json "release": which labels, how films and sections were found, patients

| source          | module                          | read from                                                  |
|-----------------|---------------------------------|------------------------------------------------------------|
| `chexpert-plus` | dataprep/chexpert.py            | df_chexpert_plus_240401.csv, PNG/, chexbert_labels/         |
| `mimic-cxr`     | dataprep/releases/mimic.py      | files/, mimic-cxr-2.0.0-*.csv.gz, mimic-cxr-reports.zip     |
| `iu-xray`       | dataprep/releases/iu_xray.py    | NLMCXR_reports.tgz, NLMCXR_png.tgz (optional NLMCXR_dcm.tgz)|

Everything after the reader (QA generators, balancing, splits, stats, rejects) is shared.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dataprep.releases.study import LABELS, Labels, Study, reject

SOURCES = ("chexpert-plus", "mimic-cxr", "iu-xray")
MIMIC_LABELS = ("chexpert", "negbio")
IU_LABELS = ("labeler", "mesh")


@dataclass
class Release:
    source: str
    root: Path
    studies: list[Study]
    rejects: list[dict]
    summary: dict
    film_root: Path


def read(
    source: str,
    root: str | os.PathLike,
    *,
    limit: int | None = None,
    work_dir: str | os.PathLike | None = None,
    films: bool = True,
    image_size: int = 336,
    workers: int = 8,
    progress: bool = True,
    mimic_labels: str = "chexpert",
    mimic_reports: str | None = None,
    iu_labels: str = "labeler",
) -> Release:
    """Read `source` at `root` (the first `limit` studies). `work_dir` receives films read from an archive; without
    `films` (a dry run) an archive's films are not read."""
    root = Path(root)
    if source == "chexpert-plus":
        from dataprep.chexpert import read_release

        studies, rejects = read_release(root, limit)
        summary = {"source": source, "labels": "chexbert_labels/ (report, else impression, else findings)"}
        return Release(source, root, studies, rejects, summary, root)
    if source == "mimic-cxr":
        from dataprep.releases.mimic import read_mimic

        studies, rejects, summary = read_mimic(root, labels=mimic_labels, reports=mimic_reports, limit=limit)
        return Release(source, root, studies, rejects, summary, root)
    if source == "iu-xray":
        from dataprep.releases.iu_xray import read_iu

        spill = Path(work_dir) / "films" if work_dir is not None else None
        options = {"image_size": image_size, "workers": workers, "progress": progress}
        studies, rejects, summary, film_root = read_iu(root, labels=iu_labels, limit=limit, spill=spill, films=films,
                                                       **options)  # fmt: skip
        return Release(source, root, studies, rejects, summary, film_root)
    raise ValueError(f"unknown source {source!r}; one of {', '.join(SOURCES)}")


__all__ = ["IU_LABELS", "LABELS", "MIMIC_LABELS", "SOURCES", "Labels", "Release", "Study", "read", "reject"]

"""What every release reader returns: one `Study` per (patient, study), and a reject line for each unusable one.

    from dataprep.releases.study import LABELS, Study, reject

Everything after the reader (both QA generators, balancing, splits, stats, rejects) sees only these, so a release
is supported by writing its reader (dataprep/releases/__init__.py lists them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cxr_vqa.labeler import OBSERVATIONS
from dataprep.clean import report_text

# The 14 CheXpert observations, in CheXbert's order: the project's labeler and the QA generators share them
LABELS: tuple[str, ...] = OBSERVATIONS
# Not in any real release: the synthetic stand-ins (`python -m dataprep.synthetic`) leave it at their root, so that a
# dataset built from one, and a model trained on that, say they come from synthetic phantoms (stats.json, model card)
SYNTHETIC_MARKER = "SYNTHETIC.json"
MIN_WORDS = 2  # a study whose findings and impression both have fewer words after cleaning has no usable text
SPLIT_NAMES = ("train", "validation", "test")

Labels = dict[str, float | None]  # observation -> 1.0 positive, 0.0 negative, -1.0 uncertain, None not mentioned


@dataclass
class Study:
    study_id: str  # unique in the release: "patient42142/study5", "p10000032/s50414267", "CXR1"
    patient_id: str
    official_split: str  # "train" or "valid": CheXpert Plus's valid patients go to validation whole
    findings: str  # cleaned
    impression: str  # cleaned
    images: list[tuple[str, str]] = field(default_factory=list)  # (path the builder opens, view), best first
    labels: Labels | None = None
    # the release's own split, kept as it is ("train", "validation" or "test": MIMIC-CXR's official split); None:
    # the builder assigns one from a hash of the patient
    fixed_split: str | None = None

    @property
    def report(self) -> str:
        return report_text(self.findings, self.impression)


def reject(study: Study | None, reason: str, detail: str = "", *, study_id: str = "", patient_id: str = "") -> dict:
    """One line of `rejects.jsonl`. Never put report text in `detail`: rejects are shared more widely than data."""
    return {
        "study_id": study.study_id if study else study_id,
        "patient_id": study.patient_id if study else patient_id,
        "reason": reason,
        "detail": detail,
    }


def full_labels(found: dict[str, float | int]) -> Labels:
    """All 14 observations, those not in `found` not mentioned (None)."""
    return {label: float(found[label]) if label in found else None for label in LABELS}

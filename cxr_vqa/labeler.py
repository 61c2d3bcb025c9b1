"""The project's report labeler: a report's text -> the 14 CheXpert observations it asserts.

    from cxr_vqa.labeler import OBSERVATIONS, FIVE, label_report
    label_report("Mild cardiomegaly. No pleural effusion.")   # {"Cardiomegaly": 1, "Pleural Effusion": 0}

Values: 1 positive, 0 negative, -1 uncertain; an observation the text does not mention is absent. "No Finding" is
1 when no pathology (Support Devices does not count) is positive or uncertain, as CheXpert defines it.

This first version is a keyword-and-negation placeholder that fixes the interface dataprep, evaluation and the app
build on; the real labeler (sentence by sentence, a mention lexicon per observation, negation and uncertainty with
scopes, explainable decisions) replaces its body without changing these names.
"""

from __future__ import annotations

import re

OBSERVATIONS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
    "No Finding",
)
FIVE: tuple[str, ...] = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
NO_FINDING = "No Finding"
POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1

_MENTIONS = {
    "Enlarged Cardiomediastinum": ("mediastinum is widened", "widened mediastinum", "enlarged cardiomediastinum"),
    "Cardiomegaly": ("cardiomegaly", "heart is enlarged", "enlarged heart", "enlargement of the cardiac silhouette"),
    "Lung Opacity": ("opacity", "opacities", "opacification"),
    "Lung Lesion": ("nodule", "mass", "lesion"),
    "Edema": ("edema", "vascular congestion"),
    "Consolidation": ("consolidation",),
    "Pneumonia": ("pneumonia",),
    "Atelectasis": ("atelectasis",),
    "Pneumothorax": ("pneumothorax",),
    "Pleural Effusion": ("pleural effusion", "effusion"),
    "Pleural Other": ("pleural thickening", "fibrothorax"),
    "Fracture": ("fracture",),
    "Support Devices": ("tube", "catheter", "line", "pacemaker"),
}
_NEGATION = re.compile(r"\b(no|without|free of|negative for|resolved)\b")
_UNCERTAIN = re.compile(r"\b(possible|possibly|may|might|cannot be excluded|suspicious for|questionable)\b")


def label_report(text: str) -> dict[str, int]:
    """For each observation the text mentions: 1, 0 or -1 (see the module's docstring)."""
    labels: dict[str, int] = {}
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", text.lower()):
        for observation, phrases in _MENTIONS.items():
            if not any(phrase in sentence for phrase in phrases):
                continue
            value = NEGATIVE if _NEGATION.search(sentence) else UNCERTAIN if _UNCERTAIN.search(sentence) else POSITIVE
            labels[observation] = max(labels.get(observation, value), value, key=_rank)
    pathology = [o for o in OBSERVATIONS if o not in (NO_FINDING, "Support Devices")]
    if not any(labels.get(o) in (POSITIVE, UNCERTAIN) for o in pathology):
        labels[NO_FINDING] = POSITIVE
    return labels


def _rank(value: int) -> int:
    """positive beats uncertain beats negative when sentences disagree"""
    return {POSITIVE: 2, UNCERTAIN: 1, NEGATIVE: 0}[value]

"""What a synthetic study shows and what its report says: the findings drawn (each ~40%, with side, zone or device)
and report sections in the release's styles (ALL CAPS or not, prior-comparison sentences, sign-off boilerplate,
de-identification marks), with the CheXbert labels of the whole report and of the impression.

    found = sample_findings(rng)                                   # {"Pleural Effusion": {"side": "left"}, ...}
    sections, labels, impression_labels = write_report(found, rng)
"""

from __future__ import annotations

import numpy as np

from dataprep.chexpert import LABELS
from dataprep.synthetic_films import DEVICES, DRAWN

PREVALENCE = 0.4
# Every sentence has two words or more: report cleaning drops one-word sentences (dataprep/clean.py), and a findings
# section that lost "Cardiomegaly." would teach the findings task to leave out what the film shows.
POSITIVE = {
    "Cardiomegaly": (
        "The heart is enlarged.", "Cardiomegaly is present.", "Moderate enlargement of the cardiac silhouette."
    ),
    "Pleural Effusion": ("There is a {side} pleural effusion.", "{Side} pleural effusion."),
    "Consolidation": ("Consolidation in the {side} {zone} lung.", "Dense {side} {zone} lung consolidation."),
    "Pneumothorax": ("There is a {side} pneumothorax.", "{Side} pneumothorax."),
}
UNCERTAIN = {
    "Pleural Effusion": "Possible small {side} pleural effusion.",
    "Consolidation": "Possible {side} {zone} lung consolidation.",
}
NEGATIVE = {
    "Cardiomegaly": ("Heart size is normal.", "The cardiac silhouette is not enlarged."),
    "Pleural Effusion": ("No pleural effusion.",),
    "Consolidation": ("No focal consolidation.",),
    "Pneumothorax": ("No pneumothorax.",),
    "Support Devices": ("No lines or tubes.",),
}
# Short, as many reports put them: the findings turn trains on these sentences, and every token of it is a token of
# training (the long forms, "Endotracheal tube tip is 4 cm above the carina.", named positions the films do not draw)
DEVICE_SENTENCE = {
    "endotracheal tube": "Endotracheal tube in place.",
    "central line": "Right central line in place.",
    "pacemaker": "Left chest wall pacemaker.",
}
PRIOR_SENTENCES = ("Compared to the prior study, there is no significant interval change.", "Stable appearance.")
SIGN_OFF = "I have personally reviewed the images and agree with the report transcribed above."
COMMUNICATION = "These findings were discussed with Dr. ___ at 10:30 on ___."


def _side_words(details: dict) -> dict:
    side = {"both": "bilateral"}.get(details.get("side", ""), details.get("side", ""))
    return {"side": side, "Side": side.capitalize(), "zone": details.get("zone", "")}


def sample_findings(rng: np.random.Generator) -> dict[str, dict]:
    """Which drawn findings a study has, with side, zone or device."""
    found = {}
    for name in DRAWN:
        if rng.random() >= PREVALENCE:
            continue
        if name == "Pleural Effusion":
            found[name] = {"side": str(rng.choice(["left", "right", "both"], p=[0.4, 0.3, 0.3]))}
        elif name in ("Consolidation", "Pneumothorax"):
            found[name] = {"side": str(rng.choice(["left", "right"])), "zone": str(rng.choice(["upper", "lower"]))}
        elif name == "Support Devices":
            found[name] = {"device": str(rng.choice(DEVICES))}
        else:
            found[name] = {}
    return found


def write_report(found: dict[str, dict], rng: np.random.Generator) -> tuple[dict[str, str], dict, dict]:
    """Report sections, CheXbert labels of the whole report, and of the impression alone."""
    labels: dict = dict.fromkeys(LABELS)
    impression_labels: dict = dict.fromkeys(LABELS)
    findings, impression = [], []
    if "Support Devices" in found:
        findings.append(DEVICE_SENTENCE[found["Support Devices"]["device"]])
        labels["Support Devices"] = 1.0
    elif rng.random() < 0.5:
        findings.append(NEGATIVE["Support Devices"][0])
        labels["Support Devices"] = 0.0
    for name in ("Cardiomegaly", "Consolidation", "Pneumothorax", "Pleural Effusion"):
        if name in found:
            uncertain = name in UNCERTAIN and rng.random() < 0.05
            template = UNCERTAIN[name] if uncertain else str(rng.choice(POSITIVE[name]))
            sentence = template.format(**_side_words(found[name]))
            findings.append(sentence)
            impression.append(sentence)
            labels[name] = impression_labels[name] = -1.0 if uncertain else 1.0
        elif rng.random() < 0.85:  # otherwise not mentioned: CheXbert says null
            findings.append(str(rng.choice(NEGATIVE[name])))
            labels[name] = 0.0
    if not any(labels[name] in (1.0, -1.0) for name in POSITIVE):
        impression.append("No acute cardiopulmonary abnormality.")
        labels["No Finding"] = impression_labels["No Finding"] = 1.0
    if rng.random() < 0.35:
        findings.insert(0, str(rng.choice(PRIOR_SENTENCES)))
    impression = [f"{i}. {s}" for i, s in enumerate(impression, 1)] if len(impression) > 1 else impression
    if rng.random() < 0.2:
        impression.append(COMMUNICATION)
    if rng.random() < 0.5:
        impression.append(SIGN_OFF)
    sep = "\n" if rng.random() < 0.5 else " "
    sections = {"section_findings": sep.join(findings), "section_impression": sep.join(impression)}
    if rng.random() < 0.4:  # much of the release is dictated in capitals
        sections = {k: v.upper() for k, v in sections.items()}
    return sections, labels, impression_labels

"""QA pairs from the 14 CheXbert labels: offline, deterministic, free.

    pairs = labels_to_qa(study.labels, qa_per_study=5, rng=random.Random("0:patient1/study1"))

Positive -> a closed question answered "Yes", negative -> "No", uncertain or not mentioned -> no question.
Yes and No are balanced per study (most findings are negative in most reports, so taking every negative would
teach a model to say "No"), and one open question lists the positive findings. The conversation opens with the
study's findings turn (`dataprep.qa.add_findings`) in a share of the studies, `findings_share` (0: `--no-findings`);
its phrasing and share have their own generators, so the other pairs are the same with it or without.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence

from dataprep.chexpert import Labels, Study
from dataprep.qa import QAResult, add_findings, findings_stats, make_pair

# label -> (noun phrase for "Is there ...?", bare noun for "there is no ...")
FINDINGS = {
    "Enlarged Cardiomediastinum": ("an enlarged cardiomediastinum", "enlarged cardiomediastinum"),
    "Cardiomegaly": ("cardiomegaly", "cardiomegaly"),
    "Lung Opacity": ("a lung opacity", "lung opacity"),
    "Lung Lesion": ("a lung lesion", "lung lesion"),
    "Edema": ("pulmonary edema", "pulmonary edema"),
    "Consolidation": ("consolidation", "consolidation"),
    "Pneumonia": ("pneumonia", "pneumonia"),
    "Atelectasis": ("atelectasis", "atelectasis"),
    "Pneumothorax": ("a pneumothorax", "pneumothorax"),
    "Pleural Effusion": ("a pleural effusion", "pleural effusion"),
    "Pleural Other": ("another pleural abnormality", "other pleural abnormality"),
    "Fracture": ("a fracture", "fracture"),
    "Support Devices": ("a support device", "support device"),
}
CLOSED_TEMPLATES = (
    "Is there {np}?",
    "Does this chest X-ray show {np}?",
    "Can you see {np} on this film?",
    "Is {np} present in this image?",
)
NORMAL_TEMPLATES = ("Is this chest X-ray normal?", "Is this a normal chest X-ray?")
OPEN_TEMPLATES = (
    "What abnormalities are seen?",
    "What abnormalities are seen in this chest X-ray?",
    "What are the findings on this chest X-ray?",
    "Describe any abnormalities in this image.",
)
NORMAL_ANSWER = "No acute abnormality."


def describe_positives(positives: Sequence[str]) -> str:
    """'Cardiomegaly and pleural effusion.' from label names; devices alone are not an abnormality."""
    names = [FINDINGS[p][1] for p in positives if p != "Support Devices"]
    if not names:
        return "Support device; no acute abnormality." if positives else NORMAL_ANSWER
    if "Support Devices" in positives:
        names.append("support device")
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return text[0].upper() + text[1:] + "."


def labels_to_qa(labels: Labels, qa_per_study: int, rng: random.Random) -> list[dict]:
    """Closed yes/no pairs balanced per study, plus one open question; [] when no label is 1 or 0."""
    positives = [name for name in FINDINGS if labels.get(name) == 1]
    negatives = [name for name in FINDINGS if labels.get(name) == 0]
    if not positives and not negatives and labels.get("No Finding") != 1:
        return []
    open_answer = describe_positives(positives)
    pathologies = [p for p in positives if p != "Support Devices"]
    yes = [(name, f"Yes, there is {FINDINGS[name][0]}.") for name in positives]
    no = [(name, f"No, there is no {FINDINGS[name][1]}.") for name in negatives]
    # "normal?" is a closed question too: Yes from No Finding, No when a pathology is positive
    if labels.get("No Finding") == 1 and not pathologies:
        yes.append(("No Finding", "Yes, there is no acute abnormality."))
    elif pathologies:
        shown = describe_positives(pathologies)  # a device alone does not make a film abnormal
        no.append(("No Finding", f"No, it shows {shown[0].lower()}{shown[1:]}"))
    rng.shuffle(yes)
    rng.shuffle(no)
    slots = max(qa_per_study - 1, 0)
    n_yes = min(len(yes), max(math.ceil(slots / 2), slots - len(no)))
    n_no = min(len(no), slots - n_yes, max(n_yes, 1))
    pairs = []
    for name, answer in yes[:n_yes] + no[:n_no]:
        if name == "No Finding":
            question = rng.choice(NORMAL_TEMPLATES)
        else:
            question = rng.choice(CLOSED_TEMPLATES).format(np=FINDINGS[name][0])
        pairs.append(make_pair(question, answer, "closed", name))
    if qa_per_study > 0:
        pairs.append(make_pair(rng.choice(OPEN_TEMPLATES), open_answer, "open"))
    rng.shuffle(pairs)
    return pairs


class LabelsGenerator:
    """The offline generator: QA from CheXbert labels, the same output for the same seed."""

    source = "labels"

    def __init__(self, qa_per_study: int = 5, seed: int = 0, findings_share: float = 1.0) -> None:
        self.qa_per_study = qa_per_study
        self.seed = seed
        self.findings_share = findings_share
        self.stats: dict = {}

    def generate(self, studies: Sequence[Study]) -> dict[str, QAResult]:
        counts: Counter = Counter()
        results = {}
        for study in studies:
            if study.labels is None:
                results[study.study_id] = QAResult(None, "no_labels", "no CheXbert label row for this study")
                continue
            pairs = labels_to_qa(study.labels, self.qa_per_study, random.Random(f"{self.seed}:{study.study_id}"))
            if not pairs:
                results[study.study_id] = QAResult(None, "no_labels", "no finding labelled positive or negative")
                continue
            counts.update(p["label"] or p["kind"] for p in pairs)
            if self.findings_share > 0:
                pairs = add_findings(pairs, study, self.seed, counts, self.findings_share)
            results[study.study_id] = QAResult(pairs)
        self.stats = {"closed_yes": counts["yes"], "closed_no": counts["no"], "open": counts["open"]}
        if self.findings_share > 0:
            self.stats.update(findings_stats(counts))
        return results

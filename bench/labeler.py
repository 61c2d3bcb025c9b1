"""How fast the project's labeler (`cxr_vqa.labeler`) labels reports, and how well it agrees with a release's labels.

    python bench/labeler.py                       # 10,000 generated report texts: reports a second on one core
    python bench/labeler.py --smoke               # 300 of them (the test suite runs this)
    python bench/labeler.py --release ROOT        # + per-observation agreement with the release's own labels
    python bench/labeler.py --release ROOT --section impression --limit 5000

The generated texts (without --release) are half the synthetic release's reports (dataprep/synthetic_reports.py:
FINDINGS and IMPRESSION under their headings after CLINICAL HISTORY and COMPARISON, ALL CAPS or not, sign-offs) and
half reports composed from the sentence bank below (written for this bench in the way radiologists write: hedges,
lists, devices, INDICATION lines, numbered impressions, wrapped lines); the output says how many of each.
Speed is CPU time of this one process (one core), so a busy machine slows the wall clock but not the figure; the
wall-clock rate is printed beside it.

--release reads, and labels, the text its labels were made from:
- CheXpert Plus (df_chexpert_plus_240401.csv, chexbert_labels/{report,impression,findings}_fixed.json): --section
  report (default: the whole report, as report_fixed.json), impression or findings; one row a study. `python -m
  dataprep.synthetic OUT --patients N` writes a miniature one.
- MIMIC-CXR (mimic-cxr-2.0.0-chexpert.csv.gz, with the reports from mimic-cxr-reports.zip or files/pNN/pNNNNNNNN/
  sNNNNNNNN.txt under ROOT): its labels came from the impression (else the findings, else the last paragraph), so
  that is what --section impression (the default for it) labels.
Agreement is positive against the rest (negative, uncertain, blank), per observation (precision, recall, F1) and
pooled (micro-F1) over the observations the labels cover (those with any non-blank label). Last line:
`RESULT reports=N reports_per_s=... [micro_f1=... micro_f1_5=...]`. Those labels are CheXbert's or the CheXpert
labeler's, not people's: agreement with them is not accuracy, and this labeler's numbers are not on CheXbert's scale.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import sys
import time
import zipfile
from pathlib import Path

from cxr_vqa.errors import UserError
from cxr_vqa.labeler import FIVE, OBSERVATIONS, POSITIVE, label_report
from cxr_vqa.labeler_text import named_sections

SIDES = ("left", "right", "bilateral", "left basilar", "right basilar", "right upper lobe", "left lower lobe")
# Sentences in the manner of chest film reports, written for this bench ({s}: a side or lobe).
BANK = (
    "The heart size is normal.",
    "Heart size is at the upper limits of normal.",
    "Moderate cardiomegaly.",
    "The cardiac silhouette is mildly enlarged.",
    "Stable cardiomegaly.",
    "Cardiomediastinal silhouette is unchanged.",
    "The mediastinal and hilar contours are within normal limits.",
    "The mediastinum is widened.",
    "Lungs are clear.",
    "No focal consolidation, pleural effusion, or pneumothorax.",
    "There is no pneumothorax.",
    "Small {s} pleural effusion.",
    "Trace {s} effusion, unchanged.",
    "Blunting of the {s} costophrenic angle.",
    "Increased opacity in the {s} which may represent atelectasis or pneumonia.",
    "{s} atelectasis.",
    "Patchy {s} opacity, likely atelectasis, although infection cannot be excluded.",
    "Mild pulmonary edema.",
    "Mild pulmonary vascular congestion without frank edema.",
    "No evidence of pulmonary edema.",
    "Interval resolution of the {s} pneumothorax.",
    "Small {s} apical pneumothorax.",
    "No evidence of pneumonia.",
    "Findings are concerning for pneumonia in the {s}.",
    "{s} consolidation consistent with pneumonia.",
    "Right internal jugular central venous catheter terminates in the mid SVC.",
    "Lines and tubes are in place.",
    "Endotracheal tube tip is 5 cm above the carina.",
    "Enteric tube courses below the diaphragm.",
    "Median sternotomy wires and mediastinal clips are intact.",
    "Left chest wall pacemaker with leads in place.",
    "Interval removal of the nasogastric tube.",
    "A 1.2 cm nodule in the {s} is new.",
    "No suspicious pulmonary nodule.",
    "Calcified granuloma in the {s}.",
    "Old healed {s} rib fractures.",
    "No acute displaced fracture.",
    "Biapical pleural thickening.",
    "Degenerative changes of the thoracic spine.",
    "The lungs are hyperinflated.",
    "Elevation of the {s} hemidiaphragm.",
    "Low lung volumes accentuate the heart size.",
    "No acute cardiopulmonary process.",
    "There is no definite focal airspace consolidation to suggest pneumonia.",
    "Atelectasis versus consolidation.",
    "Mild interstitial prominence, which could reflect mild edema or atypical infection.",
    "Hiatal hernia.",
    "The previously seen {s} effusion has resolved.",
    "No change in the moderate {s} pleural effusion.",
    "Pneumothorax is not seen.",
    "Possible small {s} effusion.",
    "Pleural effusion or thickening at the {s}.",
)
IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "No acute intrathoracic abnormality.",
    "Mild cardiomegaly without edema.",
    "{s} pneumonia.",
    "Small {s} pleural effusion with adjacent atelectasis.",
    "Support devices as above.",
    "Findings may represent early pneumonia in the appropriate clinical setting.",
    "Stable exam.",
)
INDICATIONS = ("Shortness of breath.", "Eval for pneumonia.", "r/o pneumothorax", "Fever, cough. ? pneumonia")


def generate_reports(count: int, seed: int = 0) -> tuple[list[str], dict[str, int]]:
    """`count` report texts: half from the synthetic release's report writer, half composed from BANK."""
    import numpy as np

    from dataprep.synthetic_reports import sample_findings, write_report

    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    texts, sources = [], {"dataprep.synthetic_reports.write_report": 0, "bench/labeler.py sentence bank": 0}
    for i in range(count):
        if i % 2 == 0:
            sections, _, _ = write_report(sample_findings(np_rng), np_rng)
            findings, impression = sections["section_findings"], sections["section_impression"]
            head = "CLINICAL HISTORY: Shortness of breath.\n\nCOMPARISON: ___"
            texts.append(f"{head}\n\nFINDINGS:\n{findings}\n\nIMPRESSION:\n{impression}")
            sources["dataprep.synthetic_reports.write_report"] += 1
        else:
            texts.append(_composed(rng))
            sources["bench/labeler.py sentence bank"] += 1
    return texts, sources


def _composed(rng: random.Random) -> str:
    def fill(sentence: str) -> str:
        side = rng.choice(SIDES)
        text = sentence.replace("{s}", side)
        return text[0].upper() + text[1:]

    findings = [fill(s) for s in rng.sample(BANK, rng.randint(3, 9))]
    impression = [fill(s) for s in rng.sample(IMPRESSIONS, rng.randint(1, 3))]
    if len(impression) > 1:
        impression = [f"{n}. {s}" for n, s in enumerate(impression, 1)]
    body = " ".join(findings)
    if rng.random() < 0.3:  # dictation wrapped at ~70 characters
        words, lines, line = body.split(), [], ""
        for word in words:
            if len(line) + len(word) > 70:
                lines.append(line)
                line = ""
            line = f"{line} {word}".strip()
        body = "\n ".join(lines + [line])
    style = rng.random()
    if style < 0.4:
        text = f"INDICATION: {rng.choice(INDICATIONS)}\n\nFINDINGS:\n{body}\n\nIMPRESSION:\n" + "\n".join(impression)
    elif style < 0.7:
        text = f"FINDINGS: {body}\nIMPRESSION: " + " ".join(impression)
    else:
        text = body + " " + " ".join(impression)
    return text.upper() if rng.random() < 0.3 else text


def read_chexpert_plus(root: Path, section: str, limit: int | None) -> list[tuple[str, dict]]:
    """(text, labels) a study: the CSV's report (or one section) with chexbert_labels/<section>_fixed.json."""
    labels_path = root / "chexbert_labels" / f"{section}_fixed.json"
    if not labels_path.is_file():
        raise UserError(f"no {labels_path}: --section {section} needs it")
    labels = {}
    with open(labels_path, encoding="utf-8") as file:
        for line in file:
            if line.strip():
                record = json.loads(line)
                labels[record["path_to_image"].strip().lstrip("/").rsplit(".", 1)[0]] = record
    column = "report" if section == "report" else f"section_{section}"
    csv.field_size_limit(sys.maxsize)
    out, studies = [], set()
    with open(root / "df_chexpert_plus_240401.csv", newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            key = row["path_to_image"].strip().lstrip("/").rsplit(".", 1)[0]
            study = key.rsplit("/", 1)[0]
            sections = (row.get("section_findings") or "") + (row.get("section_impression") or "")
            if study in studies or key not in labels or not (row.get(column) or "").strip() or not sections.strip():
                continue  # a study counts once; a report without findings and impression has nothing to label
            studies.add(study)
            out.append((row[column], labels[key]))
            if limit and len(out) >= limit:
                break
    return out


def read_mimic(root: Path, section: str, limit: int | None) -> list[tuple[str, dict]]:
    """(text, labels) a study: mimic-cxr-2.0.0-chexpert.csv.gz with the study's report (the section its labels
    came from with --section impression)."""
    archive = root / "mimic-cxr-reports.zip"
    zipped = zipfile.ZipFile(archive) if archive.is_file() else None
    out = []
    with gzip.open(root / "mimic-cxr-2.0.0-chexpert.csv.gz", "rt", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            subject, study = row["subject_id"], row["study_id"]
            name = f"files/p{subject[:2]}/p{subject}/s{study}.txt"
            if zipped is not None:
                text = zipped.read(name).decode("utf-8") if name in zipped.NameToInfo else None
            else:
                path = root / name
                text = path.read_text(encoding="utf-8") if path.is_file() else None
            if text is None:
                continue
            labels = {o: float(row[o]) if row.get(o) not in (None, "") else None for o in OBSERVATIONS}
            out.append((_mimic_section(text) if section == "impression" else text, labels))
            if limit and len(out) >= limit:
                break
    if not out:
        raise UserError(f"no report found for the labels in {root}: put mimic-cxr-reports.zip or files/ there")
    return out


def _mimic_section(text: str) -> str:
    sections = named_sections(text)
    for name in ("impression", "findings"):
        if sections.get(name):
            return sections[name]
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    return paragraphs[-1] if paragraphs else text


def agreement(pairs: list[tuple[dict, dict]]) -> tuple[list[str], float, float]:
    """Lines of the per-observation table, micro-F1 over the covered observations, and over the covered of the 5."""
    rows, totals = [], {}
    header = f"{'observation':28s} {'ref+':>6s} {'ours+':>6s} {'prec':>6s} {'rec':>6s} {'F1':>6s}"
    for observation in OBSERVATIONS:
        if not any(ref.get(observation) is not None for ref, _ in pairs):
            continue  # these labels say nothing of it: not covered
        tp = fp = fn = 0
        for ref, ours in pairs:
            want, got = ref.get(observation) == POSITIVE, ours.get(observation) == POSITIVE
            tp, fp, fn = tp + (want and got), fp + (got and not want), fn + (want and not got)
        totals[observation] = (tp, fp, fn)
        p, r = tp / max(1, tp + fp), tp / max(1, tp + fn)
        rows.append(f"{observation:28s} {tp + fn:6d} {tp + fp:6d} {p:6.3f} {r:6.3f} {_f1(tp, fp, fn):6.3f}")
    micro = _f1(*(sum(t[i] for t in totals.values()) for i in range(3)))
    five = _f1(*(sum(t[i] for o, t in totals.items() if o in FIVE) for i in range(3)))
    return [header, *rows], micro, five


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--reports", type=int, default=10_000, help="generated report texts to label")
    parser.add_argument("--smoke", action="store_true", help="300 generated texts (and at most 300 of a release)")
    parser.add_argument("--release", metavar="ROOT", help="a CheXpert Plus or MIMIC-CXR release with its labels")
    parser.add_argument("--section", choices=("report", "impression", "findings"), help="what of each report")
    parser.add_argument("--limit", type=int, help="read at most this many studies of the release")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    count = 300 if args.smoke else args.reports
    try:
        if args.release:
            root = Path(args.release)
            limit = min(args.limit or 300, 300) if args.smoke else args.limit
            if (root / "df_chexpert_plus_240401.csv").is_file():
                pairs = read_chexpert_plus(root, args.section or "report", limit)
            elif (root / "mimic-cxr-2.0.0-chexpert.csv.gz").is_file():
                pairs = read_mimic(root, args.section or "impression", limit)
            else:
                raise UserError(
                    f"{root} holds neither df_chexpert_plus_240401.csv nor mimic-cxr-2.0.0-chexpert.csv.gz"
                )
            texts = [text for text, _ in pairs]
            print(f"{len(texts)} reports of {root} with their labels")
        else:
            texts, sources = generate_reports(count, args.seed)
            print(f"{len(texts)} report texts: " + ", ".join(f"{n} from {s}" for s, n in sources.items()))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    cpu, wall = time.process_time(), time.perf_counter()
    labels = [label_report(text) for text in texts]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    rate = len(texts) / max(cpu, 1e-9)
    print(f"labelled in {cpu:.2f} s of CPU ({rate:,.0f} reports/s on one core), {wall:.2f} s wall clock")
    result = f"RESULT reports={len(texts)} reports_per_s={rate:.0f} wall_reports_per_s={len(texts) / wall:.0f}"
    if args.release:
        lines, micro, five = agreement([(ref, ours) for (_, ref), ours in zip(pairs, labels, strict=True)])
        print("\n".join(lines))
        print(f"micro-F1 over the covered observations {micro:.4f}, over the covered of the 5 {five:.4f}")
        result += f" micro_f1={micro:.4f} micro_f1_5={five:.4f}"
    print(result)


if __name__ == "__main__":
    main()

"""What the labeler looks for: the mention phrases of each CheXpert observation, the phrases that look like one but
are not (unmentions), and the other findings that rule out "No Finding". Data, read by `cxr_vqa.labeler_rules`.

Each entry is `(observations, kind, "phrase; phrase; ...")`. A phrase is a regular expression over lower-cased text
that starts with literal letters (or a group of alternatives that each do: the scanner looks phrases up by the first
letters of a word); a space stands for any run of whitespace, and a phrase ends at a word end. Where several phrases
match at the same word the longest match wins, so "heart failure" beats "heart" and "pericardial effusion" is never
an "effusion".

Kinds:
    FINDING    asserts the observation (positive unless a negation or uncertainty trigger reaches it)
    ATTRIBUTE  an anatomical phrase ("heart size", "mediastinal contours") that asserts nothing by itself: its
               description decides (enlarged -> positive, normal -> negative, stable -> uncertain, none -> no mention)
    HEDGED     a finding CheXpert counts as uncertain whenever it is not negated ("pulmonary vascular congestion"
               -> Edema uncertain)
    IGNORE     looks like a mention and is not one ("pleural line" is no support line); no observation

Based on the CheXpert labeler's phrase lists (phrases/mention/*.txt, phrases/unmention/*.txt; Irvin et al. 2019,
github.com/stanfordmlgroup/chexpert-labeler, MIT licence), rewritten as patterns; a comment marks each departure
(docs/labeler.md lists them).
"""

from __future__ import annotations

ECM, CARDIO, OPACITY, LESION = "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion"
EDEMA, CONSOLIDATION, PNEUMONIA, ATELECTASIS = "Edema", "Consolidation", "Pneumonia", "Atelectasis"
PNEUMOTHORAX, EFFUSION, PLEURAL_OTHER = "Pneumothorax", "Pleural Effusion", "Pleural Other"
FRACTURE, DEVICES = "Fracture", "Support Devices"
# Not one of the 14: an abnormality of CheXpert's no_finding.txt ("degenerative changes", "emphysema", "elevation of
# the hemidiaphragm"), which, positive or uncertain, rules out "No Finding".
OTHER = "Other finding"

FINDING, ATTRIBUTE, HEDGED, IGNORE = "finding", "attribute", "hedged", "ignore"

_SIDES = "superior |left |right |anterior |posterior |mid |upper |lower "
_PLACES = "mediastinum|heart|cardiac silhouette|cardiac shadow|cardiomediastinal silhouette"
# CheXpert's positional unmentions: a tube tip "over the heart" or "in the mediastinum" says nothing about size
POSITIONAL = (
    f"(?:in|over|overlying|overlies|within|into|projecting over|projects over|at) the (?:{_SIDES})?(?:{_PLACES})"
)

# fmt: off
LEXICON: tuple[tuple[tuple[str, ...], str, str], ...] = (
    # --- the heart and the mediastinum: described, not asserted
    ((CARDIO,), FINDING, "cardiomegaly; cardiac enlargement; cardiomegalic"),
    ((CARDIO,), ATTRIBUTE,
        "heart size; size of the heart; heart; cardiac silhouette; cardiac size; cardiac shadow; cardiac contours?; "
        "cardiac diameter; cardiac outline; size of the cardiac silhouette; cardiothoracic ratio; "
        "cardiac configuration"),
    ((CARDIO, ECM), ATTRIBUTE,
        "cardiac and mediastinal (?:silhouettes?|contours?|shadows?); heart and mediastinum; "
        "cardiopericardial silhouette"),
    ((ECM,), FINDING, "mediastinal (?:widening|enlargement); cardiomediastinal enlargement"),
    ((ECM,), ATTRIBUTE,
        "cardiomediastinum; mediastinum; pericardial silhouette; "
        "(?:cardiomediastinal|mediastinal) "
        "(?:silhouettes?|contours?|configuration|shadow|width|structures|borders?|size); "
        "(?:cardiomediastinal|mediastinal) and hilar (?:contours?|silhouettes?|structures)"),
    ((), IGNORE, f"{POSITIONAL}; heart borders?; heart valves?; heart rate; heart disease"),
    # --- lung parenchyma ("hazy" and "ground-glass" are not in CheXpert's list; they say the same as "opacity")
    ((OPACITY,), FINDING,
        "opaci\\w*; decreased translucency; increased densit\\w*; air[- ]?space (?:disease|process); infiltrat\\w*; "
        "interstitial (?:pattern|lung)\\w*; reticular (?:pattern|markings?); reticulonodular; parenchymal scarring; "
        "peribronchial (?:wall )?thickening; (?:bronchial wall|wall) thickening; scar\\w*; haz(?:y|iness); "
        "ground[- ]glass"),
    ((OPACITY, OTHER), FINDING, "interstitial markings?; reticulation"),
    ((LESION,), FINDING,
        "mass(?:es)?; mass[- ]?like; nodules?; nodular densit\\w*; micronodul\\w*; lumps?; "
        "cavitary (?:lesion|mass|nodule)s?; carcinoma\\w*; neoplasm\\w*; tumou?rs?; "
        "(?:lung|pulmonary|parenchymal|spiculated) lesions?"),
    ((LESION, OPACITY), FINDING, "nodular (?:opacit\\w*|opacification)"),
    ((OTHER,), FINDING, "calcified (?:pulmonary |lung |granulomatous )?nodul\\w*"),  # CheXpert: no lesion
    ((), IGNORE, "mass effect; massive\\w*; massengale"),
    ((EDEMA,), FINDING, "edema\\w*; oedema; heart failure; chf"),
    ((EDEMA,), HEDGED,
        "vascular congestion; pulmonary (?:venous )?congestion; venous congestion; indistinctness; "
        "vascular prominence; congestion; pulmonary (?:vascular |venous )?engorgement"),
    ((OTHER,), FINDING, "(?:soft[- ]tissue|subcutaneous|chest wall|body wall) edema"),  # not the lungs
    ((CONSOLIDATION,), FINDING, "consolidat\\w*"),
    ((PNEUMONIA,), FINDING, "pneumonia\\w*; bronchopneumonia; pneumonic; infection\\w*; infectious(?: process)?; pna"),
    # the scars of an old infection are no pneumonia (CheXpert's list would call "granulomatous infection" one)
    ((OTHER,), FINDING,
        "granulomatous (?:infection|disease|process|sequela\\w*|changes?); "
        "(?:prior|previous|old|remote|healed|past) (?:granulomatous |tuberculous |tuberculosis |tb )?infection\\w*"),
    ((ATELECTASIS,), FINDING, "atelecta\\w*; collapsed?"),
    ((OTHER,), FINDING, "(?:vertebral|vertebra|vertebral body) (?:collapse|compression)"),
    ((PNEUMOTHORAX,), FINDING, "pneumothora(?:x|ces); ptx"),
    ((PNEUMOTHORAX, EFFUSION), FINDING, "hydropneumothora(?:x|ces)"),  # CheXpert: pneumothorax only
    # --- pleura
    ((EFFUSION,), FINDING, "effusions?; pleural effusions?; pleural fluid; hydrothorax"),
    ((OTHER,), FINDING, "pericardial effusions?"),
    ((PLEURAL_OTHER,), FINDING,
        "pleural thickening; pleural scar\\w*; fibrosis; fibrothorax; pleuro-?pericardial scar\\w*; "
        "thickening of the pleura; pleural (?:plaques?|calcifications?)"),  # plaques: CheXpert says "other"
    ((PLEURAL_OTHER, OPACITY), FINDING, "pleuro-?parenchymal scar\\w*; pleural[- ]parenchymal scar\\w*"),
    ((OTHER,), FINDING, "cystic fibrosis"),
    ((FRACTURE,), FINDING, "fractur\\w*; fxs?"),
    # --- devices: CheXpert's list, plus wires, clips, stents, ports and valve prostheses (hardware a reader calls a
    # device); a bare "valve" is not one here ("aortic valve calcification")
    ((DEVICES,), FINDING,
        "pacers?; pacemakers?; lines?; picc\\w*; tubes?; tubing; catheters?; hardware; arthroplast\\w*; markers?; "
        "icds?; aicds?; defibrillators?; devices?; drains?; plates?; screws?; cannula\\w*; apparatus; coils?; "
        "equipment; mediport; port-?a-?cath; portacath; ports?; stents?; wires?; clips?; staples?; sutures?; ett; "
        "ngt; ogt; swan[- ]ganz; swan; impella; iabp; balloon pump; lvad; ecmo; tracheostom\\w*; endotracheal; "
        "nasogastric; orogastric; dobhoff; loop recorders?; cerclage; rods?; leads?; ivc filter; electrodes?; "
        "support (?:devices?|lines?|tubes?|apparatus|hardware); valve (?:replacement|prosthes\\w*); "
        "(?:prosthetic|mechanical|bioprosthetic|artificial|porcine) (?:\\w+ )?valves?; avr; mvr; tavr; "
        "stimulators?; sheaths?; introducers?; cvls?; pigtails?"),
    ((), IGNORE,
        "pleural lines?; fissure lines?; skin ?folds? lines?; "
        "azygoesophageal (?:line|recess); paraspinal lines?; paratracheal (?:line|stripe); junction lines?; "
        "air[- ]fluid lines?; midclavicular lines?; axillary lines?; plate[- ]?like; platelike; leads? to; "
        "clip artifact; lung lines"),
    # --- CheXpert's no_finding.txt: abnormal, none of the 14 ("tracheostomy" and "defib" are devices here); the
    # last line is not in it, and no reader calls those "no finding"
    ((OTHER,), FINDING,
        "emphysema\\w*; blunt\\w*; densit\\w*; elevat\\w*; eventration; scolio\\w*; levoscolio\\w*; "
        "dextroscolio\\w*; degenera\\w*; calcifi\\w*; hyperinflat\\w*; hyperexpan\\w*; bronchospasm; asthma\\w*; "
        "hernia\\w*; copd; plaques?; osteophyt\\w*; aortic disease; bronchiolitis; airways? disease; thickening; "
        "cephalization; aspiration; bullae; bulla; bullous; contusions?; atherosclero\\w*; osteopeni\\w*; "
        "metasta\\w*; granuloma\\w*; pneumomediastinum; pneumoperitoneum; osteodystroph\\w*; cuffing; "
        "irregular lucency; inflam\\w*; fissures?; hypertension; prominen\\w*; kyphos\\w*; kyphotic; bullets?; "
        "reticula\\w*; thoracentes\\w*; bronchitis; volume loss; deformit\\w*; hemorrhag\\w*; haemorrhag\\w*; "
        "hematoma\\w*; radiopaque; aerophagia; arthropath\\w*; "
        "lymphadenopathy; adenopathy; bronchiectas\\w*; pneumatoceles?; free air; foreign bod(?:y|ies); "
        "air[- ]fluid levels?; lytic; sclerotic; kerley (?:a |b |c )?lines?; septal lines?; "
        "(?:vascular|venous) redistribution"),
)
# fmt: on

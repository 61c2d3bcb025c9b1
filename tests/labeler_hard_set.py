"""Reports of our own, harder than single sentences (MIMIC-CXR style: several findings, hedges across clauses,
devices, sections), with the labels a reader following the CheXpert conventions gives them. Written for this
project; the first set was labelled before the labeler ran on it (56 of 58 exact at the first run), the second
after its first fixes but before it ran on these (47 of 50 exact). docs/labeler.md reports both.
"""

HARD_REPORTS = [
    (
        "FINDINGS:\n\nPA and lateral views of the chest provided. There is no focal consolidation, "
        "effusion, or pneumothorax. The cardiomediastinal silhouette is normal. Imaged osseous structures "
        "are intact. No free air below the right hemidiaphragm is seen.\n\nIMPRESSION:\n\nNo acute "
        "intrathoracic process.",
        "ECM:0 CO:0 PE:0 PX:0 NF:1",
    ),
    (
        "Moderate to severe cardiomegaly is stable. There is mild pulmonary vascular congestion, slightly "
        "improved. Small bilateral pleural effusions are unchanged. Bibasilar opacities likely reflect "
        "compressive atelectasis.",
        "CM:1 ED:-1 PE:1 LO:1 AT:-1",
    ),
    (
        "ET tube tip is 3.5 cm above the carina. NG tube tip is in the stomach. Right IJ line ends in the "
        "mid SVC. Lungs are grossly clear. No pneumothorax.",
        "SD:1 PX:0 NF:1",
    ),
    (
        "Interval removal of the left chest tube. Tiny left apical pneumothorax is unchanged. Left basilar "
        "atelectasis.",
        "SD:0 PX:1 AT:1",
    ),
    (
        "Compared to the prior study there is increased opacification at the right base concerning for "
        "pneumonia. Elsewhere the lungs are clear. Heart size is normal.",
        "LO:1 PN:-1 CM:0",
    ),
    ("Mild interstitial abnormality which could reflect mild edema versus atypical infection.", "ED:-1 PN:-1"),
    (
        "Lungs are hyperinflated but clear. No consolidation, effusion or pneumothorax. Heart size normal.",
        "CO:0 PE:0 PX:0 CM:0",
    ),
    (
        "Right-sided PICC terminates at the cavoatrial junction. Cardiac and mediastinal silhouettes are "
        "stable. Hilar contours are normal. Mild atelectasis at the left base.",
        "SD:1 CM:-1 ECM:-1 AT:1",
    ),
    (
        "Left lower lobe opacity may be due to atelectasis, though pneumonia cannot be excluded in the "
        "correct clinical setting.",
        "LO:1 AT:-1 PN:-1",
    ),
    ("No acute cardiopulmonary process. No evidence of pneumonia.", "PN:0 NF:1"),
    (
        "Large left pleural effusion with near complete collapse of the left lower lobe. Mediastinal shift "
        "to the right.",
        "PE:1 AT:1",
    ),
    ("Stable right upper lobe mass with post-obstructive pneumonia.", "LL:1 PN:1"),
    ("Status post median sternotomy and CABG. Heart size is enlarged but unchanged. No pulmonary edema.", "CM:1 ED:0"),
    ("Severe emphysema. No focal consolidation to suggest pneumonia.", "CO:0 PN:0"),
    ("Low lung volumes with crowding of the bronchovascular markings. No definite consolidation.", "CO:0 NF:1"),
    ("There is a small left apical pneumothorax, new since the prior exam. Left chest tube in place.", "PX:1 SD:1"),
    (
        "Diffuse bilateral airspace opacities, worse at the bases, consistent with pulmonary edema, though "
        "superimposed infection is difficult to exclude.",
        "LO:1 ED:1 PN:-1",
    ),
    (
        "AP portable upright view of the chest. Overlying EKG leads are present. The heart is top normal "
        "in size. Lungs are clear.",
        "SD:1 CM:0 NF:1",
    ),
    ("Blunting of the left costophrenic angle may represent a small effusion or pleural thickening.", "PE:-1 PO:-1"),
    ("Healing fractures of the left 5th and 6th ribs.", "FX:1"),
    ("No displaced fractures are identified.", "FX:0 NF:1"),
    ("Mild cardiomegaly with enlarged pulmonary arteries suggests pulmonary hypertension.", "CM:1"),
    ("Patchy right infrahilar opacity is concerning for aspiration or pneumonia.", "LO:1 PN:-1"),
    ("Widened mediastinum, likely due to vascular engorgement from low lung volumes.", "ECM:1"),
    (
        "The lungs are clear without focal consolidation. No pleural effusion or pneumothorax is seen. "
        "Heart and mediastinal contours are within normal limits.",
        "CO:0 PE:0 PX:0 CM:0 ECM:0 NF:1",
    ),
    ("Right basilar opacity has nearly resolved.", "LO:1"),
    ("Resolution of right lower lobe consolidation.", "CO:0 NF:1"),
    ("1. Left lower lobe pneumonia. 2. Small left pleural effusion. 3. No pneumothorax.", "PN:1 PE:1 PX:0"),
    ("Subtle opacity in the left lower lobe on the lateral view could represent early pneumonia.", "LO:1 PN:-1"),
    (
        "Increased interstitial markings, which may represent chronic interstitial lung disease or mild "
        "interstitial edema.",
        "LO:1 ED:-1",
    ),
    ("Known left upper lobe nodule is not well seen on this study.", "LL:-1"),
    ("No evidence of free air.", "NF:1"),
    (
        "The tip of the endotracheal tube is 2 cm above the carina and should be withdrawn by 2 cm for "
        "optimal positioning.",
        "SD:1 NF:1",
    ),
    (
        "Dense retrocardiac opacity obscures the left hemidiaphragm and likely represents left lower lobe "
        "atelectasis and/or consolidation.",
        "LO:1 AT:-1 CO:-1",
    ),
    ("Moderate pulmonary edema has worsened. Bilateral effusions, right greater than left.", "ED:1 PE:1"),
    ("Mild vascular congestion and small bilateral effusions, compatible with mild fluid overload.", "ED:-1 PE:1"),
    ("Heart size remains mildly enlarged. Pulmonary vasculature is not engorged.", "CM:1"),
    ("There is no evidence of pneumonia or CHF.", "PN:0 ED:0 NF:1"),
    ("Lines and tubes are unchanged in position. No pneumothorax. Unchanged bibasilar atelectasis.", "SD:1 PX:0 AT:1"),
    ("No significant interval change.", "NF:1"),
    ("Cardiomegaly and pulmonary vascular congestion are unchanged. No frank pulmonary edema.", "CM:1 ED:-1"),
    ("Since the prior exam, a left PICC has been placed with its tip in the SVC. Otherwise no change.", "SD:1 NF:1"),
    (
        "There is a rounded 2 cm opacity in the right upper lobe which could represent a mass; CT is recommended.",
        "LO:1 LL:-1",
    ),
    ("Small right effusion cannot be excluded. No pneumothorax.", "PE:-1 PX:0"),
    (
        "THE HEART IS NORMAL IN SIZE. THE MEDIASTINAL AND HILAR CONTOURS APPEAR WITHIN NORMAL LIMITS. "
        "THERE IS NO PLEURAL EFFUSION OR PNEUMOTHORAX. THE LUNGS APPEAR CLEAR.",
        "CM:0 ECM:0 PE:0 PX:0 NF:1",
    ),
    ("Bibasilar opacities, which are likely atelectasis, but infection cannot be excluded.", "LO:1 AT:-1 PN:-1"),
    ("Pleural effusion is small, if any.", "PE:-1"),
    (
        "No focal airspace consolidation or effusion. Normal pulmonary vascularity. The heart is not enlarged.",
        "CO:0 PE:0 CM:0 NF:1",
    ),
    (
        "Left pectoral pacemaker with leads terminating in the right atrium and right ventricle, "
        "unchanged. Mild cardiomegaly. No edema.",
        "SD:1 CM:1 ED:0",
    ),
    ("INDICATION: History of pneumonia, now with fever.\n\nIMPRESSION: Lungs are clear. No pneumonia.", "PN:0 NF:1"),
    ("Right middle lobe opacity has improved but persists, compatible with resolving pneumonia.", "LO:1 PN:1"),
    ("Mild degenerative changes of the thoracic spine. Otherwise normal chest radiograph.", ""),
    (
        "There is mild pulmonary edema. The heart size is top normal. Small left effusion versus atelectasis.",
        "ED:1 CM:0 PE:-1 AT:-1",
    ),
    ("No acute fracture or dislocation. Old right clavicle fracture.", "FX:1"),
    ("Bibasilar atelectasis. Otherwise, the lungs are clear without focal consolidation.", "AT:1 CO:0"),
    (
        "The right lung is clear. Hazy opacity at the left base could be due to overlying soft tissue, "
        "though an early pneumonia cannot be excluded.",
        "LO:1 PN:-1",
    ),
    ("Minimal blunting of the posterior costophrenic sulci bilaterally, which may reflect small effusions.", "PE:-1"),
    ("Unchanged position of the tracheostomy tube. Persistent left retrocardiac consolidation.", "SD:1 CO:1"),
    # the second set
    (
        "Endotracheal tube in standard position. Orogastric tube courses below the diaphragm with tip out "
        "of view. Bilateral perihilar opacities have slightly improved, likely resolving edema.",
        "SD:1 LO:1 ED:-1",
    ),
    (
        "Subcutaneous emphysema in the left chest wall. Left chest tube in place with small residual "
        "apical pneumothorax.",
        "SD:1 PX:1",
    ),
    ("Hyperexpanded lungs. No focal consolidation. Calcified right hilar lymph nodes.", "CO:0"),
    ("Dual-chamber pacemaker. Cardiomegaly with mild interstitial edema.", "SD:1 CM:1 ED:1"),
    (
        "Mild bibasilar atelectasis. No definite consolidation, though early pneumonia in the lung bases "
        "is not entirely excluded.",
        "AT:1 CO:0 PN:-1",
    ),
    ("The right hemidiaphragm is elevated, with adjacent atelectasis.", "AT:1"),
    ("No radiographically apparent pneumonia.", "PN:0 NF:1"),
    ("Left retrocardiac opacity is most consistent with atelectasis.", "LO:1 AT:1"),
    (
        "Right lower lobe pneumonia. Follow-up radiographs after treatment are recommended to document resolution.",
        "PN:1",
    ),
    ("Persistent small left pleural effusion and adjacent atelectasis.", "PE:1 AT:1"),
    ("Vague opacity in the right upper lobe is likely due to overlapping shadows.", "LO:1"),
    ("Possible trace left pleural effusion. No pneumothorax.", "PE:-1 PX:0"),
    ("Heart size is mildly enlarged, likely accentuated by AP technique.", "CM:-1"),
    ("Nasogastric tube terminates in the distal esophagus and should be advanced.", "SD:1 NF:1"),
    (
        "No acute osseous abnormalities. There is no pneumothorax or pleural effusion. Lungs are clear. "
        "Heart size is normal.",
        "PX:0 PE:0 CM:0 NF:1",
    ),
    ("Right upper lobe collapse, new from prior, likely due to mucus plugging.", "AT:1"),
    ("Multiple bilateral pulmonary nodules, consistent with metastatic disease.", "LL:1"),
    ("Opacities in the left lung base may represent atelectasis, aspiration, or pneumonia.", "LO:1 AT:-1 PN:-1"),
    ("Left-sided pleural effusion has increased in size and is now moderate.", "PE:1"),
    (
        "Small bilateral effusions with bibasilar atelectasis; superimposed pneumonia cannot be ruled out.",
        "PE:1 AT:1 PN:-1",
    ),
    ("Mild pulmonary vascular redistribution without overt edema.", "ED:0"),
    ("No pulmonary nodules are identified.", "LL:0 NF:1"),
    ("There is a right apical pneumothorax measuring 1 cm. Right chest tube has been removed.", "PX:1 SD:0"),
    ("The ET tube has been removed. There is a right IJ central line with tip in the SVC.", "SD:1 NF:1"),
    ("Mild left basal atelectasis, otherwise clear lungs.", "AT:1"),
    (
        "No evidence of acute cardiopulmonary disease. Specifically, no evidence of pneumonia, edema, "
        "effusion or pneumothorax.",
        "PN:0 ED:0 PE:0 PX:0 NF:1",
    ),
    ("Stable appearance of mild cardiomegaly and small left effusion.", "CM:1 PE:1"),
    ("Findings are compatible with congestive heart failure.", "ED:1 CM:-1"),
    ("The cardiac silhouette is enlarged, which may be due to pericardial effusion.", "CM:1"),
    ("There is a moderate-sized hiatal hernia.", ""),
    ("Streaky left basilar opacity, likely atelectasis or scarring.", "LO:1 AT:-1"),
    ("Diffuse reticular opacities consistent with known pulmonary fibrosis.", "LO:1 PO:1"),
    ("Right shoulder arthroplasty is partially imaged.", "SD:1 NF:1"),
    ("Cholecystectomy clips.", "SD:1 NF:1"),
    ("No change in position of the left-sided chest tube. Small left pneumothorax is stable.", "SD:1 PX:1"),
    ("Possible right middle lobe pneumonia versus atelectasis.", "PN:-1 AT:-1"),
    (
        "Low lung volumes. No pleural effusion. Bibasilar opacities likely represent atelectasis, though "
        "aspiration is possible.",
        "PE:0 LO:1 AT:-1",
    ),
    (
        "The lung volumes are low. The cardiac silhouette appears enlarged, though this may be exaggerated "
        "by low lung volumes.",
        "CM:-1",
    ),
    ("Mediastinal contours are within normal limits and unchanged.", "ECM:0 NF:1"),
    ("No evidence of pneumothorax status post right thoracentesis.", "PX:0"),
    ("Small left apical pneumothorax is no longer seen.", "PX:0 NF:1"),
    ("Pneumonia in the left lower lobe has progressed.", "PN:1"),
    ("Bilateral lower lobe bronchiectasis and scarring.", "LO:1"),
    ("Interval development of moderate pulmonary edema.", "ED:1"),
    ("No interval development of pleural effusion.", "PE:0 NF:1"),
    ("There is no consolidation or effusion, but a small pneumothorax is noted at the right apex.", "CO:0 PE:0 PX:1"),
    ("Cardiomediastinal silhouette is stable in appearance with moderate cardiomegaly.", "ECM:-1 CM:1"),
    ("A right-sided Port-A-Cath is in place.", "SD:1 NF:1"),
    ("Lung nodule not visualized on this exam.", "LL:0 NF:1"),
    ("Left lung base opacity has resolved.", "LO:0 NF:1"),
]

"""Evaluation: every question of a held-out split (or a public benchmark) answered by the base and every fine-tuned
model, scored strictly, with P(yes) confidence, 95% intervals over studies, paired tests and a blank-image ablation.
It stands on the core (`cxr_vqa`) alone. The command is `python -m evaluation` (see `evaluation/__main__.py`).

    config.py       the options          evaluate.py   one run, resumable    predictions.py  answering, batched
    scoring.py      one answer's score   metrics.py    metrics.json          confidence.py   AUROC, calibration
    stats.py        intervals and tests  report.py     report.md             plots.py        the two figures
    benchmarks.py   VQA-RAD and SLAKE as their authors ship them          remote.py       remote models' answers
"""

"""Base vs fine-tuned on held-out patients, or on a public benchmark: every question answered by every model in
mixed-adapter batches (greedy), scored strictly (yes/no by the first word, other closed answers by exact match, open
answers by recall and token F1), with P(yes) from the same forward for per-finding AUROC and calibration, and asked
again with a blank image.

    python -m evaluation --dataset data/cxr --split test --base llava-hf/llava-1.5-7b-hf \\
        --adapter runs/llava-cxr --out reports/test
    python -m evaluation --dataset data/cxr --base M --adapter labels=runs/a --adapter llm=runs/b --out R
    python -m evaluation --benchmark vqa-rad --dataset data/VQA_RAD --base M --adapter A --out R
    python -m evaluation --dataset data/cxr --base M --adapter A --remote gpt4o=https://api.openai.com/v1#gpt-4o \
        --concurrency 8 --max-cost 20 --out R          # + a model behind an OpenAI-compatible endpoint
    python -m evaluation --dataset data/cxr --base none --remote tuned=http://127.0.0.1:8000/v1#cxr \
        --remote base=http://127.0.0.1:8000/v1#llava-hf/llava-1.5-7b-hf --out R   # vLLM serving base and adapter
    python -m evaluation --benchmark slake --dataset data/Slake1.0 --base M --adapter A --out R --all-organs
    python -m evaluation --dataset data/tiny --base runs/tiny-llava --adapter runs/tiny-lora --out R \\
        --limit 20 --no-4bit --batch-size 16        # CPU smoke run
    python -m evaluation --dataset data/cxr --base llava-hf/llava-1.5-7b-hf@a272c74 --adapter org/cxr-lora@v1 \
        --out R                                     # Hub models pinned to a commit, tag or branch (ID@REVISION)
    python -m evaluation --config eval.yaml   # YAML gives defaults, flags override
    python -m evaluation --dataset data/cxr --base M --adapter A --out R --maps 12   # + maps.png: where each looked
    python -m evaluation --dataset data/cxr --base M --adapter A --out R --findings-max-new-tokens 200 \\
        --labeler chexbert      # findings reports labelled by CheXbert (RadEval installed, weights on disk)

Writes R/predictions.jsonl (appended batch by batch: a killed run resumes exactly), R/metrics.json, R/report.md,
R/comparison.png and R/confidence.png (and R/findings.png where the dataset asks for findings: each report scored by
the labels it asserts, F1-14 and F1-5 as LLaVA-Rad's evaluation computes them, docs/findings.md); with --remote,
R/remote_cache.jsonl (no request is ever sent twice). Each question is asked on its own with its film (single-turn):
the dataset's multi-turn history would hand the model the previous answers. A rerun into the same --out resumes only
with the same settings and the same models by content (R/run.json's "models": each local file's size and SHA-256, a
Hub model's commit); a model changed since, an adapter retrained in place say, is refused in one line: pick a new
--out. Research tool, not for diagnosis.
"""

from __future__ import annotations

import logging
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from cxr_vqa.cli import parse_config, user_errors
    from cxr_vqa.reports import METRICS
    from evaluation.config import EvalConfig
    from evaluation.evaluate import evaluate
    from evaluation.maps import MAPS_PNG
    from evaluation.report import summary_lines

    (cfg,) = parse_config([EvalConfig], argv, prog="python -m evaluation", description=__doc__)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with user_errors():
        result = evaluate(cfg)
    print("\n".join(summary_lines(result)))
    maps = ", maps.png" if cfg.maps and (Path(cfg.out) / MAPS_PNG).is_file() else ""  # none drawn without records
    maps = (", findings.png" if result.get("findings") else "") + maps
    print(f"wrote {Path(cfg.out) / METRICS}, report.md, predictions.jsonl, comparison.png, confidence.png{maps}")


if __name__ == "__main__":
    main()

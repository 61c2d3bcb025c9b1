"""Base vs fine-tuned on held-out patients: every question of a split, answered by both models in one mixed-adapter
batch (greedy), scored with strict yes/no parsing, token F1 and ROUGE-L, and asked again with a blank image.

    python -m finetune.evaluate --dataset data/cxr --split test --base llava-hf/llava-1.5-7b-hf \
        --adapter runs/llava-cxr --out reports/test
    python -m finetune.evaluate --dataset data/tiny --base runs/tiny-llava --adapter runs/tiny-lora --out R \
        --limit 20 --no-4bit --batch-size 16        # CPU smoke run
    python -m finetune.evaluate --config eval.yaml   # YAML gives defaults, flags override

Writes R/predictions.jsonl (appended batch by batch: a killed run resumes without re-answering finished
questions), R/metrics.json, R/report.md and R/comparison.png. Each question is asked on its own with the study's
image (single-turn): the dataset's multi-turn history would hand the model the previous answers.
Research tool, not for diagnosis.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from cxr_vqa.cli import parse_config, user_errors
from cxr_vqa.contract import check_split, open_splits
from cxr_vqa.errors import UserError
from cxr_vqa.files import share
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.model import DEFAULT_BASE, load_model
from finetune import metrics as M
from finetune.predictions import PREDICTIONS, answer_all, list_questions, resume, variants

logger = logging.getLogger(__name__)

METRICS = "metrics.json"


@dataclass
class EvalConfig:
    dataset: str = field(default="", metadata={"help": "dataset directory written by `python -m dataprep` (required)"})
    out: str = field(
        default="", metadata={"help": "report directory, created; an unfinished run there resumes (required)"}
    )
    split: str = field(default="test", metadata={"help": "split to evaluate: test (held-out patients) or validation"})
    base: str = field(default=DEFAULT_BASE, metadata={"help": "base checkpoint: Hub id or directory"})
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter directory; omit to score the base only"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N studies of the split"})
    batch_size: int = field(default=8, metadata={"help": "rows per generate call (each question gives one row per "
                                                         "model and image condition)"})  # fmt: skip
    max_new_tokens: int = field(default=64, metadata={"help": "answer length cap in tokens"})
    load_in_4bit: bool = field(
        default=True, metadata={"help": "4-bit nf4 base; --no-4bit for full precision (CPU, tiny)"}
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda if present)"})
    ablation: bool = field(default=True, metadata={"help": "also ask every question with a blank image"})
    resamples: int = field(default=M.N_RESAMPLES, metadata={"help": "bootstrap resamples (over studies)"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})
    extra_metrics: str | None = field(
        default=None,
        metadata={"help": "model-based metrics on open answers (needs the RadEval package and its weights)",
                  "choices": ["radeval"]},
    )  # fmt: skip

    def __post_init__(self):
        if not self.dataset or not self.out:
            raise UserError("--dataset and --out are required")
        if self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise UserError("--batch-size and --limit must be positive")
        if self.resamples < 100:
            raise UserError(f"--resamples must be >= 100 for a stable 95% interval, got {self.resamples}")
        GenerationSettings(max_new_tokens=self.max_new_tokens)  # same range checks as the app


def load_split(path: str, split: str, limit: int | None):
    rows = check_split(open_splits(path), path, split, "evaluate")
    return rows.select(range(min(limit, len(rows)))) if limit else rows


def build_metrics(records: list[dict], cfg: EvalConfig, names: list[str]) -> dict:
    boot = {"n_resamples": cfg.resamples, "seed": cfg.seed}
    closed_labels = [M.parse_yes_no(r["reference"]) if r["label"] is None else r["label"] for r in records
                     if r["kind"] == "closed"]  # fmt: skip
    result = {
        "dataset": cfg.dataset, "split": cfg.split, "base": cfg.base, "adapter": cfg.adapter,
        "studies": len({r["study_id"] for r in records}), "patients": len({r["patient_id"] for r in records}),
        "questions": {"total": len(records), "closed": len(closed_labels), "open": len(records) - len(closed_labels)},
        "chance": {"closed_accuracy": M.majority_rate(closed_labels), "rule": "always the majority answer"},
        "protocol": {"turns": "single", "decoding": "greedy", "max_new_tokens": cfg.max_new_tokens,
                     "parsing": "strict first word yes/no", "4bit": cfg.load_in_4bit},
        "bootstrap": {"unit": "study", "resamples": cfg.resamples, "confidence": M.CONFIDENCE, "seed": cfg.seed},
        "models": {name: M.summarize(records, name, **boot) for name in names},
        "difference": {},
        "ablation": {},
    }  # fmt: skip
    if "tuned" in names:
        result["difference"]["tuned_minus_base"] = M.compare(records, "base", "tuned", **boot)
    for name in names:
        if f"{name}_blank" in names:  # the drop: with the image minus with a blank one
            result["ablation"][name] = M.compare(records, f"{name}_blank", name, **boot)
    return result


def radeval_scores(records: list[dict], names: list[str]) -> dict:
    """BERTScore, CheXbert and RadGraph F1 of the open answers via RadEval; needs its downloaded weights."""
    try:
        from RadEval import RadEval
    except ImportError:
        raise UserError("--extra-metrics radeval needs the RadEval package: `pip install RadEval`") from None
    opened = [r for r in records if r["kind"] == "open"]
    if not opened:
        return {}
    try:
        evaluator = RadEval(do_bertscore=True, do_chexbert=True, do_radgraph=True)
        refs = [r["reference"] for r in opened]
        return {name: evaluator(refs=refs, hyps=[r["answers"][name] for r in opened]) for name in names}
    except Exception as err:  # noqa: BLE001 - any failure here is missing weights or network, for the user one line
        raise UserError(f"RadEval could not run (its model weights must be downloadable or cached): {err}") from None


def evaluate(cfg: EvalConfig) -> dict:
    """Run (or resume) the evaluation described by `cfg`, write the report files, return metrics.json's content."""
    from finetune.report import write_report

    if cfg.extra_metrics == "radeval":
        radeval_scores([], [])  # fail on a missing package before hours of generation
    rows = load_split(cfg.dataset, cfg.split, cfg.limit)
    questions = list_questions(rows)
    kinds = variants(cfg.adapter is not None, cfg.ablation)
    names = [name for name, _, _ in kinds]
    out = Path(cfg.out)
    run = {"dataset": str(Path(cfg.dataset).resolve()), "split": cfg.split, "base": cfg.base, "adapter": cfg.adapter,
           "variants": names, "max_new_tokens": cfg.max_new_tokens, "4bit": cfg.load_in_4bit,
           "batch_size": cfg.batch_size}  # fmt: skip
    done = resume(out, run)
    if len(done) < len(questions):
        logger.info("%d of %d questions left to answer", len(questions) - len(done), len(questions))
        vqa = load_model(cfg.base, cfg.adapter, load_in_4bit=cfg.load_in_4bit, device=cfg.device)
        settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens)
        with open(out / PREDICTIONS, "a") as sink:
            answer_all(vqa, rows, questions, done, kinds, settings, cfg.batch_size, sink)
        done = resume(out, run)
    records = [done[q["id"]] for q in questions]
    result = build_metrics(records, cfg, names)
    if cfg.extra_metrics == "radeval":
        result["extra"] = {"radeval": radeval_scores(records, names)}
    (out / METRICS).write_text(json.dumps(result, indent=2) + "\n")
    write_report(out, result)
    share(out)  # the app shows the report, perhaps as another user
    return result


def main(argv: list[str] | None = None) -> None:
    (cfg,) = parse_config([EvalConfig], argv, prog="python -m finetune.evaluate", description=__doc__)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with user_errors():
        result = evaluate(cfg)
    from finetune.report import summary_lines

    print("\n".join(summary_lines(result)))
    print(f"wrote {Path(cfg.out) / METRICS}, report.md, predictions.jsonl, comparison.png")


if __name__ == "__main__":
    main()

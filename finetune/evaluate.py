"""Base vs fine-tuned on held-out patients, or on a public benchmark: every question answered by every model in
mixed-adapter batches (greedy), scored strictly (yes/no by the first word, other closed answers by exact match, open
answers by recall and token F1), with P(yes) from the same forward for per-finding AUROC and calibration, and asked
again with a blank image.

    python -m finetune.evaluate --dataset data/cxr --split test --base llava-hf/llava-1.5-7b-hf \\
        --adapter runs/llava-cxr --out reports/test
    python -m finetune.evaluate --dataset data/cxr --base M --adapter labels=runs/a --adapter llm=runs/b --out R
    python -m finetune.evaluate --benchmark vqa-rad --dataset data/VQA_RAD --base M --adapter A --out R
    python -m finetune.evaluate --benchmark slake --dataset data/Slake1.0 --base M --adapter A --out R --all-organs
    python -m finetune.evaluate --dataset data/tiny --base runs/tiny-llava --adapter runs/tiny-lora --out R \\
        --limit 20 --no-4bit --batch-size 16        # CPU smoke run
    python -m finetune.evaluate --config eval.yaml   # YAML gives defaults, flags override

Writes R/predictions.jsonl (appended batch by batch: a killed run resumes exactly), R/metrics.json, R/report.md,
R/comparison.png and R/confidence.png. Each question is asked on its own with its film (single-turn): the
dataset's multi-turn history would hand the model the previous answers. Research tool, not for diagnosis.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from cxr_vqa.cli import REPEATABLE, parse_config, user_errors
from cxr_vqa.contract import check_split, open_splits
from cxr_vqa.errors import UserError
from cxr_vqa.files import share
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.images import ImageLoadError, load_film
from cxr_vqa.model import DEFAULT_BASE, adapter_specs, load_model
from cxr_vqa.vqa import BASE
from finetune import stats as S
from finetune.benchmarks import BENCHMARKS, read_benchmark
from finetune.predictions import PREDICTIONS, answer_all, list_questions, resume, variants
from finetune.summary import build_metrics, radeval_scores

logger = logging.getLogger(__name__)

METRICS = "metrics.json"


@dataclass
class EvalConfig:
    dataset: str = field(
        default="", metadata={"help": "dataset of `python -m dataprep`, or a benchmark's release folder (required)"}
    )
    out: str = field(
        default="", metadata={"help": "report directory, created; an unfinished run there resumes (required)"}
    )
    split: str = field(default="test", metadata={"help": "split to evaluate: test (held-out patients) or validation"})
    base: str = field(default=DEFAULT_BASE, metadata={"help": "base checkpoint: Hub id or directory"})
    adapter: list[str] | None = field(
        default=None,
        metadata={"help": "LoRA adapter: a directory or Hub id, or NAME=PATH; again for several; omit for the base "
                  "only", **REPEATABLE},
    )  # fmt: skip
    benchmark: str | None = field(
        default=None, metadata={"help": "a public benchmark instead of a dataprep dataset", "choices": BENCHMARKS}
    )
    all_organs: bool = field(default=False, metadata={"help": "benchmarks: every organ, not only chest X-ray"})
    all_languages: bool = field(default=False, metadata={"help": "SLAKE: every language, not only English"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N studies (films)"})
    batch_size: int = field(default=8, metadata={"help": "rows per generate call (each question gives one row per "
                                                         "model and image condition)"})  # fmt: skip
    max_new_tokens: int = field(default=64, metadata={"help": "answer length cap in tokens"})
    load_in_4bit: bool = field(
        default=True, metadata={"help": "4-bit nf4 base; --no-4bit for full precision (CPU, tiny)"}
    )
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda if present)"})
    ablation: bool = field(default=True, metadata={"help": "also ask every question with a blank image"})
    resamples: int = field(default=S.N_RESAMPLES, metadata={"help": "bootstrap resamples (over studies)"})
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
        self.models = [BASE, *adapter_specs(self.adapter)]  # names checked before any model is loaded


def _benchmark_films(paths: list[Path], size: int):
    def film(row: int):
        try:
            return load_film(paths[row], size).image
        except ImageLoadError as err:  # the release has hundreds of films: say which one
            raise ImageLoadError(f"{paths[row]}: {err}") from None

    return film


def load_questions(cfg: EvalConfig):
    """(questions, films: row -> its film, or the paths to letterbox) from the dataset contract or a benchmark."""
    if cfg.benchmark:
        questions, paths = read_benchmark(cfg.benchmark, cfg.dataset, all_organs=cfg.all_organs,
                                          all_languages=cfg.all_languages)  # fmt: skip
        return [q for q in questions if cfg.limit is None or q["row"] < cfg.limit], paths
    rows = check_split(open_splits(cfg.dataset), cfg.dataset, cfg.split, "evaluate")
    rows = rows.select(range(min(cfg.limit, len(rows)))) if cfg.limit else rows
    images = rows.select_columns(["images"])  # dataprep letterboxed them already
    return list_questions(rows), lambda row: images[row]["images"][0].convert("RGB")


def evaluate(cfg: EvalConfig) -> dict:
    """Run (or resume) the evaluation described by `cfg`, write the report files, return metrics.json's content."""
    from finetune.report import write_report

    if cfg.extra_metrics == "radeval":
        radeval_scores([], [])  # fail on a missing package before hours of generation
    questions, films = load_questions(cfg)
    kinds = variants(cfg.models, cfg.ablation)
    names = [name for name, _, _ in kinds]
    out = Path(cfg.out)
    source = {"benchmark": cfg.benchmark} if cfg.benchmark else {"split": cfg.split}
    run = {"dataset": str(Path(cfg.dataset).resolve()), **source, "base": cfg.base, "adapter": cfg.adapter,
           "variants": names, "max_new_tokens": cfg.max_new_tokens, "4bit": cfg.load_in_4bit,
           "batch_size": cfg.batch_size}  # fmt: skip
    done = resume(out, run)
    if len(done) < len(questions):
        logger.info("%d of %d questions left to answer", len(questions) - len(done), len(questions))
        vqa = load_model(cfg.base, cfg.adapter, load_in_4bit=cfg.load_in_4bit, device=cfg.device)
        if not callable(films):  # benchmark films are letterboxed to the model's own input, like every film
            films = _benchmark_films(films, vqa.input_size)
        settings = GenerationSettings(max_new_tokens=cfg.max_new_tokens)
        with open(out / PREDICTIONS, "a") as sink:
            answer_all(vqa, films, questions, done, kinds, settings, cfg.batch_size, sink)
        done = resume(out, run)
    records = [done[q["id"]] for q in questions]
    info = {"dataset": cfg.dataset, **source, "base": cfg.base, "adapter": cfg.adapter,
            "protocol": {"turns": "single", "decoding": "greedy", "max_new_tokens": cfg.max_new_tokens,
                         "parsing": "strict first word yes/no", "4bit": cfg.load_in_4bit}}  # fmt: skip
    result = build_metrics(records, models=cfg.models, ablation=cfg.ablation, info=info,
                           n_resamples=cfg.resamples, seed=cfg.seed)  # fmt: skip
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
    print(f"wrote {Path(cfg.out) / METRICS}, report.md, predictions.jsonl, comparison.png, confidence.png")


if __name__ == "__main__":
    main()

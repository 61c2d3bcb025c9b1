"""Build the VQA dataset from a CheXpert Plus release.

    python -m dataprep.synthetic S --patients 40                      # a miniature release to try it on
    python -m dataprep --chexpert-root S --out D --generator labels   # offline, free, deterministic
    OPENAI_API_KEY=... python -m dataprep --chexpert-root ROOT --out D --generator llm --model gpt-4o-mini \
        --concurrency 16 --max-cost 20 [--dry-run] [--batch-api] [--retry-rejected]
    python -m dataprep --chexpert-root ROOT --out D --generator llm --base-url http://localhost:8000/v1 --model M

CheXpert Plus's research-use agreement may not allow sending reports to a third-party API: prefer a local
OpenAI-compatible server (vLLM, Ollama) or the labels generator. Run with --help for every option.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

from cxr_vqa.cli import user_errors
from cxr_vqa.errors import UserError
from dataprep.chexpert import read_release
from dataprep.config import Config, parse_config
from dataprep.qa_labels import LabelsGenerator

# options passed on under their own names
LLM_OPTIONS = ("qa_per_study", "concurrency", "max_retries", "max_invalid_retries", "timeout", "max_cost", "batch_api",
               "poll_interval", "retry_rejected", "progress")  # fmt: skip
BUILD_OPTIONS = ("image_size", "seed", "workers", "progress")


def options(cfg: Config, names: tuple[str, ...]) -> dict:
    return {name: getattr(cfg, name) for name in names}


def make_generator(cfg: Config):
    if cfg.generator == "labels":
        return LabelsGenerator(qa_per_study=cfg.qa_per_study, seed=cfg.seed, findings_share=cfg.findings)
    from cxr_vqa.endpoint import open_client  # only the llm generator needs the client
    from dataprep.llm.generator import LLMGenerator

    # a dry run sends nothing, so it needs no key
    client = open_client(cfg.base_url, api_key_env=cfg.api_key_env, timeout=cfg.timeout, require_key=not cfg.dry_run)
    price = None if cfg.price_input is None else (cfg.price_input, cfg.price_output)
    cache = Path(cfg.cache_dir or Path(cfg.out) / "cache")
    return LLMGenerator(client, cfg.model, cache, price=price, findings_share=cfg.findings,
                        **options(cfg, LLM_OPTIONS))  # fmt: skip


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def print_summary(stats: dict, out: str) -> None:
    print(f"\n{stats['studies']} studies -> {stats['rows']} rows, {stats['rejected']} rejected")
    print(f"  {'split':<11}{'rows':>7}{'patients':>10}")
    for name, split in stats["splits"].items():
        print(f"  {name:<11}{split['rows']:>7}{split['patients']:>10}")
    answers = stats["answers"]
    share = stats["findings"]["share_of_answer_tokens"]
    print(f"  QA pairs {stats['qa_pairs']}: yes {answers['yes']}, no {answers['no']}, open {answers['open']}, "
          f"findings {answers['findings']} ({share:.0%} of the answer tokens)")
    print(f"  rejects: {_counts(stats['reject_reasons'])}")
    gen = stats["generator"]
    if "requests" in gen:
        requests = f"{gen['requests']} requests ({gen['retries']} retries, {gen['batch_requests']} in batches)"
        tokens = f"{gen['prompt_tokens']} + {gen['completion_tokens']} tokens"
        print(f"  llm {gen['model']} (prompt {gen['prompt_version']}): {requests}, {gen['cache_hits']} from cache")
        if gen["remembered_rejections"] or gen["retried_rejections"]:
            print(f"  malformed before, remembered: {gen['remembered_rejections']} rejected without a request, "
                  f"{gen['retried_rejections']} sent again (--retry-rejected)")  # fmt: skip
        print(f"  {tokens}, ${gen['cost_usd']:.4f} this run, ${gen['dataset_cost_usd']:.4f} for the whole dataset")
        print(f"  filtered pairs: {_counts(gen['filtered_pairs'])}")
        print(f"  invalid replies (retried): {_counts(gen['invalid_outputs'])}")
    print(f"wrote {out} (datasets.load_from_disk), {out}/stats.json, {out}/rejects.jsonl")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv, description=__doc__)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("dataprep").setLevel(logging.INFO)  # e.g. batch ids, which a person may need
    with user_errors():
        # one price alone would count the other side free, and --max-cost would let more through than it says
        if (cfg.price_input is None) != (cfg.price_output is None):
            raise UserError("give both --price-input and --price-output, or neither (list prices)")
        return run(cfg)


def run(cfg: Config) -> int:
    studies, rejects = read_release(cfg.chexpert_root, cfg.limit)
    generator = make_generator(cfg)
    if cfg.dry_run:
        if cfg.generator == "labels":
            print(f"dry run: {len(studies)} studies, labels generator: no requests, no cost")
        else:
            est = generator.estimate(studies)
            print(
                f"dry run: {len(studies)} studies ({len(rejects)} rejected on reading); {est['requests']} "
                f"requests to {est['model']} ({est['cached']} reports cached, {est['remembered_rejections']} "
                f"rejections remembered and not sent without --retry-rejected); ~{est['prompt_tokens']} input "
                f"+ ~{est['completion_tokens']} output tokens; ~${est['cost_usd']:.2f} "
                f"(~${est['batch_cost_usd']:.2f} with --batch-api). Nothing was sent or written."
            )
        return 0
    import openai  # heavy imports after the cheap checks, so mistakes are reported at once

    from dataprep.build import build_dataset

    if not cfg.progress:
        import datasets

        datasets.disable_progress_bars()

    try:
        dataset, stats = build_dataset(
            studies, rejects, generator, root=cfg.chexpert_root, out=cfg.out, fractions=cfg.fractions,
            config=dataclasses.asdict(cfg),  # holds the key's variable name, never the key
            **options(cfg, BUILD_OPTIONS),
        )  # fmt: skip
    except openai.APIError as exc:  # the endpoint failed in a way no retry fixed; an EndpointSetupError exits 2
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print_summary(stats, cfg.out)
    if cfg.push_to_hub:
        # private: the release's data use agreement does not allow publishing derived data
        dataset.push_to_hub(cfg.push_to_hub, private=True)
        print(f"pushed to https://huggingface.co/datasets/{cfg.push_to_hub} (private)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

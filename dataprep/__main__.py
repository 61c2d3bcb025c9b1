"""Build the VQA dataset from a chest X-ray release: CheXpert Plus, MIMIC-CXR-JPG or IU X-ray (Open-i), as shipped.

    python -m dataprep.synthetic S --patients 40 [--layout mimic-cxr|iu-xray]  # a miniature release to try it on
    python -m dataprep --root S --out D --generator labels                    # CheXpert Plus, offline, free
    python -m dataprep --source mimic-cxr --root /data/mimic-cxr-jpg/2.1.0 --out D [--mimic-labels negbio] \
        [--mimic-reports /data/mimic-cxr/2.1.0/mimic-cxr-reports.zip]
    python -m dataprep --source iu-xray --root /data/iu-xray --out D [--iu-labels mesh]
    OPENAI_API_KEY=... python -m dataprep --root ROOT --out D --generator llm --model gpt-4o-mini \
        --concurrency 16 --max-cost 20 [--dry-run] [--batch-api] [--retry-rejected]
    python -m dataprep --source mimic-cxr --root ROOT --out D --generator llm --model M \
        --base-url http://localhost:8000/v1

Data use: MIMIC-CXR's credentialed licence forbids sending its reports to online services such as ChatGPT, so
`--generator llm` on MIMIC-CXR refuses an endpoint that is not on this machine unless --i-have-permission-for-remote
is given. CheXpert Plus's research-use agreement may not allow sending reports to a third-party API either: prefer a
local OpenAI-compatible server (vLLM, Ollama) or the labels generator. docs/data.md says what each release needs.
Run with --help for every option.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

from cxr_vqa.cli import user_errors
from cxr_vqa.endpoint import is_local
from cxr_vqa.errors import UserError
from dataprep.config import Config, parse_config
from dataprep.qa_labels import LabelsGenerator
from dataprep.releases import read

WORK_DIR = ".release"  # under OUT: films a reader takes out of an archive, removed when the run ends

# options passed on under their own names
LLM_OPTIONS = ("qa_per_study", "concurrency", "max_retries", "max_invalid_retries", "timeout", "max_cost", "batch_api",
               "poll_interval", "retry_rejected", "progress")  # fmt: skip
BUILD_OPTIONS = ("image_size", "seed", "workers", "progress")


def pick(cfg: Config, names: tuple[str, ...]) -> dict:
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
                        **pick(cfg, LLM_OPTIONS))  # fmt: skip


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
    print(f"  films: {_counts(stats['views'])}")
    release = stats.get("release", {})
    if "frontal_choice" in release:
        print(f"  frontal film chosen by: {_counts(release['frontal_choice'])} (docs/data.md, IU X-ray)")
        print(f"  labels from: {_counts(release['labels']['studies_by_source'])}; {release['patients']}")
    if "sections" in release:
        print(f"  labels: {release['labels']}; report sections: {_counts(release['sections'])}")
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


def on_this_machine(base_url: str) -> bool:
    """localhost or a loopback address (127.0.0.0/8, ::1): text sent there does not leave the machine."""
    host = urlparse(base_url).hostname or ""
    try:
        return is_local(base_url) or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        return False


def check_data_use(cfg: Config) -> None:
    """MIMIC-CXR's licence, enforced: its reports go to an LLM on this machine only, unless the user vouches."""
    if cfg.source != "mimic-cxr" or cfg.generator != "llm" or cfg.i_have_permission_for_remote:
        return
    url = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    if not on_this_machine(url):
        raise UserError(
            f"refusing to send MIMIC-CXR reports to {urlparse(url).hostname}: PhysioNet's credentialed data use "
            "agreement forbids sending them to online services such as ChatGPT; use a server on this machine "
            "(--base-url http://127.0.0.1:PORT/v1) or --generator labels, or add --i-have-permission-for-remote "
            "if your agreement covers that endpoint"
        )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv, description=__doc__)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("dataprep").setLevel(logging.INFO)  # e.g. batch ids, which a person may need
    with user_errors():
        # one price alone would count the other side free, and --max-cost would let more through than it says
        if (cfg.price_input is None) != (cfg.price_output is None):
            raise UserError("give both --price-input and --price-output, or neither (list prices)")
        check_data_use(cfg)
        work = Path(cfg.out) / WORK_DIR
        shutil.rmtree(work, ignore_errors=True)  # what a killed run left
        try:
            code = run(cfg, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if cfg.chexpert_root:  # after the run, so that a user error stays the one line it is
        print("note: --chexpert-root is deprecated and goes in the next release; use --root (--source chexpert-plus "
              "is the default)", file=sys.stderr)  # fmt: skip
    return code


def run(cfg: Config, work: Path) -> int:
    options = {"mimic_labels": cfg.mimic_labels, "mimic_reports": cfg.mimic_reports, "iu_labels": cfg.iu_labels}
    release = read(cfg.source, cfg.root, limit=cfg.limit, work_dir=work, films=not cfg.dry_run,
                   image_size=cfg.image_size, workers=cfg.workers, progress=cfg.progress, **options)  # fmt: skip
    studies, rejects = release.studies, release.rejects
    generator = make_generator(cfg)
    if cfg.dry_run:
        if cfg.generator == "labels":
            reasons = _counts(Counter(r["reason"] for r in rejects))
            print(f"dry run: {len(studies)} studies, {len(rejects)} rejected on reading ({reasons}); labels "
                  "generator: no requests, no cost")  # fmt: skip
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
    from dataprep.build import build_dataset  # heavy imports after the cheap checks, so mistakes are reported at once

    api_errors = ()  # the labels generator sends nothing: the OpenAI SDK (0.8 s of imports) stays unloaded
    if cfg.generator != "labels":
        import openai

        api_errors = (openai.APIError,)

    if not cfg.progress:
        import datasets

        datasets.disable_progress_bars()

    try:
        dataset, stats = build_dataset(
            studies, rejects, generator, root=cfg.root, out=cfg.out, fractions=cfg.fractions,
            config=dataclasses.asdict(cfg),  # holds the key's variable name, never the key
            film_root=release.film_root, release=release.summary, **pick(cfg, BUILD_OPTIONS),
        )  # fmt: skip
    except api_errors as exc:  # the endpoint failed in a way no retry fixed; an EndpointSetupError exits 2
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

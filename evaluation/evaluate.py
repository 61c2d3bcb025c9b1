"""Run (or resume) one evaluation: read the questions (a dataprep split or a public benchmark), answer each with
every model and image condition (`evaluation.predictions`), build metrics.json (`evaluation.metrics`) and write the
report (`evaluation.report`). The command line is `evaluation/__main__.py`.

    result = evaluate(EvalConfig(dataset="data/cxr", out="reports/test", adapter=["runs/llava-cxr"]))

Remote models (`--remote`) answer first, concurrently and from their cache (`evaluation.remote`); the local models
then answer batch by batch and each record is written with every model's answer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from cxr_vqa.contract import check_split, open_splits, split_films
from cxr_vqa.errors import UserError
from cxr_vqa.files import share, write_text_atomic
from cxr_vqa.findings import FINDINGS_KIND
from cxr_vqa.identity import DigestCache, model_identity
from cxr_vqa.images import ImageLoadError, load_film
from cxr_vqa.lineup import INPUT_SIZE
from cxr_vqa.llama_server import LlamaServers
from cxr_vqa.model import adapter_specs, load_model
from cxr_vqa.remote import RemoteModel
from cxr_vqa.reports import METRICS, PREDICTIONS
from cxr_vqa.sources import ADAPTER, MODEL
from cxr_vqa.vqa import BASE
from evaluation.benchmarks import read_benchmark
from evaluation.chexbert import make_labeler
from evaluation.config import EvalConfig
from evaluation.maps import MAPS_PNG, write_contact_sheet
from evaluation.metrics import build_metrics, radeval_scores
from evaluation.predictions import answer_all, list_questions, resume, variants
from evaluation.remote import REMOTE_CACHE, Budget, RemoteCache, answer_remote, remote_usage
from evaluation.report import write_report

logger = logging.getLogger(__name__)


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
    return list_questions(rows), split_films(rows)  # dataprep letterboxed them already


def has_findings(questions: list[dict]) -> bool:
    return any(q["kind"] == FINDINGS_KIND for q in questions)


def local_models(cfg: EvalConfig) -> dict[str, dict]:
    """Each local model's name -> where it is ("from": the --base, --adapter or --gguf value) and what it is (its
    content, `cxr_vqa.identity`): what a resume into the same --out must match. Remote models are named by endpoint
    and model in run.json's "remote"."""
    wanted = {BASE: (cfg.base, MODEL), **{n: (s, ADAPTER) for n, s in adapter_specs(cfg.adapter).items()}}
    wanted = {n: wanted[n] for n in cfg.local_models}  # none with --base none
    cache = DigestCache()  # a 7B base is read once, then again only when its files' stamps change
    try:
        found = {n: {"from": s, **model_identity(s, kind, cache)} for n, (s, kind) in wanted.items()}
        for name, export in cfg.ggufs.items():  # the two files it serves (re-exported in place: other answers)
            try:
                files = {f.name: cache.digest(f) for f in (export.model, export.mmproj)}
            except OSError as err:
                raise UserError(f"cannot read the files of --gguf {export.folder}: {err}") from None
            found[name] = {"from": str(export.folder), "files": files}
        return found
    finally:
        cache.save()


def evaluate(cfg: EvalConfig) -> dict:
    """Run (or resume) the evaluation described by `cfg`, write the report files, return metrics.json's content."""
    if cfg.extra_metrics == "radeval":
        radeval_scores([], [])  # fail on a missing package before hours of generation
    labeler = make_labeler(cfg.labeler)  # likewise
    questions, films = load_questions(cfg)
    remotes = {name: RemoteModel(spec, timeout=cfg.remote_timeout) for name, spec in cfg.remotes.items()}
    servers = LlamaServers.start(cfg.gguf, timeout=cfg.remote_timeout) if cfg.ggufs else None
    try:
        remotes |= {m.name: m for m in servers.models(timeout=cfg.remote_timeout)} if servers else {}
        return _evaluate(cfg, remotes, questions, films, labeler)
    finally:
        if servers:
            servers.stop()


def _evaluate(cfg: EvalConfig, remotes: dict[str, RemoteModel], questions, films, labeler) -> dict:
    asked = variants(cfg.models, cfg.ablation)
    names = [name for name, _, _ in asked]
    out = Path(cfg.out)
    source = {"benchmark": cfg.benchmark} if cfg.benchmark else {"split": cfg.split}
    sources = {name: remote.source for name, remote in remotes.items()}
    # a benchmark's rows index its filtered film list: another filter would mix films into the resumed answers
    filters = {"all_organs": cfg.all_organs, "all_languages": cfg.all_languages} if cfg.benchmark else {}
    # a findings report's cap changes its answers; named only where there are reports, so other runs resume as before
    reports = {"findings_max_new_tokens": cfg.findings_max_new_tokens} if has_findings(questions) else {}
    run = {"dataset": str(Path(cfg.dataset).resolve()), **source, **filters, "base": cfg.base, "adapter": cfg.adapter,
           "variants": names, "max_new_tokens": cfg.max_new_tokens, **reports, "4bit": cfg.load_in_4bit,
           "batch_size": cfg.batch_size, **({"remote": sources} if sources else {}),
           "models": local_models(cfg)}  # fmt: skip
    done = resume(out, run)
    vqa = None
    if len(done) < len(questions):
        logger.info("%d of %d questions left to answer", len(questions) - len(done), len(questions))
        if cfg.local_models:
            vqa = load_model(cfg.base, cfg.adapter, load_in_4bit=cfg.load_in_4bit, device=cfg.device)
        if not callable(films):  # benchmark films are letterboxed to the model's own input, like every film
            films = _benchmark_films(films, vqa.input_size if vqa else INPUT_SIZE)
        settings = cfg.generation  # by question kind: a findings report gets its own length cap
        answered = {}
        if remotes:  # greedy, as the local models; their answers are in hand before the first record is written
            left = [q for q in questions if q["id"] not in done]
            cache = RemoteCache(out / REMOTE_CACHE)  # what earlier runs into this --out spent counts in --max-cost
            budget = Budget(list(remotes.values()), cfg.price, cfg.max_cost, earlier=cache.cost)
            answered = answer_remote(remotes, films, left, [v for v in asked if v[1] in remotes], settings,
                                     cache=cache, concurrency=cfg.concurrency, budget=budget)  # fmt: skip
        with open(out / PREDICTIONS, "a") as sink:
            answer_all(vqa, films, questions, done, asked, settings, cfg.batch_size, sink, answered)
        done = resume(out, run)
    records = [done[q["id"]] for q in questions]
    info = {"dataset": cfg.dataset, **source, "base": cfg.base, "adapter": cfg.adapter,
            "protocol": {"turns": "single", "decoding": "greedy", "max_new_tokens": cfg.max_new_tokens, **reports,
                         "parsing": "strict first word yes/no", "4bit": cfg.load_in_4bit}}  # fmt: skip
    if remotes:
        info["remote"] = remote_usage(records, remotes, cfg.price)
    result = build_metrics(records, models=cfg.models, ablation=cfg.ablation, info=info,
                           n_resamples=cfg.resamples, seed=cfg.seed, remotes=list(remotes), labeler=labeler,
                           labeler_name=cfg.labeler, findings_resamples=cfg.findings_resamples)  # fmt: skip
    if cfg.extra_metrics == "radeval":
        result["extra"] = {"radeval": radeval_scores(records, names)}
    write_text_atomic(out / METRICS, json.dumps(result, indent=2) + "\n")  # the app may read it meanwhile
    write_report(out, result)
    if cfg.maps:  # where each local model looked, for a sample of right and wrong answers (config: local models)
        (out / MAPS_PNG).unlink(missing_ok=True)  # the sheet there is this run's, or there is none
        vqa = vqa or load_model(cfg.base, cfg.adapter, load_in_4bit=cfg.load_in_4bit, device=cfg.device)
        films = films if callable(films) else _benchmark_films(films, vqa.input_size)
        write_contact_sheet(vqa, films, records, cfg.local_models, cfg.maps, out / MAPS_PNG, seed=cfg.seed)
    share(out)  # the app shows the report, perhaps as another user
    return result

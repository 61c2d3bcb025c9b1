"""End-to-end proof that the pipeline learns to read the film, on CPU: a synthetic CheXpert-Plus-shaped release →
`dataprep --generator labels` → fine-tune the tiny checkpoint → evaluate on the held-out test patients, with the
blank-image ablation; one adapter per trainer seed, on the same data.

    python bench/learn_synthetic.py                        # trainer seeds 0,1,2; work dir runs/learn-synthetic
    python bench/learn_synthetic.py --seed 3               # other data, in runs/learn-synthetic-seed3
    python bench/learn_synthetic.py --seeds 0,3,5,7        # four data seeds, one after the other, 3 trainer seeds each
    python bench/learn_synthetic.py --fresh                # start over instead of reusing finished stages
    python bench/learn_synthetic.py --patients 60 --epochs 0.3 --trainer-seeds 0 --work /tmp/smoke  # plumbing only
    python bench/learn_synthetic.py --smoke --work /tmp/smoke   # 20 patients, base 2 steps, 1 seed: the plumbing

The stages are finetune.demo's (the app's offline demo is the same recipe, trainer seed 0; finetune/demo_stages.py):
each is the real command line in its own process, and a finished one is reused, so an interrupted bench resumes. The
base is the demo's: the tiny model taught the answers' language on films shuffled between studies (one for all seeds);
each trainer seed fine-tunes an adapter on top of it. The three trainer seeds train at once by default (--jobs 3, one
thread each): on two cores they end together, where two at a time left the third to train alone on one core while the
other idled. The recipe: finetune/configs/tiny-synthetic-base.yaml and tiny-synthetic.yaml, whose comments say what was
tried and measured. Goal, every trainer seed: tuned >= 0.95 closed accuracy on patients it never saw, tuned minus blank
image >= 0.15 with McNemar p < 0.01; the base answers yes or no (unparseable <= 0.05), its accuracy no more than 0.05
above answering each finding's majority answer; the base and the tuned model given a blank image at chance: macro AUROC
within 0.1 of 0.5 (a blank film may get no yes or no at all: read its AUROC). Last line, the worst case over the seeds:
`RESULT seeds=<n> [data_seeds=<n> worst_data_seed=<s> worst_trainer_seed=<s>] tuned_min=<x> tuned_auroc_min=<x>
base_max=<x> question_chance=<x> base_unparseable_max=<x> base_auroc_max=<x> blank_max=<x> blank_unparseable_max=<x>
blank_auroc_max=<x> drop_min=<x> p_max=<x>
[f1_tuned_min=<x> f1_base_max=<x> f1_p_max=<x> f1_blank_p_max=<x>] minutes=<x>`, the f1_ figures where the data asks
for findings (the findings reports' micro F1-14, tuned against base and against its blank films: docs/findings.md).
With several data seeds (--seeds), each data seed prints its own `RESULT data_seed=<s> ...` line (its minutes are
the ones the 30-minute goal for three trainer seeds is about), and the last line takes the worst over every data
seed and trainer seed; `worst_*` name the run with the lowest tuned accuracy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cxr_vqa.cli import user_errors
from finetune.demo_stages import PATIENTS, base_stage, data_stages, evaluate_stage, run_stage, train_stage

# every trainer seed: tuned reads the films; the base and the tuned model on a blank film answer in words at chance
GOAL = {"tuned": 0.95, "drop": 0.15, "p": 0.01, "unparseable": 0.05, "auroc_chance": 0.1, "above_chance": 0.05}


def _est(e: dict) -> str:
    return f"{e['value']:.3f} [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]"


def question_chance(metrics: dict) -> float:
    """The accuracy of always giving each finding's majority answer: the best a model that knows the question but
    not the film can do (above the evaluation's one-majority chance: "normal?" is mostly no, devices mostly yes)."""
    per = metrics["models"]["base"]["confidence"]["per_finding"]
    right = sum(max(e["positives"], e["n"] - e["positives"]) for e in per.values())
    return right / sum(e["n"] for e in per.values())


def summarize(seed: int, metrics: dict) -> dict:
    """Print one seed's figures; return the ones the RESULT line takes the worst of."""
    models, q = metrics["models"], metrics["questions"]
    drop = metrics["ablation"]["tuned"]["closed_accuracy"]
    by_question = question_chance(metrics)
    print(
        f"\ntrainer seed {seed}: test split {metrics['studies']} studies of {metrics['patients']} patients, "
        f"{q['closed']} closed questions; chance (majority answer) {metrics['chance']['closed_accuracy']:.3f}, "
        f"(each finding's majority answer) {by_question:.3f}"
    )
    for name, label in (("tuned", "tuned"), ("tuned_blank", "tuned, blank image"), ("base", "base")):
        e = models[name]
        print(f"  {label:<19} closed accuracy {_est(e['closed_accuracy'])}  unparseable "
              f"{e['unparseable_rate']['value']:.3f}  macro AUROC {_est(e['confidence']['macro_auroc'])}")  # fmt: skip
    print(f"  blank-image drop    {drop['value']:+.3f} [{drop['ci'][0]:+.3f}, {drop['ci'][1]:+.3f}], "
          f"McNemar p={drop['p_value']:.2g}")  # fmt: skip
    per, blank = models["tuned"]["per_finding"], models["tuned_blank"]["per_finding"]
    print("  per finding (tuned / blank image / base, n):")
    for name, e in per.items():
        print(f"    {name:<17} {e['value']:.3f} / {blank[name]['value']:.3f} / "
              f"{models['base']['per_finding'][name]['value']:.3f}  n={e['n']}")  # fmt: skip
    findings = metrics.get("findings")
    if findings:  # the findings reports: micro F1-14 by the labels they assert (evaluation.findings)
        f1 = {name: findings["models"][name]["micro_f1_14"] for name in ("base", "tuned", "tuned_blank")}
        f1_diff = findings["difference"]["tuned_minus_base"]["micro_f1_14"]
        f1_drop = findings["ablation"]["tuned"]["micro_f1_14"]
        print(f"  findings micro-F1-14 ({findings['reports']} reports): tuned {_est(f1['tuned'])}, base "
              f"{_est(f1['base'])}, tuned on blank films {_est(f1['tuned_blank'])}; tuned - base "
              f"p={f1_diff['p_value']:.2g}, blank-film drop p={f1_drop['p_value']:.2g}")  # fmt: skip
    figures = {name: models[name]["closed_accuracy"]["value"] for name in ("base", "tuned", "tuned_blank")}
    auroc = {f"{name}_auroc": models[name]["confidence"]["macro_auroc"]["value"]
             for name in ("base", "tuned", "tuned_blank")}  # fmt: skip
    parse = {f"{name}_unparseable": models[name]["unparseable_rate"]["value"] for name in ("base", "tuned_blank")}
    reports = {"f1_tuned": f1["tuned"]["value"], "f1_base": f1["base"]["value"], "f1_p": f1_diff["p_value"],
               "f1_blank_p": f1_drop["p_value"]} if findings else {}  # fmt: skip
    return {**figures, **auroc, **parse, "drop": drop["value"], "p": drop["p_value"], "question_chance": by_question,
            **reports}  # fmt: skip


def goal_met(seeds: list[dict]) -> bool:
    """Every seed: the tuned model reads the films; the base and the blank image answer in words, at chance."""
    return all(
        w["tuned"] >= GOAL["tuned"] and w["drop"] >= GOAL["drop"] and w["p"] < GOAL["p"]
        and w["base"] <= w["question_chance"] + GOAL["above_chance"]
        and w["base_unparseable"] <= GOAL["unparseable"]  # a blank film may get no yes or no: its AUROC says it
        and all(abs(w[f"{name}_auroc"] - 0.5) <= GOAL["auroc_chance"] for name in ("base", "tuned_blank"))
        for w in seeds
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--work", help="working directory for every stage's output (runs/learn-synthetic, -seedN for --seed N != 0)"
    )
    parser.add_argument("--patients", type=int, default=PATIENTS, help="synthetic patients (1-3 studies each)")
    parser.add_argument("--seed", type=int, default=0, help="data seed: the release, the QA pairs and the splits")
    parser.add_argument(
        "--seeds",
        help="several data seeds, comma-separated, one after the other (each in its own directory: --work/seedN, or "
        "runs/learn-synthetic-seedN); the last RESULT is the worst run",
    )
    parser.add_argument("--trainer-seeds", default="0,1,2", help="one adapter per trainer seed, comma-separated")
    parser.add_argument("--epochs", type=float, default=None, help="override the recipe's num_train_epochs")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N test studies")
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation rows per generate call")
    parser.add_argument("--jobs", type=int, default=3, help="seeds trained and evaluated at a time")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per stage: 1 is fastest on a shared or busy machine, where OpenMP threads "
        "spin-wait on each other (10x slower measured)",
    )
    parser.add_argument("--fresh", action="store_true", help="delete the working directory first")
    parser.add_argument("--smoke", action="store_true", help="20 patients, the base 2 steps, the adapter 0.05 "
                        "epochs, trainer seed 0, 2 test studies: the plumbing only, figures meaningless")  # fmt: skip
    args = parser.parse_args(argv)
    if args.smoke:
        args.patients, args.epochs, args.trainer_seeds, args.limit, args.jobs = 20, 0.05, "0", 2, 1
    try:
        seeds = sorted({int(s) for s in args.trainer_seeds.split(",")})
    except ValueError:
        parser.error(f"--trainer-seeds takes comma-separated integers, got {args.trainer_seeds!r}")
    if args.patients < 20:
        parser.error("--patients must be >= 20: fewer leaves the test split with a handful of studies")
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be >= 1")

    try:
        data_seeds = [args.seed] if args.seeds is None else sorted({int(s) for s in args.seeds.split(",")})
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    runs: list[dict] = []  # every data seed x trainer seed: its figures, with the seeds that made it
    start = time.time()
    for data_seed in data_seeds:
        began = time.time()
        worst = run_data_seed(args, data_seed, seeds, several=len(data_seeds) > 1)
        runs += [{**w, "data_seed": data_seed, "trainer_seed": t} for t, w in zip(seeds, worst, strict=True)]
        if len(data_seeds) > 1:
            print(f"RESULT data_seed={data_seed} {result_line(worst)} minutes={(time.time() - began) / 60:.1f}")
    print(f"goal (every seed: tuned >= {GOAL['tuned']}, blank-image drop >= {GOAL['drop']} with p < {GOAL['p']}; the "
          f"base answers yes or no (unparseable <= {GOAL['unparseable']}) no more than {GOAL['above_chance']} above "
          f"each finding's majority answer; the base and the blank image at chance, macro AUROC 0.5 +- "
          f"{GOAL['auroc_chance']}): {'met' if goal_met(runs) else 'NOT met'}")  # fmt: skip
    several = ""
    if len(data_seeds) > 1:
        low = min(runs, key=lambda w: w["tuned"])
        several = (f" data_seeds={len(data_seeds)} worst_data_seed={low['data_seed']} "
                   f"worst_trainer_seed={low['trainer_seed']}")
    print(f"RESULT seeds={len(runs)}{several} {result_line(runs)} minutes={(time.time() - start) / 60:.1f}")


def work_dir(args: argparse.Namespace, data_seed: int, several: bool) -> Path:
    """Each data seed its own directory: a finished stage with other settings stops the bench."""
    if args.work:
        return Path(args.work).resolve() / f"seed{data_seed}" if several else Path(args.work).resolve()
    return Path("runs/learn-synthetic" + (f"-seed{data_seed}" if data_seed else "")).resolve()


def run_data_seed(args: argparse.Namespace, data_seed: int, seeds: list[int], several: bool) -> list[dict]:
    """One data seed's release, dataset and speaking base, then an adapter and its evaluation per trainer seed; the
    figures of each trainer seed, printed and returned in `seeds` order."""
    work = work_dir(args, data_seed, several)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float | None] = {}
    extra = ("--num_train_epochs", args.epochs) if args.epochs is not None else ()

    def one_seed(seed: int) -> dict:
        log = (lambda name: work / "logs" / f"{name}-seed{seed}.log") if args.jobs > 1 and len(seeds) > 1 else None
        adapter, report = work / f"adapter-seed{seed}", work / f"report-seed{seed}"
        for kind, stage in (
            ("train", train_stage(work, adapter, trainer_seed=seed, extra=extra)),
            ("evaluate", evaluate_stage(work, adapter, report, limit=args.limit, batch_size=args.batch_size,
                                        always=True)),  # it resumes on its own, and rewrites the report
        ):  # fmt: skip
            timings[stage.name] = run_stage(work, stage, threads=args.threads, log=log(kind) if log else None)
        return json.loads((report / "metrics.json").read_text())

    if several:
        print(f"\n=== data seed {data_seed}: {work}")
    with user_errors():
        base = base_stage(work, extra=("--max_steps", 2) if args.smoke else ())
        for stage in [*data_stages(work, patients=args.patients, seed=data_seed), base]:
            timings[stage.name] = run_stage(work, stage, threads=args.threads)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            metrics = dict(zip(seeds, pool.map(one_seed, seeds), strict=True))
    worst = [summarize(seed, metrics[seed]) for seed in seeds]
    print("\nstage seconds: " + ", ".join(f"{k} {'reused' if v is None else f'{v:.0f}'}" for k, v in timings.items()))
    print(f"reports: {work}/report-seed*/report.md")
    return worst


def result_line(worst: list[dict]) -> str:
    """The RESULT figures: the worst of `worst` (one dict per run, `summarize`'s)."""
    result = {
        "tuned_min": min(w["tuned"] for w in worst),
        "tuned_auroc_min": min(w["tuned_auroc"] for w in worst),
        "base_max": max(w["base"] for w in worst),
        "question_chance": min(w["question_chance"] for w in worst),
        "base_unparseable_max": max(w["base_unparseable"] for w in worst),
        "base_auroc_max": max(w["base_auroc"] for w in worst),
        "blank_max": max(w["tuned_blank"] for w in worst),
        "blank_unparseable_max": max(w["tuned_blank_unparseable"] for w in worst),
        "blank_auroc_max": max(w["tuned_blank_auroc"] for w in worst),
        "drop_min": min(w["drop"] for w in worst),
        "p_max": max(w["p"] for w in worst),
    }
    if all("f1_tuned" in w for w in worst):  # findings reports: tuned above the base, and lost on blank films
        result.update(
            f1_tuned_min=min(w["f1_tuned"] for w in worst),
            f1_base_max=max(w["f1_base"] for w in worst),
            f1_p_max=max(w["f1_p"] for w in worst),
            f1_blank_p_max=max(w["f1_blank_p"] for w in worst),
        )
    return " ".join(f"{k}={v:.2g}" if k.endswith("p_max") else f"{k}={v:.3f}" for k, v in result.items())


if __name__ == "__main__":
    main()

"""The pointing game (Zhang et al., 2016) on the demo's held-out films: does an answer's relevance map point at the
finding it is about? The synthetic release records where each finding was drawn (regions.jsonl), so for every
test film that shows a finding, each model is asked the dataset's own question about it ("Does this chest X-ray
show a pleural effusion?") and scores a hit when the PEAK of its map (the single most relevant patch; decided
before any result was seen) falls in a patch that shows any of the finding, after the film's letterbox.

    python bench/pointing_game.py                     # the demo in runs/demo, built first if missing (~14 minutes)
    python bench/pointing_game.py --demo runs/demo --limit 100      # the first 100 questions only
    python bench/pointing_game.py --smoke --demo /tmp/pg            # a 20-patient demo trained for a moment: plumbing

Rows: the fine-tuned demo model, the base, the fine-tuned model shown a black film of the same size (the map of a
model that cannot see the finding: chance, if the map reads the film), and a uniform-random map (one random peak
per question, seeded; its expected rate, the mean share of patches a region covers, is printed beside it). The
base, the adapter and the release are the demo build's (`python -m finetune.demo DIR`, its demo.json), whatever
recipe built them; a release from before regions.jsonl gets one written by `python -m dataprep.synthetic ...
--regions-only` with the build's own options (same films, nothing else rewritten). 95% intervals resample studies
(a film's questions share it). The maps are `cxr_vqa.relevance`'s (gradient-weighted attention, sinks removed);
raw attention's peak is printed for comparison. Last line:
`RESULT tuned=<rate> tuned_lo=<low end> base=<rate> base_hi=<high end> random=<rate> random_hi=<high end>
blank=<rate> n=<questions>`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_vqa.cli import user_errors
from cxr_vqa.contract import check_split, demo_build, open_splits
from cxr_vqa.errors import UserError
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.model import load_model
from cxr_vqa.regions import REGIONS_FILE, patch_grid, read_regions, region_key
from cxr_vqa.template import add_question
from cxr_vqa.vqa import BASE
from evaluation.stats import bootstrap_ci

ROOT = Path(__file__).resolve().parents[1]
SMOKE_BUILD = ("--patients", "20", "--epochs", "0.05", "--base-steps", "2")  # plumbing: a 2-step base
ROWS = ("tuned", "base", "blank", "random")  # table rows; "blank": the tuned model on a black film


def stage(marker: dict, module: str) -> list[str]:
    """The arguments of the demo build's stage that ran `module`."""
    for identity in marker["stages"]:
        if identity[0] == module:
            return identity[1:]
    raise UserError(f"the demo build has no {module} stage: rebuild it with `python -m finetune.demo DIR --fresh`")


def prepare(demo: Path, smoke: bool) -> tuple[dict, Path, Path]:
    """(demo.json, release folder, dataset folder) of a finished demo build in `demo`, built first if needed; the
    release gets regions.jsonl if it predates it. Folders are found by name under `demo`, so a copied build works."""
    if demo_build(demo) is None:
        print(f"building the demo in {demo} (python -m finetune.demo)", flush=True)
        command = [sys.executable, "-m", "finetune.demo", str(demo), *(SMOKE_BUILD if smoke else ())]
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            raise UserError(f"the demo build in {demo} failed: see its output above")
    marker = demo_build(demo)
    release_args = stage(marker, "dataprep.synthetic")
    release = demo / Path(release_args[0]).name
    prep_args = stage(marker, "dataprep")
    dataset = demo / Path(prep_args[prep_args.index("--out") + 1]).name
    if not (release / REGIONS_FILE).is_file():
        print(f"writing {release / REGIONS_FILE} (the same draws as the release's)", flush=True)
        command = [sys.executable, "-m", "dataprep.synthetic", str(release), *release_args[1:], "--regions-only"]
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            raise UserError(f"could not write {release / REGIONS_FILE}")
    return marker, release, dataset


def questions(dataset: Path, release: Path, limit: int | None) -> tuple[list[dict], object]:
    """Every (held-out film, finding it shows) with the dataset's question about it, and the test split."""
    test = check_split(open_splits(dataset), dataset, "test", "evaluate")
    regions = read_regions(release)
    asked, missing = [], 0
    for i, row in enumerate(test.select_columns(["qa", "image_path", "study_id"])):
        drawn = regions.get(region_key(row["image_path"]), {})
        for qa in row["qa"]:
            if qa["kind"] != "closed" or qa["label"] != "yes" or qa["finding"] == "No Finding":
                continue
            if qa["finding"] not in drawn:
                missing += 1
                continue
            asked.append({"row": i, "study": row["study_id"], "finding": qa["finding"], "question": qa["question"],
                          "mask": drawn[qa["finding"]]})  # fmt: skip
    if missing:
        print(f"note: {missing} positive labels have no drawn region (not scored)")
    return asked[:limit] if limit else asked, test


def play(vqa, asked: list[dict], test, batch: int, settings: GenerationSettings, seed: int = 0) -> dict:
    """Answer and map every question with the tuned model, the base and the tuned model on a black film; score the
    peaks. Returns per-question records and the seconds spent answering and mapping."""
    tuned = next(iter(vqa.adapters))
    rng = np.random.default_rng(seed)
    records, seconds, sink_count, first_peak = [], {"answer": 0.0, "maps": 0.0}, 0, 0.0
    for start in range(0, len(asked), batch):
        chunk = asked[start : start + batch]
        images, convs, models = [], [], []
        for q in chunk:
            film = test[q["row"]]["images"][0].convert("RGB")
            for image, model in ((film, tuned), (film, BASE), (Image.new("RGB", film.size), tuned)):
                images.append(image)
                convs.append(add_question(None, q["question"]))
                models.append(model)
        began = time.perf_counter()
        answers = vqa.answer(images, convs, models, settings)
        seconds["answer"] += time.perf_counter() - began
        began = time.perf_counter()
        maps = vqa.relevance(images, convs, [a.text for a in answers], models)
        seconds["maps"] += time.perf_counter() - began
        for k, q in enumerate(chunk):
            side = maps[3 * k].side
            inside = patch_grid(q["mask"], vqa.input_size, side).ravel()
            record = {"finding": q["finding"], "study": q["study"], "share": float(inside.mean()),
                      "random": bool(inside[rng.integers(inside.size)])}  # fmt: skip
            for name, m, a in zip(ROWS[:3], maps[3 * k : 3 * k + 3], answers[3 * k : 3 * k + 3], strict=True):
                record[name] = bool(inside[m.top(1)[0]])
                record[f"{name}_attention"] = bool(inside[int(np.argmax(m.attention))])
                record[f"{name}_yes"] = a.text.lower().startswith("yes")
                sink_count += len(m.sinks)
                first_peak = max(first_peak, m.first_peak)
            records.append(record)
        print(f"\r{len(records)}/{len(asked)} questions", end="", flush=True)
    print()
    return {"records": records, "seconds": seconds, "sinks": sink_count, "first_peak": first_peak, "side": side}


def rate(records: list[dict], key: str) -> tuple[float, float, float]:
    values = [float(r[key]) for r in records]
    low, high = bootstrap_ci(values, [r["study"] for r in records])
    return float(np.mean(values)), low, high


def report(result: dict) -> dict:
    records, side = result["records"], result["side"]
    by_finding = defaultdict(list)
    for r in records:
        by_finding[r["finding"]].append(r)
    print(f"\npointing game: hit = the map's peak patch ({side} x {side}) shows the finding; held-out films that show "
          "it; 95% intervals resample studies")  # fmt: skip
    header = "".join(f"{name:>22}" for name in ("tuned", "base", "tuned, black film", "random map"))
    print(f"{'finding':<18}{'n':>5}{header}{'region share':>14}")
    overall = {}
    for finding, rows in [*sorted(by_finding.items()), ("overall", records)]:
        cells = ""
        for name in ROWS:
            value, low, high = rate(rows, name)
            cells += f"{value:>8.3f} [{low:.3f},{high:.3f}]"
            if finding == "overall":
                overall[name] = (value, low, high)
        print(f"{finding:<18}{len(rows):>5}{cells}{np.mean([r['share'] for r in rows]):>14.3f}")
    yes = {name: np.mean([r[f"{name}_yes"] for r in records]) for name in ROWS[:3]}
    print(f"\nanswered yes (every question's answer is yes): tuned {yes['tuned']:.3f}, base {yes['base']:.3f}, "
          f"tuned on a black film {yes['blank']:.3f}")  # fmt: skip
    attention = ", ".join(f"{name} {rate(records, f'{name}_attention')[0]:.3f}" for name in ROWS[:3])
    print(f"raw attention's peak instead (no gradient, no sink removal; for comparison): {attention}")
    print(
        f"visual attention sinks found: {result['sinks']} patches in {3 * len(records)} maps (the first token's "
        f"largest activation/RMS: {result['first_peak']:.1f}; a sink needs >= 20)"
    )
    seconds = result["seconds"]
    print(
        f"time: answers {seconds['answer']:.1f} s, maps {seconds['maps']:.1f} s "
        f"(maps/answers {seconds['maps'] / max(seconds['answer'], 1e-9):.2f}x)"
    )
    return overall


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", default=str(ROOT / "runs" / "demo"), help="the demo build (built if missing)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N questions")
    parser.add_argument("--batch", type=int, default=4, help="questions per batch (3 rows each)")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="answer length cap")
    parser.add_argument("--smoke", action="store_true", help="a 20-patient demo trained briefly; plumbing only")
    args = parser.parse_args(argv)
    if (args.limit is not None and args.limit < 1) or args.batch < 1:
        parser.error("--limit and --batch must be positive")
    with user_errors():
        demo = Path(args.demo).resolve()
        marker, release, dataset = prepare(demo, args.smoke)
        asked, test = questions(dataset, release, 6 if args.smoke and not args.limit else args.limit)
        if not asked:
            raise UserError(f"no held-out film in {dataset} shows a drawn finding: nothing to score")
        vqa = load_model(str(demo / marker["base"]), str(demo / marker["adapter"]), load_in_4bit=False,
                         device="cpu")  # fmt: skip
        result = play(vqa, asked, test, args.batch, GenerationSettings(max_new_tokens=args.max_new_tokens))
        overall = report(result)
    (tuned, tuned_lo, _), (base, _, base_hi) = overall["tuned"], overall["base"]
    (random, _, random_hi), blank = overall["random"], overall["blank"][0]
    print(
        f"RESULT tuned={tuned:.3f} tuned_lo={tuned_lo:.3f} base={base:.3f} base_hi={base_hi:.3f} "
        f"random={random:.3f} random_hi={random_hi:.3f} blank={blank:.3f} n={len(result['records'])}"
    )


if __name__ == "__main__":
    main()

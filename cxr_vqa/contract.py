"""The dataset contract between `dataprep` (which writes it) and training and evaluation (which read it): a
`datasets.DatasetDict` saved with `save_to_disk`, splits `train` / `validation` / `test` by patient, one row per
study. Its schema, its one reader, and the check of one row. Also the other files parts share: the marker and status
of a demo build, written by `finetune.demo` and read by the app's `--demo`, which checkpoint of a training is
complete, and an examples index (examples.json: the films the app offers as examples, written by `dataprep.synthetic
--examples` and `finetune.demo`).

    splits = open_splits("data/cxr-vqa")                           # {name: Dataset}; raises UserError
    test = check_split(splits, "data/cxr-vqa", "test", "evaluate")  # present, non-empty, every column, row 0 valid
    film = split_films(test)                                        # row -> its film, through the film checks
    marker = demo_build("runs/demo")                                # demo.json of a complete build, or None
    checkpoint = latest_complete_checkpoint("runs/demo/adapter-seed0")  # newest checkpoint-N saved whole, or None
    examples = read_examples("assets/examples")                     # [Example(film, question, answer, label)]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cxr_vqa.errors import UserError

SPLITS = ("train", "validation", "test")
COLUMNS = ("messages", "images", "qa", "patient_id", "study_id", "image_path", "view", "source")
# stats.json beside the splits has "synthetic": true when the release was `python -m dataprep.synthetic`'s; what
# is trained on such a dataset says so with these words
SYNTHETIC_NOTE = "synthetic phantoms drawn by dataprep.synthetic, not patients"


def features():
    """The `datasets.Features` of a row (a function, so importing the core does not import `datasets`)."""
    from datasets import Features, Image, List, Value

    part = {"type": Value("string"), "text": Value("string"), "index": Value("int64")}
    qa = {name: Value("string") for name in ("question", "answer", "kind", "finding", "label")}
    return Features(
        {
            "messages": List({"role": Value("string"), "content": List(part)}),
            "images": List(Image()),
            "qa": List(qa),
            **{name: Value("string") for name in COLUMNS if name not in ("messages", "images", "qa")},
        }
    )


def is_synthetic(dataset: str | Path | None) -> bool:
    """Whether `dataset` was built from `dataprep.synthetic`'s phantoms (its stats.json says "synthetic": true): the
    project's own drawings, which any page may show; False for anything else or anything unreadable."""
    if dataset is None:
        return False
    try:
        return json.loads((Path(dataset) / "stats.json").read_text(encoding="utf-8")).get("synthetic") is True
    except (OSError, ValueError, AttributeError):
        return False


def open_splits(path: str | Path) -> dict:
    """Every split of the dataset at `path`, by name (an empty split is a 0-row Dataset)."""
    from datasets import Dataset

    path = Path(path)
    if not path.exists():
        raise UserError(
            f"dataset {path} not found: build one with `python -m dataprep --root ROOT --out {path} "
            "--generator labels`, or pass --dataset"
        )
    if not (path / "dataset_dict.json").is_file():
        kind = "a single split" if (path / "dataset_info.json").is_file() else "no dataset"
        raise UserError(f"{path} holds {kind}; expected the train/validation/test DatasetDict of `python -m dataprep`")
    try:
        names = json.loads((path / "dataset_dict.json").read_text())["splits"]
        splits = {}
        for name in names:
            try:
                splits[name] = Dataset.load_from_disk(str(path / name))
            except IndexError:  # datasets cannot read back a split saved with 0 shards: it holds no rows
                splits[name] = Dataset.from_dict({c: [] for c in COLUMNS}, features=features())
    except (FileNotFoundError, ValueError, KeyError, OSError) as err:
        raise UserError(f"{path} is not a readable dataset: {str(err).splitlines()[0]}") from None
    return splits


def check_split(splits: dict, path: str | Path, split: str, role: str):
    """`splits[split]` after checking it can serve `role` ("train", "eval" or "evaluate")."""
    if split not in splits:
        raise UserError(f"{path} has no {split!r} split (it has {', '.join(splits)}): check the split option")
    data = splits[split]
    if len(data) == 0:
        hint = "build it from more studies" if role == "train" else "set eval_strategy: no" if role == "eval" else ""
        raise UserError(f"{path} [{split}] is empty: nothing to {role}" + (f" ({hint})" if hint else ""))
    missing = [c for c in COLUMNS if c not in data.column_names]
    if missing:
        raise UserError(f"{path} [{split}] lacks column(s) {', '.join(missing)}: rebuild it with `python -m dataprep`")
    try:
        check_row(data[0])
    except UserError as err:
        raise UserError(f"{path} [{split}] row 0: {err}") from None
    return data


def split_films(data) -> Callable:
    """row -> the row's film as an RGB image, its stored bytes decoded by `cxr_vqa.images` (header checked first, as
    every film is) rather than by `datasets`, which would hand any PNG in a dataset from elsewhere to Pillow as is."""
    from datasets import Image, List

    from cxr_vqa.images import load_image  # here: reading the contract's names needs no image decoders

    images = data.select_columns(["images"]).cast_column("images", List(Image(decode=False)))

    def film(row: int):
        stored = images[row]["images"][0]
        return load_image(stored["bytes"] if stored.get("bytes") is not None else stored["path"])

    return film


def check_row(row: dict) -> None:
    """Raise UserError unless `row` has one image and alternating user/assistant turns with the image in turn one."""
    images, messages = row.get("images"), row.get("messages")
    if not isinstance(images, Sequence) or len(images) != 1:
        raise UserError(f"each row needs exactly one image in `images`, got {len(images or [])}")
    if not isinstance(messages, Sequence) or len(messages) < 2:
        raise UserError("each row needs at least one user question and one assistant answer in `messages`")
    for i, turn in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if not isinstance(turn, dict) or turn.get("role") != expected:
            raise UserError(f"turn {i} of `messages` should have role {expected!r}: turns alternate, user first")
    if messages[-1]["role"] != "assistant":
        raise UserError("the last turn of `messages` must be an assistant answer")
    image_parts = [
        i
        for i, turn in enumerate(messages)
        if isinstance(turn["content"], list)
        for part in turn["content"]
        if part.get("type") == "image"
    ]
    if image_parts != [0]:
        raise UserError("the image must appear exactly once in `messages`, in the first user turn")


# The demo build (`python -m finetune.demo OUT`, read by `python app.py --demo`). demo.json is written, whole, once the
# demo can serve (its base and examples exist), again with "trained": true when the adapter has finished training, and
# again with "complete": true and "seconds" (the build's wall time) when the build has ended:
# {"format": 2, "complete": bool, "trained": bool, "base": DIR, "adapter": DIR, "report": DIR, "examples": JSON,
#  "stages": [...], "recipe": [YAML, ...], "example_files": [PNG, ...]}, paths relative to OUT (the recipes' to the
#  repository, the example files' to the examples' folder). status.json says which stage runs; build.lock is held by
#  the one process building OUT.
DEMO_MARKER, DEMO_FORMAT, DEMO_STATUS, DEMO_LOCK = "demo.json", 2, "status.json", "build.lock"
# what `python -m finetune` keeps in its output_dir while it trains (finetune/progress.py): {"step", "max_steps",
# "epoch", "epochs", "seconds_per_step"} (epochs null for a run of max_steps; seconds_per_step, the mean over this
# run's steps so far, null before its first), rewritten whole every few seconds
TRAINING_PROGRESS = "progress.json"


def demo_build(out: str | Path, *, serving: bool = False) -> dict | None:
    """demo.json of a complete demo build in `out` (with `serving`: of one that can serve, its adapter perhaps still
    training), or None: none yet, another format, or a file it names gone."""
    out = Path(out)
    try:
        marker = json.loads((out / DEMO_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != DEMO_FORMAT:
        return None
    keys = ("base", "examples") if serving else ("base", "adapter", "examples")
    paths = [marker.get(key) for key in keys]
    if not all(isinstance(p, str) and (out / p).exists() for p in paths):
        return None
    return marker if serving or marker.get("complete") else None


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint-N with the highest N that holds a trainer_state.json (the Trainer writes it last), or None: a
    run killed while saving, or a save in progress, leaves a checkpoint directory without it."""
    steps = []
    for path in Path(output_dir).glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit():
            steps.append((int(suffix), path))
    for _step, path in sorted(steps, reverse=True):
        if (path / "trainer_state.json").is_file():
            return path
    return None


EXAMPLES_INDEX = "examples.json"  # [{"file", "findings": [...], "question", "answer", "source", ...}, ...]


@dataclass(frozen=True)
class Example:
    film: str  # the film's path
    question: str  # the suggested question
    answer: str | None  # the answer the film supports
    label: str  # what the gallery calls it: where it comes from, what it shows, what to expect


def write_examples(folder: str | Path, items: Sequence[dict]) -> None:
    """Write `folder`/examples.json; each item names its `file` (in `folder`), `findings`, `question`, `answer` and
    `source` (what the film is: "Synthetic phantom", "Held-out phantom", a real collection's name)."""
    Path(folder, EXAMPLES_INDEX).write_text(json.dumps(list(items), indent=1) + "\n", encoding="utf-8")


def read_examples(folder: str | Path) -> list[Example] | None:
    """The examples in `folder`/examples.json, in order; None when there is no readable index or a film is gone."""
    folder = Path(folder)
    try:
        found = []
        for item in json.loads((folder / EXAMPLES_INDEX).read_text(encoding="utf-8")):
            film = folder / item["file"]
            if not film.is_file():
                return None
            shows = ", ".join(item["findings"]).lower() or "no finding"
            expected = f" (expected: {item['answer']})" if item.get("answer") else ""
            label = f"{item.get('source', 'Example')}: {shows}{expected}"
            found.append(Example(str(film), item["question"], item.get("answer"), label))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found

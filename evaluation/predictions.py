"""Answering every question of a split, batch by batch, into `predictions.jsonl`; a killed run resumes exactly.

    questions = list_questions(rows)                        # one entry per QA pair, in dataset order
    done = resume(out, run)                                 # finished records of an earlier run of the same settings
                                                            # and the same models' content (run["models"])
    answer_all(vqa, films, questions, done, variants, settings, batch_size, sink)  # films(row): that row's film
    answer_all(..., answered=answer_remote(...))            # remote models' variants answered beforehand

The batches are fixed chunks of the whole question list, so a resumed run forms exactly the batches an uninterrupted
run would: a batch that was answered in full is skipped, one that was cut short is answered again whole, and the
final predictions are the same. Films are decoded per batch (carried over to the next batch when a study spans
both), so memory stays at one batch's films for a split of any size.

Each kind of question may have its own generation settings (`settings` as {kind: GenerationSettings}: a findings
report needs a hundred tokens or more, a yes/no answer a few): questions are grouped by their settings first, the
short ones in dataset order, then the long ones, so no batch of yes/no questions waits on a report's decoding.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from cxr_vqa.answers import Answer
from cxr_vqa.errors import UserError
from cxr_vqa.files import write_text_atomic
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.identity import identity_change
from cxr_vqa.reports import PREDICTIONS, RUN, iter_predictions, variant_name
from cxr_vqa.template import add_question
from cxr_vqa.vqa import BASE
from evaluation.scoring import score_answer

logger = logging.getLogger(__name__)

NOT_IDENTITY = ("batch_size",)  # recorded in run.json, but a resumed run may change them
# Where the local models lie may change too (a folder moved, a Hub revision named by branch, then by commit): what they
# are, run["models"] ({name: {"from": where, **cxr_vqa.identity.model_identity}}), may not.
WHERE = ("base", "adapter")


def variants(models: Sequence[str], ablation: bool) -> list[tuple[str, str, bool]]:
    """(variant name, model, blank image?) for every answer a question gets: each model with the film, then each
    with a blank image ("tuned_blank")."""
    conditions = [False, True] if ablation else [False]
    return [(variant_name(model, blank), model, blank) for blank in conditions for model in models]


def list_questions(rows) -> list[dict]:
    """One entry per QA pair, in dataset order; `row` points back at the study's image."""
    meta = rows.select_columns(["qa", "study_id", "patient_id"])
    out = []
    for i, row in enumerate(meta):
        for j, qa in enumerate(row["qa"]):
            out.append({
                "id": f"{row['study_id']}#{j}", "row": i, "study_id": row["study_id"],
                "patient_id": row["patient_id"], "question": qa["question"], "reference": qa["answer"],
                "kind": qa["kind"], "finding": qa.get("finding"), "label": qa.get("label"),
            })  # fmt: skip
    return out


def resume(out: Path, run: dict) -> dict[str, dict]:
    """Finished records of an earlier run of the same settings in `out`, by question id."""
    out.mkdir(parents=True, exist_ok=True)
    run_file, pred_file = out / RUN, out / PREDICTIONS
    if run_file.is_file() and pred_file.is_file() and pred_file.stat().st_size:  # an empty file answered nothing
        try:
            earlier = json.loads(run_file.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"{run_file} cannot be read ({err}): the settings of the answers in {out} are unknown, "
                            "pick a new --out") from None  # fmt: skip
        _check_same_run(out, earlier, run)
        if earlier.get("batch_size") != run.get("batch_size"):
            logger.warning(
                "this run started with --batch-size %s and resumes with %s: the remaining answers may differ in "
                "the last digits from an uninterrupted run", earlier.get("batch_size"), run.get("batch_size"),
            )  # fmt: skip
    else:
        pred_file.unlink(missing_ok=True)
    write_text_atomic(run_file, json.dumps(run, indent=2) + "\n")
    done: dict[str, dict] = {}
    if pred_file.is_file():
        done = {record["id"]: record for record in iter_predictions(pred_file)}
        # without the cut-short line, whole or not at all: a kill here must not lose what was answered
        write_text_atomic(pred_file, "".join(json.dumps(r) + "\n" for r in done.values()))
    return done


def _check_same_run(out: Path, earlier: dict, run: dict) -> None:
    """UserError in one line when the answers in `out` (settings `earlier`) are not this `run`'s: other settings, or
    a local model whose content changed since (an adapter retrained in place, a base overwritten)."""
    # a run.json from before content identity has no "models": its paths are all it can be matched by
    ignored = (*NOT_IDENTITY, *WHERE, "models") if "models" in earlier else (*NOT_IDENTITY, "models")
    same = {k: v for k, v in earlier.items() if k not in ignored}
    wanted = {k: v for k, v in run.items() if k not in ignored}
    if same != wanted:
        changed = sorted(k for k in wanted.keys() | same.keys() if wanted.get(k) != same.get(k))
        raise UserError(f"{out} holds a run with other settings ({', '.join(changed)}): pick a new --out")
    if "models" not in earlier:
        logger.warning("%s was written before runs recorded their models' content: resuming on the paths alone", out)
        return
    for name, now in run.get("models", {}).items():
        if change := identity_change(_content(earlier["models"].get(name)), _content(now)):
            what = f"the base model {now['from']}" if name == BASE else f"model {name!r} ({now['from']})"
            raise UserError(f"{out} holds answers of other weights: {what} is not the one that answered there "
                            f"({change}; changed in place?): pick a new --out")  # fmt: skip


def _content(model: dict | None) -> dict | None:
    """A run.json model entry without where it was: what it is."""
    return {k: v for k, v in model.items() if k != "from"} if isinstance(model, dict) else None


Settings = GenerationSettings | Mapping[str, GenerationSettings]  # one for all, or by question kind


def settings_for(settings: Settings, kind: str) -> GenerationSettings:
    """The generation settings of a question of `kind` (a mapping without it: its "closed" entry)."""
    return settings if isinstance(settings, GenerationSettings) else settings.get(kind, settings["closed"])


def batches(
    questions: Sequence[dict], per_call: int, settings: Settings = GenerationSettings()
) -> Iterator[list[dict]]:
    """Fixed chunks of the question list, questions grouped by their settings (the shortest cap first, dataset order
    within a group): the same for a fresh and a resumed run."""
    groups: dict[GenerationSettings, list[dict]] = {}
    for q in questions:
        groups.setdefault(settings_for(settings, q.get("kind", "closed")), []).append(q)
    for _, group in sorted(groups.items(), key=lambda item: item[0].max_new_tokens):  # stable: ties keep their order
        for start in range(0, len(group), per_call):
            yield list(group[start : start + per_call])


def answer_all(
    vqa, films, questions, done, variants, settings: Settings, batch_size: int, sink, answered=None
) -> int:
    """Answer every question not in `done` under every variant, a batch of rows per generate call (one kind's
    settings a batch: `settings_for`), appending records to `sink`; `films(row)` gives a question's film. `answered`
    holds the variants answered elsewhere (remote models): {variant: {question id: (Answer, token usage, why it was
    refused or None)}}; the local model `vqa` answers the others. Returns how many generate calls were made."""
    answered = answered or {}
    local = [v for v in variants if v[0] not in answered]
    per_call = max(1, batch_size // max(len(local), 1))
    held: dict[int, Image.Image] = {}  # only the current batch's films
    calls = 0
    with tqdm(total=len(questions), initial=len(done), desc="questions", unit="q") as bar:
        for batch in batches(questions, per_call, settings):
            if all(q["id"] in done for q in batch):
                continue
            answers = iter([])
            if local:
                needed = {q["row"] for q in batch}
                held = {r: held[r] if r in held else films(r) for r in needed}
                pics, convs, adapters = [], [], []
                for q in batch:
                    image = held[q["row"]]
                    for _, adapter, blank in local:
                        pics.append(Image.new("RGB", image.size) if blank else image)
                        convs.append(add_question(None, q["question"]))
                        adapters.append(adapter)
                answers = iter(_answer(vqa, pics, convs, adapters, settings_for(settings, batch[0]["kind"])))
                calls += 1
            for q in batch:
                record = dict(q)  # with its `row`, where the app's Explore tab finds the film
                given = {name: _given(answered[name], done, name, q["id"]) for name in answered}
                got = {name: given[name][0] if name in given else next(answers) for name, _, _ in variants}
                record["answers"] = {name: a.text for name, a in got.items()}
                record["p_yes"] = {name: a.p_yes for name, a in got.items()}
                if given:
                    record["usage"] = {name: usage for name, (_, usage, _) in given.items()}
                    if errors := {name: error for name, (_, _, error) in given.items() if error}:
                        record["errors"] = errors  # refused: scored as the empty answer it is
                record["scores"] = {
                    name: score_answer(text, kind=q["kind"], reference=q["reference"], label=q["label"])
                    for name, text in record["answers"].items()
                }
                sink.write(json.dumps(record) + "\n")
            sink.flush()
            bar.update(sum(q["id"] not in done for q in batch))
    return calls


def _given(answers: dict, done: dict, variant: str, qid: str) -> tuple[Answer, dict | None, str | None]:
    """A variant's answer given beforehand; for a question an earlier run finished (its batch is answered again
    whole), the one that run recorded."""
    if qid in answers:
        return answers[qid]
    record = done[qid]
    answer = Answer(record["answers"][variant], record["p_yes"][variant])
    return answer, record.get("usage", {}).get(variant), record.get("errors", {}).get(variant)


def _answer(vqa, pics, convs, models, settings) -> list:
    try:
        return vqa.answer(pics, convs, models, settings)
    except (TypeError, ValueError) as err:
        # PEFT serves base and adapter rows in one batch only through Linear/Embedding/Conv layers: an adapter that
        # saved a whole module (e.g. `multi_modal_projector`) or a batch-shared one (position embeddings) cannot.
        if "Mixed batching" in str(err) or "adapter_names" in str(err):
            raise UserError(
                f"this adapter cannot answer base and fine-tuned rows in one batch ({str(err).splitlines()[0]}): "
                "retrain with modules_to_save naming Linear layers, e.g. multi_modal_projector.linear_1 and linear_2"
            ) from None
        raise

"""The Batch tab's work as plain functions: read several films (files or zips) under the host's limits, the
questions one a line, have every model answer every (film, question), and the CSV.

    entries = list_films(paths, limits)                                  # zips listed, nothing decoded
    questions = read_questions(text, limits, len(entries))               # checked before any film is read
    films, errors = read_films(entries, limits, decode=vqa.prepare_film)  # [(name, Film)], [{"film", "error"}]
    conversations = {q: vqa.conversation(None, q) for q in questions}     # each checked against the token budget
    sources = [LocalModels(vqa, conversations), RemoteModels(remotes, conversations)]
    rows = answer_rows(films, questions, sources, settings, limits.batch_size, on_step)
    write_csv(path, rows, [name for source in sources for name in source.names])

A model source is anything with `names` and `answer(images, questions, settings) -> [{name: Answer}]`: the loaded
LLaVA base and adapters (`LocalModels`, in batched generate calls), and the models behind OpenAI-compatible endpoints
(`RemoteModels`, concurrent requests); each adds its own columns."""

from __future__ import annotations

import csv
import io
import threading
import zipfile
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from app_lib.tables import answer_text, spreadsheet_safe
from app_lib.zips import declared_entries, read_member, refusal
from cxr_vqa.answers import Answer
from cxr_vqa.errors import UserError
from cxr_vqa.generation import GenerationSettings
from cxr_vqa.images import LIMITS, Film
from cxr_vqa.questions import MAX_QUESTION_CHARS

ENTRIES_PER_FILM = 10  # files and folders a batch's uploads may hold per film allowed: room for folders and notes


@dataclass(frozen=True)
class BatchLimits:
    """What one batch may ask of the server; the host sets them (`python app.py --batch-max-files ...`)."""

    max_files: int = 20  # films, zips unpacked
    max_questions: int = 5
    max_rows: int = 60  # films x questions: the answers each model gives one batch (generate rows, remote requests)
    batch_size: int = 16  # generate rows per call (each (film, question) is one row per model)
    max_file_bytes: int | None = None  # each film, also inside a zip; None: the core's limit for one film

    @property
    def film_bytes(self) -> int:
        return self.max_file_bytes or LIMITS.max_file_bytes


def size_in_bytes(text: str) -> int:
    """The bytes of a size such as "20mb" (the app's --max-file-size), read as Gradio reads it: b, kb, mb, gb."""
    units = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}
    number = text.strip().lower().rstrip("bkmg ")
    unit = text.strip().lower()[len(number) :].strip()
    if not number.isdigit() or unit not in units:
        raise ValueError(f"max_file_size must be a number and a unit (b, kb, mb, gb), e.g. 20mb; got {text!r}")
    return int(number) * units[unit]


def _is_junk(name: str) -> bool:
    """Folders, macOS resource forks and hidden files that zip tools add beside the films."""
    return name.endswith("/") or name.startswith("__MACOSX/") or Path(name).name.startswith(".")


def _entries(paths: Sequence[str], most: int) -> list[tuple[str, str, str | None]]:
    """(shown name, file path, zip member or None) for every film the uploads hold, in upload order; UserError past
    `most` entries in all, junk included (a zip of a million empty folders is no batch)."""
    entries, seen = [], 0
    for path in paths:
        name = Path(path).name
        if not name.lower().endswith(".zip"):
            entries.append((name, path, None))
            seen += 1
        elif seen + (declared := declared_entries(path)) > most:  # before zipfile makes an object of every entry
            seen += declared
        else:
            try:
                with zipfile.ZipFile(path) as archive:
                    members = archive.namelist()
            except (zipfile.BadZipFile, OSError):
                members = None
            seen += len(members or [None])
            if members is None:
                entries.append((name, path, ""))  # reported as unreadable when decoded
            else:
                entries += [(member, path, member) for member in members if not _is_junk(member)]
        if seen > most:
            raise UserError(f"the uploads hold {seen:,} or more files and folders (a zip's entries counted), over "
                            f"this app's limit of {most:,} a batch: zip only the films")  # fmt: skip
    return entries


def _unique(names: Sequence[str]) -> list[str]:
    """The names with a repeat numbered ("x.png (2)"): two uploads of one name stay apart in the table and the CSV."""
    unique: list[str] = []
    for name in names:
        shown, n = name, 1
        while shown in unique:
            n += 1
            shown = f"{name} ({n})"
        unique.append(shown)
    return unique


def _named(data: bytes, name: str) -> io.BytesIO:
    buffer = io.BytesIO(data)
    buffer.name = name  # the loader knows a DICOM without a preamble by its .dcm name
    return buffer


def list_films(paths: Sequence[str] | None, limits: BatchLimits) -> list[tuple[str, str, str | None]]:
    """The films the uploads hold (zips listed, nothing decoded yet), each with a name of its own; UserError for none,
    more than the limit, or a zip of far more entries than films."""
    entries = _entries(list(paths or []), ENTRIES_PER_FILM * limits.max_files)
    if not entries:
        raise UserError("no films: upload PNG, JPEG or DICOM files, or a zip of them")
    if len(entries) > limits.max_files:
        raise UserError(f"{len(entries)} films, over this app's limit of {limits.max_files} a batch: split them")
    names = _unique([name for name, _, _ in entries])
    return [(shown, path, member) for shown, (_, path, member) in zip(names, entries, strict=True)]


def read_films(
    entries: Sequence[tuple[str, str, str | None]], limits: BatchLimits, decode: Callable[[io.BytesIO], Film]
) -> tuple[list[tuple[str, Film]], list[dict]]:
    """([(name, film)] that decode, [{"film": name, "error": one line}] that do not); each zip is opened once."""
    films, errors = [], []
    with ExitStack() as stack:
        archives: dict[str, zipfile.ZipFile] = {}
        for name, path, member in entries:
            try:
                if member == "":
                    raise UserError("not a readable zip archive")
                if member is None:
                    with open(path, "rb") as file:
                        data = file.read(limits.film_bytes + 1)
                    if len(data) > limits.film_bytes:
                        raise UserError(f"over this app's upload limit of {limits.film_bytes:,} bytes")
                else:
                    if path not in archives:
                        archives[path] = stack.enter_context(zipfile.ZipFile(path))
                    info = archives[path].getinfo(member)
                    if why := refusal(info, limits.film_bytes):  # what it declares, before any byte is inflated
                        raise UserError(why)
                    with archives[path].open(info) as file:
                        data = read_member(file, info, limits.film_bytes)
                films.append((name, decode(_named(data, member or path))))
                del data
            except (zipfile.BadZipFile, zlib.error, EOFError) as err:  # a member's bytes: bad CRC, deflate, cut short
                where = " in its zip" if member else ""
                errors.append({"film": name, "error": f"corrupt{where} ({str(err) or 'cut short'})"})
            except (UserError, OSError, RuntimeError, NotImplementedError) as err:  # encrypted, unknown compression
                errors.append({"film": name, "error": str(err).splitlines()[0] if str(err) else type(err).__name__})
    return films, errors


def read_questions(text: str | None, limits: BatchLimits, n_films: int) -> list[str]:
    """The non-empty lines of `text`, checked against the question and row limits."""
    if len(text or "") > limits.max_questions * MAX_QUESTION_CHARS:  # before splitting: a pasted book is one line
        raise UserError(f"{len(text):,} characters of questions: type at most {limits.max_questions} short questions, "
                        "one a line")  # fmt: skip
    questions = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not questions:
        raise UserError("no question: type one or more, one a line")
    if len(questions) > limits.max_questions:
        raise UserError(f"{len(questions)} questions, over this app's limit of {limits.max_questions} a batch")
    rows = len(questions) * n_films
    if rows > limits.max_rows:
        raise UserError(f"{n_films} films x {len(questions)} questions = {rows} answers a model, over this app's "
                        f"limit of {limits.max_rows}: fewer films or questions")  # fmt: skip
    return questions


class LocalModels:
    """The loaded LLaVA base and every adapter: each (film, question) once per model, all in one generate call."""

    def __init__(self, vqa, conversations: dict[str, list[dict]]):
        self.vqa = vqa
        self.conversations = conversations  # question -> its conversation, checked against the token budget
        # fixed for the whole batch: the demo's hook (`before_answer`) may load its first checkpoint between two
        # calls, and a model that answered only the later rows would leave the earlier ones without its column
        self.names: list[str] = list(vqa.model_names)

    def answer(self, images, questions, settings: GenerationSettings) -> list[dict[str, Answer]]:
        names = self.names
        answers = iter(self.vqa.answer(
            [image for image in images for _ in names], [self.conversations[q] for q in questions for _ in names],
            models=[name for _ in images for name in names], settings=settings,
        ))  # fmt: skip
        return [{name: next(answers) for name in names} for _ in images]


def endpoint_down(err: UserError) -> bool:
    """Whether a remote model's failure says no later request will do better soon (`RemoteError.down`)."""
    return bool(getattr(err, "down", False))


class RemoteModels:
    """Models behind OpenAI-compatible endpoints: each (film, question) asked of every one of them, concurrently; an
    endpoint that fails gives that row "error: <why>" and the others still answer. A model whose endpoint is down is
    asked no more in this batch (each of its rows would wait out the timeout and the retries): its later rows say
    "error: skipped after <its first failure>"."""

    def __init__(self, remotes: dict, conversations: dict[str, list[dict]], workers: int = 8):
        self.remotes, self.conversations, self.workers = remotes, conversations, workers
        self.names: list[str] = list(remotes)
        self.down: dict[str, str] = {}  # model -> its first failure that said the endpoint is down
        self._lock = threading.Lock()

    def _ask(self, name: str, image, question: str, settings: GenerationSettings) -> Answer:
        if name in self.down:
            return Answer("", None, error=f"skipped after {self.down[name]}")
        try:
            return self.remotes[name].answer(image, self.conversations[question], settings)
        except UserError as err:  # RemoteError: down, slow, refused
            if endpoint_down(err):
                with self._lock:
                    self.down.setdefault(name, str(err))
            return Answer("", None, error=str(err))

    def answer(self, images, questions, settings: GenerationSettings) -> list[dict[str, Answer]]:
        jobs = [(i, name) for i in range(len(images)) for name in self.names]
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(jobs)))) as pool:
            done = pool.map(lambda job: self._ask(job[1], images[job[0]], questions[job[0]], settings), jobs)
            found = dict(zip(jobs, done, strict=True))
        return [{name: found[i, name] for name in self.names} for i in range(len(images))]


def answer_rows(
    films: Sequence[tuple[str, Film]],
    questions: Sequence[str],
    sources: Sequence,
    settings: GenerationSettings,
    batch_size: int,
    on_step: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """`/batch`'s rows, film by film and question by question: {"film", "question", "answers": {model: text},
    "p_yes": {model: P(yes) or None}} (P(yes) only for a yes/no answer). Each source answers chunks of rows in one
    call; `on_step(done, total)` after each call."""
    pairs = [(name, film, q) for name, film in films for q in questions]
    rows = [{"film": name, "question": q, "answers": {}, "p_yes": {}} for name, _, q in pairs]
    chunks = [(source, start, max(1, batch_size // len(source.names))) for source in sources
              for start in range(0, len(pairs), max(1, batch_size // len(source.names)))]  # fmt: skip
    for done, (source, start, size) in enumerate(chunks, 1):
        part = pairs[start : start + size]
        answers = source.answer([film.image for _, film, _ in part], [q for _, _, q in part], settings)
        for row, by_model in zip(rows[start : start + size], answers, strict=True):
            for name, answer in by_model.items():
                row["answers"][name] = answer_text(answer)  # "error: <why>" for a remote model that gave none
                row["p_yes"][name] = answer.p_yes if answer.is_closed else None
        if on_step:
            on_step(done, len(chunks))
    return rows


def csv_columns(models: Sequence[str]) -> list[str]:
    return ["film", "question", *(f"{m} {part}" for m in models for part in ("answer", "P(yes)"))]


def write_csv(path: str | Path, rows: Sequence[dict], models: Sequence[str]) -> Path:
    """One line per (film, question): each model's answer and P(yes) (4 decimals; empty for an open answer)."""
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(csv_columns(models))
        for row in rows:
            cells = []
            for m in models:
                p = row["p_yes"].get(m)
                cells += [spreadsheet_safe(row["answers"].get(m, "")), "" if p is None else f"{p:.4f}"]
            writer.writerow([spreadsheet_safe(row["film"]), spreadsheet_safe(row["question"]), *cells])
    return Path(path)

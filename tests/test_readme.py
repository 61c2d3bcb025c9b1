"""README.md and docs/ hold together as a newcomer reads them: every relative link resolves (the file, and a
`#anchor` to a heading of it as GitHub writes heading ids), every image shown exists, every project command shown
(in a shell block or as inline code) answers `--help` with exit status 0 and knows each flag it is shown with, every
project file named exists, and README stays a front page (short, the Space's front matter, CI's test command).

    python -m pytest -q tests/test_readme.py

The screenshots under docs/images/ are made by `python scripts/screenshots.py`; their test says so when one is
missing. Commands of other tools (pip, docker, git, vllm, ollama, curl, accelerate, torchrun) are not checked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
SCREENSHOTS = ROOT / "docs" / "images"
MAX_README_LINES = 150
PROJECT_PACKAGES = ("cxr_vqa", "dataprep", "finetune", "evaluation", "app_lib")
# top-level folders whose files the pages may name by path (`finetune/configs/tiny-cpu.yaml`, `bench/gpu.py`)
PROJECT_DIRS = (*PROJECT_PACKAGES, "bench", "scripts", "tests", "assets", "docs", ".ci")
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}

FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"(!?)\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HTML_IMAGE = re.compile(r"<img\b[^>]*\bsrc=[\"']([^\"']+)[\"']", re.IGNORECASE)
# `python -m package.module ...` or `python path/to/script.py ...` (also `.venv/bin/python`, `nice -n 19 python`)
COMMAND = re.compile(r"(?:^|[\s/=(])python3?\s+(?:-m\s+([A-Za-z_][\w.]*)|((?:[\w.-]+/)*[\w.-]+\.py))(?=\s|$)(.*)")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
REPO_PATH = re.compile(rf"^(?:{'|'.join(re.escape(d) for d in PROJECT_DIRS)})/[\w./-]*$")


@dataclass(frozen=True)
class Page:
    path: Path
    prose: list[tuple[int, str]]  # (line number, text) outside code blocks, inline code replaced by "code"
    code_spans: list[tuple[int, str]]  # inline code outside code blocks
    blocks: list[tuple[int, str, str]]  # (first line number, language, text) of fenced blocks
    headings: list[str]  # as written, outside code blocks

    @property
    def name(self) -> str:
        return str(self.path.relative_to(ROOT))


@cache
def read_page(path: Path) -> Page:
    prose, spans, blocks, headings = [], [], [], []
    fence, lang, start, body = None, "", 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence, lang, start, body = opening.group(1), opening.group(2).lower(), number, []
        elif fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                blocks.append((start, lang, "\n".join(body)))
                fence = None
            else:
                body.append(line)
        else:
            spans += [(number, m.group(2).strip()) for m in INLINE_CODE.finditer(line)]
            prose.append((number, INLINE_CODE.sub("code", line)))
            if heading := HEADING.match(line):
                headings.append(heading.group(2))
    return Page(path, prose, spans, blocks, headings)


def slug(heading: str) -> str:
    """The id GitHub gives a heading: lower case, markup and punctuation dropped, each space a hyphen."""
    text = re.sub(r"<[^>]+>", "", heading).replace("`", "")
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every heading id of a page; a repeated heading gets -1, -2, ... as on GitHub."""
    ids, count = set(), {}
    for heading in read_page(path).headings:
        base = slug(heading)
        ids.add(f"{base}-{count[base]}" if base in count else base)
        count[base] = count.get(base, 0) + 1
    return frozenset(ids)


def targets(page: Page) -> list[tuple[int, str, str]]:
    """(line, target, "image" or "link") of every link and image on a page."""
    found = []
    for number, line in page.prose:
        for bang, _, target in LINK.findall(line):
            found.append((number, target, "image" if bang else "link"))
        found += [(number, target, "image") for target in HTML_IMAGE.findall(line)]
        if match := REFERENCE_LINK.match(line):
            found.append((number, match.group(1), "link"))
    return found


def is_external(target: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) is not None


def resolve(page: Page, target: str) -> Path:
    return (page.path.parent / target).resolve() if target else page.path


def broken_link(page: Page, target: str) -> str | None:
    """Why a relative link does not resolve, or None."""
    path_part, _, anchor = target.partition("#")
    path = resolve(page, path_part)
    if not path.is_relative_to(ROOT):
        return "points outside the repository"
    if not path.exists():
        return f"{path.relative_to(ROOT)} does not exist"
    if anchor and path.suffix == ".md" and anchor not in anchors(path):
        return f"{path.relative_to(ROOT)} has no heading with the id #{anchor}"
    return None


def test_every_relative_link_resolves():
    broken = [
        f"{page.name}:{number}: ({target}): {why}"
        for page in map(read_page, PAGES)
        for number, target, kind in targets(page)
        if kind == "link" and not is_external(target) and (why := broken_link(page, target))
    ]
    assert not broken, "\n".join(broken)


def shown_images(screenshots: bool) -> list[tuple[str, int, Path]]:
    return [
        (page.name, number, path)
        for page in map(read_page, PAGES)
        for number, target, kind in targets(page)
        if kind == "image" and not is_external(target)
        if (path := resolve(page, target.partition("#")[0])).is_relative_to(SCREENSHOTS) == screenshots
    ]


def test_every_image_shown_exists():
    missing = [
        f"{name}:{number}: {path}" for name, number, path in shown_images(screenshots=False) if not path.is_file()
    ]
    assert not missing, "\n".join(missing)


def test_every_screenshot_shown_exists():
    shown = shown_images(screenshots=True)
    assert any(name == "README.md" for name, _, _ in shown), "README shows no screenshot of the app from docs/images/"
    missing = [f"{name}:{number}: {path.relative_to(ROOT)}" for name, number, path in shown if not path.is_file()]
    assert not missing, "screenshots missing: make them with `python scripts/screenshots.py`\n" + "\n".join(missing)


def test_every_project_file_named_exists():
    """`finetune/configs/tiny-cpu.yaml` in a sentence or a command is a file of this repository: it must be there."""
    missing = []
    for page in map(read_page, PAGES):
        words = [(n, w) for n, span in page.code_spans for w in span.split()]
        words += [(start + i, w) for start, lang, text in page.blocks if lang in SHELL_LANGS
                  for i, line in enumerate(text.splitlines(), 1) for w in line.split()]  # fmt: skip
        for number, word in words:
            word = word.strip("\"'`,;:()[]").split("=")[-1]
            if REPO_PATH.match(word) and not any(c in word for c in "*{<") and not (ROOT / word).exists():
                missing.append(f"{page.name}:{number}: {word}")
    assert not missing, "\n".join(missing)


# commands --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    entry: tuple[str, ...]  # ("-m", "dataprep") or ("bench/gpu.py",)
    flags: tuple[str, ...]
    where: str


def command_lines(page: Page) -> list[tuple[int, str]]:
    """Lines a reader may paste into a shell: shell blocks (continuations joined) and inline code."""
    lines = list(page.code_spans)
    for start, lang, text in page.blocks:
        if lang not in SHELL_LANGS:
            continue
        joined, first = "", None
        for i, line in enumerate(text.splitlines()):
            first = start + 1 + i if first is None else first
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            lines.append((first, joined + line))
            joined, first = "", None
    return lines


def shown_commands() -> list[Shown]:
    found = []
    for page in map(read_page, PAGES):
        for number, line in command_lines(page):
            line = re.sub(r"(^|\s)#.*$", "", line)  # a shell comment (a '#' inside a word, as in URL#MODEL, stays)
            for segment in re.split(r"&&|\|\||;|\s\|\s", line):
                if not (match := COMMAND.search(segment)):
                    continue
                module, script, rest = match.groups()
                if module and module.split(".")[0] not in PROJECT_PACKAGES:
                    continue  # python -m pytest, -m venv, -m pip
                if script and not script.startswith(("bench/", "scripts/")) and script != "app.py":
                    continue
                entry = ("-m", module) if module else (script,)
                found.append(Shown(entry, tuple(FLAG.findall(rest)), f"{page.name}:{number}"))
    return found


SHOWN = shown_commands()
ENTRIES = sorted({shown.entry for shown in SHOWN})


@pytest.fixture(scope="module")
def helps() -> dict[tuple[str, ...], dict | str]:
    """`python ENTRY --help` of every entry point shown, each in its own process (tests/help_runner.py forks them
    after importing torch, transformers, gradio ... once: seconds for all, not seconds each)."""
    missing = {
        entry: f"{entry[0]} does not exist" for entry in ENTRIES if len(entry) == 1 and not (ROOT / entry[0]).is_file()
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    runner = [
        sys.executable,
        str(ROOT / "tests" / "help_runner.py"),
        *(a for e in ENTRIES if e not in missing for a in e),
    ]
    done = subprocess.run(runner, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.splitlines()[-1])  # the last line: what a library printed may come before
    return missing | {entry: results[" ".join(entry)] for entry in ENTRIES if entry not in missing}


def test_readme_shows_the_main_commands():
    in_readme = {shown.entry for shown in SHOWN if shown.where.startswith("README.md:")}
    assert {("-m", "dataprep"), ("-m", "finetune"), ("-m", "evaluation"), ("app.py",)} <= in_readme


@pytest.mark.parametrize("entry", ENTRIES, ids=" ".join)
def test_each_command_shown_answers_help(entry, helps):
    out = helps[entry]
    where = sorted({shown.where for shown in SHOWN if shown.entry == entry})
    assert not isinstance(out, str), f"{out} (shown at {', '.join(where)})"
    assert out["returncode"] == 0, (
        f"python {' '.join(entry)} --help, shown at {', '.join(where)}:\n{out['stderr'][-1500:]}"
    )
    assert "usage" in out["stdout"].lower(), out["stdout"][:500]


@pytest.mark.parametrize("entry", ENTRIES, ids=" ".join)
def test_each_flag_shown_is_an_option_of_its_command(entry, helps):
    out = helps[entry]
    if isinstance(out, str) or out["returncode"] != 0:
        pytest.skip("its --help failed (the test above says why)")
    unknown = sorted(
        f"{shown.where}: {flag}"
        for shown in SHOWN
        if shown.entry == entry
        for flag in shown.flags
        if flag != "--help" and not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", out["stdout"])
    )
    assert not unknown, f"python {' '.join(entry)}: flags its --help does not list:\n" + "\n".join(unknown)


# the front page --------------------------------------------------------------------------------------------------


def test_readme_is_a_front_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES, "README is the front page: move the details into docs/"
    front, _, _ = text.removeprefix("---\n").partition("\n---\n")
    assert text.startswith("---\n") and {"sdk: gradio", "app_file: app.py"} <= set(front.splitlines())
    command = re.search(r"<!-- test-command -->\n```bash\n(.+?)\n```\n<!-- /test-command -->", text, re.DOTALL)
    assert command and "pytest" in command.group(1), "CI (.ci/run) reads the test command between these markers"
    linked = {target.partition("#")[0] for _, target, kind in targets(read_page(README)) if kind == "link"}
    assert "docs/README.md" in linked, "README links the docs index"

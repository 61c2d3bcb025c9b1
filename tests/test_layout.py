"""The structure the project promises, read from the code itself: a core that knows the model and nothing of the
pipelines or the UI, pipelines that do not reach into each other, no import cycles, small files."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cxr_vqa", "dataprep", "finetune", "evaluation", "app_lib")
SOURCES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")) + [ROOT / "app.py"]
# what each part may import of the project (itself always)
ALLOWED = {
    "cxr_vqa": {"cxr_vqa"},
    "dataprep": {"cxr_vqa"},
    "finetune": {"cxr_vqa"},
    "evaluation": {"cxr_vqa"},
    "app_lib": {"cxr_vqa"},
    "app": {"cxr_vqa", "app_lib"},
}
MAX_LINES = 320  # "a file past ~300 lines holds two ideas"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every project module `path` imports, at any depth (imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {n for n in names if n.split(".")[0] in (*PACKAGES, "app")}
    modules = {module_name(p) for p in SOURCES}
    return {n for n in found if n in modules}


GRAPH = {module_name(p): imports(p) for p in SOURCES}


def test_each_part_imports_only_what_it_sits_on():
    wrong = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if target.split(".")[0] not in ALLOWED[module.split(".")[0]] | {module.split(".")[0]}
    ]
    assert wrong == []


def test_no_import_cycles():
    def visit(module, path):
        for target in GRAPH.get(module, ()):
            if target in path:
                return path[path.index(target) :] + [target]
            if (cycle := visit(target, path + [target])) is not None:
                return cycle
        return None

    cycles = [cycle for module in GRAPH if (cycle := visit(module, [module]))]
    assert cycles == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_files_stay_small(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_core_imports_without_gradio_or_trl_and_loads_nothing(tmp_path):
    code = (
        "import sys, cxr_vqa.model, cxr_vqa.vqa, cxr_vqa.images, cxr_vqa.cli, cxr_vqa.contract, cxr_vqa.questions, "
        "cxr_vqa.reports, cxr_vqa.sources; "
        "print(sorted(m for m in ('gradio', 'trl', 'datasets', 'peft', 'bitsandbytes') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]" and list(tmp_path.iterdir()) == []


def test_dataprep_and_the_synthetic_release_run_without_torch():
    """They read reports and write PNGs: importing torch would cost each of their processes seconds (the demo runs
    four of them before its first page)."""
    code = "import sys, dataprep.__main__, dataprep.qa_labels, dataprep.synthetic; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"

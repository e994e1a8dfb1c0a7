"""The shape issue 24 asks of the code: `train` reads top to bottom, functions stay short, imports point down."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; lazy imports inside functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_training_module_stays_a_readable_length():
    assert len((ROOT / "classify" / "training.py").read_text(encoding="utf-8").splitlines()) <= 450


@pytest.mark.parametrize("path", _modules("classify"), ids=lambda path: str(path.relative_to(ROOT)))
def test_no_function_in_classify_is_over_80_lines(path):
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80]
    assert not long


def test_nothing_in_classify_imports_back_up_into_training():
    upward = [str(path.relative_to(ROOT)) for path in _modules("classify")
              if path.name != "training.py" and "detcrop.classify.training" in _imported(path)]
    assert not upward


@pytest.mark.parametrize("package, forbidden", [
    ("data", ("detcrop.detect", "detcrop.classify", "detcrop.pipeline")),
    ("detect", ("detcrop.classify", "detcrop.pipeline")),
    ("classify", ("detcrop.detect", "detcrop.pipeline")),
])
def test_packages_import_only_downwards(package, forbidden):
    wrong = {str(path.relative_to(ROOT)): sorted(name for name in _imported(path) if name.startswith(forbidden))
             for path in _modules(package)}
    assert not {path: names for path, names in wrong.items() if names}

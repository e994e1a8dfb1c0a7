"""File names live in data.layout: the modules of data/ and detect/ never spell them again."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from detcrop.data import layout

ROOT = Path(__file__).resolve().parents[2]
NAMES = {value for key, value in vars(layout).items() if key.endswith("_NAME") and isinstance(value, str)}


def string_literals(path: Path) -> set[str]:
    """String constants of a module, docstrings left out (they may show the layout to a reader)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


@pytest.mark.parametrize("path", sorted(path for folder in ("data", "detect") for path in (ROOT / folder).glob("*.py")
                                        if path.name != "layout.py"), ids=lambda path: f"{path.parent.name}/{path.name}")
def test_no_module_spells_a_layout_name(path):
    assert not string_literals(path) & NAMES


def test_the_names_are_distinct():
    values = [value for key, value in vars(layout).items() if key.endswith("_NAME")]
    assert len(values) == len(set(values)) and {"manifest.jsonl", "crop_config.json", "bundle.json"} <= NAMES

"""The direction of dependencies in DESIGN.md section 7: tools -> data/ -> training/ (which asks
dwm/ for weights and ops/ for losses) -> metrics -> analysis/. Nothing under model/, ops/, dwm/ or
data/ imports training/ or analysis/, and training/ does not import analysis/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "megatron_dwm"
FORBIDDEN = {
    "model": ("training", "analysis"),
    "ops": ("training", "analysis"),
    "dwm": ("training", "analysis"),
    "data": ("training", "analysis", "dwm"),
    "training": ("analysis",),
}


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (function-level imports included)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_imported_modules_sees_nested_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\ndef f():\n    from megatron_dwm.training import step\n")
    assert imported_modules(source) == {"os", "megatron_dwm.training"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_against_the_flow(package):
    offending = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for module in imported_modules(path):
            for target in FORBIDDEN[package]:
                if module == f"megatron_dwm.{target}" or module.startswith(f"megatron_dwm.{target}."):
                    offending.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    assert offending == []

"""Files a person reads whole: no module of the app over 600 lines, no function over 80, and
the capability packages the architecture page describes (each module listed there)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "workbench").rglob("*.py"))
MODULE_LINES = 600
FUNCTION_LINES = 80


def test_the_app_has_sources_to_check():
    assert len(SOURCES) > 50


def test_no_module_is_longer_than_a_person_reads_whole():
    long = {str(p.relative_to(ROOT)): n for p in SOURCES
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MODULE_LINES}
    assert long == {}


def test_no_function_is_longer_than_one_step():
    long = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert long == []


def test_the_core_and_the_window_are_capability_packages():
    """No loose modules beside the packages: a reader finds a feature from the folder names."""
    for layer in ("core", "ui"):
        loose = [p.name for p in (ROOT / "workbench" / layer).glob("*.py")
                 if p.name != "__init__.py"]
        assert loose == [], layer
        packages = {p.name for p in (ROOT / "workbench" / layer).iterdir()
                    if (p / "__init__.py").is_file()}
        assert {"common", "generation", "evaluation", "interpret", "training"} <= packages


def test_the_architecture_page_names_every_module():
    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [path for p in SOURCES if p.name != "__init__.py"
               and (path := p.relative_to(ROOT).as_posix()) not in page]
    assert missing == []

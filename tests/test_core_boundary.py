"""The core never imports Qt, and the entry point stays light until it needs torch."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("PySide6", "pyqtgraph", "superqt", "workbench.ui")


def test_core_sources_never_import_qt():
    offenders = []
    for path in (ROOT / "workbench" / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names
                          if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
    assert offenders == []


def test_importing_the_core_loads_no_qt():
    code = ("import pkgutil, importlib, sys, workbench.core as c\n"
            "for m in pkgutil.walk_packages(c.__path__, 'workbench.core.'): importlib.import_module(m.name)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('PySide6','pyqtgraph','superqt') or k.startswith('workbench.ui')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_command_line_parsing_does_not_import_torch():
    code = ("import sys\nfrom workbench import cli\ncli.build_parser().parse_args(['models', 'list'])\n"
            "import workbench.app\nprint('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False False"

"""Running ``python main.py COMMAND ...`` for a test.

``run_cli`` starts the real entry point in a subprocess: what a user runs, at the price of
importing torch and transformers again (about 3 s a case on a 2-core machine).
``run_in_process`` calls the same entry point, ``workbench.app.main``, in the test's own
process with stdout and stderr captured: for the many cases that load a model only to reach
a check, so that the suite pays the imports once (``entry=`` another entry point, such as
``workbench.train.main`` for ``python -m workbench.train``). Both return a
``subprocess.CompletedProcess``; an exception that escapes the command fails the test (in a
subprocess it would be a traceback on stderr, which the tests refuse as well).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))


def run_in_process(*args: str, entry: Callable[[list[str]], int] | None = None
                   ) -> subprocess.CompletedProcess:
    if entry is None:
        from workbench.app import main as entry

    out, err = io.StringIO(), io.StringIO()
    handlers = {name: signal.getsignal(getattr(signal, name)) for name in ("SIGINT", "SIGTERM")}
    try:
        with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            try:
                code = entry([str(a) for a in args])
            except SystemExit as exc:  # argparse's errors and --help
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for name, handler in handlers.items():  # a command may catch Ctrl-C for itself
            signal.signal(getattr(signal, name), handler)
    return subprocess.CompletedProcess(["main.py", *args], code, out.getvalue(), err.getvalue())

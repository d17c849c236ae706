"""Performance figures for ``python main.py bench``.

Each figure is a ratio of the app's measurement to a bare baseline measured in the same
run, on the same machine, so the target holds on a fast or a slow (or busy) machine.
Every result has ``value``, ``target`` (an upper or lower bound, per ``better``), ``met``
and the raw measurements behind the ratio.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.core.jobs import Progress

_BARE_WINDOW = """
import sys, time
from PySide6.QtWidgets import QApplication, QMainWindow
from PySide6.QtCore import QTimer
app = QApplication(sys.argv)
w = QMainWindow(); w.resize(1200, 800); w.show()
QTimer.singleShot(0, lambda: (print("window-shown", flush=True), app.quit()))
app.exec()
"""


def _time_until_shown(cmd: list[str]) -> float:
    """Seconds from spawning ``cmd`` until it prints ``window-shown``."""
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.strip() == "window-shown":
                return time.perf_counter() - start
        raise RuntimeError(f"{cmd[-1]!r} exited without showing a window")
    finally:
        proc.kill()
        proc.wait()


def figure(value: float, target: float, better: str, detail: str, **raw: Any) -> dict:
    met = value <= target if better == "lower" else value >= target
    sign = "≤" if better == "lower" else "≥"
    return {"value": round(value, 4), "target": target, "better": better, "met": met,
            "target_text": f"{sign} {target}", "detail": detail, **raw}


def bench_startup(emit: Callable[[Any], None], repeats: int = 3) -> dict:
    """Window shown: the app vs a bare PySide6 window, each started as a new process.

    Target: the app's window within 2x a bare Qt window, and within 1.5 s on the
    project's 2-core reference machine (reported as ``seconds`` / ``seconds_target``).
    """
    app_cmd = [sys.executable, "-m", "workbench", "--startup-probe", "--no-autoload"]
    bare_cmd = [sys.executable, "-c", _BARE_WINDOW]
    _time_until_shown(bare_cmd)  # warm the file cache for both
    apps, bares = [], []
    for i in range(repeats):
        emit(Progress("startup: timing window start-up", i / repeats))
        bares.append(_time_until_shown(bare_cmd))
        apps.append(_time_until_shown(app_cmd))
    app_s, bare_s = statistics.median(apps), statistics.median(bares)
    return figure(app_s / bare_s, 2.0, "lower",
                  f"app window {app_s:.2f} s vs bare Qt window {bare_s:.2f} s",
                  seconds=round(app_s, 3), seconds_target=1.5, baseline_seconds=round(bare_s, 3),
                  runs=[round(a, 3) for a in apps], baseline_runs=[round(b, 3) for b in bares])


def bench_model_load_cached(emit: Callable[[Any], None]) -> dict:
    """Loading SmolLM2 from the converted cache vs the first load from its GGUF file."""
    from workbench.core import catalog
    from workbench.core.jobs import JobContext
    from workbench.core.loader import load_model

    gguf = catalog.resolve(catalog.SMOLLM2.name, JobContext(emit=emit)).path
    if gguf.suffix != ".gguf":  # the user's own copy is a folder; bench the wheel's GGUF
        gguf = catalog._wheel_file(catalog.SMOLLM2) or gguf
        if gguf.suffix != ".gguf":
            raise RuntimeError("the SmolLM2 GGUF wheel is not available; run models fetch")
    saved = os.environ.get("LMWB_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="lmwb-bench-") as tmp:
        os.environ["LMWB_CACHE_DIR"] = tmp  # a cold conversion cache for the first load
        try:
            emit(Progress("model_load_cached: first load (GGUF conversion)", 0.1))
            start = time.perf_counter()
            first = load_model(str(gguf))
            first_s = time.perf_counter() - start
            assert first.converted_now
            del first
            emit(Progress("model_load_cached: cached load", 0.8))
            start = time.perf_counter()
            load_model(str(gguf))
            cached_s = time.perf_counter() - start
        finally:
            if saved is None:
                os.environ.pop("LMWB_CACHE_DIR", None)
            else:
                os.environ["LMWB_CACHE_DIR"] = saved
    return figure(cached_s / first_s, 0.25, "lower",
                  f"cached load {cached_s:.2f} s vs first load {first_s:.2f} s",
                  cached_seconds=round(cached_s, 3), first_seconds=round(first_s, 3),
                  model=Path(gguf).name)


FIGURES: dict[str, Callable[[Callable[[Any], None]], dict]] = {
    "startup": bench_startup,
    "model_load_cached": bench_model_load_cached,
}


def run_bench(only: list[str] | None = None,
              on_event: Callable[[Any], None] | None = None) -> dict[str, dict]:
    """Run the named figures (all by default) and return ``{name: figure}``."""
    emit = on_event or (lambda event: None)
    return {name: FIGURES[name](emit) for name in (only or list(FIGURES))}

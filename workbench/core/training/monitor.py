"""Following run folders: what each run added since the last poll (rows, output lines,
probe texts, its end), read off the GUI thread and without Qt."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.settings import check_fields, setting
from workbench.core.training.process import LOG_FILE, PROBES_FILE, RunState, run_state
from workbench.core.training.runs import RunMonitor

if TYPE_CHECKING:  # numpy comes with it: loaded when the curves are first computed
    from workbench.core.training.curves import CurveData


@dataclass
class CurveSettings:
    """The smoothing of the training-loss curve (:func:`~workbench.core.training.curves.smooth`),
    described once: ``monitor --smoothing`` and the Fine-tune tab's slider are made from it.
    Here, not beside the curves, so that neither loads numpy to offer it."""

    smoothing: float = setting(
        0.6, "The smoothing weight", low=0, high=1, high_open=True, style="interval",
        step=0.01, help="weight of the smoothed training loss (TensorBoard's debiased moving "
        "average); 0 is no smoothing")

    def validate(self) -> None:
        """Raise WorkbenchError unless the weight lies in its range."""
        check_fields(self)


def curves_key(rows: list[dict], smoothing: float, unit: str) -> tuple:
    """What a run's curve data depends on: its rows (they only grow, or are replaced by a
    new list), the smoothing and the throughput unit."""
    return (len(rows), id(rows[-1]) if rows else None, smoothing, unit)


@dataclass(eq=False)
class FollowedRun:
    """A run folder the tab follows: one it started (its state, output and probes are
    followed too) or one attached to (its numbers only)."""

    name: str
    folder: Path
    monitor: RunMonitor
    started_here: bool = False
    process: subprocess.Popen | None = None  # when this session of the window started it
    log_offset: int = 0
    probe_offset: int = 0
    reported: bool = False  # its end has been shown
    last_error: str | None = None
    seen: tuple = ()


@dataclass
class PollResult:
    run: FollowedRun
    rows: list[dict] | None
    rows_changed: bool
    log_lines: list[str] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)
    state: RunState | None = None
    ended: bool = False
    error: str | None = None
    curves: tuple[tuple, CurveData] | None = None  # computed here, off the GUI thread


def read_new_lines(path: Path, offset: int, limit: int = 1 << 20) -> tuple[list[str], int]:
    """The complete lines added to ``path`` after byte ``offset`` (at most ``limit`` bytes
    a call), and the offset to read from next time. A file that shrank (rewritten) is read
    again from its start."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < offset:
                offset = 0
            f.seek(offset)
            data = f.read(min(limit, size - offset))
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a line being written waits for its end
    lines = data[:end].decode("utf-8", errors="replace").splitlines()
    return lines, offset + end


def log_size(folder: Path) -> int:
    """The size of the run's output file (0 when there is none): where new lines start."""
    try:
        return (folder / LOG_FILE).stat().st_size
    except OSError:
        return 0


def first_step(rows: list[dict]) -> int:
    """The step this session of the run started from (0, or a resumed checkpoint's)."""
    first = 0
    for a, b in zip(rows, rows[1:], strict=False):
        if (b.get("seconds") or 0) < (a.get("seconds") or 0):  # a resume started here
            first = int(a.get("step") or 0)
    return first


def poll_runs(runs: list[FollowedRun], smoothing: float, unit: str) -> list[PollResult]:
    """What each followed run folder added since the last call, and the curves of those
    that changed (Qt-free: it runs on a reader thread, never on the GUI thread)."""
    return [_poll_one(run, smoothing, unit) for run in runs]


def _poll_one(run: FollowedRun, smoothing: float, unit: str) -> PollResult:
    try:
        rows: list[dict] | None = run.monitor.poll().rows
    except WorkbenchError:
        rows = None  # a folder being written; read again at the next tick
    changed = False
    if rows is not None:
        seen = (len(rows), id(rows[-1]) if rows else None)
        changed, run.seen = seen != run.seen, seen  # (each poll's rows are a new list)
    result = PollResult(run, rows, changed)
    if changed:
        from workbench.core.training.curves import analyse, for_display

        result.curves = (curves_key(rows, smoothing, unit),
                         for_display(analyse(rows, smoothing, unit)))
    if run.started_here:
        _read_output(run, result)
    return result


def _read_output(run: FollowedRun, result: PollResult) -> None:
    """A run started here: its new output lines and probe texts, and whether it ended."""
    result.log_lines, run.log_offset = read_new_lines(run.folder / LOG_FILE, run.log_offset)
    for line in result.log_lines:
        if line.startswith("error: "):
            run.last_error = line[len("error: "):]
    probe_lines, run.probe_offset = read_new_lines(run.folder / PROBES_FILE, run.probe_offset)
    for line in probe_lines:
        try:
            probe = json.loads(line)
        except ValueError:
            continue
        if isinstance(probe, dict):
            result.probes.append(probe)
    if not run.reported:
        code = run.process.poll() if run.process is not None else None
        if run.process is None or code is not None:  # a run it started goes until then
            result.state = run_state(run.folder)
        result.ended = code is not None if run.process is not None \
            else not result.state.live
        if result.ended and code:
            result.error = run.last_error

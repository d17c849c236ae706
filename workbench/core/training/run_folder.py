"""The run folder: checked before a run, started and ended, its checkpoints, final/ saved whole."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.files import check_writable, write_atomically
from workbench.core.training.config import FinetuneConfig
from workbench.core.training.process import (
    FINAL_DIR,
    METRICS_FILE,
    PROBES_FILE,
    RUN_FILE,
    RunStatus,
    checkpoint_complete,
    checkpoints,
    clear_stop_request,
    latest_checkpoint,
    process_alive,
    read_status,
    stop_requested,
    write_status,
)


def existing_ancestor(folder: Path) -> Path:
    for parent in (folder, *folder.parents):
        if parent.exists():
            return parent
    return Path(".")


def check_output_dir(config: FinetuneConfig, resume: bool) -> Path:
    """The run folder, checked without writing anything: writable, not a live run, and not
    another run (nor a model) unless resuming. A folder whose earlier attempt ended before
    its first complete checkpoint can be started again."""
    folder = Path(config.output_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise WorkbenchError(f"{folder} is a file, not a folder: choose a folder for the run.")
    status = read_status(folder) if folder.is_dir() else None
    if status is not None and status.state == "running" and \
            process_alive(status.pid, status.started):
        raise WorkbenchError(f"The run in {folder} is running now (process {status.pid}): "
                             "stop it first, or follow it in the Fine-tune tab or with "
                             "'monitor'.")
    if resume:
        if not (folder / RUN_FILE).is_file():
            raise WorkbenchError(f"{folder} holds no run to resume (no {RUN_FILE}).")
        if latest_checkpoint(folder) is None:
            raise WorkbenchError(f"{folder} has no complete checkpoint to resume from.")
    elif folder.is_dir():
        if latest_checkpoint(folder) is not None or (folder / FINAL_DIR).is_dir():
            raise WorkbenchError(f"{folder} already holds a run: resume it (--resume) or "
                                 "choose a new folder.")
        if not (folder / RUN_FILE).is_file() and (
                (folder / "config.json").is_file() or any(folder.glob("*.safetensors"))
                or any(folder.glob("*.bin"))):
            raise WorkbenchError(f"{folder} holds a model, not a run: choose a new folder for "
                                 "the run (it would be mixed with the model's files).")
    parent = existing_ancestor(folder)
    if not parent.is_dir():
        raise WorkbenchError(f"Cannot write to {folder}: {parent} is not a writable folder.")
    try:  # os.access() says yes to root where every write fails (/sys): tried for real
        check_writable(parent)
    except OSError as exc:
        raise WorkbenchError(f"Cannot write to {folder}: {parent} is not a writable folder "
                             f"({exc.strerror or exc}).") from None
    return folder


def save_config(config: FinetuneConfig, folder: Path) -> Path:
    """Write ``config`` as the ``run.json`` of ``folder``, atomically (a reader sees the old
    file or the new one, never half of one)."""
    return write_atomically(folder / RUN_FILE, config.to_json())


def saved_config(folder: Path) -> FinetuneConfig:
    """The ``run.json`` of ``folder``, checked whole."""
    try:
        data = json.loads((folder / RUN_FILE).read_bytes().decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not an object")
        saved = FinetuneConfig.from_dict(data)
        saved.validate()
    except (OSError, ValueError, TypeError) as exc:
        raise WorkbenchError(f"{folder / RUN_FILE} is damaged ({exc}): the run cannot be "
                             "resumed from it.") from None
    return saved


def checkpoint_step(path: Path) -> int:
    try:
        state = json.loads((path / "trainer_state.json").read_bytes().decode("utf-8"))
        return int(state.get("global_step", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return int(path.name.split("-")[-1])


def _keep_lines(path: Path, keep) -> None:
    """Rewrite the JSON-lines file ``path`` with only the complete lines ``keep`` accepts
    (atomically: a reader sees the old file or the new one)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short when the process was killed
        if isinstance(row, dict) and keep(row):
            kept.append(line + "\n")
    write_atomically(path, "".join(kept))


def _row_step(row: dict) -> float:
    step = row.get("step")
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else math.inf


@dataclass
class RunFolder:
    """The run folder as this process writes it: ``run.json``, the logs, ``status.json``."""

    path: Path
    main: bool  # the process that writes the logs and the status (rank 0)
    created: float  # when this process started: with the pid, tells it from a later one
    since: float  # stop requests count from then

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def probes(self) -> Path:
        return self.path / PROBES_FILE

    def start(self, config: FinetuneConfig, done: int, resume: bool) -> None:
        """Create the folder and say the run is running, at step ``done``: a resumed run
        logs again what was logged after its checkpoint; an earlier attempt that ended
        before its first checkpoint leaves no logs behind."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.main:
            return
        if resume:
            _keep_lines(self.metrics, lambda row: _row_step(row) <= done)
            _keep_lines(self.probes, lambda row: _row_step(row) <= done)
        else:
            for leftover in (self.metrics, self.probes):
                leftover.unlink(missing_ok=True)
        save_config(config, self.path)
        clear_stop_request(self.path, self.since)
        write_status(self.path, RunStatus("running", os.getpid(), self.created, done))

    def end(self, status: str, step: int, message: str = "", final: str | None = None) -> None:
        """Say how the run ended (``finished``, ``stopped`` or ``failed``) and at which step."""
        if self.main:
            last = latest_checkpoint(self.path)
            write_status(self.path, RunStatus(status, os.getpid(), self.created, step, message,
                                              final, str(last) if last else None))

    def stop_requested(self) -> bool:
        return stop_requested(self.path, self.since)

    @staticmethod
    def append(path: Path, row: dict) -> None:
        """One line of a JSON-lines log, written as training goes (others follow the file)."""
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _weights_finite(checkpoint: Path) -> bool:
    """Whether every floating-point weight saved in ``checkpoint`` is finite (safetensors
    files; other formats are never unpickled to look)."""
    import torch
    from safetensors import safe_open

    for file in checkpoint.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open has no __iter__)
                tensor = weights.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    return False
    return True


def set_aside_nonfinite(folder: Path) -> tuple[list[str], Path | None]:
    """Rename the newest checkpoints whose weights are not all finite to
    ``nonfinite-checkpoint-N`` (kept, but never resumed), and return their new names and
    the newest checkpoint left, whose weights are all finite."""
    moved = []
    for _, path in reversed(checkpoints(folder)):
        if not checkpoint_complete(path):
            continue
        if _weights_finite(path):
            return moved, path
        target = path.with_name(f"nonfinite-{path.name}")
        os.replace(path, target)
        moved.append(target.name)
    return moved, None


def drop_incomplete_checkpoints(folder: Path) -> list[str]:
    """Remove checkpoint folders newer than the last complete one that were cut short
    (they could never be resumed, and they hold the space that is missing)."""
    last = latest_checkpoint(folder)
    newest = int(last.name.split("-")[-1]) if last else -1
    removed = []
    for step, path in checkpoints(folder):
        if step > newest and not checkpoint_complete(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def save_whole(target: Path, write) -> None:
    """``write(folder)`` into a scratch folder, renamed to ``target`` once it is all there:
    a save cut short leaves no ``target`` that looks finished."""
    scratch = target.with_name(f".{target.name}.incomplete")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        write(str(scratch))
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if target.exists():  # a resumed run that goes further replaces its older final model
        shutil.rmtree(target)
    os.replace(scratch, target)

"""A training run is a process of its own; its folder says how it stands.

The window (or a script) starts ``python -m workbench.train --config RUN/run.json`` in a
session of its own, so the run outlives the window that started it, a crash of either side
loses nothing, and the same command scales out under ``accelerate launch``. Everything
about the run is in its folder, which any process can read:

- ``status.json``: written by the run's main process when it starts and when it ends
  (``running``, ``finished``, ``stopped`` or ``failed``, with the process id, the step, a
  message, the final model and the last checkpoint);
- ``stop-request``: a file whose presence asks the run to stop at the next step boundary
  after saving a complete checkpoint (a signal cannot reach every process of an
  ``accelerate launch`` run, nor a run started by an earlier session of the app);
- ``train.log``: what the process printed.

:func:`run_state` combines the status with whether its process still lives: a run whose
status says ``running`` but whose process is gone (killed, or the machine restarted) was
``interrupted``, and is resumable when it has a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from workbench.core.common.files import write_atomically

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
PROBES_FILE = "probes.jsonl"
FINAL_DIR = "final"
ADAPTER_DIR = "adapter"
STATUS_FILE = "status.json"
STOP_FILE = "stop-request"
LOG_FILE = "train.log"
LAUNCHED_ENV = "LMWB_RUN_LAUNCHED"  # when launch() started the run (stop requests count from it)

STATES = ("running", "finished", "stopped", "failed")


@dataclass
class RunStatus:
    """What ``status.json`` says (written by the run's main process)."""

    state: str  # one of STATES
    pid: int | None = None
    started: float | None = None  # the process's creation time (to tell a reused pid)
    step: int = 0
    message: str = ""
    final_model: str | None = None
    checkpoint: str | None = None


def write_status(folder: Path, status: RunStatus) -> None:
    """Write ``status.json`` atomically (a reader never sees half of it)."""
    write_atomically(folder / STATUS_FILE, json.dumps(asdict(status)))


def read_status(folder: Path) -> RunStatus | None:
    """``status.json`` of ``folder`` with every field type-checked; None when there is none
    or it cannot be read (a damaged file is treated as no status, never an exception)."""
    try:
        data = json.loads((Path(folder) / STATUS_FILE).read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("state") not in STATES:
        return None

    def typed(key: str, kind: type | tuple[type, ...], default=None):
        value = data.get(key)
        return value if isinstance(value, kind) and not isinstance(value, bool) else default

    return RunStatus(state=data["state"], pid=typed("pid", int), started=typed("started",
                     (int, float)), step=typed("step", int, 0), message=typed("message", str, ""),
                     final_model=typed("final_model", str), checkpoint=typed("checkpoint", str))


def this_process_started() -> float | None:
    """When this process was created (psutil's clock), to tell it from a later one with
    the same id."""
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:  # psutil missing or the platform refuses: liveness by pid alone
        return None


def process_alive(pid: int | None, started: float | None) -> bool:
    """Whether the process ``pid`` created at ``started`` still runs."""
    if not pid or pid <= 0:
        return False
    try:
        import psutil

        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) < 1.0
    except Exception:
        return False


@dataclass
class RunState:
    """How a run folder stands now, for the window and the command line."""

    folder: str
    state: str  # prepared | running | finished | stopped | failed | interrupted
    step: int = 0
    message: str = ""
    pid: int | None = None
    checkpoint: str | None = None  # the newest complete checkpoint (not looked for while live)
    final_model: str | None = None

    @property
    def live(self) -> bool:
        return self.state == "running"

    @property
    def resumable(self) -> bool:
        return not self.live and self.state != "finished" and self.checkpoint is not None


def run_state(folder: str | Path) -> RunState:
    """The state of the run in ``folder`` (see the module docstring)."""
    folder = Path(folder).expanduser()
    status = read_status(folder)
    if status is not None and status.state == "running" and \
            process_alive(status.pid, status.started):
        # going: its checkpoints are not looked for (each means parsing its
        # trainer_state.json, and the window asks twice a second)
        return RunState(str(folder), "running", status.step, status.message, status.pid)
    last = latest_checkpoint(folder) if folder.is_dir() else None
    checkpoint = str(last) if last else None
    final = folder / FINAL_DIR
    if status is None:
        state = "finished" if final.is_dir() else "prepared"
        return RunState(str(folder), state, checkpoint=checkpoint,
                        final_model=str(final) if final.is_dir() else None)
    if status.state == "running":  # and its process is gone
        where = f"; resume from {last.name}" if last else "; it had no complete checkpoint yet"
        return RunState(str(folder), "interrupted", status.step,
                        f"The run's process ended without saving (killed or crashed){where}.",
                        status.pid, checkpoint)
    return RunState(str(folder), status.state, status.step, status.message, status.pid,
                    checkpoint, status.final_model)


# --- checkpoints ---------------------------------------------------------------------------------
def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """The ``checkpoint-N`` folders of ``folder``, by step (complete or not)."""
    found = []
    for path in Path(folder).glob("checkpoint-*"):
        try:
            found.append((int(path.name.split("-")[-1]), path))
        except ValueError:
            continue
    return sorted(found)


def checkpoint_complete(path: Path) -> bool:
    """True when the Trainer finished writing ``path``: it writes trainer_state.json last,
    so a checkpoint cut short (a full disk, a crash) has none, or a truncated one."""
    try:
        json.loads((path / "trainer_state.json").read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return False
    return True


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` in ``folder`` (see :func:`checkpoint_complete`)."""
    complete = [path for _, path in checkpoints(folder) if checkpoint_complete(path)]
    return complete[-1] if complete else None


# --- asking a run to stop ------------------------------------------------------------------------
def request_stop(folder: str | Path) -> None:
    """Ask the run in ``folder`` to stop at the next step boundary with a checkpoint."""
    (Path(folder) / STOP_FILE).write_text(f"{time.time()}\n", encoding="utf-8")


def stop_requested(folder: Path, since: float | None) -> bool:
    """Whether a stop was asked for this run: a stop file written after ``since`` (the
    run's start; an older one is left from an earlier session of the run)."""
    try:
        written = (folder / STOP_FILE).stat().st_mtime
    except OSError:
        return False
    return since is None or written >= since


def clear_stop_request(folder: Path, since: float | None) -> None:
    """Remove a stop file older than ``since`` (left by an earlier session of the run)."""
    if not stop_requested(folder, None):
        return
    if since is not None and stop_requested(folder, since):
        return  # asked for this very run, between its launch and its start: keep it
    try:
        (folder / STOP_FILE).unlink()
    except OSError:
        pass


def kill_run(state: RunState) -> bool:
    """End the run's processes at once, without saving ("Stop now"). True when a process
    was signalled."""
    if not state.live or state.pid is None:
        return False
    try:
        if hasattr(os, "killpg"):
            os.killpg(os.getpgid(state.pid), signal.SIGKILL)
        else:  # Windows: the process alone
            os.kill(state.pid, signal.SIGTERM)
    except (OSError, ProcessLookupError):
        return False
    return True


# --- starting one ------------------------------------------------------------------------------
def train_command(config_path: str | Path, resume: bool = False, max_steps: int | None = None,
                  epochs: float | None = None, processes: int = 1,
                  cpu: bool = True) -> list[str]:
    """The command that runs ``config_path`` (a ``run.json``): ``python -m workbench.train``,
    or under ``accelerate launch --num_processes N`` (one process a GPU, or N CPU processes
    sharing the cores, where there is no GPU)."""
    tail = ["-m", "workbench.train", "--config", str(config_path)]
    if resume:
        tail.append("--resume")
    if max_steps is not None:
        tail += ["--max-steps", str(max_steps)]
    if epochs is not None:
        tail += ["--epochs", repr(float(epochs))]
    if processes <= 1:
        return [sys.executable, *tail]
    # accelerate's --cpu runs one process (several need MPI); its multi-process launcher
    # (torchrun) works on the CPU as well, where the run uses gloo.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
              "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision",
              "no", "--dynamo_backend", "no"]
    if cpu:
        launch += ["--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1)
                                                           // processes))]
    return launch + tail


def launch(folder: str | Path, command: list[str]) -> subprocess.Popen:
    """Start ``command`` in a session of its own (it survives the window that started it,
    and a Ctrl-C or SIGKILL of that window), its output appended to ``RUN/train.log``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STOP_FILE).unlink(missing_ok=True)  # asked of an earlier session of the run
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env[LAUNCHED_ENV] = repr(time.time())
    # The run's working folder is the one that holds this package (the project root in a
    # checkout, site-packages in an install), so that `-m workbench` resolves to the same
    # code as the window's even when it is not installed.
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    with open(folder / LOG_FILE, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        log.flush()
        kwargs: dict = {"stdin": subprocess.DEVNULL, "stdout": log, "stderr": subprocess.STDOUT,
                        "env": env, "cwd": str(root)}
        if os.name == "posix":
            kwargs["start_new_session"] = True
        else:
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        return subprocess.Popen(command, **kwargs)

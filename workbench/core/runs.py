"""Reading the progress of a training run folder while another process writes it.

Understands this app's run folders (``metrics.jsonl``), any Hugging Face Trainer output
(``trainer_state.json`` in the folder or its newest checkpoint), and TensorBoard event
files when the ``tensorboard`` package is installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from workbench.core.errors import WorkbenchError

FIELDS = ("loss", "eval_loss", "eval_accuracy", "learning_rate", "grad_norm",
          "samples_per_second")


@dataclass
class RunSnapshot:
    """What a run folder says now: its log rows (dicts with ``step``) and its position."""

    folder: str
    source: str  # "metrics.jsonl" | "trainer_state.json" | "tensorboard"
    rows: list[dict] = field(default_factory=list)
    global_step: int = 0
    max_steps: int | None = None

    def latest(self, key: str) -> float | None:
        for row in reversed(self.rows):
            if row.get(key) is not None:
                return row[key]
        return None

    def to_dict(self) -> dict:
        return {"folder": self.folder, "source": self.source, "global_step": self.global_step,
                "max_steps": self.max_steps, "loss": self.latest("loss"),
                "eval_loss": self.latest("eval_loss"),
                "learning_rate": self.latest("learning_rate"), "rows": len(self.rows)}


def _from_metrics(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return rows


def _trainer_state(folder: Path) -> Path | None:
    if (folder / "trainer_state.json").is_file():
        return folder / "trainer_state.json"
    states = []
    for path in folder.glob("checkpoint-*/trainer_state.json"):
        try:
            states.append((int(path.parent.name.split("-")[-1]), path))
        except ValueError:
            continue
    return max(states)[1] if states else None


def _from_trainer_state(path: Path) -> tuple[list[dict], int, int | None]:
    state = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for entry in state.get("log_history", []):
        row = {"step": entry.get("step", 0), "epoch": entry.get("epoch")}
        for key in FIELDS:
            if key in entry:
                row[key] = entry[key]
        if "train_samples_per_second" in entry:
            row["samples_per_second"] = entry["train_samples_per_second"]
        if "num_input_tokens_seen" in entry:  # a Trainer that counts tokens also logs
            row["tokens"] = entry["num_input_tokens_seen"]  # the time since its start
            if "train_runtime" in entry:
                row["seconds"] = entry["train_runtime"]
        if len(row) > 2:
            rows.append(row)
    return rows, int(state.get("global_step", 0)), state.get("max_steps")


def _from_tensorboard(folder: Path) -> list[dict] | None:
    events = list(folder.rglob("events.out.tfevents.*"))
    if not events:
        return None
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise WorkbenchError(f"{folder} has TensorBoard event files; install the "
                             "'tensorboard' package to read them.") from None
    by_step: dict[int, dict] = {}
    names = {"train/loss": "loss", "eval/loss": "eval_loss", "train/learning_rate":
             "learning_rate", "train/grad_norm": "grad_norm", "eval/accuracy": "eval_accuracy",
             "loss": "loss", "learning_rate": "learning_rate",
             "train/num_input_tokens_seen": "tokens"}
    loss_times: dict[int, float] = {}
    for event_file in events:
        acc = EventAccumulator(str(event_file.parent))
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            key = names.get(tag)
            if key is None:
                continue
            for scalar in acc.Scalars(tag):
                by_step.setdefault(scalar.step, {"step": scalar.step})[key] = scalar.value
                if key == "loss":
                    loss_times[scalar.step] = scalar.wall_time
    if loss_times:  # when each training loss was written: the run's speed
        start = min(loss_times.values())
        for step, wall_time in loss_times.items():
            by_step[step]["seconds"] = wall_time - start
    return [by_step[s] for s in sorted(by_step)]


def read_run(folder: str | Path) -> RunSnapshot:
    """The current state of the run in ``folder`` (see the module docstring)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise WorkbenchError(f"Run folder not found: {folder}")
    metrics = folder / "metrics.jsonl"
    run_file = folder / "run.json"
    max_steps = None
    if metrics.is_file():
        rows = _from_metrics(metrics)
        state = _trainer_state(folder)
        if state is not None:
            max_steps = _from_trainer_state(state)[2]
        if rows and rows[-1].get("max_steps"):
            max_steps = rows[-1]["max_steps"]
        step = max((r.get("step", 0) for r in rows), default=0)
        return RunSnapshot(str(folder), "metrics.jsonl", rows, step, max_steps)
    state = _trainer_state(folder)
    if state is not None:
        rows, step, max_steps = _from_trainer_state(state)
        return RunSnapshot(str(folder), "trainer_state.json", rows, step, max_steps)
    rows_tb = _from_tensorboard(folder)
    if rows_tb is not None:
        step = max((r["step"] for r in rows_tb), default=0)
        return RunSnapshot(str(folder), "tensorboard", rows_tb, step, None)
    if run_file.is_file():
        return RunSnapshot(str(folder), "metrics.jsonl", [], 0, None)  # started, nothing yet
    raise WorkbenchError(f"{folder} is not a training run: no metrics.jsonl, "
                         "trainer_state.json or TensorBoard event files.")

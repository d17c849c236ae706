"""What a run reports as it trains: logged rows and probe texts, and their one-line text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainLog:
    """One logged row: training loss rows and evaluation rows both come as TrainLog."""

    step: int
    max_steps: int
    epoch: float
    loss: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    samples_per_second: float | None = None
    seconds: float = 0.0  # since the start of this session of training
    tokens: int | None = None  # input tokens trained on so far, padding not counted


@dataclass(frozen=True)
class ProbeText:
    step: int
    prompt: str
    text: str


def format_train_log(event: Any) -> str | None:
    """One line of a run's output for a log row or a probe (the CLI and train.log)."""
    if isinstance(event, TrainLog):
        parts = [f"step {event.step}/{event.max_steps}"]
        if event.loss is not None:
            parts.append(f"loss {event.loss:.4f}")
        if event.eval_loss is not None:
            parts.append(f"eval_loss {event.eval_loss:.4f}")
        if event.eval_accuracy is not None:
            parts.append(f"accuracy {event.eval_accuracy:.3f}")
        if event.learning_rate is not None:
            parts.append(f"lr {event.learning_rate:.2e}")
        return "  ".join(parts)
    if isinstance(event, ProbeText):
        return f"  probe @{event.step} {event.prompt!r} -> {event.text!r}"
    return None

"""What long jobs report while they run, and how they are cancelled.

A job is a plain function. It either returns its result directly or is a generator
that yields events (:class:`Progress`, :class:`LogLine`, or a job-specific event such as
a generated token) and returns its result. Callback-driven work (a streamer, a Trainer
callback) reports through :meth:`JobContext.emit` instead. Tests drive jobs directly::

    events = []
    result = run_job(load_model_job("SmolLM2-135M-Instruct"), events.append)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from workbench.core.common.errors import Cancelled


@dataclass(frozen=True)
class Progress:
    """How far a job is: ``fraction`` in [0, 1], or None when unknown."""

    message: str
    fraction: float | None = None


@dataclass(frozen=True)
class LogLine:
    """A line for the log panel."""

    message: str
    level: str = "info"


class CancelToken:
    """A cooperative cancel flag, checked by jobs between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


@dataclass
class JobContext:
    """Handed to every job: the cancel token and a sink for events."""

    cancel: CancelToken = field(default_factory=CancelToken)
    emit: Callable[[Any], None] = lambda event: None

    def progress(self, message: str, fraction: float | None = None) -> None:
        self.emit(Progress(message, fraction))

    def log(self, message: str, level: str = "info") -> None:
        self.emit(LogLine(message, level))


JobFunction = Callable[[JobContext], Any]


def drive(job: JobFunction, ctx: JobContext) -> Any:
    """Run ``job`` with ``ctx``: events it yields go to ``ctx.emit``; returns its result.

    Raises :class:`Cancelled` if the token is cancelled between two events.
    """
    outcome = job(ctx)
    if not isinstance(outcome, Generator):
        return outcome
    try:
        while True:
            ctx.cancel.raise_if_cancelled()
            ctx.emit(next(outcome))
    except StopIteration as stop:
        return stop.value
    finally:
        outcome.close()


def run_job(job: JobFunction, on_event: Callable[[Any], None] | None = None,
            cancel: CancelToken | None = None) -> Any:
    """Run ``job`` to completion on this thread, passing every event to ``on_event``."""
    return drive(job, JobContext(cancel=cancel or CancelToken(),
                                 emit=on_event or (lambda event: None)))


def stop_on_signals(ctx: JobContext, say: Callable[[str], None] = print) -> None:
    """The first Ctrl-C (or SIGTERM) cancels ``ctx`` (a training run then stops at the next
    step boundary with a checkpoint); the second raises KeyboardInterrupt: leave at once.
    Main thread only."""
    import signal

    def handler(signum, frame):
        if ctx.cancel.cancelled:
            raise KeyboardInterrupt
        ctx.cancel.cancel()
        say("Stopping at the end of this step: saving a checkpoint… (Ctrl-C again to leave "
            "at once, without it)")

    for name in ("SIGINT", "SIGTERM"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handler)

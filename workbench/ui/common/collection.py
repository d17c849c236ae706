"""Python's garbage collection in the window: on the GUI thread only, full collections
when the model workers are idle, and none while a reader thread makes many objects."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from PySide6.QtCore import QObject


class GuiThreadCollector(QObject):
    """Python's cyclic garbage collection, done on the GUI thread only.

    Automatic collection runs in whichever thread happens to allocate; on the worker it can
    finalize Qt objects of the window there, a deadlock or a crash (it deadlocked the test
    suite). So automatic collection is off, and a 100 ms timer on the GUI thread collects
    the young generations on Python's own thresholds: often enough that each collection
    is small (checked once a second, collections of what a model load or a generation
    allocates took 40-270 ms).

    A full collection of everything torch and transformers allocate holds the interpreter
    for about 0.4 s, so full collections wait until the worker is idle, and what survives
    one is frozen (``gc.freeze``): later ones only look at newer objects. After a model is
    loaded or unloaded, everything is unfrozen and collected once (some models, MiniLM
    among them, hold reference cycles and are only freed that way), and so is everything
    at the first full collection five minutes after that (cycles that died while frozen).

    ``gc.collect()`` called on any other thread (accelerate's ``free_memory`` does, at the
    start of every ``Trainer.train``: it stalled the window 0.55 s) collects nothing there
    and asks for a full collection here instead.
    """

    def __init__(self, interval_ms: int = 100) -> None:
        super().__init__()
        from PySide6.QtCore import QTimer

        self.threshold = gc.get_threshold()
        self.full_requested = False
        self.unfreeze_requested = False
        self.unfrozen_at = time.monotonic()
        self.collect = gc.collect  # the interpreter's own, before it is wrapped
        gc.disable()
        gc.collect = self._collect_here_only  # type: ignore[assignment]
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.check)
        self.timer.start(interval_ms)

    def _collect_here_only(self, generation: int = 2) -> int:
        if threading.current_thread() is threading.main_thread():
            return self.collect(generation)
        self.full_requested = self.full_requested or generation == 2
        return 0

    def check(self) -> None:
        if _readers_busy:  # see bulk_reading
            return
        young, middle, old = gc.get_count()
        if young > self.threshold[0]:
            self.collect(0)
            if middle > self.threshold[1]:
                self.collect(1)
                if old > self.threshold[2]:
                    self.full_requested = True
        if self.full_requested and not any(worker.busy for worker in list(_workers)):
            self.full_requested = False
            if self.unfreeze_requested or time.monotonic() - self.unfrozen_at > 300:
                self.unfreeze_requested = False  # and what has died since the freeze goes
                self.unfrozen_at = time.monotonic()
                gc.unfreeze()
            self.collect(2)
            gc.freeze()


_collector: GuiThreadCollector | None = None
# the model workers: full collections wait until none is busy (each registers itself)
_workers: weakref.WeakSet[Any] = weakref.WeakSet()
_readers_busy = 0  # background threads allocating many objects now (see bulk_reading)


@contextmanager
def bulk_reading() -> Iterator[None]:
    """Around work on another thread that makes many objects (reading a long run, a
    million of them): the GUI thread's collections wait until it is done (each would pause
    the window to look at objects still being made), and then what was made is frozen
    (``gc.freeze``, as after every full collection): collections never look at it again,
    and it is freed as usual when no longer referenced."""
    global _readers_busy
    _readers_busy += 1
    try:
        yield
    finally:
        _readers_busy -= 1
        if _collector is not None and not _readers_busy:
            gc.freeze()


def gui_thread_garbage_collection() -> GuiThreadCollector:
    """Start the app's :class:`GuiThreadCollector` (once; call from the GUI thread)."""
    global _collector
    if _collector is None:
        _collector = GuiThreadCollector()
    return _collector


def request_full_collection() -> None:
    """A model was loaded or unloaded: ask for a full collection of everything, frozen
    objects too, on the GUI thread when the worker is next idle (nothing happens where the
    app's collector is not running, as with a bare worker in a test)."""
    if _collector is not None:
        _collector.unfreeze_requested = True
        _collector.full_requested = True

"""The model worker: one long-lived thread that owns the loaded model and runs jobs.

GPU memory belongs to one thread, so every model job runs here, one at a time, from a
queue. Jobs are the Qt-free functions of ``workbench.core`` (see ``core/common/jobs.py``); the
worker forwards their events to the GUI as signals and turns exceptions into an error
signal, so the window shows a dialog and the next job still works.
"""

from __future__ import annotations

import gc
import itertools
import queue
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal

from workbench.core.common.errors import Cancelled
from workbench.core.common.jobs import CancelToken, JobContext, LogLine, drive
from workbench.core.common.threads import adapted_threads
from workbench.core.models.loader import LoadedModel, LoadOptions, load_model_job


@dataclass
class WorkerContext(JobContext):
    """A job's context on the worker: cancel token, event sink and the model store."""

    store: ModelStore | None = None

    def model(self, reference: str | None = None, options: LoadOptions | None = None
              ) -> LoadedModel:
        """The loaded model (loading ``reference`` first if it is not the current one)."""
        assert self.store is not None
        return self.store.require(self, reference, options)


class ModelStore:
    """The worker thread's loaded model. Only the worker thread touches it."""

    def __init__(self) -> None:
        self.current: LoadedModel | None = None
        # The decoding path the model bar asks for: set from the GUI thread (one string,
        # replaced whole), given to the model by each job that takes it (workbench.core.models.decoding).
        self.decode = "auto"

    def load(self, ctx: JobContext, reference: str, options: LoadOptions) -> LoadedModel:
        # The old model stays usable until the new one has loaded.
        loaded = drive(load_model_job(reference, options), ctx)
        self.unload()
        loaded.decode = self.decode
        self.current = loaded
        request_full_collection()
        return loaded

    def require(self, ctx: JobContext, reference: str | None, options: LoadOptions | None,
                ) -> LoadedModel:
        from workbench.core.common.errors import WorkbenchError

        current = self.current
        if reference is not None and (current is None or current.reference != reference
                                      or (options is not None and current.options != options)):
            current = self.load(ctx, reference, options or LoadOptions())
        if current is None:
            raise WorkbenchError("No model is loaded: pick one in the model bar and press Load.")
        current.decode = self.decode
        return current

    def unload(self) -> None:
        # No collection on this thread: it can finalize Qt objects of the window, which
        # deadlocks against the GUI thread (it did, in the test suite). The GUI thread is
        # asked for a full collection instead: some models (MiniLM) hold reference cycles
        # and are only freed by one.
        if self.current is not None:
            self.current = None
            request_full_collection()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def share_malloc_arena() -> None:
    """Let every thread allocate from glibc's main malloc arena (``M_ARENA_MAX`` 1).

    By default a new thread gets an arena of its own, made of 64 MB heaps; MiniLM trained
    about 5% slower on a worker thread than on the main thread here (4.05 vs 4.28 steps/s,
    slower in each of 4 alternating pairs), and as fast with one arena (4.39 vs 4.43).
    Must run before the worker thread starts; does nothing where the C library is not glibc.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, 1)  # M_ARENA_MAX in glibc's malloc.h
    except (OSError, AttributeError):
        pass


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
_workers: weakref.WeakSet[ModelWorker] = weakref.WeakSet()
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


@dataclass
class Job:
    id: int
    title: str
    function: Callable[[WorkerContext], Any]
    cancel: CancelToken = field(default_factory=CancelToken)


class JobHandle(QObject):
    """One submitted job, owned by the page that started it (its Qt parent): its own
    signals, delivered on the GUI thread, so no page sees another page's jobs. ``ended``
    follows whichever of ``finished``, ``failed`` or ``cancelled`` came."""

    event = Signal(object)
    finished = Signal(object)
    failed = Signal(object, str)  # the exception, the traceback text
    cancelled = Signal()
    ended = Signal()

    def __init__(self, worker: ModelWorker, job: Job) -> None:
        super().__init__()
        self.id, self.title = job.id, job.title
        self.done = False
        self._cancel = job.cancel

    def cancel(self) -> None:
        """Cancel this job: at its next check if it runs, before it starts if queued."""
        self._cancel.cancel()


def own_job(owner: QObject, worker: ModelWorker, title: str,
            function: Callable[[WorkerContext], Any], *,
            finished: Callable[[Any], None] | None = None,
            failed: Callable[[Any, str], None] | None = None,
            cancelled: Callable[[], None] | None = None,
            event: Callable[[Any], None] | None = None) -> JobHandle:
    """Submit ``function`` to ``worker`` as a job that belongs to ``owner``: the handle is
    its child, and the given slots get that job's event, result, failure or cancel only."""
    handle = worker.submit(title, function)
    handle.setParent(owner)
    for signal, slot in ((handle.event, event), (handle.finished, finished),
                         (handle.failed, failed), (handle.cancelled, cancelled)):
        if slot is not None:
            signal.connect(slot)
    return handle


class ModelWorker(QThread):
    """Runs jobs one at a time; all signals arrive in the GUI thread (queued). Each job's
    own signals come on its :class:`JobHandle`; the worker-wide ones (any job) are for the
    window's status bar and log."""

    job_started = Signal(int, str)
    job_event = Signal(int, object)
    job_finished = Signal(int, object)
    job_failed = Signal(int, object, str)  # job id, the exception, the traceback text
    job_cancelled = Signal(int)
    model_changed = Signal(object)  # LoadedModel or None
    idle = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("model-worker")
        self.store = ModelStore()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._current: Job | None = None
        self._pending: list[Job] = []
        self._handles: dict[int, JobHandle] = {}
        # each job's signals reach its handle on the GUI thread (the worker object lives
        # there, so these connections are queued like every other)
        self.job_event.connect(self._route_event)
        self.job_finished.connect(self._route_finished)
        self.job_failed.connect(self._route_failed)
        self.job_cancelled.connect(self._route_cancelled)
        _workers.add(self)
        share_malloc_arena()  # before the thread starts (its first allocation picks one)

    # --- called from the GUI thread -------------------------------------------------
    def submit(self, title: str, function: Callable[[WorkerContext], Any]) -> JobHandle:
        """Queue a job; returns its handle (see :func:`own_job` to give it an owner). Jobs
        run in the order submitted."""
        job = Job(next(self._ids), title, function)
        handle = JobHandle(self, job)
        self._handles[job.id] = handle
        with self._lock:
            self._pending.append(job)
        self._queue.put(job)
        if not self.isRunning():
            self.start()
        return handle

    def _route_event(self, job_id: int, event: object) -> None:
        handle = self._handles.get(job_id)
        if handle is not None:
            handle.event.emit(event)

    def _end(self, job_id: int) -> JobHandle | None:
        handle = self._handles.pop(job_id, None)
        if handle is not None:
            handle.done = True
        return handle

    def _route_finished(self, job_id: int, result: object) -> None:
        handle = self._end(job_id)
        if handle is not None:
            handle.finished.emit(result)
            handle.ended.emit()
            handle.deleteLater()  # its owner has let go of it by now

    def _route_failed(self, job_id: int, error: object, details: str) -> None:
        handle = self._end(job_id)
        if handle is not None:
            handle.failed.emit(error, details)
            handle.ended.emit()
            handle.deleteLater()  # its owner has let go of it by now

    def _route_cancelled(self, job_id: int) -> None:
        handle = self._end(job_id)
        if handle is not None:
            handle.cancelled.emit()
            handle.ended.emit()
            handle.deleteLater()  # its owner has let go of it by now

    def submit_load(self, reference: str, options: LoadOptions) -> JobHandle:
        """Queue loading ``reference`` as the current model."""

        def load(ctx: WorkerContext) -> LoadedModel:
            assert ctx.store is not None
            model = ctx.store.load(ctx, reference, options)
            return model

        return self.submit(f"Load {reference}", load)

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._current is not None or bool(self._pending)

    def cancel(self, all_jobs: bool = False) -> None:
        """Cancel the running job (and the queued ones with ``all_jobs``)."""
        with self._lock:
            if self._current is not None:
                self._current.cancel.cancel()
            if all_jobs:
                for job in self._pending:
                    job.cancel.cancel()

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        """Cancel everything, stop the thread, and wait; True if it stopped in time."""
        self.cancel(all_jobs=True)
        self._queue.put(None)
        if not self.isRunning():
            return True
        return self.wait(timeout_ms)

    # --- the worker thread ----------------------------------------------------------
    def run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                break
            with self._lock:
                if job in self._pending:
                    self._pending.remove(job)
                self._current = job
            announce: Callable[[], None] | None = None
            try:
                announce = self._run_one(job)
            finally:
                # The job is over before its end is announced: a handler of the end (on
                # the GUI thread) sees the worker idle unless another job is queued.
                with self._lock:
                    self._current = None
                    more = bool(self._pending)
                if announce is not None:
                    announce()
                if not more:
                    self.idle.emit()
        self.store.current = None

    def _run_one(self, job: Job) -> Callable[[], None]:
        """Run ``job``; return what announces its end (called once it is no longer current)."""
        if job.cancel.cancelled:
            return lambda: self.job_cancelled.emit(job.id)
        self.job_started.emit(job.id, job.title)
        before = self.store.current
        ctx = WorkerContext(cancel=job.cancel, emit=lambda ev: self.job_event.emit(job.id, ev),
                            store=self.store)
        outcome: Any = None
        error: BaseException | None = None
        details = ""
        cancelled = False
        try:
            with adapted_threads(leave=1):  # the cores others leave, less the window's
                outcome = drive(job.function, ctx)
        except Cancelled:
            cancelled = True
        except BaseException as exc:  # every failure becomes a dialog, never a dead thread
            error, details = exc, traceback.format_exc()
        # The model change reaches the GUI before the job's end, so a handler of the end
        # already sees the new model.
        if self.store.current is not before:
            self.model_changed.emit(self.store.current)
        if cancelled:
            return lambda: self.job_cancelled.emit(job.id)
        if error is not None:
            failure = error

            def announce_failure() -> None:
                self.job_event.emit(job.id, LogLine(f"{job.title} failed: {failure}", "error"))
                self.job_failed.emit(job.id, failure, details)
            return announce_failure
        return lambda: self.job_finished.emit(job.id, outcome)

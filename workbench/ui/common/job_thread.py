"""Background work in the window: a :class:`JobThread` runs jobs one at a time, each job's
signals come on a :class:`JobHandle` its page owns, and a :class:`JobSlot` holds a page's job
of one kind while it runs (as superqt's ``thread_worker`` and Orange's
``ConcurrentWidgetMixin`` do).

The model worker is one such thread (``worker.py``); the model bar's discovery and the
Fine-tune tab's run reader have threads of their own, so neither waits behind a generation.
A handle is its owner's Qt child: when the owner is destroyed, the handle and its
connections go with it (no callback reaches a closed window), and a thread made for that
owner stops.
"""

from __future__ import annotations

import atexit
import itertools
import queue
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal
from shiboken6 import isValid

from workbench.core.common.errors import Cancelled
from workbench.core.common.jobs import CancelToken, JobContext, LogLine, drive


@dataclass
class Job:
    id: int
    title: str
    function: Callable[[Any], Any]
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

    def __init__(self, thread: JobThread, job: Job) -> None:
        super().__init__()
        self.id, self.title = job.id, job.title
        self.done = False
        self._cancel = job.cancel

    def cancel(self) -> None:
        """Cancel this job: at its next check if it runs, before it starts if queued."""
        self._cancel.cancel()


def own_job(owner: QObject, thread: JobThread, title: str,
            function: Callable[[Any], Any], *,
            finished: Callable[[Any], None] | None = None,
            failed: Callable[[Any, str], None] | None = None,
            cancelled: Callable[[], None] | None = None,
            event: Callable[[Any], None] | None = None) -> JobHandle:
    """Submit ``function`` to ``thread`` as a job that belongs to ``owner``: the handle is
    its child, and the given slots get that job's event, result, failure or cancel only."""
    handle = thread.submit(title, function)
    handle.setParent(owner)
    for signal, slot in ((handle.event, event), (handle.finished, finished),
                         (handle.failed, failed), (handle.cancelled, cancelled)):
        if slot is not None:
            signal.connect(slot)
    return handle


class JobSlot:
    """A page's job of one kind (a generation, the perplexity, a read of the run folders):
    ``handle`` while it runs, else None. The slot lets go of the handle when the job ends,
    before the page's own end handlers run, so a handler already sees no job running (and
    may start the next); no page clears a job field by hand."""

    def __init__(self, owner: QObject, thread: JobThread) -> None:
        self.owner, self.thread = owner, thread
        self.handle: JobHandle | None = None

    @property
    def running(self) -> bool:
        return self.handle is not None

    def start(self, title: str, function: Callable[[Any], Any], *,
              finished: Callable[[Any], None] | None = None,
              failed: Callable[[Any, str], None] | None = None,
              cancelled: Callable[[], None] | None = None,
              event: Callable[[Any], None] | None = None) -> JobHandle:
        """Submit ``function`` (see :func:`own_job`) as this slot's job."""
        handle = own_job(self.owner, self.thread, title, function, event=event)
        return self.hold(handle, finished=finished, failed=failed, cancelled=cancelled)

    def hold(self, handle: JobHandle, *,
             finished: Callable[[Any], None] | None = None,
             failed: Callable[[Any, str], None] | None = None,
             cancelled: Callable[[], None] | None = None) -> JobHandle:
        """Hold ``handle``, a job already submitted (it becomes the owner's child); the
        given slots run after the slot has let go of it."""
        handle.setParent(self.owner)
        self.handle = handle
        for signal, slot in ((handle.finished, finished), (handle.failed, failed),
                             (handle.cancelled, cancelled)):
            signal.connect(lambda *_, ended=handle: self._ended(ended))  # first
            if slot is not None:
                signal.connect(slot)
        return handle

    def _ended(self, handle: JobHandle) -> None:
        if self.handle is handle:
            self.handle = None

    def cancel(self) -> None:
        """Cancel the job, if one runs; the slot holds it until it has ended."""
        if self.handle is not None:
            self.handle.cancel()

    def drop(self) -> None:
        """Cancel the job, if one runs, and let go of it now (a new one may start at once;
        the old one's handlers still run when it ends)."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


_running: set[JobThread] = set()  # started threads: never deleted before they stop


@atexit.register
def _stop_running_threads() -> None:
    for thread in list(_running):
        if isValid(thread):  # (a worker's parent may have deleted it, stopped, already)
            thread.shutdown(5000)


class JobThread(QThread):
    """Runs jobs one at a time, from a queue; all signals arrive in the GUI thread
    (queued). Each job's own signals come on its :class:`JobHandle`; the thread-wide ones
    (any job) are for the window's status bar and log. With an ``owner``, the thread stops
    (after the job under way) when the owner is destroyed."""

    job_started = Signal(int, str)
    job_event = Signal(int, object)
    job_finished = Signal(int, object)
    job_failed = Signal(int, object, str)  # job id, the exception, the traceback text
    job_cancelled = Signal(int)
    idle = Signal()

    def __init__(self, name: str, owner: QObject | None = None) -> None:
        super().__init__()
        self.setObjectName(name)
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._current: Job | None = None
        self._pending: list[Job] = []
        self._handles: dict[int, JobHandle] = {}
        # each job's signals reach its handle on the GUI thread (the thread object lives
        # there, so these connections are queued like every other)
        self.job_event.connect(self._route_event)
        self.job_finished.connect(self._route_finished)
        self.job_failed.connect(self._route_failed)
        self.job_cancelled.connect(self._route_cancelled)
        self.finished.connect(self._forget)
        if owner is not None:
            owner.destroyed.connect(self.stop)

    # --- called from the GUI thread -------------------------------------------------
    def submit(self, title: str, function: Callable[[Any], Any]) -> JobHandle:
        """Queue a job; returns its handle (see :func:`own_job` to give it an owner). Jobs
        run in the order submitted."""
        job = Job(next(self._ids), title, function)
        handle = JobHandle(self, job)
        self._handles[job.id] = handle
        with self._lock:
            self._pending.append(job)
        self._queue.put(job)
        if not self.isRunning():
            _running.add(self)
            self.start()
        return handle

    def _handle(self, job_id: int, end: bool = False) -> JobHandle | None:
        """The job's handle, if its owner has not destroyed it (``end``: let go of it)."""
        handle = self._handles.pop(job_id, None) if end else self._handles.get(job_id)
        if handle is None or not isValid(handle):
            return None
        if end:
            handle.done = True
        return handle

    def _route_event(self, job_id: int, event: object) -> None:
        handle = self._handle(job_id)
        if handle is not None:
            handle.event.emit(event)

    def _route_finished(self, job_id: int, result: object) -> None:
        handle = self._handle(job_id, end=True)
        if handle is not None:
            handle.finished.emit(result)
            handle.ended.emit()
            handle.deleteLater()  # its owner has let go of it by now

    def _route_failed(self, job_id: int, error: object, details: str) -> None:
        handle = self._handle(job_id, end=True)
        if handle is not None:
            handle.failed.emit(error, details)
            handle.ended.emit()
            handle.deleteLater()  # its owner has let go of it by now

    def _route_cancelled(self, job_id: int) -> None:
        handle = self._handle(job_id, end=True)
        if handle is not None:
            handle.cancelled.emit()
            handle.ended.emit()
            handle.deleteLater()  # its owner has let go of it by now

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

    def stop(self, *_args: object) -> None:
        """Cancel everything and let the thread end, without waiting (its owner is gone:
        no handle hears of its jobs any more)."""
        self._handles.clear()
        self.cancel(all_jobs=True)
        self._queue.put(None)

    def shutdown(self, timeout_ms: int = 5000) -> bool:
        """Cancel everything, stop the thread, and wait; True if it stopped in time."""
        self.cancel(all_jobs=True)
        self._queue.put(None)
        stopped = not self.isRunning() or self.wait(timeout_ms)
        if stopped:
            _running.discard(self)
        return stopped

    def _forget(self) -> None:
        """The thread has ended: it may be deleted once its last step is done."""
        self.wait()
        _running.discard(self)

    # --- the job thread -------------------------------------------------------------
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
                # the GUI thread) sees the thread idle unless another job is queued.
                with self._lock:
                    self._current = None
                    more = bool(self._pending)
                if announce is not None:
                    announce()
                if not more:
                    self.idle.emit()

    def context(self, job: Job) -> JobContext:
        """The context ``job`` runs with: its cancel token, its events to its handle."""
        return JobContext(cancel=job.cancel, emit=lambda ev: self.job_event.emit(job.id, ev))

    def execute(self, job: Job, ctx: JobContext) -> Any:
        """Run ``job``'s function (a subclass adds what surrounds every job)."""
        return drive(job.function, ctx)

    def _run_one(self, job: Job) -> Callable[[], None]:
        """Run ``job``; return what announces its end (called once it is no longer current)."""
        if job.cancel.cancelled:
            return lambda: self.job_cancelled.emit(job.id)
        self.job_started.emit(job.id, job.title)
        outcome: Any = None
        try:
            outcome = self.execute(job, self.context(job))
        except Cancelled:
            return lambda: self.job_cancelled.emit(job.id)
        except BaseException as exc:  # every failure becomes a dialog, never a dead thread
            failure, details = exc, traceback.format_exc()

            def announce_failure() -> None:
                self.job_event.emit(job.id, LogLine(f"{job.title} failed: {failure}", "error"))
                self.job_failed.emit(job.id, failure, details)
            return announce_failure
        return lambda: self.job_finished.emit(job.id, outcome)

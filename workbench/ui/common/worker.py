"""The model worker: one long-lived thread that owns the loaded model and runs jobs.

GPU memory belongs to one thread, so every model job runs here, one at a time, from a
queue (a :class:`~workbench.ui.common.job_thread.JobThread`). Jobs are the Qt-free functions
of ``workbench.core`` (see ``core/common/jobs.py``); the worker forwards their events to the
GUI as signals and turns exceptions into an error signal, so the window shows a dialog and
the next job still works.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Signal

from workbench.core.common.jobs import JobContext, drive
from workbench.core.common.threads import adapted_threads
from workbench.core.models.loader import LoadedModel, LoadOptions, load_model_job
from workbench.ui.common import collection
from workbench.ui.common.collection import request_full_collection
from workbench.ui.common.job_thread import Job, JobHandle, JobThread


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



class ModelWorker(JobThread):
    """The job thread that owns the loaded model (see :class:`JobThread` for the jobs, their
    handles and the signals of any job); ``model_changed`` says when a job changed it."""

    model_changed = Signal(object)  # LoadedModel or None

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__("model-worker")
        if parent is not None:
            self.setParent(parent)
        self.store = ModelStore()
        collection._workers.add(self)  # full collections wait until it is idle
        share_malloc_arena()  # before the thread starts (its first allocation picks one)

    def submit(self, title: str, function: Callable[[WorkerContext], Any]) -> JobHandle:
        """Queue a job; returns its handle (see :func:`own_job` to give it an owner). Jobs
        run in the order submitted."""
        return super().submit(title, function)

    def submit_load(self, reference: str, options: LoadOptions) -> JobHandle:
        """Queue loading ``reference`` as the current model."""

        def load(ctx: WorkerContext) -> LoadedModel:
            assert ctx.store is not None
            model = ctx.store.load(ctx, reference, options)
            return model

        return self.submit(f"Load {reference}", load)

    # --- the worker thread ----------------------------------------------------------
    def run(self) -> None:
        super().run()
        self.store.current = None

    def context(self, job: Job) -> WorkerContext:
        return WorkerContext(cancel=job.cancel,
                             emit=lambda ev: self.job_event.emit(job.id, ev), store=self.store)

    def execute(self, job: Job, ctx: JobContext) -> Any:
        before = self.store.current
        try:
            with adapted_threads(leave=1):  # the cores others leave, less the window's
                return drive(job.function, ctx)
        finally:
            # The model change reaches the GUI before the job's end, so a handler of the
            # end already sees the new model.
            if self.store.current is not before:
                self.model_changed.emit(self.store.current)

"""The model worker: one thread, jobs in order, errors and cancels reported, clean stop."""

import threading
import time

import pytest

from workbench.core.common.errors import Cancelled
from workbench.core.common.jobs import Progress
from workbench.ui.common.worker import ModelWorker


@pytest.fixture
def worker(qtbot):
    w = ModelWorker()
    yield w
    assert w.shutdown(5000)


def slow_job(steps=1000, delay=0.01):
    def job(ctx):
        for i in range(steps):
            time.sleep(delay)
            yield Progress(f"step {i}", i / steps)
        return "finished"

    return job


def test_jobs_run_in_order_on_one_worker_thread(qtbot, worker):
    threads, results = [], []
    worker.job_finished.connect(lambda job_id, result: results.append(result))

    def job(n):
        return lambda ctx: threads.append(threading.get_ident()) or n

    worker.submit("one", job(1))
    with qtbot.waitSignal(worker.idle, timeout=5000):
        worker.submit("two", job(2))
    qtbot.waitUntil(lambda: len(results) == 2)
    assert results == [1, 2]
    assert len(set(threads)) == 1 and threads[0] != threading.get_ident()


def test_a_failing_job_reports_and_the_next_one_works(qtbot, worker):
    failures = []
    worker.job_failed.connect(lambda job_id, error, details: failures.append((error, details)))

    def broken(ctx):
        raise ValueError("bad input in job")

    with qtbot.waitSignal(worker.job_failed, timeout=5000):
        worker.submit("broken", broken)
    error, details = failures[0]
    assert isinstance(error, ValueError) and "bad input in job" in details
    with qtbot.waitSignal(worker.job_finished, timeout=5000) as blocker:
        worker.submit("fine", lambda ctx: "ok")
    assert blocker.args[1] == "ok"


def test_even_system_exit_in_a_job_does_not_kill_the_worker(qtbot, worker):
    with qtbot.waitSignal(worker.job_failed, timeout=5000):
        worker.submit("exits", lambda ctx: (_ for _ in ()).throw(SystemExit("no")))
    with qtbot.waitSignal(worker.job_finished, timeout=5000):
        worker.submit("fine", lambda ctx: 1)


def test_cancel_stops_a_running_job_within_a_step(qtbot, worker):
    events = []
    worker.job_event.connect(lambda job_id, event: events.append(event))
    with qtbot.waitSignal(worker.job_started, timeout=5000):
        handle = worker.submit("slow", slow_job())
    qtbot.waitUntil(lambda: len(events) >= 3, timeout=5000)
    worker.cancel()
    seen_at_cancel = [e.message for e in events]
    with qtbot.waitSignal(worker.job_cancelled, timeout=5000) as blocker:
        pass
    assert blocker.args == [handle.id]
    # within one step: at most the step already under way reports after the cancel
    # (events still queued for the GUI at the moment of cancel are counted generously)
    last = int(seen_at_cancel[-1].split()[-1])
    assert all(int(e.message.split()[-1]) <= last + 2 for e in events)
    assert not worker.busy


def test_a_handler_of_a_jobs_end_sees_the_worker_idle(qtbot, worker):
    """The window enables its controls on a job's end: the worker must not still look busy."""
    from PySide6.QtCore import Qt

    # direct connections run at the moment of the announcement, on the worker's thread:
    # the window's (queued) handlers run later still, so they see at least this
    seen = []
    direct = Qt.ConnectionType.DirectConnection
    worker.job_finished.connect(lambda *args: seen.append(("finished", worker.busy)), direct)
    worker.job_failed.connect(lambda *args: seen.append(("failed", worker.busy)), direct)
    worker.job_cancelled.connect(lambda *args: seen.append(("cancelled", worker.busy)), direct)
    for _ in range(10):
        with qtbot.waitSignal(worker.job_finished, timeout=5000):
            worker.submit("fine", lambda ctx: 1)
        with qtbot.waitSignal(worker.job_failed, timeout=5000):
            worker.submit("fails", lambda ctx: 1 / 0)
        with qtbot.waitSignal(worker.job_cancelled, timeout=5000):
            worker.submit("cancelled", lambda ctx: (_ for _ in ()).throw(Cancelled()))
    assert len(seen) == 30 and not any(busy for _, busy in seen), seen


def test_shutdown_cancels_running_and_queued_jobs(qtbot):
    worker = ModelWorker()
    finished = []
    worker.job_finished.connect(lambda *args: finished.append(args))
    with qtbot.waitSignal(worker.job_started, timeout=5000):
        worker.submit("slow", slow_job())
    worker.submit("queued", lambda ctx: "should not run")
    start = time.monotonic()
    assert worker.shutdown(5000)
    assert time.monotonic() - start < 5
    assert worker.isFinished()
    qtbot.wait(50)
    assert finished == []


def test_garbage_is_collected_on_the_gui_thread_only(qtbot):
    import gc

    from workbench.ui.common import collection
    from workbench.ui.shell.main_window import MainWindow

    window = MainWindow(autoload=False)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: collection._collector is not None, timeout=10000)  # after showing
    assert not gc.isenabled()  # no automatic collection in whichever thread allocates
    assert collection._collector is not None and collection._collector.timer.isActive()


class Node:
    """A reference cycle that only the cyclic collector frees."""

    def __init__(self):
        self.me = self


def test_gc_collect_elsewhere_waits_for_the_gui_thread_and_an_idle_worker(
        qtbot, worker, monkeypatch):
    import gc
    import weakref

    from workbench.ui.common.collection import gui_thread_garbage_collection

    collector = gui_thread_garbage_collection()
    # only the full collection is under test: the collector's young-generation passes
    # (on its timer too) would free the fresh cycle whenever enough else was allocated
    monkeypatch.setattr(collector, "threshold", (10**9, 10**9, 10**9))
    assert not gc.isenabled()  # no automatic collection in whichever thread allocates
    collector.full_requested = False
    cycle = Node()
    alive = weakref.ref(cycle)
    del cycle
    found = []
    other = threading.Thread(target=lambda: found.append(gc.collect()))
    other.start()
    other.join()
    # A library's gc.collect() on another thread collects nothing there...
    assert found == [0] and alive() is not None and collector.full_requested
    # ...and not while the worker runs a job...
    worker.submit("busy", slow_job(steps=30))
    qtbot.waitUntil(lambda: worker.busy, timeout=5000)
    collector.check()
    assert alive() is not None
    worker.cancel()
    qtbot.waitUntil(lambda: not worker.busy, timeout=5000)
    # ...but on the GUI thread once the worker is idle.
    collector.check()
    assert alive() is None and not collector.full_requested


def test_each_job_reports_to_its_own_handle_and_owner(qtbot, worker):
    from PySide6.QtCore import QObject

    from workbench.ui.common.job_thread import own_job

    explore_page, branch_page = QObject(), QObject()
    seen = {"explore": [], "branch": []}
    explore = own_job(explore_page, worker, "explore", slow_job(),
                      event=lambda e: seen["explore"].append("event"),
                      finished=lambda r: seen["explore"].append("finished"),
                      cancelled=lambda: seen["explore"].append("cancelled"))
    branch = own_job(branch_page, worker, "branch", lambda ctx: "a branch",  # queued behind
                     finished=lambda r: seen["branch"].append(r),
                     cancelled=lambda: seen["branch"].append("cancelled"))
    assert explore.parent() is explore_page and branch.parent() is branch_page
    qtbot.waitUntil(lambda: "event" in seen["explore"], timeout=5000)
    explore.cancel()  # cancelling one job leaves the queued one alone
    qtbot.waitUntil(lambda: seen["branch"] == ["a branch"], timeout=10000)
    assert seen["explore"][-1] == "cancelled" and "finished" not in seen["explore"]
    assert explore.done and branch.done


def test_a_queued_job_cancelled_by_its_handle_never_runs(qtbot, worker):
    ran, ended = [], []
    with qtbot.waitSignal(worker.job_started, timeout=5000):
        first = worker.submit("slow", slow_job())
    second = worker.submit("queued", lambda ctx: ran.append(1))
    second.cancelled.connect(lambda: ended.append("cancelled"))
    second.cancel()
    first.cancel()
    qtbot.waitUntil(lambda: ended == ["cancelled"], timeout=10000)
    assert ran == []


def test_a_job_slot_is_cleared_before_the_pages_end_handler_runs(qtbot, worker):
    from PySide6.QtCore import QObject

    from workbench.ui.common.job_thread import JobSlot

    page = QObject()
    slot = JobSlot(page, worker)
    seen = []
    handle = slot.start("fine", lambda ctx: 1, finished=lambda r: seen.append(slot.handle))
    assert slot.running and slot.handle is handle and handle.parent() is page
    qtbot.waitUntil(lambda: seen == [None], timeout=5000)
    assert not slot.running
    slot.start("fails", lambda ctx: 1 / 0, failed=lambda e, d: seen.append(slot.running))
    qtbot.waitUntil(lambda: len(seen) == 2, timeout=5000)
    slot.start("cancelled", slow_job(), cancelled=lambda: seen.append(slot.running))
    slot.cancel()
    qtbot.waitUntil(lambda: len(seen) == 3, timeout=5000)
    assert seen == [None, False, False]


def test_a_job_thread_whose_owner_is_destroyed_never_calls_back(qtbot):
    from PySide6.QtCore import QObject
    from shiboken6 import delete

    from workbench.ui.common.job_thread import JobSlot, JobThread

    owner = QObject()
    thread = JobThread("owned", owner)
    called, started = [], threading.Event()

    def job(ctx):
        started.set()
        time.sleep(0.3)  # the owner goes meanwhile
        return "late"

    JobSlot(owner, thread).start("slow", job, finished=called.append,
                                 failed=lambda e, d: called.append(e),
                                 cancelled=lambda: called.append("cancelled"),
                                 event=called.append)
    assert started.wait(5)
    delete(owner)
    qtbot.waitUntil(thread.isFinished, timeout=5000)  # the thread stops with its owner
    qtbot.wait(100)
    assert called == []

"""How many threads a job's tensor work gets: the cores other processes leave free.

torch starts one OpenMP thread per core, and its threads spin while they wait for each
other. On a machine where other programs use the CPU (a browser, an IDE, a training run),
those threads wait for cores they do not get: measured on 2 cores with 5–7 busy
processes, greedy decoding fell from 16 to 2.3 tokens/s with 2 threads, while 1 thread
made 10.5. So each job measures, when it starts, how much CPU the *other* processes used
lately, and takes the cores they leave (at least one). A waiting thread spins briefly,
then sleeps (``GOMP_SPINCOUNT=10000``, set before torch starts its threads): measured on
SmolLM2's int8 decoding with 2 threads, 43 tokens/s on a quiet machine and 15.6 with two
busy processes, against 17-26 and 12.5 with no spinning at all (``OMP_WAIT_POLICY=PASSIVE``:
every one of a token's ~300 small parallel regions then waits for a thread to wake) and a
collapse with endless spinning (``OMP_WAIT_POLICY=ACTIVE``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

_MIN_INTERVAL_S = 0.2  # shorter spans since the last reading are re-measured
_SAMPLE_S = 0.1


def prepare_process() -> None:
    """Before torch is imported: OpenMP threads spin briefly, then sleep, while they wait
    (GNU OpenMP's spin count; LLVM's block time, 1 ms), unless the user chose."""
    if "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
    os.environ.setdefault("KMP_BLOCKTIME", "1")


class LoadMeter:
    """The CPU other processes used since the previous reading, in cores (1.0: one core
    busy all the time). The first reading samples for 0.1 s; a reading sooner than 0.2 s
    after the previous one gives the previous value (a job started right after another
    waits for nothing)."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._last: tuple[float, float, float] | None = None
        self._value = 0.0

    def _now(self) -> tuple[float, float, float]:
        total = psutil.cpu_times()
        busy = sum(total) - total.idle - getattr(total, "iowait", 0.0)
        own = self._process.cpu_times()
        return time.monotonic(), busy, own.user + own.system

    def others_busy(self) -> float:
        if self._last is None:
            self._last = self._now()
            time.sleep(_SAMPLE_S)
        elif time.monotonic() - self._last[0] < _MIN_INTERVAL_S:
            return self._value
        now = self._now()
        (t0, busy0, own0), (t1, busy1, own1) = self._last, now
        self._last = now
        wall = max(t1 - t0, 1e-6)
        self._value = max(0.0, ((busy1 - busy0) - (own1 - own0)) / wall)
        return self._value


_METER: LoadMeter | None = None


def finish_process(code: int) -> int:
    """Prepare this process to end (``sys.exit(finish_process(main()))`` in a process's
    entry point): collect its garbage now (what has a finaliser is finalised, as at any
    exit), then freeze what is left, so that the garbage collections of the interpreter's
    shutdown skip the hundreds of thousands of objects of torch and transformers. They took
    about 1.2 s after a command's or a run's last line, which a caller waited for before it
    saw the process end."""
    import gc

    sys.stdout.flush()
    sys.stderr.flush()
    gc.collect()
    gc.freeze()
    return code


def free_cores(cores: int | None = None, meter: LoadMeter | None = None) -> int:
    """The cores the other processes leave free now: at least one, at most all."""
    global _METER
    cores = cores or os.cpu_count() or 1
    if meter is None:
        _METER = _METER or LoadMeter()
        meter = _METER
    return max(1, min(cores, round(cores - meter.others_busy())))


def threads_for_job(leave: int = 0, cores: int | None = None,
                    meter: LoadMeter | None = None) -> int:
    """The threads a job gets: the free cores, less ``leave`` (the window's core) when
    that leaves at least one."""
    cores = cores or os.cpu_count() or 1
    free = free_cores(cores, meter)
    return max(1, min(free, cores - leave))


def _user_threads() -> int | None:
    """The thread count the user set in ``OMP_NUM_THREADS`` before this app ran, if any."""
    try:
        n = int(_USER_SETTING or "")
    except ValueError:
        return None
    return n if n > 0 else None


_USER_SETTING = os.environ.get("OMP_NUM_THREADS")  # read before this app sets it


@contextmanager
def adapted_threads(leave: int = 0, meter: LoadMeter | None = None) -> Iterator[int]:
    """Run the block with torch's thread count set to ``threads_for_job(leave)`` and put the
    count back after; a count the user set in ``OMP_NUM_THREADS`` is kept. Before torch is
    imported, sets ``OMP_NUM_THREADS`` instead, which torch reads when it starts."""
    chosen = _user_threads()
    if chosen is not None:
        yield chosen
        return
    n = threads_for_job(leave, meter=meter)
    if "torch" not in sys.modules:
        os.environ["OMP_NUM_THREADS"] = str(n)
        yield n
        return
    import torch

    before = torch.get_num_threads()
    if n == before:
        yield n
        return
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)


@contextmanager
def sharing_the_gil(seconds: float = 0.0001) -> Iterator[None]:
    """While a background thread runs much Python (a reader thread parsing a long run,
    torch.compile tracing a model), hand the GIL back to the GUI thread quickly: a paint
    calls into Python for every chart item, and each call waits for the GIL for up to the
    switch interval (5 ms by default), which made one paint of the charts take 1.7 s
    while a long run was read, and stalled the window 1.4 s while SmolLM2 compiled
    (180 ms with 0.5 ms)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, seconds))
    try:
        yield
    finally:
        sys.setswitchinterval(before)

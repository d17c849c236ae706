"""The threads a job gets on a busy machine: the cores other processes leave free."""

import subprocess
import sys
import time

import pytest
import torch

from workbench.core.common import threads


class FixedMeter:
    def __init__(self, busy: float) -> None:
        self.busy = busy

    def others_busy(self) -> float:
        return self.busy


@pytest.mark.parametrize("cores, busy, leave, expected", [
    (2, 0.0, 0, 2),     # quiet: every core
    (2, 0.0, 1, 1),     # quiet, the window keeps one
    (2, 2.0, 0, 1),     # one busy process per core: one thread, not a collapse
    (2, 7.0, 0, 1),     # far more than the cores: still one
    (8, 2.9, 0, 5),     # the cores left, rounded
    (8, 2.9, 1, 5),     # the window's core is among the free ones
    (1, 0.0, 1, 1),     # one core: nothing to leave
])
def test_threads_follow_the_free_cores(cores, busy, leave, expected):
    assert threads.threads_for_job(leave, cores, FixedMeter(busy)) == expected


def test_the_meter_sees_other_processes_and_not_its_own_work():
    meter = threads.LoadMeter()
    meter.others_busy()  # the first reading
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(1.0)
        busy = meter.others_busy()
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert busy >= 0.9, busy  # two spinning processes: at least most of a core
    # this process's own work is not counted as other processes' load
    meter.others_busy()
    end = time.monotonic() + 1.0
    x = 0
    while time.monotonic() < end:
        x += 1
    alone = meter.others_busy()
    assert alone < busy, (alone, busy)


def test_adapted_threads_sets_torch_and_puts_it_back(monkeypatch):
    monkeypatch.setattr(threads, "_USER_SETTING", None)
    monkeypatch.setattr(threads, "threads_for_job", lambda leave=0, meter=None: 1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with threads.adapted_threads() as n:
            assert n == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_thread_count_the_user_set_is_kept(monkeypatch):
    monkeypatch.setattr(threads, "_USER_SETTING", "3")
    monkeypatch.setattr(threads, "threads_for_job", lambda leave=0, meter=None: 1)
    before = torch.get_num_threads()
    with threads.adapted_threads() as n:
        assert n == 3 and torch.get_num_threads() == before


def test_a_command_starts_torch_with_the_free_cores(tmp_path):
    """In a fresh process, the count is set before torch starts its thread pool, and the
    OpenMP threads spin only briefly while they wait."""
    code = ("import os; from workbench.core.common import threads; threads.prepare_process();\n"
            "threads.threads_for_job = lambda leave=0, meter=None: 1\n"
            "with threads.adapted_threads():\n"
            "    import torch; print(torch.get_num_threads(), os.environ['GOMP_SPINCOUNT'])\n")
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.stdout.split() == ["1", "10000"], out.stderr

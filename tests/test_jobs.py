import pytest

from workbench.core.common.errors import Cancelled
from workbench.core.common.jobs import CancelToken, JobContext, LogLine, Progress, run_job


def counting_job(n):
    def job(ctx: JobContext):
        total = 0
        for i in range(n):
            yield Progress(f"step {i}", i / n)
            total += i
        ctx.log("done")
        return total

    return job


def test_generator_job_events_and_result():
    events = []
    assert run_job(counting_job(4), events.append) == 6
    assert [e.fraction for e in events if isinstance(e, Progress)] == [0, 0.25, 0.5, 0.75]
    assert events[-1] == LogLine("done")


def test_plain_function_job_returns_directly():
    assert run_job(lambda ctx: 42) == 42


def test_cancel_stops_between_events():
    token = CancelToken()
    seen = []

    def on_event(event):
        seen.append(event)
        if len(seen) == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        run_job(counting_job(100), on_event, token)
    assert len(seen) == 2

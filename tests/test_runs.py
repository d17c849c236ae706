"""Monitoring run folders while they are written, and the numbers behind the charts:
damaged and half-written files, incremental polls, TensorBoard events, the debiased
smoothing, the min/max band, throughput, alarms, and ``monitor`` on the command line."""

import json
import math
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from workbench.core.common.errors import WorkbenchError
from workbench.core.training import runs
from workbench.core.training.curves import (
    Alarm,
    analyse,
    band_window,
    rolling_min_max,
    smooth,
    speed_unit,
    throughput,
)
from workbench.core.training.runs import RunMonitor, read_run

ROOT = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))


def log_row(step, loss=None, eval_loss=None, **extra):
    """A metrics.jsonl row as the app writes it (json.dumps of a TrainLog)."""
    row = {"step": step, "max_steps": 100, "epoch": step / 10, "loss": loss,
           "eval_loss": eval_loss, "eval_accuracy": None, "learning_rate": 1e-4,
           "grad_norm": 1.0, "samples_per_second": None, "seconds": step * 0.5,
           "tokens": step * 64}
    row.update(extra)
    return row


def lines(*rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def steps_and_losses(snap):
    return [(r["step"], r.get("loss")) for r in snap.rows]


# --- smoothing ---------------------------------------------------------------------------------
def debiased_ema(values, weight):
    """TensorBoard's scalar-dashboard smoothing, written out as it is there."""
    out, last, count = [], 0.0, 0
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        last = last * weight + (1 - weight) * v
        count += 1
        out.append(last / (1 - weight ** count))
    return out


def test_debiased_ema_by_hand():
    assert smooth([1, 0], 0.6) == pytest.approx([1.0, 0.375])  # 0.4/0.4, 0.24/0.64
    assert smooth([2.0], 0.9) == pytest.approx([2.0])  # the first point is the value itself
    assert smooth([], 0.6) == []


@pytest.mark.parametrize("weight", [0.0, 0.01, 0.3, 0.6, 0.9, 0.99, 0.999])
def test_debiased_ema_matches_the_reference_with_non_finite_values(weight):
    rng = random.Random(int(weight * 1000))
    values = [rng.uniform(0.1, 5) for _ in range(3000)]
    values[0], values[7], values[100], values[2999] = NAN, INF, -INF, NAN
    got = smooth(values, weight)
    want = debiased_ema(values, weight)
    assert len(got) == len(values)
    for i in (0, 7, 100, 2999):  # non-finite values pass through unchanged
        assert got[i] is values[i] or (math.isnan(got[i]) and math.isnan(values[i])) or \
            got[i] == values[i]
    assert np.allclose(got, want, rtol=1e-10, equal_nan=True)
    if weight == 0:
        assert got[1:7] == values[1:7]  # weight 0: no smoothing at all


def test_non_finite_values_do_not_enter_the_average():
    assert smooth([1.0, NAN, 0.0], 0.6) == pytest.approx([1.0, NAN, 0.375], nan_ok=True)
    with pytest.raises(ValueError):
        smooth([1.0], 1.0)


# --- band ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("weight, window", [(0.0, 1), (0.5, 3), (0.6, 3), (0.9, 11),
                                            (0.99, 101), (0.999, 1001), (0.9999, 1001)])
def test_band_window_is_the_odd_effective_window(weight, window):
    assert band_window(weight) == window


@pytest.mark.parametrize("n, window", [(1, 1), (1, 5), (2, 3), (7, 3), (50, 11), (333, 101),
                                       (40, 81)])
def test_rolling_min_max_matches_numpy_windows(n, window):
    rng = np.random.default_rng(n + window)
    values = rng.normal(size=n).tolist()
    for i in range(0, n, 4):
        values[i] = [NAN, INF, -INF][i % 3]
    low, high = rolling_min_max(values, window)
    data = np.array(values)
    half = window // 2
    for i in range(n):
        part = data[max(0, i - half):i + half + 1]
        part = part[np.isfinite(part)]
        if len(part):
            assert (low[i], high[i]) == (np.min(part), np.max(part))
        else:
            assert math.isnan(low[i]) and math.isnan(high[i])
    assert rolling_min_max([], 3) == ([], [])


# --- throughput ------------------------------------------------------------------------------
def test_throughput_between_training_rows_only():
    rows = [log_row(1, 2.0, seconds=1.0, tokens=100), log_row(2, 1.9, seconds=3.0, tokens=500),
            log_row(2, None, 2.5, seconds=3.5, tokens=500),  # an evaluation
            log_row(3, 1.8, seconds=4.0, tokens=700), log_row(4, 1.7, seconds=6.0, tokens=1100),
            log_row(2, 1.9, seconds=0.5, tokens=500),  # a resume from step 2
            log_row(3, 1.8, seconds=1.0, tokens=700), log_row(4, 1.7, seconds=1.0, tokens=800)]
    # (500-100)/2, skip 2->eval, skip eval->3, (1100-700)/2, skip 4->2, (700-500)/0.5, 0 s
    assert throughput(rows, "tokens") == ([2, 4, 3], pytest.approx([200.0, 200.0, 400.0]))
    assert throughput(rows, "steps") == ([2, 4, 3], pytest.approx([0.5, 0.5, 2.0]))
    untimed = [{"step": 1, "loss": 1.0, "tokens": 5}, {"step": 2, "loss": 1.0, "tokens": 9,
                                                       "seconds": 2.0}]
    assert throughput(untimed, "tokens") == ([2], [2.0])  # no time counts as 0
    assert throughput([], "tokens") == ([], [])


def test_speed_unit():
    counted = [{"step": 1, "loss": 1, "seconds": 1.0, "tokens": 10}]
    uncounted = [{"step": 1, "loss": 1, "seconds": 1.0}]
    untimed = [{"step": 1, "loss": 1}]
    assert speed_unit([counted, untimed]) == "tokens"
    assert speed_unit([counted, uncounted]) == "steps"


# --- analyse and alarms --------------------------------------------------------------------------
def test_analyse_gives_every_chart_its_points():
    rows = [log_row(1, 2.0), log_row(2, 1.8),
            log_row(2, None, 1.9, learning_rate=None, grad_norm=None), log_row(3, NAN),
            log_row(4, 1.6, learning_rate=None, grad_norm=None), log_row(5, 1.5)]
    data = analyse(rows, 0.6)
    assert data.steps.tolist() == [1, 2, 3, 4, 5]
    assert data.losses.tolist()[:2] == [2.0, 1.8] and math.isnan(data.losses[2])
    assert np.allclose(data.smoothed, debiased_ema([2.0, 1.8, NAN, 1.6, 1.5], 0.6),
                       equal_nan=True)
    assert data.eval.steps.tolist() == [2] and data.eval.values.tolist() == [1.9]
    assert data.lr.steps.tolist() == [1, 2, 3, 5] and data.grad.steps.tolist() == [1, 2, 3, 5]
    low, high = rolling_min_max([2.0, 1.8, NAN, 1.6, 1.5], band_window(0.6))
    assert data.band.steps.tolist() == [1, 2, 3, 4, 5]  # NaN skipped inside each window
    assert data.band.low.tolist() == low and data.band.high.tolist() == high
    assert (data.speed.steps.tolist(), data.speed.values.tolist()) == (
        [2, 4, 5], pytest.approx([128.0] * 3))  # 64 tokens in 0.5 s; none across the eval
    assert [a.kind for a in data.alarms] == ["nan"]
    assert data.alarms[0] == Alarm("nan", 3, "training loss is NaN or infinite at step 3")
    assert analyse([], 0.6).steps.tolist() == [] and analyse([], 0.6).alarms == []


def test_spikes_and_the_last_spike_alarm():
    losses = [1.0, 1.0, 1.0, 3.0, 1.0, 1.0, 1.12, 2.5, 1.0, NAN, 9.0, 1.0]
    rows = [log_row(i + 1, v) for i, v in enumerate(losses)]
    data = analyse(rows, 0.6)
    smoothed = debiased_ema(losses, 0.6)
    want = [(i + 1, v) for i, v in enumerate(losses) if i and math.isfinite(smoothed[i - 1])
            and math.isfinite(v) and v > 1.5 * smoothed[i - 1] and v - smoothed[i - 1] > 0.1]
    assert list(zip(data.spikes.steps.tolist(), data.spikes.values.tolist(),
                    strict=True)) == want
    assert [s for s, _ in want] == [4, 8]  # not step 11: the point before it is NaN
    spike = [a for a in data.alarms if a.kind == "spike"]
    assert spike == [Alarm("spike", 8, "loss spike at step 8")]
    small = analyse([log_row(1, 0.1), log_row(2, 0.18)], 0.6)  # 1.8x but only +0.08
    assert len(small.spikes) == 0 and small.alarms == []


def test_overfitting_alarm_when_validation_rises_three_times_while_training_falls():
    rows = []
    for step in range(1, 21):
        rows.append(log_row(step, 2.0 - step * 0.05))
        if step % 5 == 0:
            rows.append(log_row(step, None, {5: 1.0, 10: 1.1, 15: 1.2, 20: 1.3}[step]))
    data = analyse(rows, 0.6)
    assert [a.kind for a in data.alarms] == ["overfitting"]
    assert data.alarms[0].step == 20
    assert data.alarms[0].message == ("validation loss rising while training loss falls "
                                      "(overfitting?)")
    rows[-1] = log_row(20, None, 1.15)  # the last one falls again
    assert analyse(rows, 0.6).alarms == []
    nan_eval = rows[:-1] + [log_row(20, None, NAN)]
    assert [a.message for a in analyse(nan_eval, 0.6).alarms] == [
        "validation loss is NaN or infinite at step 20"]


# --- damaged and half-written files ----------------------------------------------------------
def good_state(steps=(10, 20), global_step=20):
    return {"global_step": global_step, "max_steps": 100,
            "log_history": [{"step": s, "loss": 3.0 - s / 10, "epoch": s / 10} for s in steps]}


def write(folder, name, data):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())


ROWS = lines(log_row(1, 2.0), log_row(2, 1.9))
DAMAGED = {  # name: (files, the (step, loss) rows read, or the WorkbenchError's words)
    "metrics: last line cut mid-write": (
        {"metrics.jsonl": ROWS + json.dumps(log_row(3, 1.8)).encode()[:30]},
        [(1, 2.0), (2, 1.9)]),
    "metrics: last line whole but no newline yet": (
        {"metrics.jsonl": ROWS + json.dumps(log_row(3, 1.8)).encode()},
        [(1, 2.0), (2, 1.9), (3, 1.8)]),
    "metrics: a cut line, then the next run's line after it": (
        {"metrics.jsonl": ROWS + json.dumps(log_row(3, 1.8)).encode()[:30] +
         lines(log_row(4, 1.7))}, [(1, 2.0), (2, 1.9), (4, 1.7)]),
    "metrics: bytes that are not UTF-8": (
        {"metrics.jsonl": ROWS + b'{"step": 3, "loss": 1.8, "note": "caf\xe9 \xff"}\n' +
         b"\xff\xfe\x00garbage\n" + lines(log_row(4, 1.7))},
        [(1, 2.0), (2, 1.9), (3, 1.8), (4, 1.7)]),
    "metrics: JSON lines that are not objects": (
        {"metrics.jsonl": b"3\n[]\n\"text\"\nnull\n" + ROWS + b"[1, 2]\n{}\n"},
        [(1, 2.0), (2, 1.9)]),
    "metrics: steps that are not numbers": (
        {"metrics.jsonl": b'{"step": "7", "loss": 1.0}\n{"step": true, "loss": 1.0}\n'
         b'{"step": null, "loss": 1.0}\n{"loss": 1.0}\n{"step": NaN, "loss": 1.0}\n'
         b'{"step": Infinity, "loss": 1.0}\n{"step": [3], "loss": 1.0}\n' + ROWS +
         b'{"step": 3.0, "loss": 1.8}\n'},
        [(1, 2.0), (2, 1.9), (3, 1.8)]),
    "metrics: values that are not numbers": (
        {"metrics.jsonl": ROWS + b'{"step": 3, "loss": "high", "learning_rate": [1], '
         b'"tokens": {"a": 1}, "seconds": true}\n'},
        [(1, 2.0), (2, 1.9), (3, None)]),
    "metrics: blank lines, CRLF, nesting too deep": (
        {"metrics.jsonl": b"\n" + ROWS.replace(b"\n", b"\r\n") + b"   \n" + b"[" * 100000 +
         b"\n" + lines(log_row(3, 1.8))},
        [(1, 2.0), (2, 1.9), (3, 1.8)]),
    "metrics: empty, run.json cut mid-write": (
        {"metrics.jsonl": b"", "run.json": b'{"task": "lm", "max_st'}, []),
    "run.json cut mid-write, nothing logged yet": ({"run.json": b'{"task": "lm", "max'}, []),
    "run.json that is not an object": ({"run.json": b"[1, 2]"}, []),
    "trainer_state.json cut mid-write": (
        {"trainer_state.json": json.dumps(good_state()).encode()[:-20]},
        "trainer_state.json"),
    "newest checkpoint's state cut mid-write: the one before": (
        {"checkpoint-10/trainer_state.json": json.dumps(good_state((10,), 10)).encode(),
         "checkpoint-20/trainer_state.json": json.dumps(good_state()).encode()[:-20]},
        [(10, 2.0)]),
    "trainer_state.json whose log_history is not a list": (
        {"trainer_state.json": {"global_step": 5, "log_history": {"step": 5}}},
        "log_history is not a list"),
    "trainer_state.json that is not an object": (
        {"trainer_state.json": [good_state()]}, "not a JSON object"),
    "trainer_state.json with odd entries": (
        {"trainer_state.json": {"global_step": "20", "max_steps": "lots", "log_history": [
            3, None, [], {"step": "10", "loss": 1.0}, {"loss": 1.0},
            {"step": 10, "loss": "2.0", "epoch": "one"}, {"step": 10, "loss": 2.0},
            {"step": 20, "loss": 1.0, "learning_rate": None}]}},
        [(10, 2.0), (20, 1.0)]),
    "trainer_state.json with bytes that are not UTF-8": (
        {"trainer_state.json": json.dumps(good_state()).encode().replace(
            b'"max_steps"', b'"note": "\xff\xfe", "max_steps"')}, [(10, 2.0), (20, 1.0)]),
    "TensorBoard file of garbage": (
        {"events.out.tfevents.1.host": bytes(range(256)) * 40}, []),
    "TensorBoard file that is empty": ({"runs/x/events.out.tfevents.1.host": b""}, []),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_files_give_the_last_complete_numbers_or_one_clear_error(tmp_path, case):
    files, expected = DAMAGED[case]
    for name, data in files.items():
        write(tmp_path, name, data)
    if isinstance(expected, str):
        with pytest.raises(WorkbenchError, match="being written or damaged") as error:
            read_run(tmp_path)
        assert expected in str(error.value)
        return
    snap = read_run(tmp_path)  # nothing but a WorkbenchError may ever come out
    assert steps_and_losses(snap) == expected
    assert snap.global_step == max((s for s, _ in expected), default=0)
    assert all(r.get(k) is None or type(r[k]) in (int, float)
               for r in snap.rows for k in runs.NUMERIC)
    snap.to_dict()


def test_a_state_caught_mid_write_keeps_the_last_numbers_read(tmp_path):
    monitor = RunMonitor(tmp_path)
    write(tmp_path, "trainer_state.json", good_state())
    assert steps_and_losses(monitor.poll()) == [(10, 2.0), (20, 1.0)]
    whole = json.dumps(good_state((10, 20, 30), 30)).encode()
    write(tmp_path, "trainer_state.json", whole[:len(whole) // 2])  # being rewritten
    snap = monitor.poll()
    assert (steps_and_losses(snap), snap.global_step) == ([(10, 2.0), (20, 1.0)], 20)
    write(tmp_path, "trainer_state.json", whole)
    assert monitor.poll().global_step == 30


def test_a_truncated_tensorboard_file_gives_what_it_holds(tmp_path):
    writer = summary_writer(tmp_path / "whole" / "runs" / "x")
    for step in range(1, 41):
        writer.add_scalar("train/loss", 1.0 / step, step)
    writer.close()
    [events] = (tmp_path / "whole").rglob("events.out.tfevents.*")
    data = events.read_bytes()
    write(tmp_path / "cut", events.name, data[:len(data) * 2 // 3])
    rows = read_run(tmp_path / "cut").rows
    assert 10 < len(rows) < 40
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(r["loss"] == pytest.approx(1.0 / r["step"]) for r in rows)


# --- what is a run ------------------------------------------------------------------------------
def summary_writer(folder):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(folder))


def test_a_folder_with_runs_deeper_inside_is_not_a_run(tmp_path):
    for deep in ("projects/a", "b/c/runs/x"):  # two and more levels down
        writer = summary_writer(tmp_path / deep)
        writer.add_scalar("train/loss", 1.0, 1)
        writer.close()
    write(tmp_path / "projects" / "a", "metrics.jsonl", ROWS)
    with pytest.raises(WorkbenchError, match="is not a training run"):
        read_run(tmp_path)
    with pytest.raises(WorkbenchError, match="Run folder not found"):
        read_run(tmp_path / "missing")


@pytest.mark.parametrize("where", ["", "runs/Jan01_10-00-00_host",
                                   "runs/Jan01_10-00-00_host/trial-1", "logs", "tensorboard"])
def test_tensorboard_files_where_trainers_put_them(tmp_path, where):
    writer = summary_writer(tmp_path / where)
    writer.add_scalar("train/loss", 2.5, 7)
    writer.close()
    snap = read_run(tmp_path)
    assert (snap.source, snap.global_step, snap.latest("loss")) == ("tensorboard", 7, 2.5)


# --- incremental polls -------------------------------------------------------------------------
def test_monitor_reads_only_new_lines_and_counts_every_row_once(tmp_path, monkeypatch):
    parsed = []
    real = runs.parse_jsonl
    monkeypatch.setattr(runs, "parse_jsonl",
                        lambda data, stop=None: parsed.append(data[:stop]) or real(data, stop))
    path = tmp_path / "metrics.jsonl"
    third = json.dumps(log_row(3, 1.8)).encode()
    path.write_bytes(lines(log_row(1, 2.0), log_row(2, 1.9)) + third[:25])
    monitor = RunMonitor(tmp_path)
    first = monitor.poll()
    assert [r["step"] for r in first.rows] == [1, 2]  # the half line waits
    with open(path, "ab") as f:
        f.write(third[25:])  # complete but not ended yet: counted, not kept
    assert [r["step"] for r in monitor.poll().rows] == [1, 2, 3]
    with open(path, "ab") as f:
        f.write(b"\n" + lines(log_row(4, 1.7), log_row(4, None, 1.75)))
    parsed.clear()
    snap = monitor.poll()
    assert parsed[0] == third + b"\n" + lines(log_row(4, 1.7), log_row(4, None, 1.75))
    assert [(r["step"], r["loss"], r["eval_loss"]) for r in snap.rows] == [
        (1, 2.0, None), (2, 1.9, None), (3, 1.8, None), (4, 1.7, None), (4, None, 1.75)]
    assert (snap.global_step, snap.max_steps) == (4, 100)
    assert [r["step"] for r in first.rows] == [1, 2]  # an earlier snapshot stays as it was
    parsed.clear()
    assert len(monitor.poll().rows) == 5 and parsed == []  # nothing new: nothing parsed
    path.write_bytes(lines(log_row(1, 5.0)))  # a resumed run wrote the file anew
    assert steps_and_losses(monitor.poll()) == [(1, 5.0)]


def test_monitor_polls_from_other_threads(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"")
    monitor = RunMonitor(tmp_path)
    seen, errors = [], []

    def poll():
        try:
            for _ in range(30):
                seen.append(len(monitor.poll().rows))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=poll) for _ in range(3)]
    for thread in threads:
        thread.start()
    with open(path, "ab") as f:
        for step in range(1, 201):
            f.write(lines(log_row(step, 1.0)))
            f.flush()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [r["step"] for r in monitor.poll().rows] == list(range(1, 201))


def test_tensorboard_appended_between_polls_gives_every_scalar(tmp_path):
    writer = summary_writer(tmp_path / "runs" / "Jan01_host")
    for step in range(1, 6):
        writer.add_scalar("train/loss", 3.0 - step / 10, step)
        writer.add_scalar("train/learning_rate", 1e-3 / step, step)
    writer.flush()
    monitor = RunMonitor(tmp_path)
    first = monitor.poll()
    assert first.source == "tensorboard"
    assert [(r["step"], r["loss"]) for r in first.rows] == [
        (s, pytest.approx(3.0 - s / 10)) for s in range(1, 6)]
    writer.add_scalar("eval/loss", 2.9, 5)  # a new scalar for a step already read
    for step in range(6, 11):
        writer.add_scalar("train/loss", 3.0 - step / 10, step)
        writer.add_scalar("train/learning_rate", 1e-3 / step, step)
    writer.close()
    later = summary_writer(tmp_path / "runs" / "Jan02_host")  # a resumed run's new file
    later.add_scalar("train/loss", 1.5, 11)
    later.close()
    snap = monitor.poll()
    assert [r["step"] for r in snap.rows] == list(range(1, 12))
    assert [r["loss"] for r in snap.rows] == pytest.approx(
        [3.0 - s / 10 for s in range(1, 11)] + [1.5])
    assert [r["learning_rate"] for r in snap.rows[:10]] == pytest.approx(
        [1e-3 / s for s in range(1, 11)])
    assert snap.rows[4]["eval_loss"] == pytest.approx(2.9) and snap.global_step == 11
    assert "eval_loss" not in first.rows[4]  # the earlier snapshot's rows are unchanged
    times = [r["seconds"] for r in snap.rows]
    assert times[0] == 0 and times == sorted(times)
    assert len(monitor.poll().rows) == 11  # nothing new: no row twice


# --- monitor on the command line ----------------------------------------------------------------
def test_monitor_json_carries_smoothing_and_alarms(tmp_path):
    losses = [2.0, 1.9, 1.8, 5.0, 1.7, 1.6]
    (tmp_path / "metrics.jsonl").write_bytes(lines(*(
        log_row(i + 1, v, seconds=float(i), tokens=100 * i) for i, v in enumerate(losses))))
    result = run_cli("monitor", str(tmp_path), "--json", "--smoothing", "0.9")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["smoothed_loss"] == pytest.approx(debiased_ema(losses, 0.9)[-1])
    assert data["alarms"] == [{"kind": "spike", "step": 4, "message": "loss spike at step 4"}]
    assert data["tokens_per_second"] == pytest.approx(100.0)
    assert (data["global_step"], data["max_steps"], data["loss"], data["rows"]) == (
        6, 100, 1.6, 6)
    text = run_cli("monitor", str(tmp_path))
    assert text.returncode == 0 and "warning: loss spike at step 4" in text.stdout
    assert "smoothed_loss" in text.stdout


@pytest.mark.parametrize("args, message", [
    (("monitor", "{tmp}"), "is not a training run"),
    (("monitor", "{tmp}/run", "--smoothing", "1"), "--smoothing must be in [0, 1), not 1."),
    (("monitor", "{tmp}/run", "--smoothing", "-0.1"),
     "--smoothing must be in [0, 1), not -0.1."),
])
def test_monitor_errors_are_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_bytes(ROWS)
    result = run_cli(*(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_display_decimation_keeps_every_bins_minimum_and_maximum():
    import numpy as np

    from workbench.core.training.curves import peak_decimate

    rng = np.random.default_rng(0)
    steps = np.arange(1, 100_001, dtype=float)
    values = rng.normal(size=steps.size)
    values[12_345], values[77_777] = 50.0, -50.0  # one-step spikes
    values[500] = np.nan
    shown_steps, shown = peak_decimate(steps, values, points=2000)
    assert len(shown) <= 2000
    assert shown.max() == 50.0 and shown.min() == -50.0  # no extreme is lost
    assert 12_346.0 in shown_steps and 77_778.0 in shown_steps  # at their own steps
    assert np.all(np.diff(shown_steps) >= 0)  # in order
    k = -(-steps.size // 1000)  # each bin's extremes, as numpy finds them
    for b in (0, 123, 999):
        chunk = values[b * k:(b + 1) * k]
        inside = shown[(shown_steps > b * k) & (shown_steps <= (b + 1) * k)]
        assert set(inside) == {np.nanmin(chunk), np.nanmax(chunk)}
    few = np.arange(10.0)
    assert peak_decimate(few, few, points=2000)[1].tolist() == few.tolist()  # short: as is

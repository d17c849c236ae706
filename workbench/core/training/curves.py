"""The numbers behind the training charts: smoothing, the min/max band, throughput,
spikes and health alarms of one run's log rows (see :mod:`workbench.core.training.runs`).

No Qt: the Fine-tune tab draws what :func:`analyse` gives, and ``monitor`` prints it.
Long runs (hundreds of thousands of rows) are handled with numpy.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from operator import itemgetter

import numpy as np

SPIKE_RATIO = 1.5  # a training loss this many times the smoothed loss before it ...
SPIKE_MIN = 0.1  # ... and at least this much above it is a spike


def _empty() -> np.ndarray:
    return np.zeros(0)


@dataclass
class Series:
    """Points of one curve: ``steps`` and ``values``, numpy float arrays."""

    steps: np.ndarray = field(default_factory=_empty)
    values: np.ndarray = field(default_factory=_empty)

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class Band:
    """The min/max band around the training loss (only steps where both are finite)."""

    steps: np.ndarray = field(default_factory=_empty)
    low: np.ndarray = field(default_factory=_empty)
    high: np.ndarray = field(default_factory=_empty)

    def __len__(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class Alarm:
    """Something about the run's health: ``kind`` "spike", "overfitting" or "nan"."""

    kind: str
    step: int
    message: str

    def to_dict(self) -> dict:
        return {"kind": self.kind, "step": self.step, "message": self.message}


@dataclass
class CurveData:
    """Everything one run's charts show. Arrays are numpy float arrays; ``steps``,
    ``losses`` and ``smoothed`` are the training rows (those with a loss), in order."""

    steps: np.ndarray = field(default_factory=_empty)
    losses: np.ndarray = field(default_factory=_empty)
    smoothed: np.ndarray = field(default_factory=_empty)
    band: Band = field(default_factory=Band)
    eval: Series = field(default_factory=Series)
    lr: Series = field(default_factory=Series)
    grad: Series = field(default_factory=Series)
    speed: Series = field(default_factory=Series)
    spikes: Series = field(default_factory=Series)
    alarms: list[Alarm] = field(default_factory=list)
    unit: str = "tokens"  # of ``speed``: tokens or steps per second
    # the steps of ``smoothed`` where they are not ``steps`` (a copy decimated for display)
    smoothed_steps: np.ndarray | None = None

    @property
    def smoothed_loss(self) -> float | None:
        """The last finite smoothed training loss, or None."""
        finite = self.smoothed[np.isfinite(self.smoothed)]
        return float(finite[-1]) if len(finite) else None


# --- smoothing --------------------------------------------------------------------------------
def _linear_scan(b: np.ndarray, a: float) -> np.ndarray:
    """y[k] = a * y[k-1] + b[k] with y[-1] = 0, for a in [0, 1): a doubling scan
    (log2(n) numpy passes, stopped once a**d no longer matters)."""
    y = b.astype(float, copy=True)
    shift, factor = 1, a
    while shift < len(y) and factor > 1e-300:
        y[shift:] += factor * y[:-shift]  # the right side is computed before it is added
        shift, factor = shift * 2, factor * factor
    return y


def smooth_array(values, weight: float) -> np.ndarray:
    """:func:`smooth` as a numpy array."""
    data = np.asarray(values, dtype=float)
    if not 0 <= weight < 1:
        raise ValueError(f"smoothing weight must be in [0, 1), not {weight}")
    finite = np.isfinite(data)
    out = data.copy()
    x = data[finite]
    if weight == 0 or len(x) == 0 or (finite.all() and np.all(x == x[0])):
        return out  # no smoothing, or a constant (TensorBoard leaves those exact)
    last = _linear_scan((1 - weight) * x, weight)
    debias = -np.expm1(np.arange(1, len(x) + 1) * math.log(weight))  # 1 - weight**count
    out[finite] = last / debias
    return out


def smooth(values, weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average, ``weight`` in [0, 1): for each
    finite value v, ``last = last * weight + (1 - weight) * v`` (``last`` starts at 0),
    counted, and shown as ``last / (1 - weight ** count)``. Non-finite values pass through
    unchanged and do not enter the average; weight 0 is no smoothing."""
    return smooth_array(values, weight).tolist()


def band_window(weight: float) -> int:
    """How many points the min/max band spans for smoothing ``weight``: the EMA's
    effective window, 1 / (1 - weight), rounded up to an odd number (it is centred on
    each point)."""
    width = max(1, math.ceil(1 / (1 - min(weight, 0.999)) - 1e-9))
    return width + 1 - width % 2


def _rolling(data: np.ndarray, window: int, pad: float, ufunc) -> np.ndarray:
    """The running extreme (``ufunc`` np.minimum or np.maximum) over a centred
    ``window`` (van Herk / Gil-Werman: two accumulations per block of ``window`` points,
    so O(n) whatever the window)."""
    half = window // 2
    k = 2 * half + 1
    n = len(data)
    total = -(-(n + 2 * half) // k) * k
    padded = np.full(total, pad)
    padded[half:half + n] = data
    blocks = padded.reshape(-1, k)
    prefix = ufunc.accumulate(blocks, axis=1).ravel()
    suffix = ufunc.accumulate(blocks[:, ::-1], axis=1)[:, ::-1].ravel()
    # the window starting at i (in padded positions) spans [i, i + k - 1]: the rest of
    # i's block and the start of the next block up to i + k - 1
    return ufunc(suffix[:n], prefix[k - 1:k - 1 + n])


def rolling_min_max_arrays(values, window: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rolling_min_max` as numpy arrays."""
    data = np.asarray(values, dtype=float)
    if len(data) == 0:
        return _empty(), _empty()
    finite = np.isfinite(data)
    low = _rolling(np.where(finite, data, np.inf), max(1, window), np.inf, np.minimum)
    high = _rolling(np.where(finite, data, -np.inf), max(1, window), -np.inf, np.maximum)
    none = ~np.isfinite(low)  # a window with no finite value
    low[none] = np.nan
    high[none] = np.nan
    return low, high


def rolling_min_max(values, window: int) -> tuple[list[float], list[float]]:
    """The lowest and highest of the values in a ``window`` centred on each (shorter at
    the ends; NaN and infinite values are skipped; a window with none finite gives NaN)."""
    low, high = rolling_min_max_arrays(values, window)
    return low.tolist(), high.tolist()


# --- columns of rows ----------------------------------------------------------------------------
class _Table:
    """The columns the charts need, of every row, as floats (None becomes NaN)."""

    KEYS = ("step", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens", "seconds")

    CHUNK = 16384  # rows converted in one C call: a reader thread holds the GIL ~5 ms

    def __init__(self, rows: list[dict]) -> None:
        getter, width = itemgetter(*self.KEYS), len(self.KEYS)
        self.raw: list[tuple] = []
        parts = [np.empty((0, width))]
        for start in range(0, len(rows), self.CHUNK):
            part = rows[start:start + self.CHUNK]
            try:  # rows with every key: one C call per row
                raw = list(map(getter, part))
            except KeyError:  # rows that leave some out (this app's leave out what is None)
                raw = [tuple(map(row.get, self.KEYS)) for row in part]
            self.raw += raw
            parts.append(np.array(raw, dtype=float).reshape(len(part), width))
        self.values = np.concatenate(parts)
        self.steps = self.values[:, 0]

    def column(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``key`` of every row, and where a row has it: a NaN value is had, a None or
        missing one is not."""
        j = self.KEYS.index(key)
        values = self.values[:, j]
        present = np.ones(len(values), dtype=bool)
        maybe = np.flatnonzero(np.isnan(values))
        if len(maybe):
            raw = self.raw
            present[maybe] = [raw[i][j] is not None for i in maybe.tolist()]
        return values, present

    def speed(self, unit: str) -> tuple[np.ndarray, np.ndarray]:
        """Steps and speeds between training rows in a row (see :func:`throughput`)."""
        steps = self.steps
        if len(steps) < 2:
            return _empty(), _empty()
        _, has_loss = self.column("loss")
        if unit == "tokens":
            counts, has_count = self.column("tokens")
        else:
            counts, has_count = steps, has_loss
        seconds, timed = self.column("seconds")
        seconds = np.where(timed, seconds, 0.0)  # no time counts as 0, as ``or 0`` does
        both = has_loss[:-1] & has_loss[1:] & has_count[:-1] & has_count[1:] & \
            (steps[1:] > steps[:-1])
        elapsed = seconds[1:] - seconds[:-1]
        with np.errstate(invalid="ignore"):
            keep = both & (elapsed > 0)
        return steps[1:][keep], (counts[1:] - counts[:-1])[keep] / elapsed[keep]


def throughput(rows: list[dict], unit: str) -> tuple[list[int], list[float]]:
    """Steps and the training speed up to each: input tokens per second (``unit``
    "tokens", from the Trainer's count of non-padding tokens) or steps per second, between
    two training rows in a row (not across an evaluation, nor a resume)."""
    at, speed = _Table(rows).speed(unit)
    return [_step_label(s) for s in at.tolist()], speed.tolist()


def speed_unit(runs: list[list[dict]]) -> str:
    """"tokens" when every run with timed rows counted its tokens, else "steps"."""
    timed = [rows for rows in runs if any(r.get("seconds") is not None for r in rows[:2])]
    if all(any(r.get("tokens") is not None for r in rows) for rows in timed):
        return "tokens"
    return "steps"


# --- one run -------------------------------------------------------------------------------------
def _step_label(step: float) -> int | float:
    return int(step) if float(step).is_integer() else float(step)


def analyse(rows: list[dict], weight: float, unit: str = "tokens") -> CurveData:
    """Everything the charts of the run with these ``rows`` show, with smoothing
    ``weight`` in [0, 1) and the throughput in ``unit`` ("tokens" or "steps" per second,
    see :func:`throughput`)."""
    if not rows:
        return CurveData(unit=unit)
    table = _Table(rows)
    steps = table.steps
    loss, has_loss = table.column("loss")
    train_steps, losses = steps[has_loss], loss[has_loss]
    smoothed = smooth_array(losses, weight)
    low, high = rolling_min_max_arrays(losses, band_window(weight))
    both = np.isfinite(low) & np.isfinite(high)
    band = Band(train_steps[both], low[both], high[both])

    def series(key: str) -> Series:
        values, present = table.column(key)
        return Series(steps[present], values[present])

    evals = series("eval_loss")
    speed = Series(*table.speed(unit))
    # spikes: a finite loss well above the finite smoothed loss just before it
    before = np.concatenate([[np.nan], smoothed[:-1]])
    with np.errstate(invalid="ignore"):
        spike = np.isfinite(before) & np.isfinite(losses) & (losses > SPIKE_RATIO * before) \
            & (losses - before > SPIKE_MIN)
    spikes = Series(train_steps[spike], losses[spike])
    data = CurveData(train_steps, losses, smoothed, band, evals, series("learning_rate"),
                     series("grad_norm"), speed, spikes, unit=unit)
    data.alarms = alarms(data)
    return data


def alarms(data: CurveData) -> list[Alarm]:
    """The health alarms of a run's curves: its last loss spike, validation loss rising
    three times in a row while the smoothed training loss has fallen (overfitting?), a
    NaN or infinite loss (the first)."""
    found = []
    if len(data.spikes):
        step = _step_label(data.spikes.steps[-1])
        found.append(Alarm("spike", step, f"loss spike at step {step}"))
    ev = data.eval.values
    smoothed = data.smoothed[np.isfinite(data.smoothed)]
    if len(ev) >= 3 and ev[-1] > ev[-2] > ev[-3] and len(smoothed) >= 2 and \
            smoothed[-1] < smoothed[0]:
        step = _step_label(data.eval.steps[-1])
        found.append(Alarm("overfitting", step, "validation loss rising while training loss "
                           "falls (overfitting?)"))
    for name, steps, values in (("training", data.steps, data.losses),
                                ("validation", data.eval.steps, data.eval.values)):
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            step = _step_label(steps[bad[0]])
            found.append(Alarm("nan", step, f"{name} loss is NaN or infinite at step {step}"))
    return found


def summary(rows: list[dict], weight: float) -> dict:
    """The numbers ``monitor`` adds to a run's state: the last smoothed training loss,
    the alarms and the last throughput (tokens or steps per second, whichever the run
    counted)."""
    unit = speed_unit([rows])
    data = analyse(rows, weight, unit)
    last_speed = float(data.speed.values[-1]) if len(data.speed) else None
    return {"smoothed_loss": data.smoothed_loss,
            "alarms": [a.to_dict() for a in data.alarms],
            "tokens_per_second": last_speed if unit == "tokens" else None,
            "steps_per_second": last_speed if unit == "steps" else None}


# --- for display ---------------------------------------------------------------------------------
def peak_decimate(steps, values, points: int = 8000) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` for display with at most about ``points`` points: each bin of
    neighbouring points gives its lowest and its highest value (in their order), so no
    minimum or maximum is lost; NaN is skipped. Short series come back as they are."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    size = len(steps)
    if size <= points:
        return steps, values
    k = -(-size // (points // 2))
    pad = (-size) % k
    s = np.concatenate([steps, np.full(pad, np.nan)]).reshape(-1, k)
    v = np.concatenate([values, np.full(pad, np.nan)]).reshape(-1, k)
    finite = np.where(np.isfinite(v), v, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a bin with no finite value
        low_at = np.nanargmin(np.where(np.isnan(finite), np.inf, finite), axis=1)
        high_at = np.nanargmax(np.where(np.isnan(finite), -np.inf, finite), axis=1)
    first, second = np.minimum(low_at, high_at), np.maximum(low_at, high_at)
    rows = np.arange(len(s))
    out_steps = np.stack([s[rows, first], s[rows, second]], axis=1).ravel()
    out_values = np.stack([v[rows, first], v[rows, second]], axis=1).ravel()
    keep = np.isfinite(out_steps) & np.isfinite(out_values)
    return out_steps[keep], out_values[keep]


def for_display(data: CurveData, points: int = 3000) -> CurveData:
    """``data`` with every series peak-decimated (see :func:`peak_decimate`) and the band
    binned keeping its lowest low and highest high: what a chart a few thousand pixels wide
    can show, computed once instead of at every paint. Alarms and the unit stay."""
    def series(part: Series) -> Series:
        return Series(*peak_decimate(part.steps, part.values, points))

    steps, losses = peak_decimate(data.steps, data.losses, points)
    smooth_steps, smoothed = peak_decimate(data.steps, data.smoothed, points)
    band = data.band
    if len(band.steps) > points:
        k = -(-len(band.steps) // (points // 2))
        cut = len(band.steps) - len(band.steps) % k
        low = band.low[:cut].reshape(-1, k).min(1)
        high = band.high[:cut].reshape(-1, k).max(1)
        bsteps = band.steps[:cut:k]
        if cut < len(band.steps):
            bsteps = np.append(bsteps, band.steps[cut])
            low = np.append(low, band.low[cut:].min())
            high = np.append(high, band.high[cut:].max())
        band = Band(bsteps, low, high)
    return CurveData(steps, losses, smoothed, band, series(data.eval), series(data.lr),
                     series(data.grad), series(data.speed), data.spikes, list(data.alarms),
                     data.unit, smooth_steps)

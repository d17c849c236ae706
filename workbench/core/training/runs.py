"""Reading the progress of a training run folder while another process writes it.

Understands this app's run folders (``metrics.jsonl``), any Hugging Face Trainer output
(``trainer_state.json`` in the folder or its newest checkpoint), and TensorBoard event
files when the ``tensorboard`` package is installed.

Every file may be caught mid-write: a line cut short, a JSON document truncated, bytes
that are not UTF-8. Readers take the last complete numbers and skip what they cannot
read; anything else is one :class:`WorkbenchError` with a message for the user.

:class:`RunMonitor` follows one folder and, at each :meth:`RunMonitor.poll`, reads only
what was written since the previous poll; :func:`read_run` is one poll of a new monitor.
Neither imports Qt: polls may run on any thread.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from workbench.core.common.errors import WorkbenchError

try:
    from orjson import loads as _fast_loads
except ImportError:  # the standard library's decoder, one call per chunk
    _fast_loads = None

FIELDS = ("loss", "eval_loss", "eval_accuracy", "learning_rate", "grad_norm",
          "samples_per_second")
# keys of a row that hold numbers (besides "step"); another value there becomes None
NUMERIC = (*FIELDS, "max_steps", "epoch", "seconds", "tokens")
# Where runs put TensorBoard event files, below the folder itself: the HF Trainer's
# default logging dir is runs/<date>_<host> (transformers 5: the TensorBoardCallback's
# os.path.join(output_dir, "runs", ...), with a trial name below it in a hyperparameter
# search; torch's SummaryWriter uses the same), and a few usual names. Never a deep walk:
# a folder of many runs is not one run.
LOG_DIRS = ("runs", "logs", "tensorboard", "tb", "lightning_logs")
EVENTS = "events.out.tfevents.*"
# TensorBoard tags (HF Trainer's, or bare names) and the row keys they fill
TAGS = {"train/loss": "loss", "eval/loss": "eval_loss", "train/learning_rate":
        "learning_rate", "train/grad_norm": "grad_norm", "eval/accuracy": "eval_accuracy",
        "loss": "loss", "learning_rate": "learning_rate", "grad_norm": "grad_norm",
        "eval_loss": "eval_loss", "train/epoch": "epoch",
        "train/num_input_tokens_seen": "tokens"}
_PLAIN = frozenset((int, float, type(None)))  # the value types of a row as this app writes


@dataclass
class RunSnapshot:
    """What a run folder says now: its log rows (dicts with ``step``) and its position.

    ``rows`` is a new list at each poll, but rows themselves are shared between polls:
    read them, never change them."""

    folder: str
    source: str  # "metrics.jsonl" | "trainer_state.json" | "tensorboard"
    rows: list[dict] = field(default_factory=list)
    global_step: int = 0
    max_steps: int | None = None

    def latest(self, key: str) -> float | None:
        for row in reversed(self.rows):
            if row.get(key) is not None:
                return row[key]
        return None

    def to_dict(self) -> dict:
        return {"folder": self.folder, "source": self.source, "global_step": self.global_step,
                "max_steps": self.max_steps, "loss": self.latest("loss"),
                "eval_loss": self.latest("eval_loss"),
                "learning_rate": self.latest("learning_rate"), "rows": len(self.rows)}


# --- values ------------------------------------------------------------------------------
def _is_number(value) -> bool:
    return type(value) in (int, float)  # not bool, not a string that looks like one


def _step(value) -> int | float | None:
    """A row's step as a number, or None when it is not one (or not finite)."""
    if type(value) is int:
        return value
    if type(value) is float and math.isfinite(value):
        return int(value) if value.is_integer() else value
    return None


def _clean_row(obj) -> dict | None:
    """``obj`` as a row: a dict with a numeric ``step`` whose known keys hold numbers
    (another value there becomes None); None when it cannot be one."""
    if not isinstance(obj, dict):
        return None
    step = _step(obj.get("step"))
    if step is None:
        return None
    row = dict(obj)
    row["step"] = step
    for key in NUMERIC:
        if key in row and not _is_number(row[key]):
            row[key] = None
    return row


def _positive_int(value) -> int | None:
    step = _step(value)
    return int(step) if step is not None and step > 0 else None


def _read_json(path: Path):
    """The JSON document in ``path`` (bytes that are not UTF-8 replaced); raises
    ValueError or OSError when it cannot be read whole (for example mid-write)."""
    data = path.read_bytes()
    try:
        return json.loads(data.decode("utf-8", errors="replace"))
    except RecursionError:
        raise ValueError("nested too deeply") from None


# --- metrics.jsonl ------------------------------------------------------------------------
def _parse_line(line: str):
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        pass
    # a line cut off by a crash, then the next run's line appended after it: the last
    # object on the line is whole (rows hold no nested objects)
    start = line.rfind("{", 1)
    if start > 0:
        try:
            return json.loads(line[start:])
        except (ValueError, RecursionError):
            pass
    return None


CHUNK = 1 << 18  # bytes of lines parsed in one call: bounds the memory a long file takes,
# and how long a reader thread holds the GIL in one call (about 3 ms: the window waits that)


def parse_jsonl(data: bytes, stop: int | None = None) -> list[dict]:
    """The rows in complete JSON lines ``data[:stop]`` (which ends with a newline): lines
    that are not a JSON object with a numeric ``step`` are skipped. (``stop`` instead of a
    slice: copying 100 MB holds the GIL for tens of milliseconds.)"""
    rows: list[dict] = []
    start = 0
    size = len(data) if stop is None else stop
    while start < size:
        end = min(data.find(b"\n", start + CHUNK, size) + 1 or size, size)
        rows += _parse_chunk(data[start:end].decode("utf-8", errors="replace"))
        start = end
    return rows


def _parse_lines(text: str) -> list:
    """Each line of ``text`` parsed: with orjson (about 4 times faster than the standard
    library here, and each call short, so a reader thread hands the GIL back often),
    a line it refuses (NaN, which Python writes, or a damaged line) by :func:`_parse_line`."""
    parsed = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            parsed.append(_fast_loads(line))
        except ValueError:
            parsed.append(_parse_line(line))
    return parsed


def _parse_chunk(text: str) -> list[dict]:
    if _fast_loads is not None:
        parsed = _parse_lines(text)
    else:
        count = text.count("\n")
        try:  # one call for all the lines: the decoder's per-call cost dominates otherwise
            parsed = json.loads("[" + text.replace("\n", ",", count - 1) + "]")
            if len(parsed) != count:  # "1, 2" on one line, or two halves that made one
                raise ValueError
        except (ValueError, RecursionError):
            parsed = [_parse_line(line) for line in text.split("\n") if line.strip()]
    rows = []
    append = rows.append
    plain = _PLAIN.issuperset
    for row in parsed:
        if type(row) is dict and type(row.get("step")) is int and plain(map(type, row.values())):
            append(row)  # the fast path: a row as this app writes it
        else:
            row = _clean_row(row)
            if row is not None:
                append(row)
    return rows


class _MetricsReader:
    """Follows a ``metrics.jsonl``: each read parses only the complete lines added since
    the previous one."""

    HEAD = 64  # bytes compared to notice a file written anew in place
    PIECE = 1 << 22  # bytes read at a time

    def __init__(self, path: Path) -> None:
        self.path = path
        self._reset()

    def _reset(self) -> None:
        self.rows: list[dict] = []
        self.offset = 0  # bytes of complete lines parsed
        self.identity: tuple | None = None  # (device, inode, mtime, size) last read
        self.head = b""
        self.tail: dict | None = None  # a last line without its newline, if complete
        self.global_step = 0

    def _read_lines(self, f) -> bytes:
        """Parse the complete lines from ``f``'s position on, a piece at a time (one
        ``read()`` of a 70 MB file holds the GIL for tens of milliseconds growing its
        buffer); returns the bytes after the last newline."""
        pending = b""
        while chunk := f.read(self.PIECE):
            data = pending + chunk if pending else chunk
            end = data.rfind(b"\n") + 1
            if end:
                new = parse_jsonl(data, end)
                self.offset += end
                if new:
                    self.rows.extend(new)
                    self.global_step = max(self.global_step, max(r["step"] for r in new))
            pending = data[end:]
        return pending

    def read(self) -> tuple[list[dict], dict | None]:
        """Every complete row so far, and a last row not yet ended by a newline."""
        try:
            stat = os.stat(self.path)
        except OSError:
            self._reset()
            return self.rows, None
        identity = (stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if identity == self.identity:
            return self.rows, self.tail
        if self.identity is not None and (identity[:2] != self.identity[:2] or
                                          stat.st_size < self.offset):
            self._reset()  # replaced or rewritten (a resumed run may start it again)
        try:
            with open(self.path, "rb") as f:
                head = f.read(self.HEAD)
                if self.offset and not head.startswith(self.head[:len(head)]):
                    self._reset()
                f.seek(self.offset)
                rest = self._read_lines(f)
        except OSError:
            return self.rows, self.tail
        self.identity = identity
        if len(self.head) < self.HEAD:
            self.head = head
        rest = rest.rstrip()
        self.tail = None
        if rest.endswith(b"}"):  # an object is whole once its brace is written
            rows = parse_jsonl(rest + b"\n")
            self.tail = rows[0] if rows else None
        return self.rows, self.tail


# --- trainer_state.json ---------------------------------------------------------------------
def _trainer_states(folder: Path) -> list[Path]:
    """The folder's trainer_state.json, then its checkpoints' from the newest."""
    states = []
    for path in folder.glob("checkpoint-*/trainer_state.json"):
        try:
            states.append((int(path.parent.name.split("-")[-1]), path))
        except ValueError:
            continue
    own = [folder / "trainer_state.json"] if (folder / "trainer_state.json").is_file() else []
    return own + [path for _, path in sorted(states, reverse=True)]


def _from_trainer_state(state) -> tuple[list[dict], int, int | None]:
    """Rows, global step and max steps of a parsed trainer_state.json; ValueError when
    it is not one."""
    if not isinstance(state, dict):
        raise ValueError("not a JSON object")
    history = state.get("log_history", [])
    if not isinstance(history, list):
        raise ValueError("its log_history is not a list")
    rows = []
    for entry in history:
        if not isinstance(entry, dict):
            continue
        step = _step(entry.get("step"))
        if step is None:
            continue
        epoch = entry.get("epoch")
        row = {"step": step, "epoch": epoch if _is_number(epoch) else None}
        for key in FIELDS:
            if _is_number(entry.get(key)):
                row[key] = entry[key]
        if _is_number(entry.get("train_samples_per_second")):
            row["samples_per_second"] = entry["train_samples_per_second"]
        if _is_number(entry.get("num_input_tokens_seen")):  # a Trainer that counts tokens
            row["tokens"] = entry["num_input_tokens_seen"]  # also logs the time since
            if _is_number(entry.get("train_runtime")):  # its start
                row["seconds"] = entry["train_runtime"]
        if len(row) > 2:
            rows.append(row)
    step = _step(state.get("global_step"))
    if step is None:
        step = max((r["step"] for r in rows), default=0)
    return rows, int(step), _positive_int(state.get("max_steps"))


class _StateReader:
    """Reads the newest readable trainer_state.json again only when it changed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cache: dict[Path, tuple[tuple, tuple | None, str]] = {}  # stat, result, error
        self.good: dict[Path, tuple] = {}  # the last result each file gave

    def read(self) -> tuple[list[dict], int, int | None] | None:
        """The newest complete state; None when there is no trainer_state.json; raises
        WorkbenchError when there are some and none can be read."""
        candidates = _trainer_states(self.folder)
        errors = []
        for path in candidates:
            result, error = self._read(path)
            if result is None:
                result = self.good.get(path)  # being written: its last complete numbers
            if result is not None:
                return result
            errors.append(f"{path}: {error}")
        if errors:
            raise WorkbenchError(f"Cannot read the Trainer state of {self.folder} (being "
                                 f"written or damaged): {errors[0]}")
        return None

    def _read(self, path: Path) -> tuple[tuple | None, str]:
        try:
            stat = path.stat()
        except OSError as exc:
            return None, exc.strerror or str(exc)
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self.cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        try:
            result, error = _from_trainer_state(_read_json(path)), ""
            self.good[path] = result
        except OSError as exc:
            result, error = None, exc.strerror or str(exc)
        except json.JSONDecodeError as exc:
            result, error = None, f"not complete JSON ({exc})"
        except ValueError as exc:
            result, error = None, str(exc)
        self.cache[path] = (key, result, error)
        return result, error


def _run_json_max_steps(folder: Path) -> int | None:
    """max_steps of the run's configuration when it says (a run.json mid-write: None)."""
    try:
        config = _read_json(folder / "run.json")
    except (OSError, ValueError):
        return None
    return _positive_int(config.get("max_steps")) if isinstance(config, dict) else None


# --- TensorBoard ---------------------------------------------------------------------------
def check_run_folder(folder: str | Path) -> Path:
    """``folder`` if it looks like a training run (this app's, a Trainer's output or
    TensorBoard event files where runs put them), without reading its numbers; else one
    clear WorkbenchError. Quick: for the window, before a reader thread follows it."""
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise WorkbenchError(f"{path} is a file, not a run folder: give the folder the run "
                             "writes into.")
    if not path.is_dir():
        raise WorkbenchError(f"Run folder not found: {path}")
    if any((path / name).is_file() for name in ("metrics.jsonl", "run.json",
                                                "trainer_state.json")) \
            or any(path.glob("checkpoint-*/trainer_state.json")) or event_files(path):
        return path
    raise WorkbenchError(f"{path} is not a training run: no metrics.jsonl, "
                         "trainer_state.json or TensorBoard event files.")


def event_files(folder: Path) -> list[Path]:
    """TensorBoard event files where runs put them: the folder, and up to two levels
    below its ``runs/`` (the HF Trainer's and torch's default) or another of
    :data:`LOG_DIRS`; oldest first (by the time in their names)."""
    found = list(folder.glob(EVENTS))
    for name in LOG_DIRS:
        logs = folder / name
        if logs.is_dir():
            for pattern in (EVENTS, f"*/{EVENTS}", f"*/*/{EVENTS}"):
                found.extend(logs.glob(pattern))

    def written(path: Path) -> tuple:
        match = re.match(r"events\.out\.tfevents\.(\d+)", path.name)
        return (int(match.group(1)) if match else 0, str(path))

    return sorted((p for p in found if p.is_file()), key=written)


class _TensorBoardReader:
    """One EventAccumulator per event file; each read takes in what was appended."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.accumulators: dict[Path, object] = {}
        self.taken: dict[tuple[Path, str], int] = {}  # scalars of a tag already merged
        self.by_step: dict[int, dict] = {}
        self.rows: list[dict] = []  # by_step's rows in the order of their steps
        self.index: dict[int, int] = {}  # step -> position in rows
        self.loss_time: dict[int, float] = {}  # when each training loss was written
        self.start: float | None = None

    def read(self, files: list[Path]) -> list[dict]:
        try:
            from tensorboard.backend.event_processing import event_accumulator as ea
        except ImportError:
            raise WorkbenchError(f"{self.folder} has TensorBoard event files; install the "
                                 "'tensorboard' package to read them.") from None
        fresh: set[int] = set()  # rows made or copied in this read: changed in place
        changed: set[int] = set()
        for path in files:
            acc = self.accumulators.get(path)
            if acc is None:  # every scalar kept: the default keeps a sample of 10,000
                acc = self.accumulators[path] = ea.EventAccumulator(
                    str(path), size_guidance={ea.SCALARS: 0, ea.TENSORS: 1,
                                              ea.HISTOGRAMS: 1, ea.IMAGES: 1, ea.AUDIO: 1,
                                              ea.COMPRESSED_HISTOGRAMS: 1},
                    purge_orphaned_data=False)  # a restart's points count too
            try:
                acc.Reload()  # reads only what was appended since the last Reload
                tags = acc.Tags().get(ea.SCALARS, [])
            except Exception:  # noqa: BLE001 (a damaged file: what it gave so far)
                continue
            for tag in tags:
                key = TAGS.get(tag)
                if key is None:
                    continue
                items = acc.Scalars(tag)
                start = self.taken.get((path, tag), 0)
                self.taken[(path, tag)] = len(items)
                for scalar in items[start:]:
                    self._set(scalar.step, key, scalar.value, fresh, changed)
                    if key == "loss":
                        self.loss_time[scalar.step] = scalar.wall_time
        if changed:
            self._times(changed, fresh)
            self._place(changed)
        return self.rows

    def _set(self, step: int, key: str, value: float, fresh: set, changed: set) -> None:
        row = self.by_step.get(step)
        if row is None:
            row = self.by_step[step] = {"step": step}
            fresh.add(step)
        elif step not in fresh:  # shown by an earlier snapshot: copied, never changed
            row = self.by_step[step] = dict(row)
            fresh.add(step)
        row[key] = value
        changed.add(step)

    def _times(self, changed: set, fresh: set) -> None:
        """Seconds since the first training loss was written: the run's speed."""
        if not self.loss_time:
            return
        start = min(self.loss_time.values())
        steps = self.loss_time if start != self.start else \
            [s for s in changed if s in self.loss_time]
        self.start = start
        for step in steps:
            row = self.by_step[step]
            seconds = self.loss_time[step] - start
            if row.get("seconds") != seconds:
                if step not in fresh:
                    row = self.by_step[step] = dict(row)
                    fresh.add(step)
                    changed.add(step)
                row["seconds"] = seconds

    def _place(self, changed: set) -> None:
        new = sorted(s for s in changed if s not in self.index)
        if new and self.rows and new[0] < self.rows[-1]["step"]:  # out of order: resort
            self.rows = [self.by_step[s] for s in sorted(self.by_step)]
            self.index = {row["step"]: i for i, row in enumerate(self.rows)}
            return
        for step in changed:
            if step in self.index:
                self.rows[self.index[step]] = self.by_step[step]
        for step in new:
            self.index[step] = len(self.rows)
            self.rows.append(self.by_step[step])


# --- the monitor -----------------------------------------------------------------------------
class RunMonitor:
    """Follows the run in ``folder``: each :meth:`poll` reads only what was added since the
    previous one (new complete lines of metrics.jsonl, what was appended to each
    TensorBoard event file, a trainer_state.json that changed) and returns every row so
    far. Safe to call from any thread (one poll at a time)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        self._lock = threading.Lock()
        self._metrics = _MetricsReader(self.folder / "metrics.jsonl")
        self._state = _StateReader(self.folder)
        self._tensorboard = _TensorBoardReader(self.folder)

    def poll(self) -> RunSnapshot:
        with self._lock:
            return self._poll()

    def _poll(self) -> RunSnapshot:
        folder = self.folder
        if not folder.is_dir():
            raise WorkbenchError(f"Run folder not found: {folder}")
        if self._metrics.path.is_file():
            rows, tail = self._metrics.read()
            rows = rows + [tail] if tail is not None else list(rows)
            step = max(self._metrics.global_step, tail["step"] if tail else 0)
            max_steps = _positive_int(rows[-1].get("max_steps")) if rows else None
            if max_steps is None:
                try:
                    state = self._state.read()
                except WorkbenchError:
                    state = None  # only wanted for max_steps: the rows are here
                max_steps = state[2] if state else _run_json_max_steps(folder)
            return RunSnapshot(str(folder), "metrics.jsonl", rows, step, max_steps)
        try:
            state = self._state.read()
            damaged = None
        except WorkbenchError as exc:
            state, damaged = None, exc
        if state is not None:
            rows, step, max_steps = state
            return RunSnapshot(str(folder), "trainer_state.json", list(rows), step, max_steps)
        files = event_files(folder)
        if files:
            rows = list(self._tensorboard.read(files))
            step = rows[-1]["step"] if rows else 0  # rows come in the order of steps
            return RunSnapshot(str(folder), "tensorboard", rows, step, None)
        if damaged is not None:
            raise damaged
        if (folder / "run.json").is_file():  # started, nothing logged yet
            return RunSnapshot(str(folder), "metrics.jsonl", [], 0, _run_json_max_steps(folder))
        raise WorkbenchError(f"{folder} is not a training run: no metrics.jsonl, "
                             "trainer_state.json or TensorBoard event files in it (nor in "
                             "its runs/ or logs/ folder).")


def read_run(folder: str | Path) -> RunSnapshot:
    """The current state of the run in ``folder`` (see the module docstring)."""
    return RunMonitor(folder).poll()


def write_synthetic_run(folder: Path, steps: int = 400_000) -> None:
    """A synthetic finished run of ``steps`` logged steps in this app's format (a noisy
    falling loss, a spike every 50,000 steps, validation every 1,000): what the benchmark
    of a large run attaches, and the long run of the screenshots."""
    import json
    import math
    import random

    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.jsonl", "w", encoding="utf-8") as f:
        for step in range(1, steps + 1):
            loss = 0.5 + 2.0 * math.exp(-step / 60_000) + rng.gauss(0, 0.05) + \
                (1.5 if step % 50_000 == 0 else 0.0)
            row = {"step": step, "max_steps": steps, "epoch": step / 10_000,
                   "loss": round(loss, 5), "learning_rate": 2e-5 * (1 - step / steps),
                   "grad_norm": round(abs(rng.gauss(1.0, 0.2)), 4), "seconds": step * 0.05,
                   "tokens": step * 512}
            f.write(json.dumps(row) + "\n")
            if step % 1_000 == 0:
                f.write(json.dumps({"step": step, "max_steps": steps, "epoch": step / 10_000,
                                    "eval_loss": round(loss + 0.1, 5),
                                    "seconds": step * 0.05}) + "\n")

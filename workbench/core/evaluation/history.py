"""The results history of the Evaluate tab: every result with its inputs and settings,
kept in a JSON file between launches and exportable as CSV or JSON."""

from __future__ import annotations

import csv
import datetime
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workbench.core.common import paths
from workbench.core.common.files import write_atomically


@dataclass
class HistoryEntry:
    kind: str  # "perplexity", "bleu", "generate+score", "classification", "multiple choice",
    #           "sentence pairs", "sweep": the page that made it
    summary: str  # the headline numbers, for people
    inputs: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    time: str = ""


def history_file() -> Path:
    return paths.data_dir() / "evaluate-history.json"


def _aside(path: Path) -> Path:
    """A free name beside ``path`` for keeping a damaged file (never over an earlier one)."""
    candidate = path.with_suffix(".damaged.json")
    number = 1
    while candidate.exists():
        number += 1
        candidate = path.with_suffix(f".damaged-{number}.json")
    return candidate


_KINDS = {bool: "true/false", int: "a number", float: "a number", str: "text", list: "a list",
          dict: "an object", type(None): "null"}


def _entry_from_dict(row: object) -> HistoryEntry:
    """One entry, every field of its type (fields this version does not know are left
    out); a problem raises ValueError naming it."""
    if not isinstance(row, dict):
        raise ValueError(f"it is {_KINDS.get(type(row), 'something else')}, not an object")
    values = {}
    for name, kind in (("kind", str), ("summary", str), ("inputs", dict), ("results", dict),
                       ("time", str)):
        if name not in row:
            if name in ("kind", "summary"):
                raise ValueError(f"its {name} is missing")
            continue
        if not isinstance(row[name], kind):
            raise ValueError(f"its {name} is {_KINDS.get(type(row[name]), 'something else')}, "
                             f"not {_KINDS[kind]}")
        values[name] = row[name]
    return HistoryEntry(**values)


def load_history(path: Path | None = None,
                 report: Callable[[str], None] | None = None) -> list[HistoryEntry]:
    """The saved history, read as plain JSON with explicit types.

    A file that cannot be read as a list is moved aside (never lost) and the history starts
    again; entries of the wrong shape are dropped one by one, and the file as it was is
    copied aside before the sound entries are written back. Either way ``report`` (the
    window's log) gets one message saying what happened and where the old file is.
    """
    path = path or history_file()
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError(f"it holds {_KINDS.get(type(rows), 'something else')}, not a "
                             "list of results")
    except (ValueError, OSError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        aside = _aside(path)
        try:
            path.replace(aside)
        except OSError as move_error:
            if report:
                report(f"Results history: {path} cannot be read ({exc}) nor moved aside "
                       f"({move_error}); the history starts empty.")
            return []
        if report:
            reason = str(exc) if not isinstance(exc, RecursionError) else "nested too deeply"
            report(f"Results history: {path} cannot be read ({reason}); it was moved to "
                   f"{aside.name} and the history starts again.")
        return []
    entries, problems = [], []
    for number, row in enumerate(rows, start=1):
        try:
            entries.append(_entry_from_dict(row))
        except ValueError as exc:
            problems.append(f"entry {number}: {exc}")
    if problems:
        aside = _aside(path)
        try:  # keep the file as it was, then keep only the sound entries in it
            shutil.copy2(path, aside)
            save_history(entries, path)
            kept = f"; the file as it was is kept as {aside.name}"
        except OSError:
            kept = ""
        if report:
            shown = "; ".join(problems[:3]) + ("; …" if len(problems) > 3 else "")
            report(f"Results history: dropped {len(problems)} damaged entries of {len(rows)} "
                   f"({shown}){kept}.")
    return entries


def save_history(entries: list[HistoryEntry], path: Path | None = None) -> None:
    path = path or history_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps([asdict(e) for e in entries], indent=1))


def add_entry(kind: str, summary: str, inputs: dict, results: dict,
              path: Path | None = None,
              report: Callable[[str], None] | None = None) -> HistoryEntry:
    entry = HistoryEntry(kind, summary, inputs, results,
                         datetime.datetime.now().isoformat(timespec="seconds"))
    entries = load_history(path, report)
    entries.append(entry)
    save_history(entries, path)
    return entry


def export_history(entries: list[HistoryEntry], path: str | Path) -> None:
    """CSV (one row per result, inputs and results as JSON columns) or JSON, by suffix."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        out = io.StringIO(newline="")
        writer = csv.writer(out)
        writer.writerow(["time", "kind", "summary", "inputs", "results"])
        for e in entries:
            writer.writerow([e.time, e.kind, e.summary, json.dumps(e.inputs),
                             json.dumps(e.results)])
        content = out.getvalue()
    else:
        content = json.dumps([asdict(e) for e in entries], indent=1)
    write_atomically(path, content)  # a failed export leaves no half file

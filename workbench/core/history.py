"""The results history of the Evaluate tab: every result with its inputs and settings,
kept in a JSON file between launches and exportable as CSV or JSON."""

from __future__ import annotations

import csv
import datetime
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from workbench.core import paths


@dataclass
class HistoryEntry:
    kind: str  # "perplexity" | "bleu"
    summary: str  # the headline numbers, for people
    inputs: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    time: str = ""


def history_file() -> Path:
    return paths.data_dir() / "evaluate-history.json"


def load_history(path: Path | None = None) -> list[HistoryEntry]:
    """The saved history; an unreadable file is kept aside rather than lost."""
    path = path or history_file()
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return [HistoryEntry(**row) for row in rows]
    except (ValueError, TypeError, OSError):
        path.replace(path.with_suffix(".damaged.json"))
        return []


def save_history(entries: list[HistoryEntry], path: Path | None = None) -> None:
    path = path or history_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".history-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump([asdict(e) for e in entries], f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_entry(kind: str, summary: str, inputs: dict, results: dict,
              path: Path | None = None) -> HistoryEntry:
    entry = HistoryEntry(kind, summary, inputs, results,
                         datetime.datetime.now().isoformat(timespec="seconds"))
    entries = load_history(path)
    entries.append(entry)
    save_history(entries, path)
    return entry


def export_history(entries: list[HistoryEntry], path: str | Path) -> None:
    """CSV (one row per result, inputs and results as JSON columns) or JSON, by suffix."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["time", "kind", "summary", "inputs", "results"])
            for e in entries:
                writer.writerow([e.time, e.kind, e.summary, json.dumps(e.inputs),
                                 json.dumps(e.results)])
    else:
        path.write_text(json.dumps([asdict(e) for e in entries], indent=1), encoding="utf-8")

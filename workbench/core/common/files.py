"""Writing files that other readers (a window, another process) may read at any moment."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def write_atomically(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` through a scratch file in the same folder
    renamed over it: a reader sees the old file or the new one, never half of one, and a
    write that fails (a full disk) leaves the old file as it was and no scratch file."""
    path = Path(path)
    fd, scratch = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        # the scratch file is private (0600): give it the mode the file has, or the mode a
        # new file gets, so that an export is as readable as any file the user writes
        os.chmod(scratch, _mode_for(path))
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise
    return path


def check_writable(folder: str | Path) -> None:
    """Raise the system's OSError unless a file can be created in ``folder`` (an existing
    folder). Tried for real, with a scratch file removed at once: ``os.access`` answers yes
    to root even where every write fails (a read-only mount such as /sys, an immutable
    folder, a network share that maps root to nobody)."""
    with tempfile.TemporaryFile(dir=folder):
        pass


def cannot_write(path: str | Path, error: OSError) -> str:
    """A one-line message for a write that failed: the file and the system's reason."""
    return f"Cannot write {path}: {error.strerror or error}."


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return mask

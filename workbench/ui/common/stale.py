"""Results that a failed or cancelled job would have replaced: greyed out, and said to be
from the previous run, the same way on every page."""

from __future__ import annotations

from PySide6.QtWidgets import QWidget

PREVIOUS_RUN = "The results shown are from the previous run."


def mark_stale(view: QWidget, message: str) -> str:
    """Grey out ``view``, which still shows an earlier run's results (a job that would
    have replaced them failed or was cancelled), and return ``message`` followed by a
    sentence that says so, for the page's status line. ``view.setEnabled(True)`` undoes it
    when new results are shown."""
    view.setEnabled(False)
    return f"{message} {PREVIOUS_RUN}"

"""Widgets shared by several tabs."""

from __future__ import annotations

import bisect
import time

from PySide6.QtCore import QEvent, QObject, Signal
from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import QLabel, QTextEdit


def visible_token(text: str) -> str:
    """A token as it can be seen in a label or a table cell: a space as ·, a newline as ⏎,
    a tab as →, and an empty token as ∅ (a whitespace-only token looked like an empty
    cell)."""
    return text.replace("\n", "⏎").replace("\t", "→").replace(" ", "·") or "∅"


def probability_colour(p: float) -> QColor:
    """Red for unlikely tokens through yellow to green for near-certain ones."""
    if p != p:  # NaN: no probability known
        return QColor(235, 235, 235)
    return QColor.fromHsvF(max(0.0, min(1.0, p)) / 3.0, 0.35, 1.0)


class TokenView(QTextEdit):
    """Read-only text made of tokens; remembers where each token starts; emits clicks."""

    token_clicked = Signal(int)

    def __init__(self, name: str, placeholder: str = "") -> None:
        super().__init__()
        self.setObjectName(name)
        self.setReadOnly(True)
        self.setPlaceholderText(placeholder)
        self.starts: list[int] = []
        self.viewport().installEventFilter(self)

    def clear_tokens(self) -> None:
        self.clear()
        self.starts = []

    def append_token(self, text: str, probability: float, tooltip: str,
                     highlight: bool = False) -> None:
        cursor = self.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        self.starts.append(cursor.position())
        fmt = QTextCharFormat()
        fmt.setBackground(probability_colour(probability))
        fmt.setToolTip(tooltip)
        if highlight:
            fmt.setFontUnderline(True)
            fmt.setUnderlineColor(QColor(200, 0, 0))
            fmt.setFontWeight(700)
        cursor.insertText(text, fmt)  # an empty token (a special token) has no width
        self.setTextCursor(cursor)

    def token_at(self, position: int) -> int | None:
        index = bisect.bisect_right(self.starts, position) - 1
        return index if index >= 0 else None

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt API)
        if watched is self.viewport() and event.type() == QEvent.Type.MouseButtonRelease:
            index = self.token_at(self.cursorForPosition(event.position().toPoint()).position())
            if index is not None:
                self.token_clicked.emit(index)
        return super().eventFilter(watched, event)


class StatusLine(QLabel):
    """A word-wrapped label of a fixed two-line height, with the whole text as its tooltip.
    A label that grows or shrinks with its text re-lays out the tab under it, and every
    chart there repaints (about 50 ms on the GUI thread here, at the start and end of each
    generation)."""

    def __init__(self, name: str) -> None:
        super().__init__("")
        self.setObjectName(name)
        self.setWordWrap(True)
        self.setFixedHeight(2 * self.fontMetrics().lineSpacing() + 4)

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's name)
        super().setText(text)
        self.setToolTip(text)


class ProgressThrottle:
    """Whether a progress tick should be shown now: at most ``per_second`` a second, and
    always when ``force``d (a stage change, the last step). Ticks can come many times a
    second, and a progress bar repaints at once: each repaint takes CPU from the job."""

    def __init__(self, per_second: float = 4.0) -> None:
        self.interval = 1.0 / per_second
        self.shown = float("-inf")

    def due(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self.shown < self.interval:
            return False
        self.shown = now
        return True

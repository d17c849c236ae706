"""Widgets shared by several tabs."""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QHeaderView,
    QLabel,
    QStyle,
    QTableView,
    QTextEdit,
    QToolButton,
    QToolTip,
    QVBoxLayout,
    QWidget,
)


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
        fmt.setForeground(QColor(0, 0, 0))  # dark text on the light tints, in a dark theme too
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


# --- tables that fit ------------------------------------------------------------------------------
class ColumnFit(QObject):
    """Keeps a table's columns within its width, as its data and size change: each column
    gets the width of its contents, and the text columns (``stretch``) share what is left
    (long texts are cut with "…" and shown whole in a tooltip). When even that does not fit,
    the columns shrink together down to ``min_width`` each; only a table that cannot fit
    then (a grid of many columns) scrolls sideways. A sideways scroll bar for a handful of
    columns hid the last of them at 1280×800."""

    MIN_TEXT = 90  # the least a text column keeps while the numbers fit

    def __init__(self, table: QTableView, stretch: Iterable[int] = (), min_width: int = 40
                 ) -> None:
        super().__init__(table)
        self.table = table
        self.stretch = set(stretch)
        self.min_width = min_width
        header = table.horizontalHeader()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setMinimumSectionSize(min(min_width, 24))
        table.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        table.setWordWrap(False)
        table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.timer = QTimer(self)  # many changes (a table being filled) make one fit
        self.timer.setSingleShot(True)
        self.timer.setInterval(0)
        self.timer.timeout.connect(self.fit)
        model = table.model()
        for signal in (model.modelReset, model.rowsInserted, model.rowsRemoved,
                       model.columnsInserted, model.columnsRemoved, model.dataChanged,
                       model.headerDataChanged, model.layoutChanged):
            signal.connect(self.timer.start)
        table.viewport().installEventFilter(self)

    def wanted_width(self) -> int:
        """The width the table takes to show every column whole (frame included)."""
        t, header = self.table, self.table.horizontalHeader()
        columns = [c for c in range(header.count()) if not header.isSectionHidden(c)]
        bar = t.verticalScrollBar().sizeHint().width() if t.verticalScrollBar().isVisible() else 0
        vertical = t.verticalHeader().width() if t.verticalHeader().isVisible() else 0
        return (sum(max(self.title_width(c), t.sizeHintForColumn(c)) for c in columns)
                + vertical + bar + 2 * t.frameWidth())

    def widths(self, available: int) -> list[int]:
        """The column widths for a viewport ``available`` pixels wide."""
        t, header = self.table, self.table.horizontalHeader()
        columns = [c for c in range(header.count()) if not header.isSectionHidden(c)]
        want = {c: max(self.title_width(c), t.sizeHintForColumn(c), 1) for c in columns}
        text = [c for c in columns if c in self.stretch]
        fixed = [c for c in columns if c not in self.stretch]
        width = dict(want)
        fixed_total = sum(want[c] for c in fixed)
        text_least = {c: min(want[c], self.MIN_TEXT) for c in text}
        room = available - fixed_total
        if text and room >= sum(text_least.values()):
            # the numbers whole, the texts share the rest: each short text whole, the
            # longer ones an equal part of what the short ones leave (all of it, the last)
            share = sum(want[c] for c in text)
            if share <= room:
                for c in text:
                    width[c] = want[c] + (room - share) * want[c] // share
            else:
                left = room
                by_length = sorted(text, key=lambda c: want[c])
                for i, c in enumerate(by_length):
                    fair = left // (len(by_length) - i)
                    width[c] = fair if i == len(by_length) - 1 else min(want[c], fair)
                    left -= width[c]
        elif not text and fixed_total <= available:
            extra = (available - fixed_total) // max(len(fixed), 1)  # filled evenly
            for c in fixed:
                width[c] = want[c] + extra
        else:  # too narrow: the texts at their least, every column shrinks alike
            for c in text:
                width[c] = text_least[c]
            room = available - sum(text_least.values())
            scale = room / fixed_total if fixed_total else 1.0
            for c in fixed:
                width[c] = max(min(self.min_width, want[c]), int(want[c] * scale))
        return [width.get(c, header.sectionSize(c)) for c in range(header.count())]

    def title_width(self, column: int) -> int:
        """The width of a column's title (its longest line). The room Qt keeps for a sort
        arrow in every title is only kept where the arrow is shown."""
        header = self.table.horizontalHeader()
        if header.isSortIndicatorShown() and header.sortIndicatorSection() == column:
            return header.sectionSizeHint(column)
        text = header.model().headerData(column, Qt.Orientation.Horizontal,
                                         Qt.ItemDataRole.DisplayRole)
        metrics = header.fontMetrics()
        margin = header.style().pixelMetric(QStyle.PixelMetric.PM_HeaderMargin, None, header)
        return max((metrics.horizontalAdvance(part) for part in str(text or "").split("\n")),
                   default=0) + 2 * margin + 6

    def fit(self) -> None:
        t = self.table
        if t.horizontalHeader().count() == 0:
            return
        available = t.viewport().width()
        widths = self.widths(available)
        # no sideways scroll bar while the columns fit: one shown for a moment (as the
        # vertical one comes and goes) took a row's height and stayed
        t.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff
                                       if sum(widths) <= available
                                       else Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        for c, w in enumerate(widths):
            if t.columnWidth(c) != w:
                t.setColumnWidth(c, w)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt API)
        if event.type() == QEvent.Type.Resize:
            self.timer.start()
        elif event.type() == QEvent.Type.ToolTip:
            index = self.table.indexAt(event.pos())
            if index.isValid() and index.data(Qt.ItemDataRole.ToolTipRole) is None:
                text = index.data(Qt.ItemDataRole.DisplayRole)
                if text is not None and \
                        self.table.sizeHintForIndex(index).width() > self.table.columnWidth(
                            index.column()):
                    QToolTip.showText(event.globalPos(), str(text), self.table)
                    return True
        return super().eventFilter(watched, event)


def fit_columns(table: QTableView, stretch: Iterable[int] = (), rows: int = 0,
                min_width: int = 40) -> QTableView:
    """Make ``table``'s columns fit its width (see :class:`ColumnFit`), the columns
    ``stretch`` being the text ones, and keep at least ``rows`` rows visible."""
    table.column_fit = ColumnFit(table, stretch, min_width)  # lives as long as the table
    # rows as high as their text needs: more of them in view at 1280×800
    table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 8)
    table.verticalHeader().setMinimumSectionSize(table.fontMetrics().height() + 4)
    if rows:
        show_rows(table, rows)
    return table


def rows_height(table: QTableView, rows: int) -> int:
    """The height that shows the header and ``rows`` rows, without scrolling."""
    header = table.horizontalHeader().sizeHint().height()
    row = table.verticalHeader().defaultSectionSize()
    return header + rows * row + 2 * table.frameWidth() + 2


def show_rows(table: QTableView, rows: int) -> None:
    """A minimum height that shows the header and ``rows`` rows."""
    table.setMinimumHeight(rows_height(table, rows))


def two_line_labels(labels: Iterable[str]) -> list[str]:
    """Column titles of two words or more broken onto two lines (a narrower column for a
    short number)."""
    out = []
    for label in labels:
        words = label.split(" ")
        cut = (len(words) + 1) // 2
        out.append(" ".join(words[:cut]) + ("\n" + " ".join(words[cut:]) if cut < len(words)
                                             else ""))
    return out


# --- a form section that folds away ---------------------------------------------------------------
class Section(QWidget):
    """A titled part of a form that opens and closes with a click on its title: options
    that are rarely changed stay out of the way, so the rest fits without scrolling."""

    def __init__(self, title: str, name: str, expanded: bool = False) -> None:
        super().__init__()
        self.toggle = QToolButton()
        self.toggle.setObjectName(name)  # checkable and named: remembered with the form
        self.toggle.setText(title)
        self.toggle.setCheckable(True)
        self.toggle.setAutoRaise(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setStyleSheet("QToolButton { font-weight: bold; border: none; }")
        self.body = QWidget()
        self.form = QFormLayout(self.body)
        self.form.setContentsMargins(12, 0, 0, 0)
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.toggle)
        layout.addWidget(self.body)
        self.toggle.toggled.connect(self._show)
        self.toggle.setChecked(expanded)
        self._show(expanded)

    def _show(self, on: bool) -> None:
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.body.setVisible(on)

    def add_row(self, label: str, widget: QWidget) -> None:
        self.form.addRow(label, widget)

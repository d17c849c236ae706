"""The Attention tab's logit lens table: a layer a row, a position a column, each cell the
layer's top token there, filled a chunk of columns at a time."""

from __future__ import annotations

from PySide6.QtGui import QColor
from PySide6.QtWidgets import QStyle, QTableWidget, QTableWidgetItem

from workbench.core.interpret.attention import LogitLens
from workbench.ui.common.widgets import visible_token


class LensTable(QTableWidget):
    """The logit lens grid: a layer a row, a position a column. It is filled a chunk of
    columns at a time, and each change refits the columns (:class:`ColumnFit`), which
    asked Qt for every column's width of contents: 0.2-0.4 s for 400 columns, at each
    chunk. The widths of the cells' texts are kept as they are set instead."""

    def __init__(self) -> None:
        super().__init__(0, 0)
        self.text_widths: list[int] = []  # per column, of its widest cell; [] = ask Qt
        self.tokens: list[str] = []  # the columns
        self.filled: list[bool] = []  # which of them hold their lens already

    def set_column_texts(self, column: int, texts: list[str]) -> None:
        """Note the texts now in ``column`` (as an item delegate draws them: with its
        margins and the grid line)."""
        metrics, style = self.fontMetrics(), self.style()
        margin = 2 * (style.pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None,
                                        self) + 1) + 2
        self.text_widths[column] = max((metrics.horizontalAdvance(t) for t in texts),
                                       default=0) + margin

    def sizeHintForColumn(self, column: int) -> int:  # noqa: N802 (Qt API)
        if 0 <= column < len(self.text_widths):
            return self.text_widths[column]
        return super().sizeHintForColumn(column)

    def fill_lens(self, lens: LogitLens | None, message: str = "") -> None:
        """Show ``lens`` whole, or ``message`` (None: there is no lens)."""
        if lens is None:
            self.tokens, self.filled = [], []
            self.text_widths = []
            self.setRowCount(1)
            self.setColumnCount(1)
            self.setHorizontalHeaderLabels([""])
            self.setItem(0, 0, QTableWidgetItem(message or "The logit lens needs a decoder "
                                                "model."))
            return
        self.lens_grid(lens.tokens, len(lens.top_tokens))
        self.fill_lens_columns(0, lens.top_tokens, lens.top_probs)

    def lens_grid(self, tokens: list[str], layers: int) -> None:
        """Lay the table out for ``tokens`` (columns) and ``layers`` (rows), every cell "…"
        until its column is computed. The sideways scroll position stays: a new run shows
        the same part of the text, and computes it first."""
        self.tokens, self.filled = list(tokens), [False] * len(tokens)
        self.setRowCount(layers)
        self.setColumnCount(len(tokens))
        self.setHorizontalHeaderLabels([visible_token(tok) for tok in tokens])
        self.setVerticalHeaderLabels([f"layer {i + 1}" for i in range(layers)])
        self.text_widths = [0] * len(tokens)
        for col in range(len(tokens)):
            for row in range(layers):
                item = QTableWidgetItem("…")
                item.setForeground(QColor("gray"))
                item.setToolTip("Computing…")
                self.setItem(row, col, item)
            self.set_column_texts(col, ["…"])

    def fill_lens_columns(self, start: int, top_tokens: list[list[str]],
                          top_probs: list[list[float]]) -> None:
        """Show the lens of the columns from ``start`` on (``[layer][column - start]``)."""
        for row, (toks, probs) in enumerate(zip(top_tokens, top_probs, strict=True)):
            for col, (tok, p) in enumerate(zip(toks, probs, strict=True), start=start):
                item = QTableWidgetItem(visible_token(tok))
                # white to a mid blue: black text stays readable on every shade (on a
                # saturated blue it was not)
                item.setBackground(QColor.fromHsvF(0.6, 0.6 * max(0.0, min(1.0, p)), 1.0))
                item.setForeground(QColor("black"))
                item.setToolTip(f"{tok!r}: p = {p:.3f}")
                self.setItem(row, col, item)
        width = len(top_tokens[0]) if top_tokens else 0
        for i in range(width):
            self.set_column_texts(start + i, [visible_token(toks[i]) for toks in top_tokens])
        self.filled[start:start + width] = [True] * width

    def not_computed(self, message: str) -> None:
        """The lens stopped (``message`` says why): the columns computed stay, the others
        say why they are empty."""
        for col, filled in enumerate(self.filled):
            if not filled:
                for row in range(self.rowCount()):
                    item = self.item(row, col)
                    if item is not None:
                        item.setText("")
                        item.setToolTip(f"Not computed: {message}")

    def visible_columns(self) -> tuple[int, int]:
        """The columns in view: ``(first, last + 1)``."""
        count = self.columnCount()
        if not count:
            return 0, 0
        first, last = self.columnAt(0), self.columnAt(self.viewport().width() - 1)
        return max(first, 0), (count if last < 0 else last + 1)

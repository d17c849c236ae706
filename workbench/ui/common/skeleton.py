"""Small widget helpers the tabs share: named form controls and read-only tables."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
)


def spin(name: str, low: int, high: int, value: int) -> QSpinBox:
    box = QSpinBox()
    box.setObjectName(name)
    box.setRange(low, high)
    box.setValue(value)
    return box


def dspin(name: str, low: float, high: float, value: float, decimals: int = 2,
          step: float = 0.05) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setObjectName(name)
    box.setDecimals(decimals)
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setValue(value)
    return box


def combo(name: str, items: list[str]) -> QComboBox:
    box = QComboBox()
    box.setObjectName(name)
    box.addItems(items)
    return box


def line(name: str, text: str = "", placeholder: str = "") -> QLineEdit:
    edit = QLineEdit(text)
    edit.setObjectName(name)
    edit.setPlaceholderText(placeholder)
    return edit


def text_box(name: str, placeholder: str, text: str = "") -> QPlainTextEdit:
    box = QPlainTextEdit(text)
    box.setObjectName(name)
    box.setPlaceholderText(placeholder)
    return box


def table(columns: list[str], name: str) -> QTableWidget:
    """A read-only, row-selecting table whose columns fit their contents."""
    t = QTableWidget(0, len(columns))
    t.setObjectName(name)
    t.setHorizontalHeaderLabels(columns)
    t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    t.horizontalHeader().setStretchLastSection(True)
    return t


def fill(t: QTableWidget, rows: list[list]) -> None:
    """Replace the rows of ``t``; numbers stay numbers, so sorting by a column is numeric."""
    t.setSortingEnabled(False)
    t.setRowCount(len(rows))
    for r, values in enumerate(rows):
        for c, value in enumerate(values):
            item = QTableWidgetItem()
            item.setData(Qt.ItemDataRole.DisplayRole, value)
            t.setItem(r, c, item)
    t.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
    t.setSortingEnabled(True)


METRIC_LABELS = (("bleu", "BLEU"), ("chrf", "chrF"), ("chrf++", "chrF++"), ("ter", "TER"))


def metric_checkboxes(prefix: str, checked: tuple[str, ...]) -> tuple[QHBoxLayout, dict]:
    """A row of sacrebleu metric check boxes named ``<prefix><metric>``, and the boxes."""
    row = QHBoxLayout()
    boxes = {}
    for name, label in METRIC_LABELS:
        box = QCheckBox(label)
        box.setObjectName(f"{prefix}{name}")
        box.setChecked(name in checked)
        boxes[name] = box
        row.addWidget(box)
    return row, boxes

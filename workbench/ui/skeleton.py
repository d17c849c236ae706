"""Layout skeletons for tabs whose capability is not built yet.

They show the real controls (saved between launches) and state plainly what is not
available yet, instead of buttons that pretend to work.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
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


def pending_panel(title: str, lines: list[str]) -> QGroupBox:
    """A panel that says what will appear here, and that it is not built yet."""
    group = QGroupBox(title)
    layout = QVBoxLayout(group)
    label = QLabel("<p><b>Not available yet.</b> This panel will show:</p><ul>"
                   + "".join(f"<li>{t}</li>" for t in lines) + "</ul>")
    label.setObjectName("pending-note")
    label.setWordWrap(True)
    label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
    layout.addWidget(label)
    layout.addStretch(1)
    return group


def form_with_run(title: str, rows: list[tuple[str, QWidget]], run_text: str,
                  tooltip: str) -> tuple[QGroupBox, QPushButton]:
    group = QGroupBox(title)
    form = QFormLayout(group)
    for label, widget in rows:
        form.addRow(label, widget)
    run = QPushButton(run_text)
    run.setObjectName("run-button")
    run.setEnabled(False)
    run.setToolTip(tooltip)
    buttons = QHBoxLayout()
    buttons.addStretch(1)
    buttons.addWidget(run)
    form.addRow(buttons)
    return group, run

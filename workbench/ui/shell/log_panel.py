"""The log dock: what the worker does, with times."""

from __future__ import annotations

import time

from PySide6.QtGui import QFont
from PySide6.QtWidgets import QDockWidget, QPlainTextEdit, QWidget


class LogPanel(QDockWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Log", parent)
        self.setObjectName("log-dock")
        self.view = QPlainTextEdit()
        self.view.setObjectName("log-view")
        self.view.setReadOnly(True)
        self.view.setMaximumBlockCount(5000)
        font = QFont("monospace")
        font.setStyleHint(QFont.StyleHint.Monospace)
        self.view.setFont(font)
        self.setWidget(self.view)

    def append(self, message: str, level: str = "info") -> None:
        prefix = "" if level == "info" else f"{level.upper()}: "
        self.view.appendPlainText(f"{time.strftime('%H:%M:%S')}  {prefix}{message}")

    def text(self) -> str:
        return self.view.toPlainText()

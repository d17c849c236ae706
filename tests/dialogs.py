"""What a user sees of bad input in the window, recorded instead of shown (shared by the
bad-input corpora of the GUI): every message box, and the file dialogs, which answer with
the paths queued in ``answers`` (the user picks that path) or are cancelled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QFileDialog, QMessageBox


class Dialogs(list):
    """Every message box opened, as a dict (title, text, details); the file dialogs asked
    for (their names); the paths they will answer, in turn."""

    def __init__(self) -> None:
        super().__init__()
        self.file_dialogs: list[str] = []
        self.answers: list[str] = []

    @property
    def seen(self) -> list[tuple[str, str]]:
        """The (title, text) of every message box opened."""
        return [(box["title"], box["text"]) for box in self]


def record_dialogs(monkeypatch) -> Dialogs:
    """Record every QMessageBox (opened, exec'd or static; a question is answered No) and
    answer every QFileDialog from the queue, for the rest of the test."""
    seen = Dialogs()

    def opened(box: QMessageBox, *args: Any) -> int:
        seen.append({"title": box.windowTitle(), "text": box.text(),
                     "details": box.detailedText()})
        return 0

    monkeypatch.setattr(QMessageBox, "open", opened)
    monkeypatch.setattr(QMessageBox, "exec", opened)
    for name in ("critical", "warning", "information", "question"):
        def static(parent, title, text, *args, _name=name, **kwargs):
            seen.append({"title": title, "text": text, "details": ""})
            return QMessageBox.StandardButton.No if _name == "question" \
                else QMessageBox.StandardButton.Ok
        monkeypatch.setattr(QMessageBox, name, staticmethod(static))
    for name in ("getOpenFileName", "getOpenFileNames", "getSaveFileName",
                 "getExistingDirectory"):
        def answer(*args, _name=name, **kwargs):
            seen.file_dialogs.append(_name)
            path = seen.answers.pop(0) if seen.answers else ""  # "": the user cancels
            if _name == "getExistingDirectory":
                return path
            return ([path] if path else [], "") if _name == "getOpenFileNames" else (path, "")
        monkeypatch.setattr(QFileDialog, name, staticmethod(answer))
    return seen


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``."""
    return {str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
            for path in sorted(folder.rglob("*"))}

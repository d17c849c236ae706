"""Saving and restoring the controls of a tab with QSettings.

Every input widget with an object name is stored under ``<group>/<objectName>``, so a
tab only has to name its controls for them to survive a restart.
"""

from __future__ import annotations

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractSlider,
    QComboBox,
    QDoubleSpinBox,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QWidget,
)

_TYPES = (QSpinBox, QDoubleSpinBox, QComboBox, QLineEdit, QPlainTextEdit, QAbstractSlider,
          QAbstractButton)


def _named_controls(root: QWidget):
    for widget in root.findChildren(QWidget):
        name = widget.objectName()
        if name and not name.startswith("qt_") and isinstance(widget, _TYPES):
            if isinstance(widget, QAbstractButton) and not widget.isCheckable():
                continue
            if isinstance(widget, QLineEdit) and isinstance(widget.parent(), QComboBox):
                continue  # a combo box's own line edit is saved with the combo box
            yield name, widget


def save_controls(root: QWidget, settings: QSettings, group: str) -> None:
    settings.beginGroup(group)
    for name, w in _named_controls(root):
        if isinstance(w, (QSpinBox, QDoubleSpinBox, QAbstractSlider)):
            settings.setValue(name, w.value())
        elif isinstance(w, QComboBox):
            settings.setValue(name, w.currentText())
        elif isinstance(w, QLineEdit):
            settings.setValue(name, w.text())
        elif isinstance(w, QPlainTextEdit):
            settings.setValue(name, w.toPlainText())
        elif isinstance(w, QAbstractButton):
            settings.setValue(name, w.isChecked())
    settings.endGroup()


def restore_controls(root: QWidget, settings: QSettings, group: str) -> None:
    settings.beginGroup(group)
    try:
        for name, w in _named_controls(root):
            value = settings.value(name)
            if value is None:
                continue
            try:
                if isinstance(w, QDoubleSpinBox):
                    w.setValue(float(value))
                elif isinstance(w, (QSpinBox, QAbstractSlider)):
                    w.setValue(int(float(value)))
                elif isinstance(w, QComboBox):
                    text = str(value)
                    index = w.findText(text)
                    if index >= 0:
                        w.setCurrentIndex(index)
                    elif w.isEditable():
                        w.setEditText(text)
                elif isinstance(w, QLineEdit):
                    w.setText(str(value))
                elif isinstance(w, QPlainTextEdit):
                    w.setPlainText(str(value))
                elif isinstance(w, QAbstractButton):
                    w.setChecked(str(value).lower() in ("true", "1"))
            except (TypeError, ValueError):
                continue  # a value from an older version: keep the default
    finally:
        settings.endGroup()


def remembered_folders(key: str) -> list[str]:
    """A remembered list of folders (attached or started runs), only its text items: a
    damaged or foreign value gives an empty list, never an exception."""
    try:
        value = QSettings().value(key, [])
    except Exception:
        return []
    if isinstance(value, str):  # an INI file holds a one-item list as plain text
        value = [value]
    if not isinstance(value, (list, tuple)):
        return []
    return [item for item in value if isinstance(item, str) and item.strip()]

"""The window's controls of settings, made from the settings' one description
(:mod:`workbench.core.common.settings`): a spin box offers exactly the setting's range, so
the form accepts what the core accepts, and nothing else."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDoubleSpinBox, QSlider, QSpinBox

from workbench.core.common.settings import described, form_range, kind

INT_MAX = 2**31 - 1  # QSpinBox holds a C int: a wider whole number takes a double spin box


def setting_box(cls: type, name: str, object_name: str | None = None
                ) -> QSpinBox | QDoubleSpinBox:
    """A spin box for setting ``name`` of dataclass ``cls``: its object name (``top-k``,
    unless ``object_name`` names it otherwise: the key of its saved value), range,
    precision, step, tooltip and default from the setting's description."""
    f, meta = next((f, meta) for f, meta in described(cls) if f.name == name)
    low, high = form_range(f, meta)
    if kind(f) is int and -INT_MAX <= low and high <= INT_MAX:
        box: QSpinBox | QDoubleSpinBox = QSpinBox()
    else:
        box = QDoubleSpinBox()
        box.setDecimals(0 if kind(f) is int else meta.decimals)
        box.setSingleStep(1 if kind(f) is int else meta.step)
    box.setObjectName(object_name or name.replace("_", "-"))
    if meta.auto:  # one step below the range stands for None: the app chooses
        low -= 1 if kind(f) is int else 10.0 ** -meta.decimals
        box.setSpecialValueText(meta.auto)
    box.setRange(low, high)
    box.setValue(low if f.default is None else f.default)
    box.setToolTip(f"{meta.label}: {meta.help}" if meta.help else meta.label)
    return box


def box_value(cls: type, name: str, box: QSpinBox | QDoubleSpinBox) -> Any:
    """The box's value in the setting's type (a whole number from a double spin box)."""
    f, meta = next((f, meta) for f, meta in described(cls) if f.name == name)
    if meta.auto and box.value() == box.minimum():
        return None
    return int(round(box.value())) if kind(f) is int else box.value()


def setting_slider(cls: type, name: str, object_name: str | None = None) -> QSlider:
    """A horizontal slider for number setting ``name`` of dataclass ``cls``, in steps of
    its precision (``decimals``): its range, default and tooltip from the description, read
    back by :func:`slider_value`."""
    f, meta = next((f, meta) for f, meta in described(cls) if f.name == name)
    scale = 10**meta.decimals
    low, high = form_range(f, meta)
    slider = QSlider(Qt.Orientation.Horizontal)
    slider.setObjectName(object_name or name.replace("_", "-"))
    slider.setRange(round(low * scale), round(high * scale))
    slider.setValue(round(f.default * scale))
    slider.setToolTip(f"{meta.label}: {meta.help}" if meta.help else meta.label)
    return slider


def slider_value(cls: type, name: str, slider: QSlider) -> float:
    """The slider's value in the setting's units."""
    meta = next(meta for f, meta in described(cls) if f.name == name)
    return slider.value() / 10**meta.decimals

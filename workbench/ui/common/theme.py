"""Light or dark: the system's colour scheme, or the one the user chose (View ▸ Theme, or
``--theme``), applied to Qt's palette and to the charts.

Qt follows the system's colours by itself on some platforms and not on others (the Fusion
style on Linux keeps a light palette in a dark desktop), so a dark scheme is set here as a
palette of its own, with the Fusion style, which draws every widget from the palette. The
charts (pyqtgraph) take their background and foreground from the palette when they are
made; ``restyle_charts`` repaints those already made when the theme changes.
"""

from __future__ import annotations

import sys

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication, QWidget

THEMES = ("system", "light", "dark")


def system_is_dark(app: QApplication) -> bool:
    """Whether the desktop asks for dark colours (Qt 6.5+; unknown counts as light)."""
    hints = app.styleHints()
    scheme = getattr(hints, "colorScheme", None)
    return scheme is not None and scheme() == Qt.ColorScheme.Dark


def dark_palette() -> QPalette:
    """A dark palette with readable contrast: light text on dark grey, a blue highlight."""
    palette = QPalette()
    window, base, alternate = QColor(45, 45, 48), QColor(30, 30, 32), QColor(52, 52, 56)
    text, disabled = QColor(230, 230, 230), QColor(130, 130, 130)
    group = QPalette.ColorGroup
    role = QPalette.ColorRole
    for r, colour in ((role.Window, window), (role.WindowText, text), (role.Base, base),
                      (role.AlternateBase, alternate), (role.ToolTipBase, QColor(60, 60, 64)),
                      (role.ToolTipText, text), (role.Text, text), (role.Button, window),
                      (role.ButtonText, text), (role.BrightText, QColor(255, 90, 90)),
                      (role.Link, QColor(110, 170, 255)), (role.Highlight, QColor(42, 110, 200)),
                      (role.HighlightedText, QColor(255, 255, 255)),
                      (role.PlaceholderText, disabled), (role.Light, QColor(70, 70, 74)),
                      (role.Midlight, QColor(60, 60, 64)), (role.Mid, QColor(40, 40, 42)),
                      (role.Dark, QColor(25, 25, 27)), (role.Shadow, QColor(0, 0, 0))):
        palette.setColor(r, colour)
    for r in (role.WindowText, role.Text, role.ButtonText):
        palette.setColor(group.Disabled, r, disabled)
    return palette


def is_dark(app: QApplication | None = None) -> bool:
    """Whether the application's palette is dark now."""
    app = app or QApplication.instance()
    return app is not None and app.palette().color(QPalette.ColorRole.Window).lightness() < 128


def apply(app: QApplication, choice: str) -> bool:
    """Apply ``choice`` (one of THEMES) to ``app``; return whether the result is dark."""
    if choice not in THEMES:
        raise ValueError(f"unknown theme {choice!r}")
    dark = choice == "dark" or (choice == "system" and system_is_dark(app))
    if dark:
        app.setStyle("Fusion")
        app.setPalette(dark_palette())
    else:
        app.setPalette(app.style().standardPalette())
    if "pyqtgraph" in sys.modules:  # charts made from now on
        import pyqtgraph as pg

        pg.setConfigOptions(**chart_options(app))
    return dark


def chart_options(app: QApplication | None = None) -> dict:
    """pyqtgraph's background and foreground for the current palette."""
    app = app or QApplication.instance()
    if app is None or not is_dark(app):
        return {"background": "w", "foreground": "k"}
    palette = app.palette()
    return {"background": palette.color(QPalette.ColorRole.Base),
            "foreground": palette.color(QPalette.ColorRole.Text)}


def restyle_charts(root: QWidget) -> int:
    """Give the charts under ``root`` the current palette's background, axes and labels;
    return how many were restyled."""
    if "pyqtgraph" not in sys.modules:
        return 0
    import pyqtgraph as pg

    options = chart_options()
    foreground = pg.mkColor(options["foreground"])
    count = 0
    for widget in root.findChildren(pg.GraphicsView):
        widget.setBackground(options["background"])
        scene = widget.scene()
        for item in scene.items() if scene is not None else ():
            if isinstance(item, pg.AxisItem):
                item.setPen(foreground)
                item.setTextPen(foreground)
            elif isinstance(item, pg.LabelItem):
                item.setAttr("color", foreground)
                item.setText(item.text)
        count += 1
    return count

"""The attribution view's matrix of a generated sequence: each generated token (a row) over
the tokens before it, on a diverging scale, the cell under the pointer said in words."""

from __future__ import annotations

import math

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from workbench.core.interpret.attribution_export import diverging_colour
from workbench.core.interpret.attribution_result import AttributionResult
from workbench.ui.common.widgets import visible_token


def matrix_values(result: AttributionResult):
    """rows × columns; 0 where a column is not before its row (drawn white)."""
    import numpy as np

    return np.array([[0.0 if v is None else v for v in row] for row in result.rows])


class AttributionMatrix(QWidget):
    """The matrix page: its chart (made on first use, pyqtgraph) above a line saying the
    cell under the pointer; a click on a cell chooses its row (``row_clicked``)."""

    row_clicked = Signal(int)  # the generated token's index

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        QVBoxLayout(self).setContentsMargins(0, 0, 0, 0)
        self.hover = QLabel("")
        self.layout().addWidget(self.hover)
        self.plot = self.image = self.bar = None
        self.result: AttributionResult | None = None  # the one drawn

    def _build(self) -> None:
        import numpy as np
        import pyqtgraph as pg

        self.plot = pg.PlotWidget()
        self.plot.setObjectName("attribution-matrix")
        self.plot.invertY(True)
        self.plot.setLabel("left", "generated token")
        self.plot.getAxis("left").setWidth(90)  # token labels, not numbers
        self.plot.setLabel("bottom", "input token (the prompt, then generated tokens)")
        self.image = pg.ImageItem()
        self.plot.addItem(self.image)
        ends = [diverging_colour(-1.0, 1.0), (255, 255, 255), diverging_colour(1.0, 1.0)]
        colours = pg.ColorMap(np.array([0.0, 0.5, 1.0]), np.array(ends, dtype=np.ubyte))
        self.bar = pg.ColorBarItem(values=(-1, 1), colorMap=colours)
        self.bar.setImageItem(self.image, insert_in=self.plot.getPlotItem())
        self.plot.scene().sigMouseMoved.connect(self._hovered)
        self.plot.scene().sigMouseClicked.connect(self._clicked)
        self.layout().insertWidget(0, self.plot, 1)

    def draw(self, result: AttributionResult) -> None:
        if self.plot is None:
            self._build()
        self.result = result
        data = matrix_values(result)
        scale = float(abs(data).max()) or 1.0
        # ImageItem's first axis is x: transpose so rows are generated tokens
        self.image.setImage(data.T, autoLevels=False, levels=(-scale, scale))
        self.bar.setLevels((-scale, scale))
        step_x = max(1, len(result.tokens) // 40)
        step_y = max(1, len(result.outputs) // 30)
        self.plot.getAxis("bottom").setTicks(
            [[(j + 0.5, visible_token(t)[:10]) for j, t in enumerate(result.tokens)][::step_x]])
        self.plot.getAxis("left").setTicks(
            [[(i + 0.5, visible_token(t)[:10]) for i, t in enumerate(result.outputs)][::step_y]])
        self.plot.setTitle(f"{result.describe()}: each generated token (row) over the "
                           "tokens before it", size="9pt")

    def _cell(self, pos) -> tuple[int, int] | None:
        if self.plot is None or self.result is None:
            return None
        point = self.plot.getViewBox().mapSceneToView(pos)
        column, row = math.floor(point.x()), math.floor(point.y())
        result = self.result
        if 0 <= row < len(result.rows) and 0 <= column < len(result.tokens):
            return row, column
        return None

    def _hovered(self, pos) -> None:
        cell = self._cell(pos)
        if cell is None:
            return
        row, column = cell
        result = self.result
        value = result.rows[row][column]
        shown = "not before it" if value is None else f"{value:+.5g}"
        self.hover.setText(f"{visible_token(result.outputs[row])} ← "
                           f"{visible_token(result.tokens[column])}: {shown}")

    def _clicked(self, event) -> None:
        cell = self._cell(event.scenePos())
        if cell is not None:
            self.row_clicked.emit(cell[0])

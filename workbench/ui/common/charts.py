"""pyqtgraph charts of the Generate tab. Imported after the window is shown (start-up)."""

from __future__ import annotations

import math

import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QStackedWidget, QVBoxLayout, QWidget

from workbench.ui.common.theme import chart_options
from workbench.ui.common.widgets import visible_token

pg.setConfigOptions(antialias=True, **chart_options())  # white, or dark in a dark theme
# Curves use 1-pixel pens: Qt strokes wider antialiased lines in software, about 4 times
# slower, and the charts repaint while a model runs.

RAW_BRUSH = pg.mkBrush(170, 170, 170)
KEPT_BRUSH = pg.mkBrush(52, 120, 200)
CUT_BRUSH = pg.mkBrush(220, 90, 80, 200)
CHOSEN_PEN = pg.mkPen(pg.getConfigOption("foreground"), width=2)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75)]


class Placeholder(QStackedWidget):
    """A chart, or a line saying what it will show while it has nothing to show (an empty
    chart's axes, 0 to 1 or -400 to 400, mean nothing)."""

    def __init__(self, content: QWidget, text: str) -> None:
        super().__init__()
        self.note = QLabel(text)
        self.note.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.note.setWordWrap(True)
        self.note.setStyleSheet("color: #666")
        self.addWidget(self.note)
        self.addWidget(content)
        self.content = content

    def show_content(self, shown: bool = True) -> None:
        self.setCurrentWidget(self.content if shown else self.note)


class CandidateChart(QWidget):
    """Top-N candidates of one step: raw probability (grey, red when cut) and the
    processed probability the sampler drew from (blue); the chosen token is outlined.
    Clicking a candidate emits ``candidate_clicked(index)``."""

    candidate_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = pg.PlotWidget()
        self.plot.setObjectName("candidate-chart")
        self.plot.setLabel("left", "probability")
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.addLegend(offset=(-10, 10))  # (the title row holds the step's summary)
        self.raw_bars = pg.BarGraphItem(x=[], height=[], width=0.38, brush=RAW_BRUSH,
                                        name="model (raw)")
        self.kept_bars = pg.BarGraphItem(x=[], height=[], width=0.38, brush=KEPT_BRUSH,
                                         name="after processors")
        self.chosen = pg.BarGraphItem(x=[], height=[], width=0.8, brush=pg.mkBrush(0, 0, 0, 0),
                                      pen=CHOSEN_PEN)
        for item in (self.raw_bars, self.kept_bars, self.chosen):
            self.plot.addItem(item)
        self.placeholder = Placeholder(self.plot, "Each step's most likely next tokens, before "
                                       "and after the sampler's processors, appear here.")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.placeholder)
        self.labels: list[str] = []  # each candidate's whole token, whitespace shown
        self.plot.scene().sigMouseClicked.connect(self._clicked)
        self.plot.scene().sigMouseMoved.connect(self._hovered)
        self.plot.getViewBox().sigResized.connect(lambda *_: self._set_ticks())

    def _index_at(self, scene_pos) -> int | None:
        view = self.plot.getViewBox()
        if not view.sceneBoundingRect().contains(scene_pos):
            return None
        index = round(view.mapSceneToView(scene_pos).x())
        return index if 0 <= index < len(self.labels) else None

    def _hovered(self, scene_pos) -> None:
        """The whole token of the candidate under the pointer (its axis label may be cut)."""
        index = self._index_at(scene_pos)
        self.plot.setToolTip("" if index is None else self.labels[index])

    def _set_ticks(self) -> None:
        """Axis labels cut to the room each candidate has, so that they never overlap."""
        from PySide6.QtGui import QFontMetrics

        axis = self.plot.getAxis("bottom")
        metrics = QFontMetrics(axis.style.get("tickFont") or self.plot.font())
        room = self.plot.getViewBox().width() / max(len(self.labels), 1) - 6
        axis.setTicks([[(i, metrics.elidedText(label, Qt.TextElideMode.ElideRight,
                                                max(int(room), 12)))
                        for i, label in enumerate(self.labels)]])

    def _clicked(self, event) -> None:
        index = self._index_at(event.scenePos())
        if index is not None:
            self.candidate_clicked.emit(index)

    def show_candidates(self, title: str, texts: list[str], raw: list[float],
                        processed: list[float], kept: list[bool], chosen: int | None) -> None:
        xs = list(range(len(texts)))
        self.raw_bars.setOpts(x=[x - 0.2 for x in xs], height=raw,
                              brushes=[RAW_BRUSH if k else CUT_BRUSH for k in kept])
        self.kept_bars.setOpts(x=[x + 0.2 for x in xs], height=processed)
        if chosen is not None and 0 <= chosen < len(xs):
            top = max(raw[chosen], processed[chosen])
            self.chosen.setOpts(x=[chosen], height=[top])
        else:
            self.chosen.setOpts(x=[], height=[])
        self.labels = [visible_token(t) for t in texts]
        self._set_ticks()
        self.placeholder.show_content(bool(texts))
        self.plot.setTitle(title, size="9pt")
        self.plot.setYRange(0, max([*raw, *processed, 0.05]) * 1.1)
        self.plot.setXRange(-0.7, max(len(xs), 1) - 0.3)


LEGEND_NAME = 10  # characters of a series name shown in a legend


def legend_above(plot, columns: int = 2, **style):
    """A legend in the chart's title row, above the data (a legend inside the plot area
    covers curves): its entries side by side, ``columns`` a row. ``plot`` is a PlotItem or
    a PlotWidget; its title, if any, gives way to the legend, and curves made with a
    ``name`` are added to it as with ``addLegend``."""
    item = plot.getPlotItem() if hasattr(plot, "getPlotItem") else plot
    legend = pg.LegendItem(colCount=columns, frame=False, **style)
    item.layout.removeItem(item.titleLabel)
    item.titleLabel.setVisible(False)
    item.layout.addItem(legend, 0, 1)
    item.legend = legend
    return legend


def round_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 × 10^k that is at least ``value``."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value)


def steady_range(current: tuple[float, float] | None, low: float,
                 high: float) -> tuple[float, float]:
    """A y range for data from ``low`` to ``high`` that changes rarely while data streams
    in (a new axis layout costs a chart 15-30 ms of the GUI thread here; a new point in a
    held range a few ms). ``current`` is kept while it holds the data and the data reaches
    above a third of its height; otherwise the top is the next 1, 2 or 5 × 10^k above the
    data and the bottom is below the data's lowest value, in steps of a fifth of the top
    (and not below zero for data that is not)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return current or (0.0, 1.0)
    if current is not None and current[0] <= low and high <= current[1] and \
            high - current[0] >= (current[1] - current[0]) / 3:
        return current
    if high <= 0 < -low:  # data below zero: the same, mirrored
        top, bottom = steady_range(None, -high, -low)
        return -bottom, -top
    if high <= 0:
        return 0.0, 1.0
    top = round_ceiling(high)
    step = top / 5
    bottom = math.floor((low - step / 10) / step) * step  # not on the lowest point itself
    return min(max(bottom, 0.0) if low >= 0 else bottom, top - step), top


class StepCurves(QWidget):
    """Per-step curves: entropy and surprisal (bits), and the size of the kept set."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bits = pg.PlotWidget()
        self.bits.setObjectName("step-curves")
        self.bits.setLabel("left", "bits")
        legend_above(self.bits, labelTextSize="8pt")
        self.bits.showGrid(y=True, alpha=0.3)
        self.entropy = self.bits.plot([], [], pen=pg.mkPen(PALETTE[0], width=1),
                                      name="entropy (processed)")
        self.surprisal = self.bits.plot([], [], pen=pg.mkPen(PALETTE[1], width=1),
                                        symbol="o", symbolSize=4, symbolBrush=PALETTE[1],
                                        name="surprisal of chosen token")
        self.kept = pg.PlotWidget()
        self.kept.setLabel("left", "kept set")
        self.kept.setLabel("bottom", "step")
        self.kept.getAxis("left").enableAutoSIPrefix(False)
        self.kept.setXLink(self.bits)
        for plot in (self.bits, self.kept):  # tick labels of a new width would resize the
            plot.getAxis("left").setWidth(48)  # plot mid-stream (a re-layout of both)
        self.kept_curve = self.kept.plot([], [], pen=pg.mkPen(PALETTE[2], width=1),
                                         stepMode=None)
        self.markers = [pg.InfiniteLine(angle=90, pen=pg.mkPen(120, 120, 120, style=Qt.PenStyle.DashLine))
                        for _ in range(2)]
        self.bits.addItem(self.markers[0])
        self.kept.addItem(self.markers[1])
        curves = QWidget()
        layout = QVBoxLayout(curves)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.bits, 3)
        layout.addWidget(self.kept, 2)
        self.placeholder = Placeholder(curves, "Entropy, surprisal and the kept set of each "
                                       "step appear here as tokens are generated.")
        QVBoxLayout(self).setContentsMargins(0, 0, 0, 0)
        self.layout().addWidget(self.placeholder)

    def set_steps(self, entropy: list[float], surprisal: list[float], kept: list[int],
                  streaming_to: int | None = None) -> None:
        """Show the curves, in ranges that do not follow every new point: x to every step
        of a generation of ``streaming_to`` steps while it streams in (then to the steps
        there are), y from 0 to a round ceiling (1, 2 or 5 × 10^k) of the data. A new axis
        layout costs both plots tens of milliseconds of the GUI thread; a generation that
        runs to its last token needs none at the end."""
        xs = list(range(len(entropy)))
        finite = [(x, e, s, k) for x, e, s, k in zip(xs, entropy, surprisal, kept, strict=True)
                  if not (math.isnan(e) or math.isnan(s))]
        self.entropy.setData([f[0] for f in finite], [f[1] for f in finite])
        self.surprisal.setData([f[0] for f in finite], [f[2] for f in finite])
        self.kept_curve.setData([f[0] for f in finite], [f[3] for f in finite])
        self.placeholder.show_content(bool(finite) or streaming_to is not None)
        right = streaming_to if streaming_to is not None else max(len(xs), 1)
        # bits start at 0-10 (most tokens' surprisal), so the first steps do not
        # re-lay out the axis at each new power of ten
        for plot, values, least in ((self.bits, [v for f in finite for v in f[1:3]], 10.0),
                                    (self.kept, [f[3] for f in finite], 1.0)):
            box = plot.getViewBox()
            top = round_ceiling(max([*values, least]))
            if box.viewRange() != [[0, right], [0, top]] or box.autoRangeEnabled()[0]:
                box.disableAutoRange()
                box.setRange(xRange=(0, right), yRange=(0, top), padding=0)

    def mark(self, step: int | None) -> None:
        for line in self.markers:
            line.setVisible(step is not None)
            if step is not None:
                line.setValue(step)


class OverlayCurves(QWidget):
    """One curve per strategy (surprisal per step), with the first divergence marked."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = pg.PlotWidget()
        self.plot.setObjectName("overlay-curves")
        self.plot.setLabel("left", "surprisal (bits)")
        self.plot.setLabel("bottom", "step")
        self.plot.getViewBox().setDefaultPadding(0.05)
        self.plot.showGrid(y=True, alpha=0.3)
        self.legend = legend_above(self.plot, columns=2)  # 3 would widen the chart past its view
        self.divergence = pg.InfiniteLine(angle=90, pen=pg.mkPen(200, 0, 0, style=Qt.PenStyle.DashLine),
                                          label="diverge", labelOpts={"position": 0.9})
        self.divergence.setVisible(False)
        self.plot.addItem(self.divergence)
        self.curves: list = []
        self.placeholder = Placeholder(self.plot, "Compare strategies to see each one's "
                                       "surprisal per step, and where they diverge.")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.placeholder)

    def set_series(self, names: list[str], series: list[list[float]], diverge: int | None) -> None:
        while len(self.curves) < len(names):
            color = PALETTE[len(self.curves) % len(PALETTE)]
            self.curves.append(self.plot.plot([], [], pen=pg.mkPen(color, width=1), symbol="o",
                                              symbolSize=4, symbolBrush=color,
                                              name=f"s{len(self.curves)}"))
        for i, curve in enumerate(self.curves):
            if i < len(names):
                ys = [y for y in series[i] if not math.isnan(y)]
                curve.setData(list(range(len(ys))), ys)
                curve.setVisible(True)
                label = self.legend.getLabel(curve) if hasattr(self.legend, "getLabel") else None
                if label is not None:  # a long name would widen the chart past its view
                    name = names[i]
                    half = (LEGEND_NAME - 1) // 2  # both ends: where long names differ
                    label.setText(name if len(name) <= LEGEND_NAME else
                                  name[:half] + "…" + name[-half:])
            else:
                curve.setVisible(False)
        self.placeholder.show_content(bool(names))
        self.divergence.setVisible(diverge is not None)
        if diverge is not None:
            self.divergence.setValue(diverge)

    def export_png(self, path: str) -> None:
        save_png(self.plot.plotItem, path)


def save_png(item, path: str) -> None:
    """Export a plot item with pyqtgraph's ImageExporter; OSError when nothing was written
    (the exporter only returns False: a folder that is gone or not writable)."""
    from pyqtgraph.exporters import ImageExporter

    if not ImageExporter(item).export(path):
        raise OSError(f"could not write {path}")

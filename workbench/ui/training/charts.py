"""The Fine-tune tab's charts: loss, learning rate, gradient norm and throughput, each
run's curves on them, and their redraws in turn while a run goes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QSignalBlocker, Qt, QTimer
from PySide6.QtWidgets import QGraphicsItem

from workbench.core.training.monitor import CurveSettings, curves_key
from workbench.ui.common.setting_widgets import slider_value

if TYPE_CHECKING:  # numpy comes with it: loaded after the window is shown, not before
    from workbench.core.training.curves import CurveData

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
CHART_NAMES = ("loss", "lr", "grad", "speed")
CHART_TURNS = ("loss", "lr", "loss", "grad", "loss", "speed")  # the loss chart most often


class RunCurves:
    """The curves of one run on the shared charts."""

    def __init__(self, charts: dict, name: str, color) -> None:
        import pyqtgraph as pg

        pen = pg.mkPen(color, width=1)
        self.name = name
        # The min/max band: the range of the raw losses around each step, as wide as
        # the smoothing's window.
        # (curves that are not shown themselves: a PlotDataItem without a pen has no path)
        self.band_low = pg.PlotCurveItem([], [], pen=pg.mkPen(None))
        self.band_high = pg.PlotCurveItem([], [], pen=pg.mkPen(None))
        self.band = pg.FillBetweenItem(self.band_low, self.band_high, brush=(*color, 45))
        charts["loss"].addItem(self.band)
        # the raw losses as a faint line behind the smoothed one, as TensorBoard draws them
        # (a path: thousands of scatter symbols cost pyqtgraph Python work at every change)
        self.raw = charts["loss"].plot([], [], pen=pg.mkPen((*color, 70), width=1))
        self.smooth = charts["loss"].plot([], [], pen=pen, name=f"{name} loss")
        self.eval = charts["loss"].plot([], [], pen=pg.mkPen(color, width=1,
                                                             style=Qt.PenStyle.DashLine),
                                        symbol="s", symbolSize=6, symbolBrush=color,
                                        name=f"{name} validation")
        self.spikes = charts["loss"].plot([], [], pen=None, symbol="x", symbolSize=10,
                                          symbolPen=pg.mkPen(220, 0, 0, width=2))
        for item in (self.eval, self.spikes):
            # symbols are rebuilt at every vertical range change while the item guards
            # against values far outside the view; these points are few and near the curves
            item.setDynamicRangeLimit(None)
        self.lr = charts["lr"].plot([], [], pen=pen)
        self.grad = charts["grad"].plot([], [], pen=pen)
        self.speed = charts["speed"].plot([], [], pen=pen)
        self.drawn: dict[str, tuple] = {}  # chart -> the rows and smoothing it shows
        self.warnings: list[str] = []

    def update(self, data: CurveData, version: tuple,
               charts: tuple[str, ...] = ("loss", "lr", "grad", "speed")) -> None:
        """Redraw those of ``charts`` that do not show ``data`` (computed in the core, see
        ``training_curves.analyse``; ``version`` names it) yet: a finished run's curves are
        not set again on every redraw of a running one. The health warnings are kept in
        ``warnings``."""
        charts = tuple(c for c in charts if self.drawn.get(c) != version)
        if not charts:
            return
        for chart in charts:
            self.drawn[chart] = version
        if "loss" in charts:
            self.raw.setData(data.steps, data.losses)  # every point, or each bin's extremes
            band = data.band
            with QSignalBlocker(self.band_low):  # the fill's path is built once, not twice
                self.band_low.setData(band.steps, band.low)
            self.band_high.setData(band.steps, band.high)
            self.smooth.setData(data.steps if data.smoothed_steps is None
                                else data.smoothed_steps, data.smoothed)
            self.eval.setData(data.eval.steps, data.eval.values)
            self.spikes.setData(data.spikes.steps, data.spikes.values)
            # empty items are hidden: a scatter's bounds cost pyqtgraph Python work at
            # every paint, even with no points, and an empty fill counts as a point at
            # (0, 0) in the chart's range (validation keeps its legend entry: shown)
            self.spikes.setVisible(len(data.spikes.steps) > 0)
            self.band.setVisible(len(band.steps) > 0)
        if "lr" in charts:
            self.lr.setData(data.lr.steps, data.lr.values)
        if "grad" in charts:
            self.grad.setData(data.grad.steps, data.grad.values)
        if "speed" in charts:
            self.speed.setData(data.speed.steps, data.speed.values)
        self.warnings = [f"{self.name}: {alarm.message}" for alarm in data.alarms
                         if alarm.kind != "nan"]


class RunCharts:
    """The charts part of :class:`~workbench.ui.training.tab.FinetuneTab` (a mixin: it
    draws the tab's ``rows`` in its ``charts``, made by :meth:`_build_charts`)."""

    def _make_redraw_turns(self) -> None:
        # Log rows can arrive many times a second: while a run goes, one chart is redrawn
        # each second in turn (the loss chart every 2 s, the others every 6 s), so no
        # single pass of the event loop repaints all four, and the window's share of the
        # CPU stays small (on the CPU every millisecond it paints is one the training
        # waits for); the charts hold their ranges (see steady_range), so a new point does
        # not re-layout the axes.
        self.redraw_timer = QTimer(self)
        self.redraw_timer.setSingleShot(True)
        self.redraw_timer.timeout.connect(self.redraw_next)
        self.chart_turn = 0
        self.data_version = 0  # bumped by new rows; a chart is stale until it has drawn it
        self.drawn: dict[str, int] = {}
        self.held: dict[str, tuple[float, float]] = {}  # y ranges held during a run

    def _build_charts(self) -> None:
        """The four charts, in ``chart_pages`` beside the line shown while there is no run."""
        import pyqtgraph as pg

        grid = pg.GraphicsLayoutWidget()
        grid.setObjectName("training-charts")
        self.charts = {}
        for key, title, row, col in (("loss", "loss", 0, 0), ("lr", "learning rate", 0, 1),
                                     ("grad", "gradient norm", 1, 0),
                                     ("speed", "tokens per second", 1, 1)):
            plot = grid.addPlot(row=row, col=col, title=title)
            plot.showGrid(y=True, alpha=0.3)
            plot.setLabel("bottom", "step")
            plot.getAxis("left").enableAutoSIPrefix(False)
            plot.getAxis("bottom").enableAutoSIPrefix(False)
            # A fixed width: tick labels of a new width would re-lay out all four charts
            # (twice the cost of a range change on the GUI thread).
            plot.getAxis("left").setWidth(52)
            for side in ("left", "bottom"):  # repainted from a pixmap until they change
                plot.getAxis(side).setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
            # see-through (not painted at all) until it first draws rows: the first sight
            # of a large attached run then paints one chart a pass, not all four at once
            plot.setOpacity(0.0)
            self.charts[key] = plot
        # the legend (two entries a run) in the title's place, above the curves
        from workbench.ui.common.charts import legend_above

        legend_above(self.charts["loss"], labelTextSize="8pt")
        self.chart_pages.addWidget(grid)
        self.chart_widget = grid
        for name in self.rows:  # runs followed before the charts existed
            self._curves_for(name)

    def redraw(self, charts: tuple[str, ...] = CHART_NAMES, hold: bool | None = None) -> None:
        """Draw ``charts`` from the rows. Their ranges are held while a run goes here
        (``hold`` None), or as ``hold`` says; otherwise they fit the data."""
        if self.charts is None:
            return
        if any(self.rows.values()) or self.running:
            self.chart_pages.setCurrentWidget(self.chart_widget)
        smoothing = slider_value(CurveSettings, "smoothing", self.smoothing)
        from workbench.core.training.curves import analyse, for_display, speed_unit

        unit = speed_unit(list(self.rows.values()))
        if "speed" in charts and unit != self.speed_shown:
            self.speed_shown = unit
            self.charts["speed"].setTitle(f"{unit} per second")
        for name, rows in self.rows.items():
            key = curves_key(rows, smoothing, unit)
            cached = self.curve_data.get(name)
            if cached is None or cached[0] != key:  # new rows not read by the reader thread,
                cached = self.curve_data[name] = (key, for_display(analyse(rows, smoothing,
                                                                          unit)))
            self._curves_for(name).update(cached[1], key, charts)
        self.health.setText(" · ".join(w for run in self.runs.values() for w in run.warnings))
        from workbench.ui.common.charts import round_ceiling, steady_range

        hold = self.running if hold is None else hold
        shown = 1.0 if self.running or any(self.rows.values()) else 0.0
        for chart in charts:
            self.charts[chart].setOpacity(shown)
            box = self.charts[chart].getViewBox()
            if not hold:
                self.held.pop(chart, None)
                box.enableAutoRange()
                continue
            (x0, x1), (y0, y1) = [r if r is not None else (0.0, 1.0)
                                  for r in box.childrenBounds()]
            y = steady_range(self.held.get(chart), y0, y1)
            right = max(self.run_max_steps, x1) if self.run_max_steps else round_ceiling(x1)
            if y != self.held.get(chart) or box.viewRange()[0] != [0, right] or \
                    box.autoRangeEnabled()[0]:
                box.disableAutoRange()
                box.setRange(xRange=(0, right), yRange=y, padding=0)
                self.held[chart] = y

    def _curves_for(self, name: str) -> RunCurves:
        """The curves of run ``name`` (a key of ``rows``), added to the charts if new."""
        if name not in self.runs:
            color = COLORS[len(self.runs) % len(COLORS)]
            self.runs[name] = RunCurves(self.charts, name, color)
        return self.runs[name]

    def charts_changed(self) -> None:
        """The rows changed: every chart is stale and redraws in its turn."""
        self.data_version += 1
        if not self.redraw_timer.isActive():
            self._next_turn()

    def _next_turn(self) -> None:
        """Start the wait for the next chart's turn: a second while a run goes (every
        millisecond the window paints is one the training waits for); otherwise the next
        chart follows once this one has painted (one chart's fit a pass)."""
        self.redraw_timer.start(1000 if self.running else 50)

    def redraw_next(self) -> None:
        """Redraw the next chart that does not show the latest rows yet, then wait for
        the next turn while any other is behind."""
        stale = [c for c in CHART_NAMES if self.drawn.get(c, -1) < self.data_version]
        if not stale or not self.isVisible():  # another tab is shown: drawn when this is
            return
        turns = CHART_TURNS[self.chart_turn:] + CHART_TURNS[:self.chart_turn]
        index = next(i for i, c in enumerate(turns) if c in stale)
        chart = turns[index]
        self.chart_turn = (self.chart_turn + index + 1) % len(CHART_TURNS)
        self.drawn[chart] = self.data_version
        self.redraw((chart,))
        if len(stale) > 1:
            self._next_turn()

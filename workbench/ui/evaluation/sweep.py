"""The Evaluate tab's sampling sweep page: a grid of two decoding settings, ``n`` samples
per cell on one prompt and seed (``workbench.core.evaluation.sweep``), run on the shared worker and
shown as a heatmap per metric; clicking a cell (or choosing it in the cell list) shows its
settings, its numbers and its samples.

The form is checked whole on the GUI thread (every axis, every cell's settings, the model)
so a mistake is one dialog before anything runs; the grid is drawn with pyqtgraph, made on
first use (the window starts without it).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import replace

from PySide6.QtCore import QPointF, Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.files import cannot_write, write_atomically
from workbench.core.common.jobs import Progress, drive
from workbench.core.evaluation.sweep import (
    METRIC_LABELS,
    METRICS,
    SWEEPABLE,
    SweepResult,
    SweepSettings,
    cell_settings,
    parse_axis,
    sweep,
)
from workbench.core.generation.settings import SamplingSettings
from workbench.core.models.catalog import CAUSAL_LM
from workbench.core.models.loader import check_model_file, load_model_job
from workbench.ui.common.setting_widgets import box_value, setting_box
from workbench.ui.common.skeleton import combo, fill, line, table, text_box
from workbench.ui.common.widgets import fit_columns
from workbench.ui.common.worker import ModelWorker, WorkerContext
from workbench.ui.evaluation.pages import JobPage, Record

PROMPT = "Describe the sea at night in one sentence."
# values to start from when an axis is set to one of these settings (the others keep what
# the user typed; the placeholder shows the two forms)
SUGGESTED = {"temperature": "0.5:1.5:3", "top_p": "0.5,0.9,1.0", "top_k": "5,20,50",
             "min_p": "0,0.05,0.1", "typical_p": "0.5,0.9,1.0",
             "repetition_penalty": "1:1.3:3"}
VALUES_HINT = "a:b:k (k values from a to b) or v1,v2,..."
COLOUR_MAP = "viridis"
# coloured by their logarithm (the colour bar says the values) when they span a decade or
# more: a perplexity can go from 3 at a low temperature to thousands at a high one, and on
# a linear scale that one cell would leave all the others one colour (a narrower range
# stays linear: a log axis within one decade has no labelled tick)
LOG_COLOURS = ("perplexity",)
MISSING = (150, 150, 150)  # a cell without a value (no tokens): grey, and "–" in it


def shown_number(value: float | None) -> str:
    """A cell's value in about four significant digits; "–" for none."""
    if value is None or not math.isfinite(value):
        return "–"
    size = abs(value)
    return (f"{value:.3f}" if size < 10 else f"{value:.2f}" if size < 100
            else f"{value:.1f}" if size < 1000 else f"{value:.0f}" if size < 1e6
            else f"{value:.3g}")


class AxisRow(QWidget):
    """One axis of the grid: the setting it varies and its values."""

    def __init__(self, name: str, setting: str) -> None:
        super().__init__()
        self.setting = combo(f"sweep-{name}-setting", list(SWEEPABLE))
        self.setting.setCurrentText(setting)
        self.setting.setToolTip("The decoding setting this axis varies")
        self.values = line(f"sweep-{name}-values", SUGGESTED.get(setting, ""), VALUES_HINT)
        self.values.setToolTip(f"The values: {VALUES_HINT} (at most 12)")
        self._previous = setting
        self.setting.currentTextChanged.connect(self._setting_changed)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.setting)
        row.addWidget(self.values, 1)

    def _setting_changed(self, setting: str) -> None:
        """Values suggested for the previous setting (not typed) give way to the new one's."""
        if self.values.text().strip() in ("", SUGGESTED.get(self._previous)):
            self.values.setText(SUGGESTED.get(setting, ""))
        self._previous = setting

    def spec(self) -> str:
        return f"{self.setting.currentText()}={self.values.text().strip()}"


class SweepPage(JobPage):
    """Sample ``n`` sequences in each cell of a grid of two settings and compare the cells'
    numbers (mean log-probability, perplexity, distinct-n, self-BLEU, length) on heatmaps."""

    job_title = "Run the sweep"

    def __init__(self, worker: ModelWorker, record: Record, show_error,
                 current_settings: Callable[[], SamplingSettings] | None = None) -> None:
        super().__init__(worker, record, show_error)
        self.current_settings = current_settings
        self.loaded = None  # the window's model, for the checks before a run
        self.result: SweepResult | None = None
        self.selected: tuple[int, int] | None = None  # (row, column) of the cell shown
        self.plot = None  # the heatmap's items, made on first use
        self.cell_texts: list = []
        self.run_button.setObjectName("sweep-button")
        inputs = self._build_form()
        self.numbers_label("sweep-numbers", "Load a causal language model, choose two settings "
                           f"and their values, and press {self.job_title}.")
        chart, detail = self._build_chart(), self._build_detail()
        results = QSplitter(Qt.Orientation.Horizontal)
        results.addWidget(chart)
        results.addWidget(detail)
        results.setSizes([440, 430])
        self.lay_out(inputs, results, (340, 900))

    def _build_form(self) -> QWidget:
        """The prompt, the two axes, the samples and the other settings of every cell."""
        self.prompt = text_box("sweep-prompt", "The prompt every cell samples from", PROMPT)
        self.prompt.setMaximumHeight(4 * self.prompt.fontMetrics().lineSpacing() + 14)
        self.x_axis = AxisRow("x", "temperature")
        self.y_axis = AxisRow("y", "top_p")
        self.samples = setting_box(SweepSettings, "n", "sweep-samples")
        self.max_new = setting_box(SweepSettings, "max_new_tokens", "sweep-max-new-tokens")
        self.seed = setting_box(SweepSettings, "seed", "sweep-seed")
        self.chat = QCheckBox("Chat template (instruct models)")
        self.chat.setObjectName("sweep-chat")
        self.chat.setChecked(True)
        self.from_generate = QCheckBox("Start from the Generate tab's settings")
        self.from_generate.setObjectName("sweep-from-generate")
        self.from_generate.setToolTip("The other settings of every cell: the Generate tab's, "
                                      "or (unticked) every filter off at temperature 1")
        self.from_generate.setVisible(self.current_settings is not None)
        self.reference = line("sweep-reference", "", "empty: the loaded model")
        self.reference.setToolTip("The model the perplexity is computed under (a built-in "
                                  "name, a folder or a Hub id); it is loaded for the run")
        form = QFormLayout()
        form.addRow("Prompt", self.prompt)
        form.addRow("Columns (x)", self.x_axis)
        form.addRow("Rows (y)", self.y_axis)
        form.addRow("Samples per cell", self.samples)
        form.addRow("Max new tokens", self.max_new)
        form.addRow("Seed", self.seed)
        form.addRow("", self.chat)
        form.addRow("", self.from_generate)
        form.addRow("Perplexity under", self.reference)
        return self.form_widget(form, "sweep-cancel",
                                "Each cell samples its n sequences in one batch with the "
                                "same seed: cells differ by their two settings only.")

    def _build_chart(self) -> QWidget:
        """The metric that colours the heatmap, Save JSON…, and the heatmap's place."""
        self.metric = QComboBox()
        self.metric.setObjectName("sweep-metric")
        for name in METRICS:
            self.metric.addItem(METRIC_LABELS[name], name)
        self.metric.setCurrentIndex(METRICS.index("perplexity"))
        self.metric.setToolTip("The number each cell is coloured by")
        self.metric.currentIndexChanged.connect(lambda _: self._draw())
        self.export_button = QPushButton("Save JSON…")
        self.export_button.setObjectName("sweep-export")
        self.export_button.setToolTip("Every cell's settings, numbers and samples, as JSON")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(lambda: self.export())
        self.chart_holder = QWidget()
        QVBoxLayout(self.chart_holder).setContentsMargins(0, 0, 0, 0)
        chart = QWidget()
        cl = QVBoxLayout(chart)
        cl.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        top.addWidget(QLabel("Colour by"))
        top.addWidget(self.metric, 1)
        top.addWidget(self.export_button)
        cl.addLayout(top)
        cl.addWidget(self.chart_holder, 1)
        return chart

    def _build_detail(self) -> QWidget:
        """The cell shown: its numbers and its samples."""
        self.cell = QComboBox()
        self.cell.setObjectName("sweep-cell")
        self.cell.setToolTip("The cell whose samples are shown (or click it on the heatmap)")
        self.cell.currentIndexChanged.connect(self._cell_chosen)
        self.cell_numbers = QLabel("Click a cell of the heatmap to see its samples.")
        self.cell_numbers.setObjectName("sweep-cell-numbers")
        self.cell_numbers.setWordWrap(True)
        self.cell_numbers.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.sample_table = fit_columns(table(["#", "tokens", "mean\nlog-prob", "perplexity",
                                               "text"], "sweep-samples-table"), stretch=(4,))
        self.sample_table.verticalHeader().setVisible(False)
        self.sample_table.setWordWrap(True)  # a sample whole, on as many lines as it needs
        self.sample_table.verticalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.ResizeToContents)
        self.sample_table.setToolTip("The cell's samples; the perplexity of each is under "
                                     "the reference model")
        detail = QWidget()
        dl = QVBoxLayout(detail)
        dl.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(QLabel("Cell"))
        row.addWidget(self.cell, 1)
        dl.addLayout(row)
        dl.addWidget(self.cell_numbers)
        dl.addWidget(self.sample_table, 1)
        return detail

    # --- the form ---------------------------------------------------------------------------
    def model_changed(self, loaded) -> None:
        self.loaded = loaded
        self.run_button.setToolTip("" if loaded is None or loaded.task == CAUSAL_LM else
                                   "Needs a causal language model")

    def base_settings(self) -> SamplingSettings:
        """The settings every cell starts from, with this page's chat choice."""
        if self.from_generate.isChecked() and self.current_settings is not None:
            base = self.current_settings()
        else:  # as the command's default: every filter off, temperature 1
            base = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0)
        return replace(base, chat=self.chat.isChecked())

    def sweep_settings(self) -> SweepSettings:
        """The samples per cell, new tokens and seed as the form gives them."""
        return SweepSettings(*(box_value(SweepSettings, name, box) for name, box in
                               (("n", self.samples), ("max_new_tokens", self.max_new),
                                ("seed", self.seed))))

    def start(self) -> None:
        if self.run_slot.running:
            return
        numbers = self.sweep_settings()
        n, max_new, seed = numbers.n, numbers.max_new_tokens, numbers.seed
        prompt = self.prompt.toPlainText()
        other = self.reference.text().strip()
        try:  # the form, then the model: every mistake is one dialog before anything runs
            if not prompt.strip():
                raise WorkbenchError("The prompt is empty.")
            numbers.validate()
            base = self.base_settings()
            x = parse_axis(self.x_axis.spec(), base)
            y = parse_axis(self.y_axis.spec(), base)
            if x.name == y.name:
                raise WorkbenchError(f"Both axes vary {x.name}: choose two different "
                                     "settings.")
            for i in range(len(y.values)):  # every cell's pair of values, as the job will
                for j in range(len(x.values)):
                    cell_settings(base, x, y, i, j, n, max_new, seed)
            check_model_file(other)
            if self.loaded is None:
                raise WorkbenchError("No model is loaded: pick one in the model bar and "
                                     "press Load.")
            self.loaded.require(CAUSAL_LM, "a sampling sweep")
        except WorkbenchError as exc:
            self.show_error("Cannot run the sweep", str(exc))
            return

        def job(ctx: WorkerContext) -> SweepResult:
            loaded = ctx.model()
            loaded.require(CAUSAL_LM, "a sampling sweep")
            reference = None
            try:
                if other and other != loaded.reference:  # on the loaded model's device
                    ctx.log(f"Loading {other} for the perplexity…")
                    reference = drive(load_model_job(other, replace(loaded.options)), ctx)
                    reference.require(CAUSAL_LM, "the perplexity of the samples")
                return sweep(loaded, prompt, x, y, n, base, max_new, seed, ctx,
                             reference=reference)
            finally:
                del reference  # only the loaded model stays in memory

        self.inputs = {"prompt": prompt, "x": f"{x.name}={','.join(x.labels)}",
                       "y": f"{y.name}={','.join(y.labels)}", "n": n,
                       "max_new_tokens": max_new, "seed": seed, "chat": base.chat,
                       "base": replace(base, do_sample=True, num_beams=1).describe()
                       if self.from_generate.isChecked() else "every filter off, temperature 1",
                       "reference_model": other}
        self.submit(job, event=self._progress)

    def _progress(self, event: object) -> None:
        if isinstance(event, Progress) and self.run_slot.running:
            self.status.setText(f"{event.message} (Esc cancels)")

    # --- the result -------------------------------------------------------------------------
    def show_result(self, result: object) -> None:
        if not isinstance(result, SweepResult):
            return
        self.result = r = result
        nx, ny = len(r.x.values), len(r.y.values)
        reference = "" if r.reference == r.model else \
            f" · perplexity under {html.escape(r.reference)}"
        self.numbers.setText(
            f"<b>{html.escape(r.x.name)} × {html.escape(r.y.name)}</b>: {nx} × {ny} cells, "
            f"{r.n} samples each, {r.max_new_tokens} new tokens, seed {r.seed} · "
            f"{html.escape(r.model)}{reference} · {r.seconds:.1f} s"
            + "".join(f"<br>{html.escape(n)}" for n in r.notes))
        self.status.setText(f"Done: {nx * ny} cells in {r.seconds:.1f} s.")
        self.export_button.setEnabled(True)
        self.cell.blockSignals(True)
        self.cell.clear()
        for i, row in enumerate(r.cells):
            for j, cell in enumerate(row):
                self.cell.addItem(f"{r.x.name} {cell.x:g}, {r.y.name} {cell.y:g}", (i, j))
        self.cell.setCurrentIndex(-1)
        self.cell.blockSignals(False)
        self.selected = None
        self.cell_numbers.setText("Click a cell of the heatmap, or choose it above, to see "
                                  "its samples.")
        self.sample_table.setRowCount(0)
        self._draw()
        self.record("sweep", r.summary(), self.inputs | {"model": r.model},
                    r.to_dict(with_cells=False))

    def metric_name(self) -> str:
        return self.metric.currentData() or "perplexity"

    def _build_plot(self) -> None:
        """The heatmap: an image of the grid (rows y, columns x), the value written in each
        cell, a colour bar of the metric's range, and an outline round the chosen cell."""
        if self.plot is not None:
            return
        import pyqtgraph as pg
        from PySide6.QtWidgets import QGraphicsRectItem

        from workbench.ui.common.charts import Placeholder

        plot = pg.PlotWidget()
        plot.setObjectName("sweep-heatmap")
        plot.setMouseEnabled(x=False, y=False)
        plot.setMenuEnabled(False)
        plot.hideButtons()
        for side in ("left", "bottom"):
            plot.getAxis(side).enableAutoSIPrefix(False)
            plot.getAxis(side).setStyle(tickLength=0)
        self.missing = QGraphicsRectItem(0, 0, 1, 1)  # seen through the cells without a value
        self.missing.setPen(pg.mkPen(None))
        self.missing.setBrush(pg.mkBrush(*MISSING))
        plot.addItem(self.missing)
        self.image = pg.ImageItem(axisOrder="row-major")
        plot.addItem(self.image)
        self.colour_map = pg.colormap.get(COLOUR_MAP)
        self.colour_bar = pg.ColorBarItem(values=(0, 1), colorMap=self.colour_map,
                                          interactive=False, colorMapMenu=False, width=16)
        self.colour_bar.setImageItem(self.image, insert_in=plot.getPlotItem())
        self.outline = QGraphicsRectItem(0, 0, 1, 1)
        self.outline.setPen(pg.mkPen((255, 60, 60), width=3, cosmetic=True))
        self.outline.setBrush(pg.mkBrush(None))
        self.outline.setZValue(20)
        self.outline.setVisible(False)
        plot.addItem(self.outline)
        plot.scene().sigMouseClicked.connect(self._clicked)
        self.plot = plot
        self.chart = Placeholder(plot, "The heatmap of the chosen number appears here: a "
                                 "cell for each pair of values, its samples a click away.")
        self.chart_holder.layout().addWidget(self.chart)

    def build_deferred(self) -> None:
        self._build_plot()
        if self.result is not None:
            self._draw()

    def _draw(self) -> None:
        """Show the chosen metric's grid: the image, its colour bar's range, the numbers in
        the cells, the axes' values and names."""
        self._build_plot()
        r = self.result
        if r is None:
            self.chart.show_content(False)
            return
        import numpy as np
        import pyqtgraph as pg

        metric = self.metric_name()
        values = np.array([[np.nan if v is None else float(v) for v in row]
                           for row in r.grid(metric)], dtype=float)
        known = values[np.isfinite(values)]
        logarithmic = metric in LOG_COLOURS and known.size > 0 and bool(np.all(known > 0)) \
            and float(known.max()) >= 10 * float(known.min())
        with np.errstate(divide="ignore", invalid="ignore"):
            grid = np.log10(values) if logarithmic else values
        finite = grid[np.isfinite(grid)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if high == low:  # one value everywhere: a range round it, so the cells have a colour
            pad = abs(low) * 0.05 or 0.5
            low, high = low - pad, high + pad
        ny, nx = grid.shape
        self.missing.setRect(0, 0, nx, ny)
        self.image.setImage(grid, autoLevels=False)
        self.colour_bar.axis.setLogMode(logarithmic)  # ticks in the metric's own values
        self.colour_bar.setLevels((low, high))
        self.colour_bar.axis.setLabel(METRIC_LABELS[metric] + (" (log scale)" if logarithmic
                                                               else ""))
        for item in self.cell_texts:
            self.plot.removeItem(item)
        self.cell_texts = []
        font = self.plot.font()
        if max(nx, ny) > 6:  # more cells, smaller numbers: each stays inside its cell
            font.setPointSizeF(max(font.pointSizeF() - 2, 6))
        for i in range(ny):
            for j in range(nx):
                if math.isfinite(grid[i, j]):
                    colour = self.colour_map.map((grid[i, j] - low) / (high - low),
                                                 mode="qcolor")
                    dark_cell = colour.lightnessF() < 0.55
                    ink = (255, 255, 255) if dark_cell else (0, 0, 0)
                else:
                    ink = (0, 0, 0)
                text = pg.TextItem(shown_number(values[i, j]), color=ink, anchor=(0.5, 0.5))
                text.setFont(font)
                text.setPos(j + 0.5, i + 0.5)
                text.setZValue(10)
                self.plot.addItem(text)
                self.cell_texts.append(text)
        bottom, left = self.plot.getAxis("bottom"), self.plot.getAxis("left")
        bottom.setTicks([[(j + 0.5, label) for j, label in enumerate(r.x.labels)]])
        left.setTicks([[(i + 0.5, label) for i, label in enumerate(r.y.labels)]])
        self.plot.setLabel("bottom", r.x.name)
        self.plot.setLabel("left", r.y.name)
        self.plot.setRange(xRange=(0, nx), yRange=(0, ny), padding=0)
        self.chart.show_content(True)
        self._show_outline()

    def cell_at(self, scene_pos: QPointF) -> tuple[int, int] | None:
        """The (row, column) of the cell at a point of the chart's scene, or None."""
        if self.result is None or self.plot is None:
            return None
        point = self.image.mapFromScene(scene_pos)  # in cells: x a column, y a row
        column, row = math.floor(point.x()), math.floor(point.y())
        if 0 <= row < len(self.result.y.values) and 0 <= column < len(self.result.x.values):
            return row, column
        return None

    def _clicked(self, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        cell = self.cell_at(event.scenePos())
        if cell is not None:
            self.select_cell(*cell)

    def _cell_chosen(self, index: int) -> None:
        data = self.cell.itemData(index) if index >= 0 else None
        if data is not None:
            self.select_cell(*data)

    def select_cell(self, row: int, column: int) -> None:
        """Show the cell at ``row`` (a y value) and ``column`` (an x value): its settings,
        its numbers and its samples."""
        r = self.result
        if r is None:
            return
        self.selected = (row, column)
        index = row * len(r.x.values) + column
        if self.cell.currentIndex() != index:
            self.cell.blockSignals(True)
            self.cell.setCurrentIndex(index)
            self.cell.blockSignals(False)
        cell = r.cells[row][column]
        settings = SamplingSettings(**cell.settings)
        numbers = " · ".join(f"{METRIC_LABELS[m]} <b>{shown_number(cell.metrics[m])}</b>"
                             for m in METRICS)
        self.cell_numbers.setText(
            f"<b>{r.x.name} {cell.x:g} · {r.y.name} {cell.y:g}</b> (sampling: "
            f"{html.escape(settings.describe())}; {len(cell.samples)} samples in "
            f"{cell.seconds:.2f} s)<br>{numbers}")
        self.cell_numbers.setToolTip(", ".join(f"{k}={v}" for k, v in cell.settings.items()))
        fill(self.sample_table, [[k + 1, len(s.token_ids), _rounded(s.mean_logprob, 3),
                                  _rounded(p, 2), s.text]
                                 for k, (s, p) in enumerate(zip(cell.samples,
                                                                cell.sample_perplexities,
                                                                strict=True))])
        for k in range(self.sample_table.rowCount()):
            item = self.sample_table.item(k, 4)
            item.setToolTip(item.text())
        self._show_outline()

    def _show_outline(self) -> None:
        if self.plot is None:
            return
        self.outline.setVisible(self.selected is not None)
        if self.selected is not None:
            row, column = self.selected
            self.outline.setRect(column, row, 1, 1)

    def export(self, path: str | None = None) -> None:
        """Save the whole result (every cell's samples) as JSON, chosen in a file dialog."""
        if self.result is None:
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save the sweep", "sweep.json",
                                                  "JSON (*.json);;All files (*)")
        if path:
            try:
                write_atomically(path, self.result.to_json())
            except OSError as exc:
                self.show_error("Cannot save the sweep", cannot_write(path, exc))


def _rounded(value: float, digits: int) -> float | str:
    return round(value, digits) if math.isfinite(value) else "–"

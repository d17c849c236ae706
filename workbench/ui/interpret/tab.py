"""Attention tab: bertviz head and model views (offline, script-safe), a heatmap of one
head, a layers × heads grid of head statistics, and the logit lens of decoders."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.files import cannot_write, write_atomically
from workbench.core.interpret.attention import (
    STATISTICS,
    AttentionResult,
    AttentionSettings,
    LensColumns,
    LensStarted,
    LogitLens,
    LogitLensJob,
    PositionEmbeddings,
    attention_layers,
    bertviz_html,
    compute_attention,
    head_statistics,
    position_embeddings,
)
from workbench.core.models.catalog import CLASSIFIER
from workbench.ui.common.job_thread import JobSlot
from workbench.ui.common.setting_widgets import box_value, setting_box
from workbench.ui.common.skeleton import combo, line, text_box
from workbench.ui.common.stale import mark_stale
from workbench.ui.common.tab_base import WorkbenchTab
from workbench.ui.common.widgets import fit_columns, visible_token
from workbench.ui.common.worker import ModelWorker, WorkerContext
from workbench.ui.interpret.attribution_view import AttributionDialog
from workbench.ui.interpret.lens import LensTable


@dataclass
class AttentionView:
    """What one run produces for this tab."""

    result: AttentionResult
    page: str
    notices: list[str]
    lens: LogitLens | None
    positions: PositionEmbeddings | None = None


def parse_layers(text: str, count: int | None = None) -> list[int] | None:
    """The layers of the layer list (None: the default choice), refused when they are not
    numbers or, with the model's layer ``count``, not layers of the model."""
    text = text.strip()
    if not text or text.lower() == "all":
        return None
    try:
        layers = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise WorkbenchError(f"Layers are numbers separated by commas (e.g. 0,5), not "
                             f"'{text}'.") from None
    if not layers:
        raise WorkbenchError(f"Layers are numbers separated by commas (e.g. 0,5), not "
                             f"'{text}'.")
    bad = [layer for layer in layers if count is not None and not 0 <= layer < count]
    if bad:  # said as bertviz_html says it, before the model runs
        raise WorkbenchError(f"Layer(s) {bad} do not exist: the model has {count} layers "
                             f"(0–{count - 1}).")
    return layers


class AttentionTab(WorkbenchTab):
    title = "Attention"
    needs_text = "a model with attention layers"

    def __init__(self, worker: ModelWorker, parent: QWidget | None = None) -> None:
        super().__init__(worker, parent)
        self.view_slot = JobSlot(self, worker)  # the attention view's job
        self.lens_slot = JobSlot(self, worker)  # the logit lens: after the page is drawn
        self.lens_wanted = False  # a lens for the current view is still to be computed
        self.lens_plan: LogitLensJob | None = None  # the current view's lens
        self.current: AttentionView | None = None
        self.stats: dict | None = None
        self.web = None
        self.heat_plot = None
        self.attribution: AttributionDialog | None = None  # made on first use
        inputs, results = self._build_inputs(), self._build_results()
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(inputs)
        split.addWidget(results)
        split.setSizes([360, 900])
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_label)
        layout.addWidget(split, 1)

    def _build_inputs(self) -> QWidget:
        """The form: the texts, what to draw, Show attention, Attribution…, the exports."""
        self.text = text_box("text", "Sentence A: the text whose attention you want to see",
                             "The cat sat on the mat because it was tired.")
        self.text.setMaximumHeight(80)
        self.text_b = text_box("text-b", "Sentence B (optional, encoders only)")
        self.text_b.setMaximumHeight(50)
        self.view = combo("view", ["head view", "model view"])
        self.max_tokens = setting_box(AttentionSettings, "max_tokens")
        self.max_tokens.setToolTip("Tokens analysed: heatmap, head statistics, logit lens")
        self.page_tokens = setting_box(AttentionSettings, "page_tokens")
        self.page_tokens.setToolTip("Tokens drawn by bertviz (its page grows with tokens²: "
                                    "a few hundred tokens take minutes and gigabytes)")
        self.layers = line("layers", "", "all, or e.g. 0,5,11")
        self.run_button = QPushButton("Show attention")
        self.run_button.setProperty("primary", True)  # Run ▸ Run: Ctrl+Return
        self.run_button.setObjectName("run-button")
        self.run_button.clicked.connect(self.start)
        form = QFormLayout()
        form.addRow("Text", self.text)
        form.addRow("Sentence B", self.text_b)
        form.addRow("bertviz view", self.view)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("bertviz tokens", self.page_tokens)
        form.addRow("Layers (page)", self.layers)
        form.addRow(self.run_button)
        self.attribution_button = QPushButton("Attribution…")
        self.attribution_button.setObjectName("attribution-button")
        self.attribution_button.setToolTip("Which tokens of the text drive the model: a "
                                           "classifier's label, or a decoder's last word")
        self.attribution_button.clicked.connect(self.open_attribution)
        form.addRow(self.attribution_button)
        self.export_html_button = QPushButton("Export page…")
        self.export_html_button.clicked.connect(lambda: self.export_html())
        self.export_png_button = QPushButton("Export PNG…")
        self.export_png_button.clicked.connect(lambda: self.export_png())
        self.export_csv_button = QPushButton("Export CSV…")
        self.export_csv_button.clicked.connect(lambda: self.export_csv())
        exports = QHBoxLayout()
        for b in (self.export_html_button, self.export_png_button, self.export_csv_button):
            b.setEnabled(False)
            exports.addWidget(b)
        form.addRow(exports)
        self.notice = QLabel("")
        self.notice.setObjectName("attention-notice")
        self.notice.setWordWrap(True)
        form.addRow(self.notice)
        inputs = QWidget()
        inputs.setLayout(form)
        return inputs

    def _build_results(self) -> QTabWidget:
        """The views of a run, a page each: bertviz, the heatmap, the head statistics, the
        logit lens and the positions."""
        self.results = QTabWidget()
        self.results.setObjectName("attention-views")
        self.web_holder = QWidget()
        QVBoxLayout(self.web_holder).setContentsMargins(0, 0, 0, 0)
        self.web_placeholder = QLabel("Run to see bertviz's view here (rendered offline).")
        self.web_placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.web_holder.layout().addWidget(self.web_placeholder)
        self.results.addTab(self.web_holder, "bertviz")
        self.results.addTab(self._build_heatmap_page(), "Heatmap")
        self.results.addTab(self._build_stats_page(), "Head statistics")
        self.results.addTab(self._build_lens_page(), "Logit lens")
        self.results.currentChanged.connect(
            lambda _: self.results.currentWidget() is self.lens_table and self.start_lens())
        self.results.addTab(self._build_positions_page(), "Positions")
        return self.results

    def _build_lens_page(self) -> LensTable:
        self.lens_table = LensTable()
        self.lens_table.setObjectName("logit-lens")
        self.lens_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        # a column a token: a few fill the width; many narrow to 56 px, then scroll sideways
        fit_columns(self.lens_table, min_width=56)
        # the columns in view are computed first, as they move too
        self.lens_table.horizontalScrollBar().valueChanged.connect(self._prefer_visible)
        self.lens_table.horizontalHeader().sectionResized.connect(self._prefer_visible)
        return self.lens_table

    def _build_positions_page(self) -> QWidget:
        positions_page = QWidget()
        self.positions_note = QLabel("Run to see how this model encodes positions.")
        self.positions_note.setObjectName("positions-note")
        self.positions_note.setWordWrap(True)
        self.positions_holder = QWidget()
        QHBoxLayout(self.positions_holder).setContentsMargins(0, 0, 0, 0)
        pl = QVBoxLayout(positions_page)
        pl.addWidget(self.positions_note)
        pl.addWidget(self.positions_holder, 1)
        return positions_page

    def _build_heatmap_page(self) -> QWidget:
        page = QWidget()
        self.heat_layer = QSpinBox()
        self.heat_layer.setObjectName("heat-layer")
        self.heat_head = QComboBox()
        self.heat_head.setObjectName("heat-head")
        self.heat_layer.valueChanged.connect(self.draw_heatmap)
        self.heat_head.currentIndexChanged.connect(self.draw_heatmap)
        self.hover = QLabel("")
        self.hover.setObjectName("heat-hover")
        row = QHBoxLayout()
        row.addWidget(QLabel("Layer"))
        row.addWidget(self.heat_layer)
        row.addWidget(QLabel("Head"))
        row.addWidget(self.heat_head)
        row.addWidget(self.hover, 1)
        self.heat_holder = QWidget()
        QVBoxLayout(self.heat_holder).setContentsMargins(0, 0, 0, 0)
        layout = QVBoxLayout(page)
        layout.addLayout(row)
        layout.addWidget(self.heat_holder, 1)
        return page

    def _build_stats_page(self) -> QWidget:
        page = QWidget()
        self.statistic = QComboBox()
        self.statistic.setObjectName("statistic")
        self.statistic.addItems(list(STATISTICS))
        self.statistic.currentIndexChanged.connect(self.draw_stats)
        row = QHBoxLayout()
        row.addWidget(QLabel("Statistic"))
        row.addWidget(self.statistic)
        row.addWidget(QLabel("Click a cell to open that head."), 1)
        self.stats_holder = QWidget()
        QVBoxLayout(self.stats_holder).setContentsMargins(0, 0, 0, 0)
        layout = QVBoxLayout(page)
        layout.addLayout(row)
        layout.addWidget(self.stats_holder, 1)
        return page

    def build_deferred(self) -> None:
        if self.heat_plot is not None:
            return
        import pyqtgraph as pg

        self.heat_plot = pg.PlotWidget()
        self.heat_plot.setObjectName("attention-heatmap")
        self.heat_plot.invertY(True)
        self.heat_plot.setAspectLocked(False)
        self.heat_image = pg.ImageItem()
        self.heat_plot.addItem(self.heat_image)
        self.heat_plot.setLabel("left", "query (attends from)")
        self.heat_plot.setLabel("bottom", "key (attends to)")
        self.heat_bar = pg.ColorBarItem(values=(0, 1), colorMap=pg.colormap.get("viridis"))
        self.heat_bar.setImageItem(self.heat_image, insert_in=self.heat_plot.getPlotItem())
        self.heat_plot.scene().sigMouseMoved.connect(self._hovered)
        self.heat_holder.layout().addWidget(self.heat_plot)
        self.stats_plot = pg.PlotWidget()
        self.stats_plot.setObjectName("head-statistics")
        self.stats_plot.invertY(True)
        self.stats_plot.setLabel("left", "layer")
        self.stats_plot.setLabel("bottom", "head")
        self.stats_image = pg.ImageItem()
        self.stats_plot.addItem(self.stats_image)
        self.stats_bar = pg.ColorBarItem(colorMap=pg.colormap.get("magma"))
        self.stats_bar.setImageItem(self.stats_image, insert_in=self.stats_plot.getPlotItem())
        self.stats_plot.scene().sigMouseClicked.connect(self._stats_clicked)
        self.stats_holder.layout().addWidget(self.stats_plot)
        self.position_plots = {}
        for key, title in (("learned", "learned positions: cosine similarity"),
                           ("sinusoidal", "sinusoidal encoding: cosine similarity")):
            plot = pg.PlotWidget(title=title)
            plot.setObjectName(f"positions-{key}")
            plot.invertY(True)
            plot.setLabel("left", "position")
            plot.setLabel("bottom", "position")
            image = pg.ImageItem()
            image.setColorMap(pg.colormap.get("viridis"))
            plot.addItem(image)
            self.position_plots[key] = (plot, image)
            self.positions_holder.layout().addWidget(plot)

    def open_attribution(self) -> None:
        """Input attribution of this text: a classifier's predicted label, or for a decoder
        the last word as the target of the words before it."""
        text = self.text.toPlainText()
        if self.attribution is None:
            self.attribution = AttributionDialog(self.worker, self, self.show_error)
        if self.loaded is not None and self.loaded.task == CLASSIFIER:
            self.attribution.open_on(lambda view: view.set_classification(text))
            return
        head, space, last = text.rstrip().rpartition(" ")
        prompt, target = (head, space + last) if head.strip() else (text, "")
        self.attribution.open_on(lambda view: view.set_continuation(prompt, target))

    # --- running ---------------------------------------------------------------------------------
    def attention_settings(self) -> AttentionSettings:
        """The numbers of tokens the form shows, not yet checked."""
        return AttentionSettings(box_value(AttentionSettings, "max_tokens", self.max_tokens),
                                 box_value(AttentionSettings, "page_tokens", self.page_tokens))

    def start(self) -> None:
        if self.view_slot.running:
            return
        text, text_b = self.text.toPlainText(), self.text_b.toPlainText()
        view = "head" if self.view.currentIndex() == 0 else "model"
        settings = self.attention_settings()
        max_tokens, page_tokens = settings.max_tokens, settings.page_tokens
        try:
            if not text.strip():
                raise WorkbenchError("The text is empty.")
            settings.validate()
            layers = parse_layers(self.layers.text(), None if self.loaded is None
                                  else attention_layers(self.loaded.model))
        except WorkbenchError as exc:
            self.show_error("Cannot show attention", str(exc))
            return

        def job(ctx: WorkerContext) -> AttentionView:
            loaded = ctx.model()  # the attention job switches it to eager for itself
            result = compute_attention(loaded, text, text_b, max_tokens, ctx)
            ctx.progress("Building the bertviz page…", None)
            page, notices = bertviz_html(result, view, layers, max_tokens=page_tokens)
            return AttentionView(result, page, result.notices + notices, None,
                                 position_embeddings(loaded))

        # The lens of the view shown now is no longer wanted: a new view is coming.
        self.lens_wanted = False
        self.lens_slot.cancel()
        plan = LogitLensJob(text, max_tokens)  # the lens of this view, run after it
        self.view_slot.start("Attention", job,
                             finished=lambda outcome: self._view_done(outcome, plan),
                             failed=self._view_failed, cancelled=self._view_failed)
        self.run_button.setEnabled(False)
        self.notice.setText("Running…")

    def _lens_event(self, event: object) -> None:
        if isinstance(event, LensStarted):
            if event.tokens != self.lens_table.tokens or \
                    event.layers != self.lens_table.rowCount():
                # not the view's tokens: its own
                self.lens_table.lens_grid(event.tokens, event.layers)
        elif isinstance(event, LensColumns):
            self.lens_table.fill_lens_columns(event.start, event.top_tokens, event.top_probs)

    def _lens_done(self, outcome: object) -> None:
        if isinstance(outcome, LogitLens) and self.current is not None:
            self.current.lens = outcome
            if outcome.tokens != self.lens_table.tokens:
                self.lens_table.fill_lens(outcome)
            elif not all(self.lens_table.filled):  # the chunks filled all of it, normally
                self.lens_table.fill_lens_columns(0, outcome.top_tokens, outcome.top_probs)

    def _lens_failed(self, *failure) -> None:
        message = "Failed: " + str(failure[0]) if failure else "Cancelled."
        if not any(self.lens_table.filled):
            self.lens_table.fill_lens(None, message)
            return
        self.lens_table.not_computed(message)

    def _view_done(self, outcome: object, plan: LogitLensJob | None = None) -> None:
        self.run_button.setEnabled(True)
        if not isinstance(outcome, AttentionView):
            return
        self.lens_wanted = outcome.result.is_decoder and plan is not None
        self.lens_plan = plan
        self.show_view(outcome)
        if self.results.currentWidget() is self.lens_table or self.web is None:
            self.start_lens()

    def start_lens(self, *_args) -> None:
        """Compute the logit lens of the current view, once: after the bertviz page has
        loaded (its drawing and the lens would share the CPU) or when the lens is opened.
        The columns in view come first, then the rest, a chunk at a time."""
        plan = self.lens_plan
        if self.lens_wanted and not self.lens_slot.running and plan is not None:
            self.lens_wanted = False
            self.lens_table.column_fit.fit()  # the widths it is about to get (a 0 ms timer)
            plan.prefer(*self.lens_table.visible_columns())

            def lens_job(ctx: WorkerContext):
                return plan.run(ctx.model())  # a generator: the worker drives its events

            self.lens_slot.start("Logit lens", lens_job, event=self._lens_event,
                                 finished=self._lens_done, failed=self._lens_failed,
                                 cancelled=self._lens_failed)

    def _prefer_visible(self, *_args) -> None:
        """The table scrolled or its columns changed width while the lens runs: the
        columns now in view come next."""
        if self.lens_slot.running and self.lens_plan is not None and \
                not all(self.lens_table.filled):
            self.lens_plan.prefer(*self.lens_table.visible_columns())

    def _view_failed(self, *failure) -> None:
        """The attention job failed (the exception and its traceback) or was cancelled."""
        self.run_button.setEnabled(True)
        message = "Failed: " + str(failure[0]) if failure else "Cancelled."
        if self.current is not None:  # the views keep the earlier text's: say so, greyed
            message = mark_stale(self.results, message)
        self.notice.setText(message)

    def ensure_web(self):
        if self.web is None:
            from workbench.ui.common.web_view import OfflineWebView

            self.web = OfflineWebView()
            self.web.loaded.connect(self.start_lens)
            self.web_placeholder.hide()
            self.web_holder.layout().addWidget(self.web)
        return self.web

    def show_view(self, view: AttentionView) -> None:
        self.current = view
        self.results.setEnabled(True)
        r = view.result
        self.notice.setText(" ".join(view.notices) or
                            f"{len(r.tokens)} tokens · {r.layers} layers × {r.heads} heads")
        self.ensure_web().show_html(view.page)
        self.heat_layer.blockSignals(True)
        self.heat_layer.setRange(0, r.layers - 1)
        self.heat_layer.blockSignals(False)
        self.heat_head.blockSignals(True)
        self.heat_head.clear()
        self.heat_head.addItems(["mean over heads"] + [str(h) for h in range(r.heads)])
        self.heat_head.blockSignals(False)
        self.stats = head_statistics(r)
        self.draw_heatmap()
        self.draw_stats()
        if r.is_decoder and view.lens is None:  # "…" until each column is computed
            self.lens_table.lens_grid(r.tokens, r.layers)
        else:
            self.lens_table.fill_lens(view.lens)
        self.show_positions(view.positions)
        for b in (self.export_html_button, self.export_png_button, self.export_csv_button):
            b.setEnabled(True)

    # --- native views -------------------------------------------------------------------------
    def selected_head(self) -> tuple[int, int | None]:
        head = self.heat_head.currentIndex() - 1
        return self.heat_layer.value(), (None if head < 0 else head)

    def draw_heatmap(self) -> None:
        if self.current is None or self.heat_plot is None:
            return
        r = self.current.result
        layer, head = self.selected_head()
        matrix = r.head(layer, head)
        # ImageItem's first axis is x: transpose so rows are queries and columns keys
        self.heat_image.setImage(matrix.T, autoLevels=False, levels=(0, float(matrix.max())))
        self.heat_bar.setLevels((0, float(matrix.max())))
        labels = [(i + 0.5, visible_token(t)[:12]) for i, t in enumerate(r.tokens)]
        step = max(1, len(labels) // 40)  # keep labels readable on long inputs
        ticks = [labels[::step]]
        self.heat_plot.getAxis("left").setTicks(ticks)
        self.heat_plot.getAxis("bottom").setTicks(ticks)
        name = "mean over heads" if head is None else f"head {head}"
        self.heat_plot.setTitle(f"Layer {layer}, {name}", size="9pt")

    def _hovered(self, pos) -> None:
        if self.current is None or self.heat_plot is None:
            return
        point = self.heat_plot.getViewBox().mapSceneToView(pos)
        key, query = int(point.x()), int(point.y())
        tokens = self.current.result.tokens
        if 0 <= key < len(tokens) and 0 <= query < len(tokens):
            layer, head = self.selected_head()
            weight = float(self.current.result.head(layer, head)[query, key])
            self.hover.setText(f"{tokens[query]!r} → {tokens[key]!r}: {weight:.3f}")

    def draw_stats(self) -> None:
        if self.stats is None or self.heat_plot is None:
            return
        values = self.stats[self.statistic.currentText()]
        self.stats_image.setImage(values.T, autoLevels=True)
        layers, heads = values.shape
        self.stats_plot.getAxis("left").setTicks([[(i + 0.5, str(i)) for i in range(layers)]])
        self.stats_plot.getAxis("bottom").setTicks([[(i + 0.5, str(i)) for i in range(heads)]])
        self.stats_bar.setLevels((float(values.min()), float(values.max()) or 1.0))
        self.stats_plot.setTitle(f"{self.statistic.currentText()} per head", size="9pt")

    def _stats_clicked(self, event) -> None:
        if self.stats is None:
            return
        view = self.stats_plot.getViewBox()
        if not view.sceneBoundingRect().contains(event.scenePos()):
            return
        point = view.mapSceneToView(event.scenePos())
        self.open_head(int(point.y()), int(point.x()))

    def open_head(self, layer: int, head: int) -> None:
        r = self.current.result if self.current else None
        if r is None or not (0 <= layer < r.layers and 0 <= head < r.heads):
            return
        self.heat_layer.setValue(layer)
        self.heat_head.setCurrentIndex(head + 1)
        self.results.setCurrentIndex(1)
        self.draw_heatmap()

    def show_positions(self, positions: PositionEmbeddings | None) -> None:
        if positions is None or self.heat_plot is None:
            return
        self.positions_note.setText(positions.description)
        learned_plot, learned_image = self.position_plots["learned"]
        learned_plot.setVisible(positions.learned_similarity is not None)
        if positions.learned_similarity is not None:
            learned_image.setImage(positions.learned_similarity.T, levels=(-1, 1))
        self.position_plots["sinusoidal"][1].setImage(positions.sinusoidal_similarity.T,
                                                      levels=(-1, 1))

    # --- exports --------------------------------------------------------------------------------
    def export_html(self, path: str | None = None) -> None:
        if self.current is None:
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export the bertviz page",
                                                  "attention.html", "HTML (*.html)")
        if path:
            try:  # whole or not at all: a failed write leaves no half page
                write_atomically(path, self.current.page)
            except OSError as exc:
                self.show_error("Cannot export the page", cannot_write(path, exc))

    def export_png(self, path: str | None = None) -> None:
        if self.current is None or self.heat_plot is None:
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export the view", "attention.png",
                                                  "PNG (*.png)")
        if path:
            from workbench.ui.common.charts import save_png

            plot = self.stats_plot if self.results.currentIndex() == 2 else self.heat_plot
            try:
                save_png(plot.getPlotItem(), path)
            except OSError as exc:
                self.show_error("Cannot export the view", cannot_write(path, exc))

    def export_csv(self, path: str | None = None) -> None:
        if self.current is None or self.stats is None:
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export numbers", "attention.csv",
                                                  "CSV (*.csv)")
        if not path:
            return
        r = self.current.result
        f = io.StringIO(newline="")
        writer = csv.writer(f)
        if self.results.currentIndex() == 2:
            writer.writerow(["layer", "head", *STATISTICS])
            for layer in range(r.layers):
                for head in range(r.heads):
                    writer.writerow([layer, head, *(round(float(self.stats[s][layer, head]),
                                                          6) for s in STATISTICS)])
        else:
            layer, head = self.selected_head()
            matrix = r.head(layer, head)
            writer.writerow(["query \\ key", *r.tokens])
            for token, row in zip(r.tokens, matrix, strict=True):
                writer.writerow([token, *(round(float(x), 6) for x in row)])
        try:  # whole or not at all: a failed write leaves no half table
            write_atomically(path, f.getvalue())
        except OSError as exc:
            self.show_error("Cannot export the numbers", cannot_write(path, exc))

    def shutdown(self) -> None:
        if self.web is not None:
            self.web.shutdown()

"""The Generate tab's comparison: 2 to 6 strategies on one prompt and seed, side by side in
columns, with a summary table and their surprisal curves overlaid. The view owns its job."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from workbench.core.common.errors import WorkbenchError
from workbench.core.generation.compare import CompareResult, batch_owners, compare, owner_of
from workbench.core.generation.records import TokenEvent
from workbench.core.generation.settings import SamplingSettings, parse_strategy
from workbench.ui.common.job_thread import JobSlot
from workbench.ui.common.skeleton import text_box
from workbench.ui.common.stale import mark_stale
from workbench.ui.common.widgets import TokenView, fit_columns, two_line_labels
from workbench.ui.common.worker import ModelWorker, WorkerContext
from workbench.ui.generation.single import token_tooltip

SUMMARY_COLUMNS = ["strategy", "mean log-prob", "perplexity", "distinct-1", "distinct-2",
                   "self-BLEU", "tokens/s", "diverges at"]


def summary_row(r) -> list:
    """One strategy's row of the summary table (and of the exported CSV)."""
    def num(x: float | None, digits: int):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, digits)

    return [r.name, num(r.mean_logprob, 3), num(r.perplexity, 2), num(r.distinct_1, 3),
            num(r.distinct_2, 3), num(r.self_bleu, 2), num(r.tokens_per_second, 1),
            "-" if r.diverges_at is None else r.diverges_at]


class CompareView(QWidget):
    """The "Compare strategies" page of the tab. ``run_ended`` follows the end of a
    comparison, however it ended."""

    run_ended = Signal()

    def __init__(self, worker: ModelWorker, prompt: QPlainTextEdit,
                 show_error: Callable[[str, str], object], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.worker, self.prompt, self.show_error = worker, prompt, show_error
        self.run_slot = JobSlot(self, worker)  # the comparison
        self.result: CompareResult | None = None
        self.previous: CompareResult | None = None  # shown again, greyed, if a run fails
        self.owners: list[int] = []
        self.views: list[TokenView] = []
        self.pending: list[TokenEvent] = []
        self.overlay = None
        self.flush_timer = QTimer(self)  # tokens arrive faster than a repaint should happen
        self.flush_timer.setInterval(40)
        self.flush_timer.timeout.connect(self.flush)

        self.strategies = text_box("strategies", "One strategy a line: greedy, top-k 40, "
                                   "nucleus 0.9, creative, or key=value pairs such as "
                                   "top_k=40,temperature=0.8,n=3",
                                   "greedy\ntop-k 40\nnucleus 0.9\ntemperature=1.5")
        self.strategies.setMaximumHeight(80)
        self.compare_button = QPushButton("Compare")
        self.compare_button.setObjectName("compare-button")
        self.compare_button.setProperty("primary", True)  # Run ▸ Run: Ctrl+Return
        self.export_csv_button = QPushButton("Export table…")
        self.export_csv_button.clicked.connect(lambda: self.export_table())
        self.export_png_button = QPushButton("Export plot…")
        self.export_png_button.clicked.connect(lambda: self.export_plot())
        for b in (self.export_csv_button, self.export_png_button):
            b.setEnabled(False)
        side = QVBoxLayout()
        side.addWidget(self.compare_button)
        side.addWidget(self.export_csv_button)
        side.addWidget(self.export_png_button)
        side.addStretch(1)
        top = QHBoxLayout()
        top.addWidget(self.strategies, 1)
        top.addLayout(side)
        self.columns = QWidget()
        self.columns_layout = QHBoxLayout(self.columns)
        self.columns_layout.setContentsMargins(0, 0, 0, 0)
        self.summary = QTableWidget(0, len(SUMMARY_COLUMNS))
        self.summary.setObjectName("summary-table")
        # titles on two lines: eight columns of short numbers fit beside the curves
        self.summary.setHorizontalHeaderLabels(two_line_labels(SUMMARY_COLUMNS))
        self.summary.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.summary.verticalHeader().setVisible(False)  # the strategy names the row
        fit_columns(self.summary, stretch=(0,), rows=3)
        self.overlay_holder = QWidget()
        QVBoxLayout(self.overlay_holder).setContentsMargins(0, 0, 0, 0)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        lower = self.lower = QSplitter(Qt.Orientation.Horizontal)
        lower.addWidget(self.summary)
        lower.addWidget(self.overlay_holder)
        lower.setSizes([620, 330])  # the summary's eight columns whole, the curves beside
        lower.setStretchFactor(1, 1)  # a wider window widens the curves
        self.results_view = QSplitter(Qt.Orientation.Vertical)  # greyed out when stale
        self.results_view.addWidget(self.columns)
        self.results_view.addWidget(lower)
        self.results_view.setSizes([140, 280])
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.results_view, 1)
        layout.addWidget(self.note)

    def build_deferred(self) -> None:
        """Create the pyqtgraph overlay (after the window is shown: it costs start-up time)."""
        if self.overlay is not None:
            return
        from workbench.ui.common.charts import OverlayCurves

        self.overlay = OverlayCurves()
        self.overlay_holder.layout().addWidget(self.overlay)

    # --- a comparison ------------------------------------------------------------------------
    def start(self, base: SamplingSettings) -> bool:
        """Compare the strategies listed (each over ``base``), or say in one dialog why
        they cannot run; True when the job was submitted."""
        try:
            specs = [line for line in self.strategies.toPlainText().splitlines() if line.strip()]
            if not 2 <= len(specs) <= 6:
                raise WorkbenchError(f"Give 2 to 6 strategies, one a line (now {len(specs)}).")
            strategies = [parse_strategy(spec, base) for spec in specs]
        except WorkbenchError as exc:
            self.show_error("Cannot compare", str(exc))
            return False
        prompt = self.prompt.toPlainText()
        seed, max_new, chat = base.seed, base.max_new_tokens, base.chat
        self.previous = self.result
        self.owners = batch_owners(strategies)
        self._make_columns([s.name for s in strategies])
        self.results_view.setEnabled(True)
        self.pending.clear()
        self.result = None
        self.note.setText("Comparing…")

        def job(ctx: WorkerContext) -> CompareResult:
            return compare(ctx.model(), prompt, strategies, seed=seed, max_new_tokens=max_new,
                           chat=chat, ctx=ctx, top_n=0)

        self.run_slot.start("Compare strategies", job, event=self._event, finished=self._done,
                            failed=lambda error, details: self._ended(f"Failed: {error}"),
                            cancelled=lambda: self._ended("Cancelled."))
        self.flush_timer.start()
        return True

    def stop(self) -> None:
        self.run_slot.cancel()

    def _event(self, event: object) -> None:
        if isinstance(event, TokenEvent):
            self.pending.append(event)

    def _done(self, result: object) -> None:
        self._finish()
        if isinstance(result, CompareResult):
            self.previous = None
            self.show_result(result)
        self.run_ended.emit()

    def _ended(self, message: str) -> None:
        """The comparison failed or was cancelled: what it streamed is dropped, and the
        comparison before it (if any) is shown again, greyed out and said to be the
        previous one."""
        self._finish()
        self.pending.clear()
        previous, self.previous = self.previous, None
        if previous is not None:
            self._make_columns([r.name for r in previous.strategies])
            self.show_result(previous)
            message = mark_stale(self.results_view, message)
        else:
            self._make_columns([])
        self.note.setText(message)
        self.run_ended.emit()

    def _finish(self) -> None:
        self.flush_timer.stop()
        self.flush()

    def _make_columns(self, names: list[str]) -> None:
        while self.columns_layout.count():
            item = self.columns_layout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.views = []
        for name in names:
            column = QWidget()
            layout = QVBoxLayout(column)
            layout.setContentsMargins(0, 0, 0, 0)
            header = QLabel(f"<b>{name}</b>")
            header.setObjectName("column-header")
            view = TokenView(f"column-{len(self.views)}")
            layout.addWidget(header)
            layout.addWidget(view, 1)
            self.columns_layout.addWidget(column, 1)
            self.views.append(view)

    def flush(self) -> None:
        """Show the tokens that arrived (the first sequence of each strategy streams)."""
        for event in self.pending:
            strategy, sequence = owner_of(event.sequence, self.owners)
            if sequence == 0 and strategy < len(self.views) and event.step is not None:
                self.views[strategy].append_token(event.text, event.probability,
                                                  token_tooltip(event.step))
        self.pending.clear()

    def show_result(self, result: CompareResult) -> None:
        self.result = result
        for view, r in zip(self.views, result.strategies, strict=False):
            view.clear_tokens()
            for n, seq in enumerate(r.sequences):
                if n:
                    view.append_token(f"\n\n[{n + 1}] ", float("nan"), "another sequence")
                for step in seq.steps:
                    view.append_token(step.text, step.probability, token_tooltip(step),
                                      highlight=(n == 0 and step.index == r.diverges_at))
        self.summary.setSortingEnabled(False)
        self.summary.setRowCount(len(result.strategies))
        for row, r in enumerate(result.strategies):
            for col, value in enumerate(summary_row(r)):
                item = QTableWidgetItem()
                item.setData(Qt.ItemDataRole.DisplayRole, value)
                self.summary.setItem(row, col, item)
        # rows in the order the strategies were given until the user sorts by a column
        self.summary.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
        self.summary.setSortingEnabled(True)
        self._widen_summary()
        if self.overlay is not None:
            divergences = [r.diverges_at for r in result.strategies[1:] if r.diverges_at is not None]
            self.overlay.set_series([r.name for r in result.strategies],
                                    [[s.surprisal for s in r.sequences[0].steps] if r.sequences
                                     else [] for r in result.strategies],
                                    min(divergences) if divergences else None)
        notes = [f"{result.seconds:.1f} s in all."] + result.notes
        self.note.setText(" ".join(notes))
        self.export_csv_button.setEnabled(True)
        self.export_png_button.setEnabled(True)

    def _widen_summary(self) -> None:
        """Room for the strategies' names where the window has it: the summary widens to
        show them whole, up to 60 % of the width (the curves keep the rest)."""
        sizes = self.lower.sizes()
        total = sum(sizes)
        if total <= 0:
            return
        want = min(self.summary.column_fit.wanted_width(), int(total * 0.6))
        if want > sizes[0]:
            self.lower.setSizes([want, total - want])

    # --- exports -------------------------------------------------------------------------------
    def export_table(self, path: str | None = None) -> None:
        if self.result is None:
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export the comparison", "compare.csv",
                                                  "CSV (*.csv)")
        if not path:
            return
        try:
            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(SUMMARY_COLUMNS + ["text"])
                for r in self.result.strategies:
                    writer.writerow(summary_row(r) + [r.sequences[0].text if r.sequences else ""])
        except OSError as exc:
            self.show_error("Cannot export the table", str(exc))

    def export_plot(self, path: str | None = None) -> None:
        if self.overlay is None or self.result is None:
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export the plot", "compare.png",
                                                  "PNG (*.png)")
        if path:
            try:
                self.overlay.export_png(path)
            except OSError as exc:
                self.show_error("Cannot export the plot", str(exc))

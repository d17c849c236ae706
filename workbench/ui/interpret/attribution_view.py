"""Input attribution in the window: which input tokens made the model say this?

A reusable view (and a dialog around it) opened on one subject: a prompt and a target
continuation, a prompt and a generated sequence with one clicked token ("why this token?"),
or a classifier's text and label. It runs :mod:`workbench.core.interpret.attribution` on the model
worker (progress, Cancel), and shows the input coloured on a diverging scale (blue
raised the target's log-probability, red lowered it), a sortable table with a column per
method run on this subject, the tokens × tokens matrix of a generated sequence, and
exports the results as CSV or a self-contained HTML page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QKeySequence, QShortcut, QTextCharFormat
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidgetItem,
    QTabWidget,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import Progress
from workbench.core.interpret.attribution import attribute
from workbench.core.interpret.attribution_classifier import attribute_classifier
from workbench.core.interpret.attribution_export import (
    diverging_colour,
    export_csv,
    export_html,
    scale_of,
)
from workbench.core.interpret.attribution_options import (
    DEFAULT_STEPS,
    USES_BASELINE,
    AttributionOptions,
)
from workbench.core.interpret.attribution_result import (
    CLASSIFICATION,
    CONTINUATION,
    GENERATED,
    METHODS,
    AttributionResult,
)
from workbench.ui.common.job_thread import JobSlot
from workbench.ui.common.setting_widgets import box_value, setting_box
from workbench.ui.common.skeleton import combo, table
from workbench.ui.common.stale import mark_stale
from workbench.ui.common.widgets import ProgressThrottle, StatusLine, visible_token
from workbench.ui.common.worker import ModelWorker, WorkerContext
from workbench.ui.interpret.attribution_matrix import AttributionMatrix

BASELINE_CHOICES = (("pad", "pad token"), ("eos", "end-of-text token"),
                    ("zero", "zero embedding"), ("id", "token id…"))
DARK_TEXT = QColor(17, 17, 17)


@dataclass
class Subject:
    """What is attributed: the kind, the prompt (or text), and the target."""

    kind: str  # CONTINUATION, GENERATED or CLASSIFICATION
    prompt: str
    target: str = ""  # a continuation's text
    label: str | None = None  # a classifier's label (None: the predicted one)
    prompt_ids: list[int] | None = None  # the ids the model saw (a generated sequence)
    output_ids: list[int] | None = None  # the generated tokens up to the clicked one
    output_texts: list[str] | None = None


def shown_token(text: str) -> str:
    """A token inside running text: whitespace-only tokens made visible (as in the tables),
    a newline kept as a line break after its ⏎ mark."""
    if not text.strip():
        return visible_token(text) + ("\n" if "\n" in text else "")
    return text.replace("\n", "⏎\n")


class AttributionView(QWidget):
    """Method, steps and baseline; Run / Cancel on the worker; the coloured text, the
    table, the matrix; CSV and HTML export. One subject at a time: a new one clears the
    results; each run on the same subject adds (or replaces) its method's column."""

    def __init__(self, worker: ModelWorker,
                 show_error: Callable[[str, str], object] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("attribution-view")
        self.worker = worker
        self._show_error = show_error
        self.subject: Subject | None = None
        self.run_slot = JobSlot(self, worker)
        self.results: list[AttributionResult] = []
        self.throttle = ProgressThrottle()
        self._build_subject()
        controls = self._build_controls()
        self._build_results()
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Prompt"))
        layout.addWidget(self.prompt)
        target_row = QHBoxLayout()
        target_row.addWidget(self.target_label)
        target_row.addWidget(self.target, 1)
        layout.addLayout(target_row)
        layout.addWidget(self.matrix_box)
        layout.addLayout(controls)
        layout.addWidget(self.status)
        layout.addWidget(self.result_view, 1)
        self._sync_controls()
        self._sync_exports()

    def _build_subject(self) -> None:
        """The prompt and the target (editable for a continuation and a classification)."""
        self.prompt = QPlainTextEdit()
        self.prompt.setObjectName("attribution-prompt")
        self.prompt.setPlaceholderText("The prompt (or the classifier's text)")
        self.prompt.setMaximumHeight(70)
        self.target = QLineEdit()
        self.target.setObjectName("attribution-target")
        self.target_label = QLabel("Target")
        self.matrix_box = QCheckBox("Every generated token up to this one (the matrix)")
        self.matrix_box.setObjectName("attribution-matrix-rows")
        self.matrix_box.setToolTip("Off: only the clicked token. On: one attribution per "
                                   "generated token, each over the tokens before it")
        self.matrix_box.setVisible(False)

    def _build_controls(self) -> QHBoxLayout:
        """Method, steps and baseline, the progress, Run and Cancel (their row returned), and
        the status line."""
        self.method = combo("attribution-method", [name.capitalize() for name in METHODS.values()])
        self.method.setToolTip("captum's integrated gradients, input × gradient, saliency or "
                               "feature ablation")
        self.steps = setting_box(AttributionOptions, "steps", "attribution-steps")
        self.steps.setValue(DEFAULT_STEPS)  # shown as a number; below 1: captum's default
        self.baseline = combo("attribution-baseline", [label for _, label in BASELINE_CHOICES])
        self.baseline.setToolTip("What each token is replaced with (integrated gradients, "
                                 "feature ablation)")
        self.baseline_id = setting_box(AttributionOptions, "baseline_id",
                                       "attribution-baseline-id")
        self.baseline_id.setValue(0)  # "token id…" starts at the first id
        self.method.currentIndexChanged.connect(self._sync_controls)
        self.baseline.currentIndexChanged.connect(self._sync_controls)
        self.run_button = QPushButton("Run")
        self.run_button.setObjectName("attribution-run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("attribution-cancel")
        self.cancel_button.setToolTip("Cancel (Esc): at the model's next call")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.cancel,
                  context=Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress.setMaximumWidth(160)
        self.status = StatusLine("attribution-status")
        self.status.setText("Choose a method and press Run.")

        controls = QHBoxLayout()
        for label, widget in (("Method", self.method), ("Steps", self.steps),
                              ("Baseline", self.baseline)):
            controls.addWidget(QLabel(label))
            controls.addWidget(widget)
        controls.addWidget(self.baseline_id)
        controls.addStretch(1)
        controls.addWidget(self.progress)
        controls.addWidget(self.run_button)
        controls.addWidget(self.cancel_button)
        return controls

    def _build_results(self) -> None:
        """``result_view``: the row shown and the exports above the coloured text, the table
        and the matrix."""
        self.row_choice = combo("attribution-row", [])
        self.row_choice.setToolTip("Which target token's attribution colours the text and "
                                   "fills the table")
        self.row_choice.currentIndexChanged.connect(self.show_results)
        self.text = QTextEdit()
        self.text.setObjectName("attribution-text")
        self.text.setReadOnly(True)
        self.text.setPlaceholderText("The input appears here, each token tinted by its score: "
                                     "blue raised the target's log-probability, red lowered it.")
        self.table = table(["position", "token"], "attribution-table")
        self.matrix_view = AttributionMatrix()
        self.matrix_view.row_clicked.connect(
            lambda row: self.row_choice.setCurrentIndex(row + 1))  # after "the whole target"
        self.views = QTabWidget()
        self.views.setObjectName("attribution-views")
        self.views.addTab(self.table, "Table")
        self.views.addTab(self.matrix_view, "Matrix")
        self.views.setTabEnabled(1, False)
        self.export_csv_button = QPushButton("Export CSV…")
        self.export_csv_button.clicked.connect(lambda: self.export("csv"))
        self.export_html_button = QPushButton("Export HTML…")
        self.export_html_button.clicked.connect(lambda: self.export("html"))
        exports = QHBoxLayout()
        exports.addWidget(QLabel("Attribution of"))
        exports.addWidget(self.row_choice, 1)
        exports.addWidget(self.export_csv_button)
        exports.addWidget(self.export_html_button)
        self.result_view = QWidget()
        rl = QVBoxLayout(self.result_view)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addLayout(exports)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.text)
        split.addWidget(self.views)
        split.setSizes([160, 320])
        rl.addWidget(split, 1)

    # --- the subject ------------------------------------------------------------------------
    def set_continuation(self, prompt: str, target: str) -> None:
        """A prompt and a continuation to attribute (both editable)."""
        self._set_subject(Subject(CONTINUATION, prompt, target=target), "Target")
        self.prompt.setPlainText(prompt)
        self.target.setText(target)

    def set_generated(self, prompt: str, output_ids: Sequence[int], index: int,
                      prompt_ids: Sequence[int] | None = None,
                      output_texts: Sequence[str] | None = None) -> None:
        """A generated sequence (``output_ids``) after ``prompt``, and the clicked token's
        index: "why this token?". ``prompt_ids`` are the ids the model saw (a chat template);
        ``output_texts`` the tokens' texts as shown where they were clicked."""
        if not 0 <= index < len(output_ids):
            raise WorkbenchError(f"Token {index} is not in this sequence of "
                                 f"{len(output_ids)} tokens.")
        texts = list(output_texts) if output_texts is not None else None
        subject = Subject(GENERATED, prompt, prompt_ids=None if prompt_ids is None
                          else list(prompt_ids), output_ids=list(output_ids[:index + 1]),
                          output_texts=None if texts is None else texts[:index + 1])
        clicked = texts[index] if texts is not None else f"token {index + 1}"
        self._set_subject(subject, "Token")
        self.prompt.setPlainText(prompt)
        self.target.setText(f"{visible_token(clicked)}  (generated token {index + 1})")

    def set_classification(self, text: str, label: str | None = None) -> None:
        """A classifier's text and the label to attribute (None: the label it predicts)."""
        self._set_subject(Subject(CLASSIFICATION, text, label=label), "Label")
        self.prompt.setPlainText(text)
        self.target.setText(label or "")
        self.target.setPlaceholderText("the predicted label")

    def _set_subject(self, subject: Subject, target_label: str) -> None:
        self.subject = subject
        self.results = []
        self.matrix_view.result = None
        fixed = subject.kind == GENERATED  # the ids are what the model saw: not editable
        self.prompt.setReadOnly(fixed)
        self.target.setReadOnly(fixed)
        self.target.setPlaceholderText("")
        self.target_label.setText(target_label)
        self.matrix_box.setVisible(fixed)
        self.matrix_box.setEnabled(fixed and len(subject.output_ids or []) > 1)
        self.row_choice.clear()
        self.text.clear()
        self.table.setRowCount(0)
        self.views.setTabEnabled(1, False)
        self.result_view.setEnabled(True)
        self.status.setText("Choose a method and press Run.")
        self._sync_exports()

    # --- the options ----------------------------------------------------------------------------
    def method_key(self) -> str:
        return list(METHODS)[self.method.currentIndex()]

    def options(self) -> AttributionOptions:
        """The options the controls give (not yet checked): the steps for integrated
        gradients, the baseline (named, or the token id) for the methods that use one."""
        method = self.method_key()
        key = BASELINE_CHOICES[self.baseline.currentIndex()][0]
        uses_baseline = method in USES_BASELINE
        return AttributionOptions(
            method, box_value(AttributionOptions, "steps", self.steps) if method == "ig" else None,
            baseline=key if uses_baseline and key != "id" else None,
            baseline_id=box_value(AttributionOptions, "baseline_id", self.baseline_id)
            if uses_baseline and key == "id" else None)

    def _sync_controls(self) -> None:
        method = self.method_key()
        self.steps.setEnabled(method == "ig")
        uses_baseline = method in USES_BASELINE
        self.baseline.setEnabled(uses_baseline)
        self.baseline_id.setEnabled(uses_baseline and
                                    BASELINE_CHOICES[self.baseline.currentIndex()][0] == "id")

    def _sync_exports(self) -> None:
        for button in (self.export_csv_button, self.export_html_button):
            button.setEnabled(bool(self.results))

    # --- running --------------------------------------------------------------------------------
    def show_error(self, title: str, message: str) -> None:
        if self._show_error is not None:
            self._show_error(title, message)
            return
        box = QMessageBox(QMessageBox.Icon.Critical, title, message,
                          QMessageBox.StandardButton.Ok, self)
        box.open()

    def run(self) -> None:
        """Check the inputs (a dialog if they are wrong) and submit the attribution."""
        if self.run_slot.running:
            return
        options = self.options()
        method, steps, baseline = options.method, options.steps, options.chosen_baseline()
        subject = self.subject or Subject(CONTINUATION, "")
        prompt, target = self.prompt.toPlainText(), self.target.text()
        try:
            options.validate()
            if baseline is None and method in USES_BASELINE and \
                    BASELINE_CHOICES[self.baseline.currentIndex()][0] == "id":
                raise WorkbenchError("Choose the baseline token id (0 or more), or a pad, "
                                     "end-of-text or zero baseline.")
            if subject.kind != GENERATED and not prompt.strip():
                raise WorkbenchError("The prompt is empty." if subject.kind == CONTINUATION
                                     else "The text is empty.")
            if subject.kind == CONTINUATION and not target:
                raise WorkbenchError("The target is empty: type the continuation to attribute.")
        except WorkbenchError as exc:
            self.show_error("Cannot attribute", str(exc))
            return
        if subject.kind == CONTINUATION and (prompt, target) != (subject.prompt, subject.target):
            self._set_subject(Subject(CONTINUATION, prompt, target=target), "Target")
        elif subject.kind == CLASSIFICATION and (prompt, target.strip() or None) != \
                (subject.prompt, subject.label):
            self._set_subject(Subject(CLASSIFICATION, prompt, label=target.strip() or None),
                              "Label")
        subject = self.subject or subject
        self.subject = subject
        only_last = not self.matrix_box.isChecked()

        def job(ctx: WorkerContext) -> AttributionResult:
            loaded = ctx.model()
            if subject.kind == CLASSIFICATION:
                return attribute_classifier(loaded, subject.prompt, subject.label, method,
                                            steps, baseline, ctx)
            if subject.kind == GENERATED:
                return attribute(loaded, subject.prompt, subject.output_ids, None, method,
                                 steps, baseline, ctx, prompt_ids=subject.prompt_ids,
                                 only_last=only_last)
            return attribute(loaded, subject.prompt, subject.target, None, method, steps,
                             baseline, ctx)

        self.run_slot.start(f"Attribution: {METHODS[method]}", job, finished=self._finished,
                            failed=self._failed, cancelled=lambda: self._ended("Cancelled."),
                            event=self._event)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.status.setText(f"Running {METHODS[method]}… (Esc cancels)")

    def cancel(self) -> None:
        self.run_slot.cancel()

    def _event(self, event: object) -> None:
        if not isinstance(event, Progress):
            return  # the tokens of a generation, when the job generates first
        stage = event.fraction in (None, 1.0)
        if not self.throttle.due(force=stage):
            return
        if event.fraction is None:
            self.progress.setRange(0, 0)
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(event.fraction * 1000))
        self.status.setText(event.message)

    def _failed(self, error: object, details: str) -> None:
        self._ended(f"Failed: {error}")

    def _ended(self, message: str) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        if message and self.results:
            message = mark_stale(self.result_view, message)
        self.status.setText(message)

    def _finished(self, result: object) -> None:
        self._ended("")
        if not isinstance(result, AttributionResult):
            return
        self.result_view.setEnabled(True)
        self.progress.setValue(1000)
        same = [r for r in self.results if r.token_ids == result.token_ids and
                r.positions == result.positions and r.output_ids == result.output_ids]
        self.results = [r for r in same if r.column_label() != result.column_label()] + [result]
        self._fill_rows(result)
        self.status.setText(self.summary(result))
        self._sync_exports()
        self.show_results()

    @staticmethod
    def summary(result: AttributionResult) -> str:
        text = (f"{result.describe()} · log p(target) {result.target_logprob:.4f} · "
                f"{result.seconds:.1f} s")
        if result.delta is not None:
            text += (f" · convergence delta {result.delta:+.2g} (the scores sum to the change "
                     f"in log-probability from the baseline, "
                     f"{result.target_logprob - (result.baseline_logprob or 0.0):+.4f}, up to it)")
        return text + "".join(f" · {n}" for n in result.notices)

    def _fill_rows(self, result: AttributionResult) -> None:
        """The row choice: the whole target, then each target token (when there are several)."""
        self.row_choice.blockSignals(True)
        self.row_choice.clear()
        if result.kind == CLASSIFICATION:
            self.row_choice.addItem(f"label {result.target}")
        else:
            if len(result.rows) > 1:
                whole = ("the whole target" if result.kind == CONTINUATION
                         else "every generated token (sum of the rows)")
                self.row_choice.addItem(whole)
            for k, output in enumerate(result.outputs):
                self.row_choice.addItem(f"token {visible_token(output)!s}"
                                        f" ({k + 1} of {len(result.outputs)})")
            self.row_choice.setCurrentIndex(self.row_choice.count() - 1 if
                                            result.kind == GENERATED else 0)
        self.row_choice.blockSignals(False)

    # --- showing --------------------------------------------------------------------------------
    def selected_row(self) -> int | None:
        """The row shown (None: the whole target, the sum of the rows)."""
        if not self.results:
            return None
        rows = len(self.results[-1].rows)
        index = self.row_choice.currentIndex()
        if rows <= 1 or self.results[-1].kind == CLASSIFICATION:
            return None
        return index - 1 if index >= 1 else None

    def values(self, result: AttributionResult) -> list[float | None]:
        row = self.selected_row()
        return list(result.scores) if row is None else list(result.rows[row])

    def show_results(self) -> None:
        if not self.results:
            return
        latest = self.results[-1]
        self._draw_text(latest, self.values(latest))
        self._draw_table()
        if latest.kind == GENERATED and len(latest.rows) > 1:
            self.matrix_view.draw(latest)
            self.views.setTabEnabled(1, True)
        else:
            self.views.setTabEnabled(1, False)

    def _draw_text(self, result: AttributionResult, values: list[float | None]) -> None:
        self.text.clear()
        cursor = self.text.textCursor()
        scale = scale_of(values)
        row = self.selected_row()
        for token, position, value in zip(result.tokens, result.positions, values, strict=True):
            if value is None:  # after the shown token: not part of its input
                continue
            fmt = QTextCharFormat()
            fmt.setForeground(DARK_TEXT)
            fmt.setBackground(QColor(*diverging_colour(value, scale)))
            fmt.setToolTip(f"{visible_token(token)} (position {position}): {value:+.5g}")
            cursor.insertText(shown_token(token), fmt)
        plain = QTextCharFormat()
        plain.setForeground(DARK_TEXT)
        plain.setToolTip("Held as it is: the target tokens before the one attributed")
        if result.kind == CONTINUATION and row is not None:
            for before in result.outputs[:row]:
                cursor.insertText(shown_token(before), plain)
        targets = result.outputs if result.kind == CONTINUATION and row is None else \
            [result.outputs[row if row is not None else -1]]
        bold = QTextCharFormat()
        bold.setFontWeight(700)
        bold.setFontUnderline(True)
        bold.setForeground(DARK_TEXT)
        bold.setToolTip("The target: what is attributed")
        if result.kind == CLASSIFICATION:
            cursor.insertText(f"  → {result.target}", bold)
        else:
            for target in targets:
                cursor.insertText(shown_token(target), bold)
        self.text.setTextCursor(cursor)

    def _draw_table(self) -> None:
        first = self.results[0]
        headers = ["position", "token"] + [r.column_label() for r in self.results]
        columns = [self.values(r) for r in self.results]
        scales = [scale_of(c) for c in columns]
        t = self.table
        t.setSortingEnabled(False)
        t.clear()
        t.setColumnCount(len(headers))
        t.setHorizontalHeaderLabels(headers)
        t.setRowCount(len(first.tokens))
        for i, (position, token) in enumerate(zip(first.positions, first.tokens, strict=True)):
            cells: list[object] = [position, visible_token(token)]
            for c, value in enumerate([col[i] for col in columns]):
                item = QTableWidgetItem()
                if value is not None:
                    item.setData(Qt.ItemDataRole.DisplayRole, round(float(value), 6))
                    item.setBackground(QColor(*diverging_colour(value, scales[c])))
                    item.setForeground(DARK_TEXT)
                t.setItem(i, 2 + c, item)
            for c, value in enumerate(cells):
                item = QTableWidgetItem()
                item.setData(Qt.ItemDataRole.DisplayRole, value)
                t.setItem(i, c, item)
        t.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
        t.setSortingEnabled(True)

    # --- export ---------------------------------------------------------------------------------
    def export(self, kind: str, path: str | None = None) -> None:
        """Save every result of this subject as CSV (the table) or HTML (the page)."""
        if not self.results:
            return
        if path is None:
            caption = "Export CSV" if kind == "csv" else "Export HTML"
            filters = "CSV (*.csv)" if kind == "csv" else "HTML (*.html)"
            path, _ = QFileDialog.getSaveFileName(self, caption, f"attribution.{kind}", filters)
            if not path:
                return
        try:
            if kind == "csv":
                export_csv(self.results, path)
            else:
                latest = self.results[-1]
                export_html(self.results, path, f"{latest.model}: attribution of "
                            f"{latest.target!r}")
        except WorkbenchError as exc:
            self.show_error("Cannot export", str(exc))
            return
        self.status.setText(f"Saved {path}")


class AttributionDialog(QDialog):
    """A window around an :class:`AttributionView` (not modal; closing it cancels its job).
    Keep one and call ``view.set_…`` to show another subject."""

    def __init__(self, worker: ModelWorker, parent: QWidget | None = None,
                 show_error: Callable[[str, str], object] | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("attribution-dialog")
        self.setWindowTitle("Why this token? Input attribution")
        self.view = AttributionView(worker, show_error, self)
        QVBoxLayout(self).addWidget(self.view)
        self.resize(980, 720)

    def open_on(self, setup: Callable[[AttributionView], None]) -> None:
        """Show the dialog with the subject ``setup`` gives the view."""
        setup(self.view)
        self.show()
        self.raise_()
        self.activateWindow()

    def done(self, result: int) -> None:  # closing (Esc, the window's close button)
        self.view.cancel()
        super().done(result)

"""The Evaluate tab's generate-then-score and classification pages.

Each page runs its own job on the shared worker and hands finished results to the tab's
history through ``record(kind, summary, inputs, results)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from workbench.core.common.data_files import read_pairs, read_rows
from workbench.core.common.errors import WorkbenchError
from workbench.core.common.paths import sample_data
from workbench.core.evaluation.classification import (
    ClassificationResult,
    ClassifierSettings,
    evaluate_classifier,
)
from workbench.core.evaluation.generate_score import (
    GenerateScoreResult,
    GenerateScoreSettings,
    RowDone,
    generate_and_score,
    output_folder,
    save_result,
)
from workbench.core.generation.settings import PRESETS, SamplingSettings
from workbench.core.models.catalog import CAUSAL_LM, CLASSIFIER
from workbench.ui.common.job_thread import JobSlot
from workbench.ui.common.setting_widgets import box_value, setting_box
from workbench.ui.common.skeleton import combo, fill, line, metric_checkboxes, table
from workbench.ui.common.stale import mark_stale
from workbench.ui.common.state import preset_names, read_preset
from workbench.ui.common.widgets import fit_columns, rows_height, show_rows, two_line_labels
from workbench.ui.common.worker import ModelWorker, WorkerContext
from workbench.ui.interpret.attribution_view import AttributionDialog

GENERATE_TAB = "Generate tab's settings"
SAMPLE_DATA = sample_data()


def sample(name: str) -> str:
    """The path of a bundled sample file, or "" when it is not there (an installed wheel)."""
    return str(SAMPLE_DATA / name) if (SAMPLE_DATA / name).is_file() else ""
Record = Callable[[str, str, dict, dict], None]


def file_row(edit: QLineEdit, caption: str, filters: str) -> QHBoxLayout:
    """A path line edit with a browse button."""
    row = QHBoxLayout()
    row.addWidget(edit, 1)
    browse = QPushButton("…")
    browse.setMaximumWidth(30)

    def choose() -> None:
        path, _ = QFileDialog.getOpenFileName(edit, caption, "", filters)
        if path:
            edit.setText(path)

    browse.clicked.connect(choose)
    row.addWidget(browse)
    return row


class JobPage(QWidget):
    """A page with one run button whose job runs on the worker."""

    job_title = ""

    def __init__(self, worker: ModelWorker, record: Record, show_error) -> None:
        super().__init__()
        self.worker, self.record, self.show_error = worker, record, show_error
        self.run_slot = JobSlot(self, worker)  # the page's job: its handle while it runs
        self.run_button = QPushButton(self.job_title)
        self.run_button.setProperty("primary", True)  # Run ▸ Run: Ctrl+Return
        self.run_button.clicked.connect(self.start)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.result_view: QWidget | None = None  # the results, greyed out when stale
        self.has_result = False

    def run_and_cancel(self, cancel_name: str) -> QHBoxLayout:
        """The run button and a Cancel button for this page's job, side by side."""
        cancel = QPushButton("Cancel")
        cancel.setObjectName(cancel_name)
        cancel.clicked.connect(lambda: self.run_slot.cancel())
        row = QHBoxLayout()
        row.addWidget(self.run_button, 1)
        row.addWidget(cancel)
        return row

    def form_widget(self, form: QFormLayout, cancel_name: str, hint: str) -> QWidget:
        """``form`` ended by the run and cancel buttons, the status line and ``hint``, as a
        widget."""
        form.addRow(self.run_and_cancel(cancel_name))
        form.addRow(self.status)
        note = QLabel(hint)
        note.setWordWrap(True)
        form.addRow(note)
        inputs = QWidget()
        inputs.setLayout(form)
        return inputs

    def numbers_label(self, name: str, text: str) -> QLabel:
        """The page's summary line (selectable), saying what to do until there is one."""
        self.numbers = QLabel(text)
        self.numbers.setObjectName(name)
        self.numbers.setWordWrap(True)
        self.numbers.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        return self.numbers

    def submit(self, function, event=None) -> None:
        self.run_slot.start(self.job_title, function, finished=self._finished,
                            failed=self._failed, cancelled=lambda: self._ended("Cancelled."),
                            event=event)
        self.run_button.setEnabled(False)
        self.status.setText("Running… (Esc cancels)")

    def _failed(self, error: object, details: str) -> None:
        self._ended(f"Failed: {error}")

    def _ended(self, message: str) -> None:
        """The page's job ended; ``message`` says how when it failed or was cancelled, and
        then results from an earlier run are greyed out and said to be stale."""
        self.run_button.setEnabled(True)
        if message and self.has_result and self.result_view is not None:
            message = mark_stale(self.result_view, message)
        self.status.setText(message)

    def _finished(self, result: object) -> None:
        self._ended("")
        if self.result_view is not None:
            self.result_view.setEnabled(True)
        self.has_result = True
        self.show_result(result)

    def lay_out(self, inputs: QWidget, results: QWidget, sizes: tuple[int, int]) -> None:
        """The page: its form on the left; on the right the summary line (``self.numbers``)
        over ``results``, the part greyed out when stale."""
        holder = QWidget()
        column = QVBoxLayout(holder)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.numbers)
        column.addWidget(results, 1)
        self.result_view = holder
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(inputs)
        split.addWidget(holder)
        split.setSizes(list(sizes))
        QVBoxLayout(self).addWidget(split)

    def start(self) -> None:
        raise NotImplementedError

    def show_result(self, result: object) -> None:
        raise NotImplementedError


class GenerateScorePage(JobPage):
    """A TSV of prompts and references: generate with chosen settings, then score."""

    job_title = "Generate and score"

    def __init__(self, worker: ModelWorker, record: Record, show_error,
                 current_settings: Callable[[], SamplingSettings] | None = None) -> None:
        super().__init__(worker, record, show_error)
        self.current_settings = current_settings
        self.result: GenerateScoreResult | None = None
        self.pending_rows: tuple[list[str], list[str]] | None = None  # of the running job
        self.run_button.setObjectName("generate-score-button")
        self.pairs_file = line("pairs-file", sample("questions.tsv"),
                               "TSV: prompt<TAB>reference a line")
        self.strategy = combo("score-strategy", [])
        self.reload_strategies()
        self.max_new = setting_box(GenerateScoreSettings, "max_new_tokens",
                                   "score-max-new-tokens")
        self.batch_size = setting_box(GenerateScoreSettings, "batch_size", "score-batch-size")
        self.seed = setting_box(GenerateScoreSettings, "seed", "score-seed")
        self.chat = QCheckBox("Chat template (instruct models)")
        self.chat.setObjectName("score-chat")
        self.chat.setChecked(True)
        self.first_line = QCheckBox("Score the first line of each output")
        self.first_line.setObjectName("score-first-line")
        self.first_line.setChecked(True)
        metrics, self.metric_boxes = metric_checkboxes("score-metric-", ("bleu", "chrf"))
        stop = QPushButton("Stop")
        stop.clicked.connect(lambda: self.run_slot.cancel())
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(stop)
        form = QFormLayout()
        form.addRow("Prompts and references", file_row(self.pairs_file, "Open a TSV file",
                                                      "TSV (*.tsv *.txt);;All files (*)"))
        form.addRow("Decoding", self.strategy)
        form.addRow("Max new tokens", self.max_new)
        form.addRow("Batch size", self.batch_size)
        form.addRow("Seed", self.seed)
        form.addRow("", self.chat)
        form.addRow("", self.first_line)
        form.addRow("Metrics", metrics)
        form.addRow(buttons)
        form.addRow(self.status)
        inputs = QWidget()
        inputs.setLayout(form)
        self.scores = fit_columns(table(["metric", "score", "signature"],
                                        "generate-score-metrics"), stretch=(2,), rows=2)
        # long texts share the width and are cut (whole in a tooltip): the scores stay seen
        self.outputs = fit_columns(table(["line", "BLEU", "chrF", "prompt", "output",
                                          "reference"], "generate-score-outputs"),
                                   stretch=(3, 4, 5), rows=3)
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(self.scores)
        right.addWidget(self.outputs)
        right.setStretchFactor(1, 1)
        self.tables = right
        self._size_tables(2)
        self.result_view = right
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(inputs)
        split.addWidget(right)
        split.setSizes([420, 820])
        QVBoxLayout(self).addWidget(split)

    def _size_tables(self, metrics: int) -> None:
        """Every metric's row in view; the outputs take the rest of the height."""
        total = max(sum(self.tables.sizes()), 300)
        scores = rows_height(self.scores, max(metrics, 1))
        self.tables.setSizes([scores, max(total - scores, 1)])

    def reload_strategies(self) -> None:
        names = [GENERATE_TAB] if self.current_settings else []
        names += list(PRESETS)
        names += preset_names()
        current = self.strategy.currentText()
        self.strategy.clear()
        self.strategy.addItems(names)
        if current in names:
            self.strategy.setCurrentText(current)

    def score_settings(self) -> GenerateScoreSettings:
        """The new tokens, batch size and seed as the form gives them."""
        return GenerateScoreSettings(*(box_value(GenerateScoreSettings, name, box)
                                       for name, box in (("max_new_tokens", self.max_new),
                                                         ("batch_size", self.batch_size),
                                                         ("seed", self.seed))))

    def settings(self) -> SamplingSettings:
        """The chosen decoding settings with this page's length, seed and chat choice."""
        name = self.strategy.currentText()
        if name == GENERATE_TAB and self.current_settings is not None:
            base = self.current_settings()
        elif name in PRESETS:
            base = SamplingSettings.from_generation_config(PRESETS[name])
        else:
            base = read_preset(name)  # checked whole; a damaged one raises WorkbenchError
        numbers = self.score_settings()
        return replace(base, max_new_tokens=numbers.max_new_tokens, seed=numbers.seed,
                       chat=self.chat.isChecked(), num_return_sequences=1)

    def start(self) -> None:
        if self.run_slot.running:
            return
        metrics = tuple(n for n, box in self.metric_boxes.items() if box.isChecked())
        try:
            if not metrics:
                raise WorkbenchError("Choose at least one metric.")
            if not self.pairs_file.text().strip():
                raise WorkbenchError("Choose a TSV file of prompts and references.")
            prompts, refs = read_pairs(self.pairs_file.text().strip())
            numbers = self.score_settings()
            numbers.validate()
            settings = self.settings()
            settings.validate()
            folder = output_folder()  # where the outputs go: checked before anything runs
        except WorkbenchError as exc:
            self.show_error("Cannot generate and score", str(exc))
            return
        strategy, first_line = self.strategy.currentText(), self.first_line.isChecked()
        if strategy == GENERATE_TAB:
            strategy = settings.describe()

        def job(ctx: WorkerContext) -> GenerateScoreResult:
            loaded = ctx.model()
            if loaded.task != CAUSAL_LM:
                raise WorkbenchError(f"{loaded.name} is a {loaded.task} model: generating needs "
                                     "a causal language model such as SmolLM2.")
            result = generate_and_score(loaded, prompts, refs, settings, strategy, metrics,
                                        first_line, ctx=ctx, batch_size=numbers.batch_size)
            try:  # the scores are shown whether or not they could be saved
                save_result(result, folder)
            except (OSError, WorkbenchError) as exc:
                ctx.log(f"The outputs could not be saved: {exc}", "warning")
            return result

        self.inputs = {"file": self.pairs_file.text().strip(), "strategy": strategy,
                       "max_new_tokens": settings.max_new_tokens,
                       "batch_size": numbers.batch_size, "seed": settings.seed,
                       "chat": settings.chat,
                       "first_line": first_line, "metrics": list(metrics)}
        self.pending_rows = (prompts, refs[0] if refs else [""] * len(prompts))
        self.submit(job, event=self._row_done)

    def _row_done(self, event: object) -> None:
        """A prompt was answered: its row appears now, scored when every row is done."""
        if not isinstance(event, RowDone) or self.pending_rows is None:
            return
        if event.row == 1:  # the first of this run: the earlier run's rows give way
            self.outputs.setSortingEnabled(False)
            self.outputs.setRowCount(0)
            self.result_view.setEnabled(True)
        prompts, references = self.pending_rows
        index = event.row - 1
        row = self.outputs.rowCount()
        self.outputs.insertRow(row)
        for column, value in enumerate([event.row, None, None, prompts[index],
                                        event.hypothesis, references[index]]):
            item = QTableWidgetItem()
            item.setData(Qt.ItemDataRole.DisplayRole, value)
            self.outputs.setItem(row, column, item)
        self.status.setText(f"Row {event.row} of {event.total} generated "
                            f"({event.seconds:.1f} s); scored when all are done… (Esc cancels)")

    def _ended(self, message: str) -> None:
        """Also: rows of a run that failed give way to the earlier run's, shown stale."""
        if message and self.result is not None:
            self.show_rows(self.result)
        elif message:
            self.outputs.setRowCount(0)
        super()._ended(message)

    def show_result(self, result: object) -> None:
        if not isinstance(result, GenerateScoreResult):
            return
        self.result = result
        fill(self.scores, [[m.metric, round(m.score, 2), m.signature]
                           for m in result.scores.metrics])
        self._size_tables(len(result.scores.metrics))
        self.show_rows(result)
        done = (f"Stopped: {result.rows_done} of {result.rows_total} rows scored"
                if result.stopped else f"{result.rows_done} rows")
        saved = f" · saved in {result.saved_to}" if result.saved_to else ""
        self.status.setText(f"{done} · {result.strategy} · {result.new_tokens} tokens in "
                            f"{result.seconds:.1f} s{saved}"
                            + "".join(f"<br>{n}" for n in result.notices))
        self.record("generate+score", result.summary(), self.inputs | {"model": result.model},
                    result.to_dict())


    def show_rows(self, result: GenerateScoreResult) -> None:
        fill(self.outputs, [[row["line"], round(row.get("bleu", float("nan")), 2),
                             round(row.get("chrf", float("nan")), 2), prompt, hyp,
                             row["references"][0]]
                            for row, prompt, hyp in zip(result.scores.sentences, result.prompts,
                                                        result.hypotheses, strict=True)])


class ClassifyPage(JobPage):
    """Accuracy, macro-F1 and the confusion matrix of a classifier on a labelled file."""

    job_title = "Evaluate classifier"

    def __init__(self, worker: ModelWorker, record: Record, show_error) -> None:
        super().__init__(worker, record, show_error)
        self.result: ClassificationResult | None = None
        self.attribution: AttributionDialog | None = None  # made on first use
        self.run_button.setObjectName("classify-button")
        self.data_file = line("classify-file", sample("sentiment-test.csv"), "a labelled .csv, .tsv or .jsonl file")
        self.text_column = line("classify-text-column", "text")
        self.label_column = line("classify-label-column", "label")
        self.batch_size = setting_box(ClassifierSettings, "batch_size", "classify-batch-size")
        self.max_length = setting_box(ClassifierSettings, "max_length", "classify-max-length")
        form = QFormLayout()
        form.addRow("Labelled file", file_row(self.data_file, "Open labelled data",
                                              "Labelled data (*.csv *.tsv *.jsonl);;All files (*)"))
        form.addRow("Text column", self.text_column)
        form.addRow("Label column", self.label_column)
        form.addRow("Batch size", self.batch_size)
        form.addRow("Max length", self.max_length)
        form.addRow(self.run_button)
        form.addRow(self.status)
        inputs = QWidget()
        inputs.setLayout(form)
        self.numbers = QLabel("Load a classifier (fine-tuned in the Fine-tune tab, then \"Use "
                              "this model\"), choose its labelled file and press Evaluate.")
        self.numbers.setObjectName("classify-numbers")
        self.numbers.setWordWrap(True)
        self.per_label = fit_columns(table(["label", "precision", "recall", "F1", "support"],
                                           "classify-per-label"), stretch=(0,), rows=4)
        self.confusion = QTableWidget(0, 0)
        self.confusion.setObjectName("confusion-matrix")
        self.confusion.setToolTip("Rows: the true label; columns: the predicted label")
        self.confusion.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        fit_columns(self.confusion, rows=4)
        self.errors = fit_columns(table(["row", "label", "predicted", "confidence", "text"],
                                        "classify-errors"), stretch=(4,), rows=3)
        matrix = QWidget()
        ml = QVBoxLayout(matrix)
        ml.setContentsMargins(0, 0, 0, 0)
        ml.addWidget(QLabel("Confusion matrix: rows are the true labels, columns the predicted"))
        ml.addWidget(self.confusion, 1)
        tables = QSplitter(Qt.Orientation.Horizontal)
        tables.addWidget(self.per_label)
        tables.addWidget(matrix)
        tables.setSizes([380, 460])
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(tables)
        self.errors.setToolTip("Double-click a row: which tokens made the classifier predict "
                               "its label (input attribution)")
        self.errors.cellDoubleClicked.connect(self.why_this_label)
        right.addWidget(self.errors)
        right.setSizes([200, 300])
        self.lay_out(inputs, right, (380, 860))

    def classifier_settings(self) -> ClassifierSettings:
        """The batch size and length as the form gives them."""
        return ClassifierSettings(box_value(ClassifierSettings, "batch_size", self.batch_size),
                                  box_value(ClassifierSettings, "max_length", self.max_length))

    def start(self) -> None:
        if self.run_slot.running:
            return
        path = self.data_file.text().strip()
        text_column, label_column = self.text_column.text().strip(), self.label_column.text().strip()
        settings = self.classifier_settings()
        try:
            settings.validate()
            if not path:
                raise WorkbenchError("Choose a labelled file.")
            read_rows(path, text_column, label_column)
        except WorkbenchError as exc:
            self.show_error("Cannot evaluate the classifier", str(exc))
            return

        def job(ctx: WorkerContext) -> ClassificationResult:
            return evaluate_classifier(ctx.model(), path, text_column, label_column,
                                       settings.batch_size, settings.max_length, ctx=ctx)

        self.inputs = {"file": path, "text_column": text_column, "label_column": label_column,
                       "batch_size": settings.batch_size, "max_length": settings.max_length}
        self.submit(job)

    def why_this_label(self, row: int, column: int) -> None:
        """Open the attribution window on a misclassified row and its predicted label."""
        text, predicted = self.errors.item(row, 4), self.errors.item(row, 2)
        if text is None or predicted is None:
            return
        if self.attribution is None:
            self.attribution = AttributionDialog(self.worker, self, self.show_error)
        self.attribution.open_on(lambda view: view.set_classification(text.text(),
                                                                      predicted.text()))

    def model_changed(self, loaded) -> None:
        self.run_button.setToolTip("" if loaded is None or loaded.task == CLASSIFIER else
                                   "Needs a sequence classifier")

    def show_result(self, result: object) -> None:
        if not isinstance(result, ClassificationResult):
            return
        self.result = r = result
        self.numbers.setText(f"<b>Accuracy {r.accuracy:.4f}</b> · <b>macro-F1 {r.macro_f1:.4f}</b>"
                             f" · {r.examples} rows · {r.model}"
                             + "".join(f"<br>{n}" for n in r.notices))
        fill(self.per_label, [[s.label, round(s.precision, 4), round(s.recall, 4),
                               round(s.f1, 4), s.support] for s in r.per_label])
        n = len(r.labels)
        self.confusion.clear()
        self.confusion.setRowCount(n)
        self.confusion.setColumnCount(n)
        # "→ label", broken onto two lines: a long label does not widen its column of counts
        self.confusion.setHorizontalHeaderLabels([f"→ {label}" if " " not in label and
                                                  len(label) < 12 else
                                                  "→ " + two_line_labels([label])[0]
                                                  for label in r.labels])
        self.confusion.setVerticalHeaderLabels(r.labels)
        show_rows(self.confusion, min(n, 6))  # its titles may take two lines
        for i, row in enumerate(r.confusion):
            total = sum(row) or 1
            for j, count in enumerate(row):
                item = QTableWidgetItem(str(count))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                share = count / total
                good = i == j
                item.setBackground(QColor.fromHsvF(0.33 if good else 0.0, 0.65 * share, 1.0))
                item.setForeground(QColor(0, 0, 0))  # readable in a dark theme too
                item.setToolTip(f"true {r.labels[i]}, predicted {r.labels[j]}: {count} "
                                f"({share:.0%} of the true {r.labels[i]} rows)")
                self.confusion.setItem(i, j, item)
        fill(self.errors, [[e["row"], e["label"], e["predicted"], round(e["confidence"], 3),
                            e["text"]] for e in r.errors()])
        self.record("classification", f"accuracy {r.accuracy:.4f}, macro-F1 {r.macro_f1:.4f} "
                    f"({r.model})", self.inputs | {"model": r.model}, r.to_dict())

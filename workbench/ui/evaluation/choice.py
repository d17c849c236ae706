"""The Evaluate tab's multiple-choice and sentence-pairs pages: log-likelihood scores as
lm-evaluation-harness computes them (``workbench.core.evaluation.choice``), run on the shared worker.

Each page reads and checks its file on the GUI thread (a bad file is a dialog before
anything runs), scores it on the worker, shows the summary and a row per item, and hands
the numbers to the tab's history through ``record``.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import (
    QFormLayout,
    QHeaderView,
    QSplitter,
    QTableWidget,
    QTextEdit,
)

from workbench.core.common.errors import WorkbenchError
from workbench.core.evaluation.choice import (
    TARGET_DELIMITER,
    ChoiceResult,
    ChoiceSettings,
    PairsResult,
    read_choice_items,
    read_sentence_pairs,
    score_choices,
    score_pairs,
)
from workbench.core.models.catalog import CAUSAL_LM
from workbench.ui.common.setting_widgets import box_value, setting_box
from workbench.ui.common.skeleton import fill, line, table
from workbench.ui.common.worker import ModelWorker, WorkerContext
from workbench.ui.evaluation.pages import JobPage, Record, file_row, sample

DATA_FILTER = "Items (*.jsonl *.csv *.tsv);;All files (*)"
RIGHT = QColor("#c8f0c8")  # the right answer
WRONG = QColor("#f8c8c8")  # a pick that is not the right answer
DARK_TEXT = QColor(0, 0, 0)  # on those tints, in a light or dark theme


def plus_minus(value: float, stderr: float | None, digits: int = 4) -> str:
    return f"{value:.{digits}f} ± {'n/a' if stderr is None else f'{stderr:.{digits}f}'}"


def stretch_text_columns(t: QTableWidget, columns: list[int]) -> None:
    """Long texts share the width left by the other columns (sized to their contents), so
    the table fits the page instead of scrolling sideways."""
    t.verticalHeader().setVisible(False)  # the file's line numbers are a column
    header = t.horizontalHeader()
    header.setStretchLastSection(False)
    for column in columns:
        header.setSectionResizeMode(column, QHeaderView.ResizeMode.Stretch)
    t.setWordWrap(False)
    t.setTextElideMode(Qt.TextElideMode.ElideRight)


class ChoicePage(JobPage):
    """acc and acc_norm of the loaded causal LM on a file of multiple-choice items."""

    job_title = "Score the choices"

    def __init__(self, worker: ModelWorker, record: Record, show_error) -> None:
        super().__init__(worker, record, show_error)
        self.result: ChoiceResult | None = None
        self.run_button.setObjectName("choice-button")
        self.data_file = line("choice-file", sample("commonsense.jsonl"),
                              "a .jsonl, .csv or .tsv file of items")
        self.context_column = line("choice-context-column", "context")
        self.choices_column = line("choice-choices-column", "choices",
                                   "a list (in CSV/TSV a JSON list such as [\"a\", \"b\"])")
        self.answer_column = line("choice-answer-column", "answer", "the right choice, from 0")
        self.batch_size = setting_box(ChoiceSettings, "batch_size", "choice-batch-size")
        self.max_length = setting_box(ChoiceSettings, "max_length", "choice-max-length")
        form = QFormLayout()
        form.addRow("Items", file_row(self.data_file, "Open multiple-choice items",
                                      DATA_FILTER))
        form.addRow("Context column", self.context_column)
        form.addRow("Choices column", self.choices_column)
        form.addRow("Answer column", self.answer_column)
        form.addRow("Batch size", self.batch_size)
        form.addRow("Context", self.max_length)
        inputs = self.form_widget(
            form, "choice-cancel",
            "Each choice is scored by its log-likelihood after the context (with a space "
            "between), as lm-evaluation-harness's multiple_choice tasks do; acc_norm divides "
            "it by the choice's length in characters.")
        self.numbers_label("choice-numbers", "Load a causal language model, choose a file of "
                           f"items and press {self.job_title}.")
        self.items = table(["line", "acc", "acc_norm", "answer", "pick", "context"],
                           "choice-items")
        self.items.setToolTip("Green: the right choice; red: a wrong pick; bold: the pick by "
                              "log-likelihood")
        self.items.verticalHeader().setVisible(False)  # the file's line numbers are a column
        self.items.itemSelectionChanged.connect(self._show_item)
        self.detail = QTextEdit()
        self.detail.setObjectName("choice-detail")
        self.detail.setReadOnly(True)
        self.detail.setPlaceholderText("Select an item to see its context and each choice's "
                                       "log-likelihood.")
        tables = QSplitter(Qt.Orientation.Vertical)
        tables.addWidget(self.items)
        tables.addWidget(self.detail)
        tables.setSizes([360, 110])
        self.lay_out(inputs, tables, (360, 880))

    def choice_settings(self) -> ChoiceSettings:
        """The batch size and context as the form gives them (None: the model's context)."""
        return ChoiceSettings(box_value(ChoiceSettings, "batch_size", self.batch_size),
                              box_value(ChoiceSettings, "max_length", self.max_length))

    def start(self) -> None:
        if self.run_slot.running:
            return
        path = self.data_file.text().strip()
        columns = (self.context_column.text().strip(), self.choices_column.text().strip(),
                   self.answer_column.text().strip())
        settings = self.choice_settings()
        try:
            settings.validate()
            if not path:
                raise WorkbenchError("Choose a file of multiple-choice items.")
            items = read_choice_items(path, *columns)
        except WorkbenchError as exc:
            self.show_error("Cannot score the choices", str(exc))
            return

        def job(ctx: WorkerContext) -> ChoiceResult:
            return score_choices(ctx.model(), items, TARGET_DELIMITER, ctx=ctx,
                                 settings=settings)

        self.inputs = {"file": path, "context_column": columns[0],
                       "choices_column": columns[1], "answer_column": columns[2],
                       "target_delimiter": TARGET_DELIMITER,
                       "batch_size": settings.batch_size, "max_length": settings.max_length}
        self.submit(job)

    def model_changed(self, loaded) -> None:
        self.run_button.setToolTip("" if loaded is None or loaded.task == CAUSAL_LM else
                                   "Needs a causal language model")

    def show_result(self, result: object) -> None:
        if not isinstance(result, ChoiceResult):
            return
        self.result = r = result
        self.numbers.setText(
            f"<b>acc {plus_minus(r.acc, r.acc_stderr)}</b> · <b>acc_norm "
            f"{plus_minus(r.acc_norm, r.acc_norm_stderr)}</b> · {len(r.items)} items · "
            f"{html.escape(r.model)} · {r.items_per_second:.1f} items/s"
            + "".join(f"<br>{html.escape(n)}" for n in r.notices))
        self._fill_items(r)
        self.detail.clear()
        self.record("multiple choice", r.summary(), self.inputs | {"model": r.model},
                    r.to_dict(with_items=False))

    def _fill_items(self, r: ChoiceResult) -> None:
        """A row per item: right or wrong by acc and acc_norm, then each choice's
        log-likelihood in a column of its own (as many as the item with the most)."""
        width = max(len(item.choices) for item in r.items)
        labels = ["line", "acc", "acc_norm", "answer", "pick",
                  *(f"choice {i}" for i in range(width)), "context"]
        t = self.items
        t.setColumnCount(len(labels))
        t.setHorizontalHeaderLabels(labels)
        fill(t, [[item.line, "right" if item.correct else "wrong",
                  "right" if item.correct_norm else "wrong", item.answer, item.pick,
                  *(round(ll, 4) for ll in item.loglikelihoods),
                  *([None] * (width - len(item.choices))), item.context]
                 for item in r.items])
        t.setSortingEnabled(False)  # colour the cells of the rows as filled, then sort
        bold = QFont(t.font())
        bold.setBold(True)
        for row, item in enumerate(r.items):
            for c, choice in enumerate(item.choices):
                cell = t.item(row, 5 + c)
                cell.setToolTip(choice)
                if c in (item.answer, item.pick):
                    cell.setBackground(RIGHT if c == item.answer else WRONG)
                    cell.setForeground(DARK_TEXT)  # readable in a dark theme too
                if c == item.pick:
                    cell.setFont(bold)
            for column, right in ((1, item.correct), (2, item.correct_norm)):
                t.item(row, column).setBackground(RIGHT if right else WRONG)
                t.item(row, column).setForeground(DARK_TEXT)
            t.item(row, 5 + width).setToolTip(item.context)
        t.setSortingEnabled(True)
        t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        stretch_text_columns(t, [5 + width])

    def _show_item(self) -> None:
        rows = self.items.selectionModel().selectedRows()
        if not rows or self.result is None:
            return
        line_no = self.items.item(rows[0].row(), 0).data(Qt.ItemDataRole.DisplayRole)
        item = next((i for i in self.result.items if i.line == line_no), None)
        if item is None:
            return
        marks = []
        for c, (choice, ll) in enumerate(zip(item.choices, item.loglikelihoods, strict=True)):
            tags = [tag for tag, on in (("right answer", c == item.answer),
                                        ("pick", c == item.pick),
                                        ("pick by acc_norm", c == item.pick_norm)) if on]
            colour = "#c8f0c8" if c == item.answer else "#f8c8c8" if c == item.pick else ""
            style = f" style='background:{colour};color:#000'" if colour else ""
            marks.append(f"<li{style}>{c}: {html.escape(choice)} — log-likelihood {ll:.4f}, "
                         f"per character {ll / len(choice):.4f}"
                         + (f" <b>({', '.join(tags)})</b>" if tags else "") + "</li>")
        self.detail.setHtml(f"<b>line {item.line}</b>: {html.escape(item.context)}"
                            f"<ul>{''.join(marks)}</ul>")


class PairsPage(JobPage):
    """How often the loaded causal LM finds the first sentence of each pair likelier:
    lm-evaluation-harness's crows_pairs numbers, overall and per category."""

    job_title = "Score the pairs"

    def __init__(self, worker: ModelWorker, record: Record, show_error) -> None:
        super().__init__(worker, record, show_error)
        self.result: PairsResult | None = None
        self.run_button.setObjectName("pairs-button")
        self.data_file = line("pairs-file", sample("pairs.csv"),
                              "a .jsonl, .csv or .tsv file of sentence pairs")
        self.more_column = line("pairs-more-column", "more")
        self.less_column = line("pairs-less-column", "less")
        self.category_column = line("pairs-category-column", "",
                                    "category (used when the file has it)")
        form = QFormLayout()
        form.addRow("Pairs", file_row(self.data_file, "Open sentence pairs", DATA_FILTER))
        form.addRow("First sentence column", self.more_column)
        form.addRow("Second sentence column", self.less_column)
        form.addRow("Category column", self.category_column)
        inputs = self.form_widget(
            form, "pairs-cancel",
            "Each sentence is scored alone by its log-likelihood, as lm-evaluation-harness's "
            "crows_pairs tasks do: pct_stereotype is the share of pairs where the first "
            "(stereotypical) sentence is the likelier, likelihood_diff the mean gap. 0.5 is no "
            "preference.")
        self.numbers_label("pairs-numbers", "Load a causal language model, choose a file of "
                           f"sentence pairs and press {self.job_title}.")
        self.categories = table(["category", "pairs", "pct_stereotype", "± stderr",
                                 "likelihood_diff", "± stderr"], "pairs-categories")
        self.categories.verticalHeader().setVisible(False)
        self.pairs = table(["line", "category", "ll first", "ll second", "diff",
                            "first likelier", "first sentence", "second sentence"],
                           "pairs-table")
        stretch_text_columns(self.pairs, [6, 7])
        tables = QSplitter(Qt.Orientation.Vertical)
        tables.addWidget(self.categories)
        tables.addWidget(self.pairs)
        tables.setSizes([130, 340])
        self.lay_out(inputs, tables, (360, 880))

    def start(self) -> None:
        if self.run_slot.running:
            return
        path = self.data_file.text().strip()
        more, less = self.more_column.text().strip(), self.less_column.text().strip()
        category = self.category_column.text().strip() or None
        try:
            if not path:
                raise WorkbenchError("Choose a file of sentence pairs.")
            pairs = read_sentence_pairs(path, more, less, category)
        except WorkbenchError as exc:
            self.show_error("Cannot score the pairs", str(exc))
            return

        def job(ctx: WorkerContext) -> PairsResult:
            return score_pairs(ctx.model(), pairs, ctx=ctx)

        self.inputs = {"file": path, "more_column": more, "less_column": less,
                       "category_column": category or ""}
        self.submit(job)

    def model_changed(self, loaded) -> None:
        self.run_button.setToolTip("" if loaded is None or loaded.task == CAUSAL_LM else
                                   "Needs a causal language model")

    def show_result(self, result: object) -> None:
        if not isinstance(result, PairsResult):
            return
        self.result = r = result
        o = r.overall
        self.numbers.setText(
            f"<b>pct_stereotype {plus_minus(o.pct_stereotype, o.pct_stereotype_stderr)}</b> · "
            f"likelihood_diff {plus_minus(o.likelihood_diff, o.likelihood_diff_stderr)} · "
            f"{o.count} pairs · {html.escape(r.model)}"
            + "".join(f"<br>{html.escape(n)}" for n in r.notices))

        def stderr(value: float | None) -> float | str:
            return "n/a" if value is None else round(value, 4)

        fill(self.categories, [[g.name, g.count, round(g.pct_stereotype, 4),
                                stderr(g.pct_stereotype_stderr), round(g.likelihood_diff, 4),
                                stderr(g.likelihood_diff_stderr)]
                               for g in [r.overall, *r.categories]])
        fill(self.pairs, [[p.line, p.category, round(p.loglikelihood_more, 4),
                           round(p.loglikelihood_less, 4), round(p.likelihood_diff, 4),
                           "yes" if p.stereotype else "no", p.more, p.less] for p in r.pairs])
        for row in range(self.pairs.rowCount()):
            for column in (6, 7):
                cell = self.pairs.item(row, column)
                cell.setToolTip(cell.text())
        self.record("sentence pairs", r.summary(), self.inputs | {"model": r.model},
                    r.to_dict(with_pairs=False))

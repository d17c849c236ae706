"""Evaluate tab: perplexity with a per-token view, BLEU / chrF / TER with sacrebleu and
significance tests, and a history of every result."""

from __future__ import annotations

import difflib
import html
from collections.abc import Callable
from dataclasses import replace

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QTabWidget,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from workbench.core.common.data_files import read_lines, read_text
from workbench.core.common.errors import WorkbenchError
from workbench.core.common.files import cannot_write
from workbench.core.common.jobs import drive
from workbench.core.common.units import LN2
from workbench.core.evaluation.history import (
    HistoryEntry,
    add_entry,
    export_history,
    history_file,
    load_history,
)
from workbench.core.evaluation.metrics import (
    PerplexityResult,
    PerplexitySettings,
    TranslationScores,
    check_parallel,
    perplexity,
    score_translation,
)
from workbench.core.generation.settings import SamplingSettings
from workbench.core.models.catalog import BUILTIN_MODELS, CAUSAL_LM
from workbench.core.models.loader import load_model_job
from workbench.ui.common.job_thread import JobSlot
from workbench.ui.common.setting_widgets import box_value, setting_box
from workbench.ui.common.skeleton import combo, fill, line, metric_checkboxes, table, text_box
from workbench.ui.common.stale import mark_stale
from workbench.ui.common.tab_base import WorkbenchTab
from workbench.ui.common.widgets import TokenView, fit_columns, rows_height
from workbench.ui.common.worker import ModelWorker, WorkerContext
from workbench.ui.evaluation.choice import ChoicePage, PairsPage
from workbench.ui.evaluation.pages import ClassifyPage, GenerateScorePage
from workbench.ui.evaluation.sweep import SweepPage
from workbench.ui.evaluation.tradeoffs import TradeoffsPage

SAMPLE_TEXT = ("The lighthouse stood at the end of the long stone pier. Every night the keeper "
               "climbed the spiral stairs, lit the great lamp and watched the ships pass safely "
               "through the narrow channel.")


def word_diff(hypothesis: str, reference: str) -> str:
    """HTML of the hypothesis against the reference: deletions red, insertions green."""
    hyp, ref = hypothesis.split(), reference.split()
    out = []
    for op, a1, a2, b1, b2 in difflib.SequenceMatcher(a=ref, b=hyp).get_opcodes():
        if op == "equal":
            out.append(html.escape(" ".join(ref[a1:a2])))
        if op in ("delete", "replace"):
            out.append(f"<span style='background:#f8c8c8;color:#000;text-decoration:line-through'>"
                       f"{html.escape(' '.join(ref[a1:a2]))}</span>")
        if op in ("insert", "replace"):
            out.append(f"<span style='background:#c8f0c8;color:#000'>{html.escape(' '.join(hyp[b1:b2]))}"
                       "</span>")
    return " ".join(out)


class EvaluateTab(WorkbenchTab):
    title = "Evaluate"
    log_line = Signal(str, str)  # a line for the log dock, its level

    def __init__(self, worker: ModelWorker, parent: QWidget | None = None,
                 current_settings: Callable[[], SamplingSettings] | None = None) -> None:
        super().__init__(worker, parent)
        self.history_notes: list[str] = []  # what was wrong with the saved history
        self.ppl_slot = JobSlot(self, worker)
        self.bleu_slot = JobSlot(self, worker)
        self.ppl_results: list[PerplexityResult] = []
        self.bleu_result: TranslationScores | None = None
        self.surprisal_plot = None
        self.modes = QTabWidget()
        self.modes.setObjectName("evaluate-modes")
        self.modes.addTab(self._build_perplexity(), "Perplexity")
        self.modes.addTab(self._build_bleu(), "BLEU / chrF / TER")
        self.generate_page = GenerateScorePage(worker, self._record, self.show_error,
                                               current_settings)
        self.modes.addTab(self.generate_page, "Generate then score")
        self.classify_page = ClassifyPage(worker, self._record, self.show_error)
        self.modes.addTab(self.classify_page, "Classification")
        self.choice_page = ChoicePage(worker, self._record, self.show_error)
        self.modes.addTab(self.choice_page, "Multiple choice")
        self.pairs_page = PairsPage(worker, self._record, self.show_error)
        self.modes.addTab(self.pairs_page, "Sentence pairs")
        self.sweep_page = SweepPage(worker, self._record, self.show_error, current_settings)
        self.modes.addTab(self.sweep_page, "Sampling sweep")
        self.tradeoffs_page = TradeoffsPage(worker, self._record, self.show_error)
        self.modes.addTab(self.tradeoffs_page, "Trade-offs")
        self.history = fit_columns(table(["time", "kind", "result", "inputs"], "history-table"),
                                   stretch=(2, 3), rows=2)
        export = QPushButton("Export history…")
        export.clicked.connect(lambda: self.export_history())
        history_box = QGroupBox("History")
        hl = QHBoxLayout(history_box)
        hl.setContentsMargins(6, 2, 6, 6)
        hl.addWidget(self.history, 1)
        hl.addWidget(export, 0, Qt.AlignmentFlag.AlignBottom)
        # the pages first; the history a fifth of the height (2 rows at 1280×800), or what
        # the user drags it to
        self.history_split = QSplitter(Qt.Orientation.Vertical)
        self.history_split.addWidget(self.modes)
        self.history_split.addWidget(history_box)
        self.history_split.setStretchFactor(0, 4)
        self.history_split.setStretchFactor(1, 1)
        self.history_split.setCollapsible(0, False)
        self.history_split.setSizes([400, 100])
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_label)
        layout.addWidget(self.history_split, 1)
        self.entries: list[HistoryEntry] = []
        self.reload_history()

    @property
    def ppl_result(self) -> PerplexityResult | None:
        """The loaded model's perplexity result (the first of the side-by-side results)."""
        return self.ppl_results[0] if self.ppl_results else None

    # --- perplexity ------------------------------------------------------------------------
    def _build_perplexity(self) -> QWidget:
        page = QWidget()
        self.ppl_text = text_box("ppl-text", "Paste a text, or open a file", SAMPLE_TEXT)
        self.ppl_file = line("ppl-file", "", "or a UTF-8 text file (used instead of the box)")
        browse = QPushButton("Open file…")
        browse.clicked.connect(self._browse_text)
        file_row = QHBoxLayout()
        file_row.addWidget(self.ppl_file, 1)
        file_row.addWidget(browse)
        # one step below the range: "model context" and "half the window" (None)
        self.window_size = setting_box(PerplexitySettings, "max_length")
        self.stride = setting_box(PerplexitySettings, "stride")
        self.compare_model = QComboBox()
        self.compare_model.setObjectName("compare-model")
        self.compare_model.setEditable(True)
        self.compare_model.addItems(["", *(entry.name for entry in BUILTIN_MODELS)])
        self.compare_model.setToolTip("Optional: a second model (built-in name, folder or Hub "
                                      "id) scored on the same text, side by side")
        self.colour_by = QComboBox()
        self.colour_by.setObjectName("colour-by")
        self.colour_by.setToolTip("Which result colours the tokens")
        self.colour_by.activated.connect(lambda _: self._show_tokens())
        self.ppl_button = QPushButton("Compute perplexity")
        self.ppl_button.setProperty("primary", True)  # Run ▸ Run: Ctrl+Return
        self.ppl_button.setObjectName("perplexity-button")
        self.ppl_button.clicked.connect(self.start_perplexity)
        form = QFormLayout()
        form.addRow("Text", self.ppl_text)
        form.addRow("File", file_row)
        form.addRow("Window (tokens)", self.window_size)
        form.addRow("Stride", self.stride)
        form.addRow("Compare with", self.compare_model)
        form.addRow(self.ppl_button)
        inputs = QWidget()
        inputs.setLayout(form)
        self.ppl_numbers = QLabel("Perplexity, NLL per token and bits per byte appear here.")
        self.ppl_numbers.setObjectName("perplexity-numbers")
        self.ppl_numbers.setWordWrap(True)
        self.ppl_tokens = TokenView("perplexity-tokens", "Each token coloured by surprisal "
                                    "(red: surprising)")
        self.worst = fit_columns(table(["position", "token", "surprisal (bits)"],
                                       "worst-tokens"), stretch=(1,), rows=4)
        self.worst.setToolTip("The most surprising tokens of the text")
        self.plot_holder = QWidget()
        QVBoxLayout(self.plot_holder).setContentsMargins(0, 0, 0, 0)
        # the text over its surprisal curve; the worst tokens beside both, the whole height
        text_and_plot = QSplitter(Qt.Orientation.Vertical)
        text_and_plot.addWidget(self.ppl_tokens)
        text_and_plot.addWidget(self.plot_holder)
        text_and_plot.setSizes([150, 200])
        results = QSplitter(Qt.Orientation.Horizontal)
        self.ppl_view = results  # greyed out while it shows an earlier run's results
        results.addWidget(text_and_plot)
        results.addWidget(self.worst)
        results.setStretchFactor(0, 1)
        results.setSizes([560, 300])
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.ppl_numbers)
        colour_row = QHBoxLayout()
        colour_row.addWidget(QLabel("Colour tokens by"))
        colour_row.addWidget(self.colour_by, 1)
        rl.addLayout(colour_row)
        rl.addWidget(results, 1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(inputs)
        split.addWidget(right)
        split.setSizes([380, 860])
        QVBoxLayout(page).addWidget(split)
        return page

    def build_deferred(self) -> None:
        if self.surprisal_plot is not None:
            return
        self.sweep_page.build_deferred()
        import pyqtgraph as pg

        self.surprisal_plot = pg.PlotWidget()
        self.surprisal_plot.setObjectName("surprisal-plot")
        self.surprisal_plot.setLabel("left", "surprisal (bits)")
        self.surprisal_plot.setLabel("bottom", "token position")
        self.surprisal_plot.showGrid(y=True, alpha=0.3)
        from workbench.ui.common.charts import legend_above

        legend_above(self.surprisal_plot)
        self.surprisal_curves = [
            self.surprisal_plot.plot([], [], pen=pg.mkPen(colour, width=1))
            for colour in ((31, 119, 180), (255, 127, 14))]
        from workbench.ui.common.charts import Placeholder

        self.surprisal_holder = Placeholder(self.surprisal_plot, "The surprisal of each token "
                                            "appears here once perplexity is computed.")
        self.plot_holder.layout().addWidget(self.surprisal_holder)
        if self.ppl_results:
            self._plot_surprisal()

    def _browse_text(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a text file", "",
                                              "Text (*.txt);;All files (*)")
        if path:
            self.ppl_file.setText(path)

    def start_perplexity(self) -> None:
        if self.ppl_slot.running:
            return
        try:
            source = self.ppl_file.text().strip()
            text = read_text(source) if source else self.ppl_text.toPlainText()
            if not text.strip():
                raise WorkbenchError("The text is empty.")
            settings = self.perplexity_settings()
            settings.validate()
        except WorkbenchError as exc:
            self.show_error("Cannot compute perplexity", str(exc))
            return
        max_length, stride = settings.max_length, settings.stride
        other = self.compare_model.currentText().strip()

        def job(ctx: WorkerContext) -> list[PerplexityResult]:
            loaded = ctx.model()
            results = [perplexity(loaded, text, max_length, stride, ctx)]
            if other:
                if other == loaded.reference:
                    raise WorkbenchError(f"{other} is the loaded model: compare with another.")
                ctx.log(f"Loading {other} for the comparison…")
                second = drive(load_model_job(other, replace(loaded.options)), ctx)
                try:
                    results.append(perplexity(second, text, max_length, stride, ctx))
                finally:
                    del second  # only the loaded model stays in memory
            return results

        self.ppl_inputs = {"source": source or "pasted text", "characters": len(text),
                           "max_length": max_length, "stride": stride, "compare_model": other}
        self.ppl_slot.start("Perplexity", job, finished=self._perplexity_done,
                            failed=lambda error, details: self._perplexity_ended(
                                f"Failed: {error}"),
                            cancelled=lambda: self._perplexity_ended("Cancelled."))
        self.ppl_button.setEnabled(False)
        self.ppl_numbers.setText("Computing…")

    def perplexity_settings(self) -> PerplexitySettings:
        """The window and stride the form shows (None: the app's choice), not yet checked."""
        return PerplexitySettings(box_value(PerplexitySettings, "max_length", self.window_size),
                                  box_value(PerplexitySettings, "stride", self.stride))

    def show_perplexity(self, results: list[PerplexityResult]) -> None:
        self.ppl_results = results
        self.ppl_view.setEnabled(True)
        r = results[0]
        if len(results) == 1:
            self.ppl_numbers.setText(
                f"<b>Perplexity {r.perplexity:.3f}</b> · NLL {r.nll_per_token:.4f} nats/token · "
                f"{r.bits_per_byte:.4f} bits/byte · {r.tokens} tokens scored · window "
                f"{r.max_length}, stride {r.stride} · {r.model} · "
                f"{r.tokens_per_second:.0f} tokens/s")
        else:
            cells = "".join(
                f"<tr><td><b>{html.escape(x.model)}</b></td><td><b>{x.perplexity:.3f}</b></td>"
                f"<td>{x.nll_per_token:.4f}</td><td>{x.bits_per_byte:.4f}</td><td>{x.tokens}"
                f"</td><td>{x.tokens_per_second:.0f}</td></tr>" for x in results)
            same = r.same_tokens(results[1])
            note = ("Both models tokenize the text alike: per-token numbers compare position "
                    "by position." if same else "The models tokenize the text differently: "
                    "compare bits per byte; the chart runs along the characters.")
            self.ppl_numbers.setText(
                "<table cellspacing=6><tr><th align=left>model</th><th>perplexity</th>"
                "<th>NLL/token</th><th>bits/byte</th><th>tokens</th><th>tokens/s</th></tr>"
                f"{cells}</table>window {r.max_length}, stride {r.stride} · {note}")
        self.colour_by.clear()
        self.colour_by.addItems([f"surprisal under {x.model}" for x in results])
        if len(results) == 2 and r.same_tokens(results[1]):
            self.colour_by.addItem(f"difference: {results[1].model} − {r.model} (green: "
                                   f"{results[1].model} is less surprised)")
        self.colour_by.setEnabled(len(results) > 1)
        self._show_tokens()
        self._plot_surprisal()
        for x in results:  # one dialog, not one a model, when the history cannot be saved
            if not self._record("perplexity", f"perplexity {x.perplexity:.3f} ({x.model})",
                                self.ppl_inputs | {"model": x.model}, x.to_dict()):
                break

    def _show_tokens(self) -> None:
        """Colour the tokens by the chosen result's surprisal, or by the difference."""
        if not self.ppl_results:
            return
        index = max(self.colour_by.currentIndex(), 0)
        results = self.ppl_results
        self.ppl_tokens.clear_tokens()
        if index < len(results):
            r = results[index]
            bits = [n / LN2 for n in r.token_nll]
            top = max(bits, default=1.0) or 1.0
            shades = [1.0 - min(b / top, 1.0) for b in bits]
            tips = [f"position {i + 1}: {b:.2f} bits" for i, b in enumerate(bits)]
        else:  # second minus first: green where the second model finds a token easier
            r = results[0]
            diff = [(b - a) / LN2 for a, b in zip(results[0].token_nll,
                                                         results[1].token_nll, strict=True)]
            top = max((abs(d) for d in diff), default=1.0) or 1.0
            shades = [0.5 - 0.5 * d / top for d in diff]
            tips = [f"position {i + 1}: {d:+.2f} bits ({results[1].model} − {r.model})"
                    for i, d in enumerate(diff)]
        self.ppl_tokens.append_token(r.token_texts[0], float("nan"), "first token: not scored")
        for i, (shade, tip) in enumerate(zip(shades, tips, strict=True)):
            self.ppl_tokens.append_token(r.token_texts[i + 1], shade, tip)
        fill(self.worst, [[pos, repr(text), round(b, 2)] for pos, text, b in r.worst(15)])

    def _plot_surprisal(self) -> None:
        if self.surprisal_plot is None:
            return
        results = self.ppl_results
        self.surprisal_holder.show_content(bool(results))
        by_chars = len(results) == 2 and not results[0].same_tokens(results[1])
        self.surprisal_plot.setLabel("bottom", "character position" if by_chars
                                     else "token position")
        legend = self.surprisal_plot.plotItem.legend
        legend.clear()
        for i, curve in enumerate(self.surprisal_curves):
            if i >= len(results):
                curve.setData([], [])
                continue
            r = results[i]
            bits = [n / LN2 for n in r.token_nll]
            xs = r.char_ends[1:] if by_chars else list(range(1, len(bits) + 1))
            curve.setData(xs, bits)
            if len(results) > 1:
                legend.addItem(curve, r.model)

    # --- BLEU / chrF / TER ----------------------------------------------------------------------
    def _build_bleu(self) -> QWidget:
        page = QWidget()
        self.hyp_file = line("hyp-file", "", "hypotheses, one segment a line")
        self.ref_files = line("ref-files", "", "references; several separated by ;")
        self.sys2_file = line("system2-file", "", "optional: a second system to test against")
        metrics_row, self.metric_boxes = metric_checkboxes("metric-", ("bleu", "chrf", "ter"))
        self.tokenize = combo("bleu-tokenize", ["13a", "intl", "char", "none", "zh", "ja-mecab",
                                                "ko-mecab", "flores101", "flores200"])
        self.lowercase = QCheckBox("Lowercase")
        self.lowercase.setObjectName("lowercase")
        self.test = combo("significance-test", ["paired bootstrap", "approximate randomization",
                                                "both"])
        self.bleu_button = QPushButton("Score")
        self.bleu_button.setProperty("primary", True)  # Run ▸ Run: Ctrl+Return
        self.bleu_button.setObjectName("bleu-button")
        self.bleu_button.clicked.connect(self.start_bleu)
        form = QFormLayout()
        for label, widget in (("Hypothesis", self.hyp_file), ("References", self.ref_files),
                              ("Second system", self.sys2_file)):
            row = QHBoxLayout()
            row.addWidget(widget, 1)
            browse = QPushButton("…")
            browse.setMaximumWidth(30)
            browse.clicked.connect(lambda _=False, w=widget: self._browse_into(w))
            row.addWidget(browse)
            form.addRow(label, row)
        form.addRow("Metrics", metrics_row)
        form.addRow("BLEU tokenizer", self.tokenize)
        form.addRow("", self.lowercase)
        form.addRow("Significance", self.test)
        form.addRow(self.bleu_button)
        self.diff = QTextEdit()
        self.diff.setObjectName("diff-view")
        self.diff.setReadOnly(True)
        self.diff.setPlaceholderText("Select a line to see its hypothesis against\nits first "
                                     "reference (red: missing, green: added).")
        self.diff.setMinimumHeight(3 * self.diff.fontMetrics().lineSpacing() + 12)
        # the diff under the form, in the room the form leaves: the tables keep the height
        inputs = QWidget()
        il = QVBoxLayout(inputs)
        il.setContentsMargins(0, 0, 0, 0)
        il.addLayout(form)
        il.addWidget(self.diff, 1)
        self.corpus_table = fit_columns(table(["metric", "score", "signature"], "corpus-scores"),
                                        stretch=(2,), rows=3)
        self.significance_table = fit_columns(
            table(["test", "metric", "baseline", "system", "p-value", "system mean\n± 95% CI"],
                  "significance"), rows=2)
        self.significance_table.setToolTip("Needs a second system: is it better than the "
                                           "hypothesis (the baseline)?")
        self.significance_table.setVisible(False)  # until a second system is scored
        self.sentence_table = fit_columns(table(["line", "BLEU", "chrF", "TER", "hypothesis"],
                                                "sentences"), stretch=(4,), rows=3)
        self.sentence_table.itemSelectionChanged.connect(self._show_diff)
        right = QSplitter(Qt.Orientation.Vertical)
        for w in (self.corpus_table, self.significance_table, self.sentence_table):
            right.addWidget(w)
            right.setCollapsible(right.indexOf(w), False)
        right.setStretchFactor(2, 1)  # the lines take the height there is
        self.bleu_tables = right
        self._size_bleu_tables(3, 0)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(inputs)
        split.addWidget(right)
        split.setSizes([420, 820])
        QVBoxLayout(page).addWidget(split)
        return page

    def _browse_into(self, widget: QLineEdit) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Choose text files", "",
                                                "Text (*.txt);;All files (*)")
        if paths:
            widget.setText(";".join(paths))

    def start_bleu(self) -> None:
        if self.bleu_slot.running:
            return
        metrics = tuple(n for n, box in self.metric_boxes.items() if box.isChecked())
        try:
            if not metrics:
                raise WorkbenchError("Choose at least one metric.")
            if not self.hyp_file.text().strip():
                raise WorkbenchError("Choose a hypothesis file.")
            hyps = read_lines(self.hyp_file.text().strip())
            refs = [read_lines(p.strip()) for p in self.ref_files.text().split(";") if p.strip()]
            other = read_lines(self.sys2_file.text().strip()) if self.sys2_file.text().strip() \
                else None
            if not refs:
                raise WorkbenchError("Choose at least one reference file.")
            check_parallel(hyps, refs)  # line counts, before the job starts
            if other is not None:
                check_parallel(other, refs, "second system")
        except WorkbenchError as exc:
            self.show_error("Cannot score", str(exc))
            return
        tests = {"paired bootstrap": ("bs",), "approximate randomization": ("ar",),
                 "both": ("bs", "ar")}[self.test.currentText()]
        tokenize, lowercase = self.tokenize.currentText(), self.lowercase.isChecked()

        def job(ctx: WorkerContext) -> TranslationScores:
            return score_translation(hyps, refs, metrics, tokenize, lowercase, other, tests,
                                     ctx=ctx)

        self.bleu_inputs = {"hypothesis": self.hyp_file.text(), "references": self.ref_files.text(),
                            "second_system": self.sys2_file.text(), "metrics": list(metrics),
                            "tokenize": tokenize, "lowercase": lowercase, "tests": list(tests)}
        self.bleu_slot.start("BLEU / chrF / TER", job, finished=self._bleu_done,
                             failed=self._bleu_ended, cancelled=self._bleu_ended)
        self.bleu_button.setEnabled(False)

    def show_bleu(self, r: TranslationScores) -> None:
        self.bleu_result = r
        fill(self.corpus_table, [[m.metric, round(m.score, 2), m.signature] for m in r.metrics])
        fill(self.significance_table, [
            [s.test, s.metric, round(s.baseline, 2), round(s.system, 2),
             "-" if s.p_value is None else round(s.p_value, 4),
             "-" if s.system_ci is None else f"{s.system_mean:.2f} ± {s.system_ci:.2f}"]
            for s in r.significance])
        self.significance_table.setVisible(bool(r.significance))
        self._size_bleu_tables(len(r.metrics), len(r.significance))
        fill(self.sentence_table, [[row["line"], round(row.get("bleu", float("nan")), 2),
                                    round(row.get("chrf", float("nan")), 2),
                                    round(row.get("ter", float("nan")), 2), row["hypothesis"]]
                                   for row in r.sentences])
        summary = ", ".join(f"{m.metric} {m.score:.2f}" for m in r.metrics)
        self._record("bleu", summary, self.bleu_inputs, r.to_dict())

    def _size_bleu_tables(self, metrics: int, tests: int) -> None:
        """Every corpus score and (up to 4) significance rows in view; the lines below take
        the rest of the height."""
        total = max(sum(self.bleu_tables.sizes()), 400)
        corpus = rows_height(self.corpus_table, max(metrics, 1))
        significance = rows_height(self.significance_table, min(tests, 4)) if tests else 0
        self.bleu_tables.setSizes([corpus, significance,
                                   max(total - corpus - significance, 1)])

    def _show_diff(self) -> None:
        rows = self.sentence_table.selectionModel().selectedRows()
        if not rows or self.bleu_result is None:
            return
        line_no = int(self.sentence_table.item(rows[0].row(), 0).text())
        row = self.bleu_result.sentences[line_no - 1]
        self.diff.setHtml(f"<b>line {line_no}</b>: {word_diff(row['hypothesis'], row['references'][0])}")

    # --- history --------------------------------------------------------------------------------
    def _record(self, kind: str, summary: str, inputs: dict, results: dict) -> bool:
        """Add a result to the history; False (after one dialog) when it cannot be saved:
        the result stays shown."""
        try:
            self.entries.append(add_entry(kind, summary, inputs, results,
                                          report=lambda note: self.log_line.emit(note,
                                                                                 "warning")))
        except OSError as exc:
            self.show_error("Cannot save the results history",
                            cannot_write(history_file(), exc))
            return False
        finally:
            self._fill_history()
        return True

    def reload_history(self) -> None:
        """The saved history; what was wrong with the file is kept in ``history_notes`` for
        the log (the window logs them once it is built)."""
        self.entries = load_history(report=self.history_notes.append)
        self._fill_history()

    def _fill_history(self) -> None:
        fill(self.history, [[e.time, e.kind, e.summary,
                             ", ".join(f"{k}={v}" for k, v in e.inputs.items())]
                            for e in reversed(self.entries)])

    def export_history(self, path: str | None = None) -> None:
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export the history", "history.csv",
                                                  "CSV (*.csv);;JSON (*.json)")
        if path:
            try:
                export_history(self.entries, path)
            except OSError as exc:
                self.show_error("Cannot export the history", cannot_write(path, exc))

    # --- jobs ------------------------------------------------------------------------------------
    def model_changed(self, loaded) -> None:
        self.ppl_button.setToolTip("" if loaded is None or loaded.task == CAUSAL_LM else
                                   "Perplexity needs a causal language model")
        self.classify_page.model_changed(loaded)
        self.choice_page.model_changed(loaded)
        self.pairs_page.model_changed(loaded)
        self.sweep_page.model_changed(loaded)
        self.tradeoffs_page.model_changed(loaded)

    def _perplexity_done(self, result: object) -> None:
        self.ppl_button.setEnabled(True)
        if isinstance(result, list) and result:
            self.show_perplexity(result)

    def _perplexity_ended(self, message: str) -> None:
        """The perplexity job failed or was cancelled: results of an earlier run stay,
        greyed out and said to be stale."""
        self.ppl_button.setEnabled(True)
        if self.ppl_results:
            message = mark_stale(self.ppl_view, message)
        self.ppl_numbers.setText(message)

    def _bleu_done(self, result: object) -> None:
        self._bleu_ended()
        if isinstance(result, TranslationScores):
            self.show_bleu(result)

    def _bleu_ended(self, *failure) -> None:
        self.bleu_button.setEnabled(True)

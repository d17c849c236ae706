"""The Evaluate tab's trade-offs page: performance against efficiency of the loaded model, a
row per decoding path and storage (``workbench.core.evaluation.tradeoffs``), measured on the
shared worker and shown as one table; a row that could not run says why."""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QPalette
from PySide6.QtWidgets import QCheckBox, QFormLayout

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import Progress
from workbench.core.evaluation.tradeoffs import TradeoffResult, TradeoffRow, TradeoffSettings
from workbench.core.models.catalog import CAUSAL_LM
from workbench.ui.common.setting_widgets import box_value, setting_box
from workbench.ui.common.skeleton import fill, table
from workbench.ui.common.widgets import fit_columns
from workbench.ui.common.worker import ModelWorker, WorkerContext
from workbench.ui.evaluation.pages import JobPage, Record

COLUMNS = ["path", "storage", "decode\ntokens/s", "CPU÷\nwall", "prompt\ntokens/s",
           "CPU÷\nwall", "weights\n(MB)", "peak\n+{kind} (MB)", "perplexity", "× ref",
           "agree-\nment", "note"]
TIPS = ["The decoding path", "The weights it runs from (whole in the tooltip of each cell)",
        "Greedy tokens per second, from the first new token to the last, after a warm-up",
        "CPU seconds ÷ wall seconds while decoding: the threads at work",
        "Tokens per second of one forward pass of the prompt, after a warm-up",
        "CPU seconds ÷ wall seconds of the prompt's forward pass",
        "Bytes of the parameters and buffers the row runs on (a copy's own tensors only)",
        "The process's peak memory while the row ran, above its start",
        "Perplexity on the sample corpus", "The perplexity ÷ the reference row's",
        "The share of the greedy tokens equal to the reference row's", ""]


def _rounded(value: float | None, digits: int) -> float | str:
    return "–" if value is None else round(value, digits)


def _megabytes(value: int | None) -> float | str:
    return "–" if value is None else round(value / 1e6, 1)


def row_values(row: TradeoffRow) -> list:
    """The table's cells of ``row`` (numbers stay numbers: the columns sort numerically)."""
    note = row.skipped or row.note
    return [row.path, row.weights, _rounded(row.decode_tokens_per_second, 1),
            _rounded(row.decode_cpu_per_wall, 2), _rounded(row.prompt_tokens_per_second, 0),
            _rounded(row.prompt_cpu_per_wall, 2), _megabytes(row.weight_bytes),
            _megabytes(row.peak_increase_bytes), _rounded(row.perplexity, 3),
            _rounded(row.perplexity_ratio, 4), _rounded(row.agreement, 3),
            note]


class TradeoffsPage(JobPage):
    """Tokens/s, prompt tokens/s, memory, perplexity and greedy agreement of each decoding
    path and storage of the loaded model."""

    job_title = "Measure the trade-offs"

    def __init__(self, worker: ModelWorker, record: Record, show_error) -> None:
        super().__init__(worker, record, show_error)
        self.loaded = None
        self.result: TradeoffResult | None = None
        self.run_button.setObjectName("tradeoffs-button")
        self.new_tokens = setting_box(TradeoffSettings, "new_tokens", "tradeoffs-new-tokens")
        self.prompt_tokens = setting_box(TradeoffSettings, "prompt_tokens",
                                         "tradeoffs-prompt-tokens")
        self.text_tokens = setting_box(TradeoffSettings, "text_tokens", "tradeoffs-text-tokens")
        self.compiled = QCheckBox("The compiled path too (10-60 s)")
        self.compiled.setObjectName("tradeoffs-compiled")
        self.compiled.setToolTip("torch.compile with a static cache: the first run compiles")
        self.other_storage = QCheckBox("A GGUF's other storage too")
        self.other_storage.setObjectName("tradeoffs-other-storage")
        self.other_storage.setChecked(True)
        self.other_storage.setToolTip("For a model from a .gguf file: the float32 conversion "
                                      "beside the weights kept quantized, loaded in turn")
        form = QFormLayout()
        form.addRow("New tokens", self.new_tokens)
        form.addRow("Prompt tokens", self.prompt_tokens)
        form.addRow("Text tokens", self.text_tokens)
        form.addRow("", self.compiled)
        form.addRow("", self.other_storage)
        inputs = self.form_widget(form, "tradeoffs-cancel",
                                  "One row at a time, each after a warm-up; the prompt, the "
                                  "text and the decoding prompt come from the sample corpus.")
        self.numbers_label("tradeoffs-numbers", "Load a causal language model and press "
                           f"{self.job_title}: a row per decoding path and storage.")
        self.table = fit_columns(table([c.format(kind="RSS") for c in COLUMNS],
                                       "tradeoffs-table"), stretch=(11,), rows=4)
        for column, tip in enumerate(TIPS):
            self.table.horizontalHeaderItem(column).setToolTip(tip)
        self.table.verticalHeader().setVisible(False)
        self.lay_out(inputs, self.table, (300, 940))

    def model_changed(self, loaded) -> None:
        self.loaded = loaded
        self.run_button.setToolTip("" if loaded is None or loaded.task == CAUSAL_LM else
                                   "Needs a causal language model")

    def tradeoff_settings(self) -> TradeoffSettings:
        """The numbers as the form gives them."""
        return TradeoffSettings(*(box_value(TradeoffSettings, name, box) for name, box in
                                  (("new_tokens", self.new_tokens),
                                   ("prompt_tokens", self.prompt_tokens),
                                   ("text_tokens", self.text_tokens))))

    def start(self) -> None:
        if self.run_slot.running:
            return
        settings = self.tradeoff_settings()
        compiled, other = self.compiled.isChecked(), self.other_storage.isChecked()
        try:
            settings.validate()
            if self.loaded is None:
                raise WorkbenchError("No model is loaded: pick one in the model bar and "
                                     "press Load.")
            self.loaded.require(CAUSAL_LM, "a trade-off table")
        except WorkbenchError as exc:
            self.show_error("Cannot measure the trade-offs", str(exc))
            return

        def job(ctx: WorkerContext) -> TradeoffResult:
            from workbench.core.evaluation.tradeoffs import tradeoffs

            return tradeoffs(ctx.model(), settings, ctx, compiled=compiled,
                             other_storage=other)

        self.inputs = {"new_tokens": settings.new_tokens,
                       "prompt_tokens": settings.prompt_tokens,
                       "text_tokens": settings.text_tokens, "compiled": compiled,
                       "other_storage": other}
        self.submit(job, event=self._progress)

    def _progress(self, event: object) -> None:
        if isinstance(event, Progress) and self.run_slot.running:
            self.status.setText(f"{event.message} (Esc cancels)")

    def show_result(self, result: object) -> None:
        if not isinstance(result, TradeoffResult):
            return
        self.result = r = result
        for column, title in enumerate(COLUMNS):
            self.table.horizontalHeaderItem(column).setText(title.format(kind=r.peak_kind))
        fill(self.table, [row_values(row) for row in r.rows])
        grey = QBrush(self.palette().color(QPalette.ColorGroup.Disabled,
                                           QPalette.ColorRole.Text))
        for index, row in enumerate(r.rows):
            for column in range(self.table.columnCount()):
                item = self.table.item(index, column)
                if column == 1:
                    item.setToolTip(row.storage or row.weights)
                elif column == 0:
                    item.setToolTip(row.label)
                elif column == len(COLUMNS) - 1:
                    item.setToolTip(item.text())
                if row.skipped:
                    item.setForeground(grey)
        s = r.settings
        reference = (f"reference: <b>{html.escape(r.reference)}</b>"
                     + (f" ({html.escape(r.reference_note)})" if r.reference_note else "")
                     if r.reference else "no row was measured")
        self.numbers.setText(
            f"<b>{html.escape(r.model)}</b> · {r.device} · {s['new_tokens']} greedy tokens, "
            f"a prompt of {r.prompt_tokens} tokens, perplexity on {r.text_tokens} tokens · "
            f"{reference} · {r.seconds:.1f} s"
            + "".join(f"<br>{html.escape(n)}" for n in r.notes))
        self.numbers.setTextFormat(Qt.TextFormat.RichText)
        measured = sum(row.measured for row in r.rows)
        self.status.setText(f"Done: {measured} of {len(r.rows)} rows measured in "
                            f"{r.seconds:.1f} s.")
        self.record("tradeoffs", r.summary(), self.inputs | {"model": r.model}, r.to_dict())

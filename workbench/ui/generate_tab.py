"""Generate tab: sampling controls, tokens streaming in, coloured by probability."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (QCheckBox, QGroupBox, QHBoxLayout, QLabel, QPushButton,
                               QSlider, QSplitter, QTextEdit, QVBoxLayout, QWidget)

from workbench.core.catalog import CAUSAL_LM
from workbench.core.generation import GenerationResult, SamplingSettings, TokenEvent, generate
from workbench.ui.skeleton import dspin, spin, text_box
from workbench.ui.tab_base import WorkbenchTab
from workbench.ui.worker import ModelWorker, WorkerContext


def probability_colour(p: float) -> QColor:
    """Red for unlikely tokens through yellow to green for near-certain ones."""
    p = 0.0 if p != p else max(0.0, min(1.0, p))  # NaN -> 0
    return QColor.fromHsvF(p / 3.0, 0.35, 1.0)


@dataclass
class _Slider:
    slider: QSlider
    scale: float


class GenerateTab(WorkbenchTab):
    title = "Generate"
    tasks = (CAUSAL_LM,)
    needs_text = "a causal language model (e.g. SmolLM2-135M-Instruct)"

    def __init__(self, worker: ModelWorker, parent: QWidget | None = None) -> None:
        super().__init__(worker, parent)
        self.job_id: int | None = None
        self.pending: list[TokenEvent] = []
        self.result: GenerationResult | None = None
        # Tokens arrive faster than a widget should repaint: flush them on a timer.
        self.flush_timer = QTimer(self)
        self.flush_timer.setInterval(40)
        self.flush_timer.timeout.connect(self.flush_tokens)

        self.prompt = text_box("prompt", "Type a prompt…",
                               "Write one sentence about the sea.")
        self.prompt.setMaximumHeight(110)
        controls = QGroupBox("Decoding")
        grid = QVBoxLayout(controls)
        self.sample = QCheckBox("Sample (off: greedy)")
        self.sample.setObjectName("do-sample")
        self.sample.setChecked(True)
        self.chat = QCheckBox("Use the chat template")
        self.chat.setObjectName("chat")
        self.chat.setChecked(True)
        self.temperature = dspin("temperature", 0.01, 5.0, 0.7)
        self.top_k = spin("top-k", 0, 1000, 50)
        self.top_p = dspin("top-p", 0.01, 1.0, 0.9)
        self.repetition = dspin("repetition-penalty", 0.5, 3.0, 1.0)
        self.max_new = spin("max-new-tokens", 1, 4096, 64)
        self.seed = spin("seed", 0, 2**31 - 1, 0)
        self.sliders: dict[str, _Slider] = {}
        for label, box, scale in [("Temperature", self.temperature, 100),
                                  ("Top-k", self.top_k, 1), ("Top-p", self.top_p, 100),
                                  ("Repetition penalty", self.repetition, 100),
                                  ("Max new tokens", self.max_new, 1)]:
            grid.addLayout(self._linked(label, box, scale))
        row = QHBoxLayout()
        row.addWidget(QLabel("Seed"))
        row.addWidget(self.seed)
        row.addStretch(1)
        grid.addLayout(row)
        grid.addWidget(self.sample)
        grid.addWidget(self.chat)
        self.sample.toggled.connect(self._sync_enabled)
        self.generate_button = QPushButton("Generate")
        self.generate_button.setObjectName("generate-button")
        self.generate_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("stop-button")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("Stop generating (Esc)")
        self.stop_button.clicked.connect(self.stop)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.generate_button)
        grid.addLayout(buttons)
        grid.addStretch(1)

        self.output = QTextEdit()
        self.output.setObjectName("output")
        self.output.setReadOnly(True)
        self.output.setPlaceholderText("Generated text appears here, token by token; "
                                       "each token's background shows its probability "
                                       "(red: unlikely, green: near certain).")
        self.stats = QLabel("")
        self.stats.setObjectName("generation-stats")
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(QLabel("Prompt"))
        right_layout.addWidget(self.prompt)
        right_layout.addWidget(QLabel("Output"))
        right_layout.addWidget(self.output, 1)
        right_layout.addWidget(self.stats)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(controls)
        splitter.addWidget(right)
        splitter.setStretchFactor(1, 3)
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_label)
        layout.addWidget(splitter, 1)
        worker.job_event.connect(self._on_event)
        worker.job_finished.connect(self._on_finished)
        worker.job_failed.connect(self._on_failed)
        worker.job_cancelled.connect(self._on_cancelled)
        self._sync_enabled()

    def _linked(self, label: str, box, scale: float) -> QHBoxLayout:
        """A slider and a spin box that always show the same value."""
        slider = QSlider(Qt.Orientation.Horizontal)
        slider.setRange(int(box.minimum() * scale), int(box.maximum() * scale))
        slider.setValue(int(round(box.value() * scale)))
        slider.valueChanged.connect(lambda v: box.setValue(v / scale if scale != 1 else v))
        box.valueChanged.connect(lambda v: slider.setValue(int(round(v * scale))))
        self.sliders[label] = _Slider(slider, scale)
        row = QHBoxLayout()
        name = QLabel(label)
        name.setMinimumWidth(120)
        row.addWidget(name)
        row.addWidget(slider, 1)
        row.addWidget(box)
        return row

    def _sync_enabled(self) -> None:
        sampling = self.sample.isChecked()
        for box in (self.temperature, self.top_k, self.top_p):
            box.setEnabled(sampling)
        for name in ("Temperature", "Top-k", "Top-p"):
            self.sliders[name].slider.setEnabled(sampling)

    def settings(self) -> SamplingSettings:
        return SamplingSettings(
            max_new_tokens=self.max_new.value(), do_sample=self.sample.isChecked(),
            temperature=self.temperature.value(), top_k=self.top_k.value(),
            top_p=self.top_p.value(), repetition_penalty=self.repetition.value(),
            seed=self.seed.value(), chat=self.chat.isChecked())

    def start(self) -> None:
        if self.job_id is not None:
            return
        prompt, settings = self.prompt.toPlainText(), self.settings()
        self.output.clear()
        self.stats.setText("Generating…")
        self.pending.clear()
        self.result = None

        def job(ctx: WorkerContext) -> GenerationResult:
            return generate(ctx.model(), prompt, settings, ctx)

        self.job_id = self.worker.submit("Generate", job)
        self.generate_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.flush_timer.start()

    def stop(self) -> None:
        if self.job_id is not None:
            self.worker.cancel()

    def _on_event(self, job_id: int, event: object) -> None:
        if job_id == self.job_id and isinstance(event, TokenEvent):
            self.pending.append(event)

    def flush_tokens(self) -> None:
        if not self.pending:
            return
        cursor = self.output.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        for event in self.pending:
            fmt = QTextCharFormat()
            fmt.setBackground(probability_colour(event.probability))
            fmt.setToolTip(f"token {event.index}: id {event.token_id}, "
                           f"p = {event.probability:.3f}")
            cursor.insertText(event.text, fmt)
        self.pending.clear()
        self.output.setTextCursor(cursor)
        self.output.ensureCursorVisible()

    def _on_finished(self, job_id: int, result: object) -> None:
        if job_id != self.job_id or not isinstance(result, GenerationResult):
            return
        self.flush_tokens()
        self.result = result
        note = " (stopped)" if result.stopped else ""
        self.stats.setText(f"{len(result.token_ids)} tokens in {result.seconds:.1f} s, "
                           f"{result.tokens_per_second:.1f} tokens/s{note}")
        self._on_done(job_id)

    def _on_failed(self, job_id: int, error: object, details: str) -> None:
        if job_id == self.job_id:
            self.stats.setText(f"Failed: {error}")
            self._on_done(job_id)

    def _on_cancelled(self, job_id: int) -> None:
        if job_id == self.job_id:
            self.stats.setText("Cancelled.")
            self._on_done(job_id)

    def _on_done(self, job_id: int) -> None:
        if job_id != self.job_id:
            return
        self.flush_tokens()
        self.flush_timer.stop()
        self.job_id = None
        self.generate_button.setEnabled(True)
        self.stop_button.setEnabled(False)

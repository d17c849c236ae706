"""Generate tab: decoding controls, streaming output coloured by probability, per-token
candidates, per-step curves, a distribution explorer, and strategies side by side."""

from __future__ import annotations

import csv
import json
import math
import time

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QPushButton,
    QScrollArea,
    QSlider,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from workbench.core.catalog import CAUSAL_LM
from workbench.core.compare import CompareResult, batch_owners, compare, owner_of
from workbench.core.errors import WorkbenchError
from workbench.core.generation import (
    Branch,
    GenerationResult,
    StepRecord,
    TokenEvent,
    branch,
    explore_distribution,
    generate,
    next_token_logits,
)
from workbench.core.sampling import PRESETS, SamplingSettings, parse_strategy
from workbench.ui.skeleton import dspin, spin, text_box
from workbench.ui.state import preset_names, read_preset, write_preset
from workbench.ui.tab_base import WorkbenchTab
from workbench.ui.widgets import StatusLine, TokenView
from workbench.ui.worker import JobHandle, ModelWorker, WorkerContext, own_job

TOP_N = 10
SUMMARY_COLUMNS = ["strategy", "mean log-prob", "perplexity", "distinct-1", "distinct-2",
                   "self-BLEU", "tokens/s", "diverges at"]


def token_tooltip(step: StepRecord) -> str:
    raw = "" if math.isnan(step.raw_probability) else f", model p = {step.raw_probability:.3f}"
    return (f"step {step.index}: {step.text!r} (id {step.token_id}), "
            f"p = {step.probability:.3f}{raw}")


def with_texts(loaded, logits) -> tuple:
    """``logits`` and the text of the tokens the explorer can show (the top candidates by
    raw probability do not depend on the settings), decoded here on the worker thread."""
    import torch

    top = torch.topk(logits.reshape(-1).float(), min(TOP_N, logits.numel())).indices.tolist()
    return logits, {i: loaded.tokenizer.decode([i]) for i in top}


class GenerateTab(WorkbenchTab):
    inspect_attention = Signal(str)  # the prompt and the shown sequence, for the Attention tab
    title = "Generate"
    tasks = (CAUSAL_LM,)
    needs_text = "a causal language model (e.g. SmolLM2-135M-Instruct)"

    def __init__(self, worker: ModelWorker, parent: QWidget | None = None) -> None:
        super().__init__(worker, parent)
        self.job_id: JobHandle | None = None
        self.compare_job: JobHandle | None = None
        self.explore_job: JobHandle | None = None
        self.pending: list[TokenEvent] = []
        self.result: GenerationResult | None = None
        self.compare_result: CompareResult | None = None
        self.steps: dict[int, list[StepRecord]] = {}
        self.selected_step: int | None = None
        self.explore_logits = None
        self.explore_texts: dict[int, str] = {}  # token id -> text, decoded on the worker
        self.explore_prefix: list[int] = []
        self.candidate_chart = self.step_curves = self.overlay = None
        self.flush_timer = QTimer(self)  # tokens arrive faster than a repaint should happen
        self.flush_timer.setInterval(40)
        self.flush_timer.timeout.connect(self.flush_tokens)
        self.curves_drawn = 0.0  # when the step curves were last redrawn while streaming
        self.compare_owners: list[int] = []
        self.compare_views: list[TokenView] = []
        self.compare_pending: list[TokenEvent] = []
        self.branches: list[Branch] = []
        self.branch_job: JobHandle | None = None
        self.session_job: JobHandle | None = None

        self._build_controls()
        self._build_outputs()
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.controls_scroll)
        splitter.addWidget(self.outputs)
        splitter.setStretchFactor(1, 3)
        splitter.setSizes([330, 950])
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_label)
        layout.addWidget(splitter, 1)
        self._sync_enabled()

    # --- building -------------------------------------------------------------------------
    def _build_controls(self) -> None:
        box = QWidget()
        grid = QVBoxLayout(box)
        presets = QHBoxLayout()
        self.preset = QComboBox()
        self.preset.setToolTip("Apply a preset of decoding settings")
        self.reload_presets()
        self.preset.activated.connect(self._preset_chosen)
        save = QPushButton("Save…")
        save.setToolTip("Save the current settings as a preset")
        save.clicked.connect(self.save_preset)
        presets.addWidget(QLabel("Preset"))
        presets.addWidget(self.preset, 1)
        presets.addWidget(save)
        grid.addLayout(presets)

        self.sample = QCheckBox("Sample (off: greedy or beam search)")
        self.sample.setObjectName("do-sample")
        self.sample.setChecked(True)
        self.chat = QCheckBox("Use the chat template")
        self.chat.setObjectName("chat")
        self.chat.setChecked(True)
        self.temperature = dspin("temperature", 0.0, 5.0, 0.7)
        self.top_k = spin("top-k", 0, 1000, 50)
        self.top_p = dspin("top-p", 0.01, 1.0, 0.9)
        self.min_p = dspin("min-p", 0.0, 0.99, 0.0)
        self.typical_p = dspin("typical-p", 0.01, 1.0, 1.0)
        self.repetition = dspin("repetition-penalty", 0.5, 3.0, 1.0)
        self.no_repeat = spin("no-repeat-ngram-size", 0, 10, 0)
        self.max_new = spin("max-new-tokens", 1, 4096, 64)
        self.seed = spin("seed", 0, 2**31 - 1, 0)
        self.sequences = spin("num-return-sequences", 1, 16, 1)
        self.beams = spin("num-beams", 1, 16, 1)
        self.sliders: dict[str, QSlider] = {}
        sampling = QGroupBox("Sampling")
        sampling_layout = QVBoxLayout(sampling)
        for label, widget, scale in [("Temperature", self.temperature, 100),
                                     ("Top-k", self.top_k, 1), ("Top-p", self.top_p, 100),
                                     ("Min-p", self.min_p, 100), ("Typical-p", self.typical_p, 100)]:
            sampling_layout.addLayout(self._linked(label, widget, scale))
        sampling_layout.addWidget(self.sample)
        grid.addWidget(sampling)
        other = QGroupBox("All strategies")
        form = QFormLayout(other)
        form.addRow(self._linked("Repetition penalty", self.repetition, 100))
        form.addRow("No-repeat n-gram", self.no_repeat)
        form.addRow("Max new tokens", self.max_new)
        form.addRow("Seed", self.seed)
        form.addRow("Sequences", self.sequences)
        form.addRow("Beams", self.beams)
        form.addRow(self.chat)
        grid.addWidget(other)
        io = QHBoxLayout()
        self.import_button = QPushButton("Import config…")
        self.import_button.setToolTip("Load a transformers GenerationConfig JSON")
        self.import_button.clicked.connect(self.import_config)
        self.export_button = QPushButton("Export config…")
        self.export_button.setToolTip("Save these settings as a transformers GenerationConfig JSON")
        self.export_button.clicked.connect(self.export_config)
        io.addWidget(self.import_button)
        io.addWidget(self.export_button)
        grid.addLayout(io)
        self.generate_button = QPushButton("Generate")
        self.generate_button.setObjectName("generate-button")
        self.generate_button.setDefault(True)
        self.generate_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("stop-button")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("Stop generating (Esc)")
        self.stop_button.clicked.connect(self.stop)
        buttons = QHBoxLayout()
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.generate_button)
        grid.addLayout(buttons)
        grid.addStretch(1)
        self.sample.toggled.connect(self._sync_enabled)
        for widget in (self.temperature, self.top_k, self.top_p, self.min_p, self.typical_p,
                       self.repetition, self.no_repeat):
            widget.valueChanged.connect(self.settings_changed)
        self.sample.toggled.connect(self.settings_changed)
        self.controls_scroll = QScrollArea()
        self.controls_scroll.setWidgetResizable(True)
        self.controls_scroll.setWidget(box)
        self.controls_scroll.setMinimumWidth(300)

    def _linked(self, label: str, box, scale: float) -> QHBoxLayout:
        """A slider and a spin box that always show the same value."""
        slider = QSlider(Qt.Orientation.Horizontal)
        slider.setRange(int(box.minimum() * scale), int(box.maximum() * scale))
        slider.setValue(int(round(box.value() * scale)))
        slider.valueChanged.connect(lambda v: box.setValue(v / scale if scale != 1 else v))
        box.valueChanged.connect(lambda v: slider.setValue(int(round(v * scale))))
        self.sliders[label] = slider
        row = QHBoxLayout()
        name = QLabel(label)
        name.setMinimumWidth(90)
        row.addWidget(name)
        row.addWidget(slider, 1)
        row.addWidget(box)
        return row

    def _build_outputs(self) -> None:
        self.prompt = text_box("prompt", "Type a prompt…", "Write one sentence about the sea.")
        self.prompt.setMaximumHeight(90)
        self.modes = QTabWidget()
        self.modes.setObjectName("generate-modes")
        self.modes.addTab(self._build_single(), "Generate")
        self.modes.addTab(self._build_compare(), "Compare strategies")
        self.outputs = QWidget()
        layout = QVBoxLayout(self.outputs)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Prompt"))
        layout.addWidget(self.prompt)
        layout.addWidget(self.modes, 1)

    def _build_single(self) -> QWidget:
        page = QWidget()
        top = QHBoxLayout()
        self.sequence_picker = QComboBox()
        self.sequence_picker.setToolTip("Which returned sequence to show")
        self.sequence_picker.currentIndexChanged.connect(self.show_sequence)
        self.sequence_picker.setVisible(False)
        self.stats = StatusLine("generation-stats")
        self.stats.setText("Press Generate: the text streams in below, each token coloured by "
                           "its probability.")
        self.save_session_button = QPushButton("Save session…")
        self.save_session_button.setToolTip("Save prompt, settings, model hash and outputs")
        self.save_session_button.clicked.connect(lambda: self.save_session())
        self.save_session_button.setEnabled(False)
        self.open_session_button = QPushButton("Open session…")
        self.open_session_button.clicked.connect(lambda: self.open_session())
        top.addWidget(self.stats, 1)
        top.addWidget(self.sequence_picker)
        self.inspect_button = QPushButton("Inspect attention")
        self.inspect_button.setToolTip("Open the prompt and this output in the Attention tab")
        self.inspect_button.setEnabled(False)
        self.inspect_button.clicked.connect(
            lambda: self.inspect_attention.emit(self.prompt.toPlainText() + self.output.toPlainText()))
        top.addWidget(self.inspect_button)
        top.addWidget(self.open_session_button)
        top.addWidget(self.save_session_button)
        self.output = TokenView("output", "Generated text appears here, token by token. Each "
                                "token's background shows the probability the sampler gave it "
                                "(red: unlikely, green: near certain); click a token to see "
                                "its candidates.")
        self.output.token_clicked.connect(self.select_step)
        self.explore = QCheckBox("Explore: reshape this step with the sliders")
        self.explore.setObjectName("explore")
        self.explore.setToolTip("Moving the sampling sliders reshapes the chart from the stored "
                                "logits, without running the model again")
        self.explore.toggled.connect(self._explore_toggled)
        self.chart_holder = QWidget()
        self.chart_holder.setMinimumHeight(220)
        QVBoxLayout(self.chart_holder).setContentsMargins(0, 0, 0, 0)
        self.curves_holder = QWidget()
        QVBoxLayout(self.curves_holder).setContentsMargins(0, 0, 0, 0)
        lower = QSplitter(Qt.Orientation.Horizontal)
        chart_side = QWidget()
        chart_layout = QVBoxLayout(chart_side)
        chart_layout.setContentsMargins(0, 0, 0, 0)
        chart_layout.addWidget(self.chart_holder, 1)
        chart_layout.addWidget(self.explore)
        lower.addWidget(chart_side)
        lower.addWidget(self.curves_holder)
        lower.setSizes([560, 400])
        vertical = QSplitter(Qt.Orientation.Vertical)
        vertical.addWidget(self.output)
        vertical.addWidget(lower)
        vertical.setSizes([150, 330])
        layout = QVBoxLayout(page)
        layout.addLayout(top)
        layout.addWidget(vertical, 1)
        return page

    def _build_compare(self) -> QWidget:
        page = QWidget()
        self.strategies = text_box("strategies", "One strategy a line: greedy, top-k 40, "
                                   "nucleus 0.9, creative, or key=value pairs such as "
                                   "top_k=40,temperature=0.8,n=3",
                                   "greedy\ntop-k 40\nnucleus 0.9\ntemperature=1.5")
        self.strategies.setMaximumHeight(80)
        self.compare_button = QPushButton("Compare")
        self.compare_button.setObjectName("compare-button")
        self.compare_button.clicked.connect(self.start_compare)
        self.export_csv_button = QPushButton("Export table…")
        self.export_csv_button.clicked.connect(self.export_table)
        self.export_png_button = QPushButton("Export plot…")
        self.export_png_button.clicked.connect(self.export_plot)
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
        self.summary.setHorizontalHeaderLabels(SUMMARY_COLUMNS)
        self.summary.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.summary.horizontalHeader().setStretchLastSection(True)
        self.summary.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.overlay_holder = QWidget()
        QVBoxLayout(self.overlay_holder).setContentsMargins(0, 0, 0, 0)
        self.compare_note = QLabel("")
        self.compare_note.setWordWrap(True)
        lower = QSplitter(Qt.Orientation.Horizontal)
        lower.addWidget(self.summary)
        lower.addWidget(self.overlay_holder)
        lower.setSizes([520, 420])
        vertical = QSplitter(Qt.Orientation.Vertical)
        vertical.addWidget(self.columns)
        vertical.addWidget(lower)
        vertical.setSizes([170, 250])
        layout = QVBoxLayout(page)
        layout.addLayout(top)
        layout.addWidget(vertical, 1)
        layout.addWidget(self.compare_note)
        return page

    def build_deferred(self) -> None:
        """Create the pyqtgraph charts (after the window is shown: they cost start-up time)."""
        if self.candidate_chart is not None:
            return
        from workbench.ui.charts import CandidateChart, OverlayCurves, StepCurves

        self.candidate_chart = CandidateChart()
        self.candidate_chart.candidate_clicked.connect(self.branch_from)
        self.chart_holder.layout().addWidget(self.candidate_chart)
        self.step_curves = StepCurves()
        self.curves_holder.layout().addWidget(self.step_curves)
        self.overlay = OverlayCurves()
        self.overlay_holder.layout().addWidget(self.overlay)

    # --- settings ---------------------------------------------------------------------------
    def _sync_enabled(self) -> None:
        sampling = self.sample.isChecked()
        for box in (self.temperature, self.top_k, self.top_p, self.min_p, self.typical_p):
            box.setEnabled(sampling)
        for name in ("Temperature", "Top-k", "Top-p", "Min-p", "Typical-p"):
            self.sliders[name].setEnabled(sampling)

    def settings(self) -> SamplingSettings:
        return SamplingSettings(
            max_new_tokens=self.max_new.value(), do_sample=self.sample.isChecked(),
            temperature=self.temperature.value(), top_k=self.top_k.value(),
            top_p=self.top_p.value(), min_p=self.min_p.value(),
            typical_p=self.typical_p.value(), repetition_penalty=self.repetition.value(),
            no_repeat_ngram_size=self.no_repeat.value(), num_beams=self.beams.value(),
            num_return_sequences=self.sequences.value(), seed=self.seed.value(),
            chat=self.chat.isChecked())

    def set_settings(self, s: SamplingSettings) -> None:
        self.sample.setChecked(s.do_sample)
        self.temperature.setValue(s.temperature)
        self.top_k.setValue(s.top_k)
        self.top_p.setValue(s.top_p)
        self.min_p.setValue(s.min_p)
        self.typical_p.setValue(s.typical_p)
        self.repetition.setValue(s.repetition_penalty)
        self.no_repeat.setValue(s.no_repeat_ngram_size)
        self.max_new.setValue(s.max_new_tokens)
        self.seed.setValue(s.seed)
        self.sequences.setValue(s.num_return_sequences)
        self.beams.setValue(s.num_beams)
        self.chat.setChecked(s.chat)

    def reload_presets(self) -> None:
        self.preset.clear()
        self.preset.addItem("Choose…")  # the combo box acts as a menu of presets
        self.preset.addItems(list(PRESETS))
        self.preset.addItems(preset_names())

    def check_fits(self, settings: SamplingSettings, source: str) -> None:
        """Raise WorkbenchError unless every value fits its control: a control would clamp
        it silently, and the settings shown would not be the ones saved."""
        boxes = {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                 "min_p": self.min_p, "typical_p": self.typical_p,
                 "repetition_penalty": self.repetition, "no_repeat_ngram_size": self.no_repeat,
                 "max_new_tokens": self.max_new, "seed": self.seed,
                 "num_return_sequences": self.sequences, "num_beams": self.beams}
        for name, box in boxes.items():
            value = getattr(settings, name)
            if not box.minimum() <= value <= box.maximum():
                raise WorkbenchError(
                    f"{source}: {name.replace('_', ' ')} {value:g} is outside the "
                    f"{box.minimum():g}–{box.maximum():g} this tab allows; nothing was applied.")

    def _preset_chosen(self, index: int) -> None:
        if index > 0:
            self.apply_preset(self.preset.itemText(index))
        self.preset.setCurrentIndex(0)

    def apply_preset(self, name: str) -> None:
        if name in PRESETS:
            self.set_settings(SamplingSettings.from_generation_config(
                PRESETS[name], base=self.settings()))
            return
        try:  # checked whole first: a damaged preset changes nothing
            settings = read_preset(name)
            self.check_fits(settings, f"The preset '{name}'")
        except WorkbenchError as exc:
            self.show_error("Cannot apply preset", str(exc))
            return
        self.set_settings(settings)

    def save_preset(self) -> None:
        name, ok = QInputDialog.getText(self, "Save preset", "Preset name:")
        name = name.strip().replace("/", "-")
        if ok and name:
            try:
                write_preset(name, self.settings())
            except WorkbenchError as exc:
                self.show_error("Cannot save the preset", str(exc))
                return
            self.reload_presets()

    def import_config(self, path: str | None = None) -> None:
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Import a GenerationConfig", "",
                                                  "JSON (*.json);;All files (*)")
        if not path:
            return
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            settings = SamplingSettings.from_generation_config(data, base=self.settings())
            settings.validate()
        except (OSError, ValueError, TypeError, WorkbenchError) as exc:
            self.show_error("Cannot import the generation config", f"{path}: {exc}")
            return
        self.set_settings(settings)

    def export_config(self, path: str | None = None) -> None:
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export a GenerationConfig",
                                                  "generation_config.json", "JSON (*.json)")
        if not path:
            return
        try:
            settings = self.settings()
            settings.validate()
            data = settings.to_generation_config()
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
        except (OSError, WorkbenchError) as exc:
            self.show_error("Cannot export the generation config", str(exc))

    # --- single generation -------------------------------------------------------------------
    def busy_changed(self, busy: bool) -> None:
        idle = self.job_id is None and self.compare_job is None
        self.generate_button.setEnabled(idle)
        self.compare_button.setEnabled(idle)

    def start(self) -> None:
        if self.job_id is not None or self.compare_job is not None:
            return
        prompt, settings = self.prompt.toPlainText(), self.settings()
        try:
            settings.validate()
        except WorkbenchError as exc:
            self.show_error("Cannot generate", str(exc))
            return
        self.modes.setCurrentIndex(0)
        self.output.clear_tokens()
        self.pending.clear()
        self.steps = {}
        self.result = None
        self.branches = []
        self.save_session_button.setEnabled(False)
        self.selected_step = None
        self.explore.setChecked(False)
        self.stats.setText("Generating…")
        self.sequence_picker.blockSignals(True)
        self.sequence_picker.clear()
        self.sequence_picker.addItems([f"Sequence {i + 1}" for i in range(
            settings.num_return_sequences)])
        self.sequence_picker.blockSignals(False)
        self.sequence_picker.setVisible(settings.num_return_sequences > 1)

        def job(ctx: WorkerContext) -> GenerationResult:
            loaded = ctx.model()
            with ctx.leave_a_core(loaded):
                return generate(loaded, prompt, settings, ctx, top_n=TOP_N)

        self.job_id = own_job(self, self.worker, "Generate", job,
                              event=self._generation_event, finished=self._generation_done,
                              failed=self._generation_failed,
                              cancelled=self._generation_cancelled)
        self.generate_button.setEnabled(False)
        self.compare_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.flush_timer.start()

    def stop(self) -> None:
        for handle in (self.job_id, self.compare_job):  # this tab's own jobs only
            if handle is not None:
                handle.cancel()

    def _generation_event(self, event: object) -> None:
        if isinstance(event, TokenEvent):
            self.pending.append(event)

    def _compare_event(self, event: object) -> None:
        if isinstance(event, TokenEvent):
            self.compare_pending.append(event)

    def flush_tokens(self, final: bool = False, curves: bool = True) -> None:
        """Show the tokens that arrived. The text follows every 40 ms; the curves, whose
        repaint costs more, every 300 ms while streaming (``curves``) and once more at the
        end (``final``)."""
        shown = max(self.sequence_picker.currentIndex(), 0)
        for event in self.pending:
            if event.step is not None:
                self.steps.setdefault(event.sequence, []).append(event.step)
            if event.sequence == shown and event.step is not None:
                self.output.append_token(event.text, event.probability, token_tooltip(event.step))
        if self.pending:
            self.output.ensureCursorVisible()
        if final or (curves and self.pending and time.monotonic() - self.curves_drawn > 0.3):
            self._update_curves()
            self.curves_drawn = time.monotonic()
        self.pending.clear()
        self._flush_compare()

    def show_sequence(self, index: int) -> None:
        self.output.clear_tokens()
        for step in self.steps.get(max(index, 0), []):
            self.output.append_token(step.text, step.probability, token_tooltip(step))
        self.selected_step = None
        self._update_curves()

    def current_steps(self) -> list[StepRecord]:
        return self.steps.get(max(self.sequence_picker.currentIndex(), 0), [])

    def _update_curves(self) -> None:
        if self.step_curves is None:
            return
        steps = self.current_steps()
        streaming = self.settings().max_new_tokens if self.job_id is not None else None
        self.step_curves.set_steps([s.entropy for s in steps], [s.surprisal for s in steps],
                                   [s.kept_count for s in steps], streaming)
        self.step_curves.mark(self.selected_step)

    def select_step(self, index: int) -> None:
        steps = self.current_steps()
        if not 0 <= index < len(steps):
            return
        self.selected_step = index
        self._update_curves()
        if self.explore.isChecked():
            self._request_logits()
        else:
            self._show_recorded(steps[index])

    def _show_recorded(self, step: StepRecord) -> None:
        if self.candidate_chart is None or not step.candidates:
            return
        chosen = next((i for i, c in enumerate(step.candidates) if c.token_id == step.token_id),
                      None)
        title = (f"Step {step.index}: chose {step.text!r} (p = {step.probability:.3f})<br>kept "
                 f"{step.kept_count} tokens, {step.kept_mass:.1%} of the model's mass · "
                 "click a candidate to branch")
        self.candidate_chart.show_candidates(
            title, [c.text for c in step.candidates], [c.raw_probability for c in step.candidates],
            [c.probability for c in step.candidates], [c.kept for c in step.candidates], chosen)

    # --- branching and sessions --------------------------------------------------------------
    def branch_from(self, candidate: int) -> None:
        """Continue generation from the selected step with candidate ``candidate`` instead."""
        if (self.result is None or self.selected_step is None or self.explore.isChecked()
                or self.branch_job is not None or self.job_id is not None):
            return
        shown = max(self.sequence_picker.currentIndex(), 0)
        steps = self.current_steps()
        if candidate >= len(steps[self.selected_step].candidates):
            return
        token = steps[self.selected_step].candidates[candidate].token_id
        base = self.result if shown < len(self.result.sequences) else GenerationResult(
            self.result.prompt, [self.branches[shown - len(self.result.sequences)].sequence],
            0.0, False, prompt_token_ids=self.result.prompt_token_ids)
        parent = shown if shown < len(self.result.sequences) else 0
        step, settings = self.selected_step, self.settings()

        def job(ctx: WorkerContext) -> Branch:
            loaded = ctx.model()
            with ctx.leave_a_core(loaded):
                return branch(loaded, base, parent, step, token, settings, ctx, top_n=TOP_N)

        self.branch_job = own_job(self, self.worker, "Branch", job,
                                  finished=self._branch_done, failed=self._branch_failed,
                                  cancelled=self._branch_cancelled)
        self.stats.setText(f"Branching at step {step}…")

    def _add_branch(self, b: Branch) -> None:
        self.branches.append(b)
        index = len(self.result.sequences) + len(self.branches) - 1 if self.result else 0
        self.steps[index] = b.sequence.steps
        self.sequence_picker.addItem(f"Branch {len(self.branches)}: {b.label}")
        self.sequence_picker.setVisible(True)
        self.sequence_picker.setCurrentIndex(index)
        self.stats.setText(f"Branch {len(self.branches)}: {b.label}. The list beside holds "
                           "every sequence and branch.")

    def save_session(self, path: str | None = None) -> None:
        if self.result is None:
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save session", "session.json",
                                                  "LM Workbench session (*.json)")
        if not path:
            return
        prompt, settings, result = self.prompt.toPlainText(), self.settings(), self.result

        def job(ctx: WorkerContext) -> str:
            from workbench.core.session import model_fingerprint, save_session

            ctx.progress("Hashing the model files…", None)
            return str(save_session(path, prompt, settings, result, model_fingerprint(ctx.model())))

        self.session_job = own_job(self, self.worker, "Save session", job,
                                   finished=self._session_saved, failed=self._session_failed,
                                   cancelled=self._session_cancelled)

    def open_session(self, path: str | None = None) -> None:
        from workbench.core.session import load_session

        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Open session", "",
                                                  "LM Workbench session (*.json);;All files (*)")
        if not path:
            return
        try:
            session = load_session(path)
            self.check_fits(session.settings, f"The session {path}")
        except WorkbenchError as exc:
            self.show_error("Cannot open the session", str(exc))
            return
        self.prompt.setPlainText(session.prompt)
        self.set_settings(session.settings)
        self.branches = []
        if session.result is not None:
            self._show_result(session.result)
        model = session.model.get("name", "an unknown model")
        digest = (session.model.get("files") or [{}])[0].get("sha256", "")[:12]
        self.stats.setText(f"Session from {session.created[:19]} with {model}"
                           + (f" (weights sha256 {digest}…)" if digest else "") + ".")

    def _show_result(self, result: GenerationResult) -> None:
        self.result = result
        self.steps = {i: s.steps for i, s in enumerate(result.sequences)}
        self.sequence_picker.blockSignals(True)
        self.sequence_picker.clear()
        self.sequence_picker.addItems([f"Sequence {i + 1}" for i in range(len(result.sequences))])
        self.sequence_picker.blockSignals(False)
        self.sequence_picker.setVisible(len(result.sequences) > 1)
        self.save_session_button.setEnabled(True)
        self.show_sequence(0)

    # --- the explorer ------------------------------------------------------------------------
    def _explore_toggled(self, on: bool) -> None:
        if on:
            self._request_logits()
        elif self.selected_step is not None and self.selected_step < len(self.current_steps()):
            self._show_recorded(self.current_steps()[self.selected_step])

    def _prefix(self) -> list[int] | None:
        """Token ids before the selected step (the prompt alone when none is selected)."""
        if self.result is None:
            return None
        ids = list(self.result.prompt_token_ids)
        if self.selected_step is not None:
            ids += [s.token_id for s in self.current_steps()[: self.selected_step]]
        return ids

    def _request_logits(self) -> None:
        prefix = self._prefix()
        if prefix is None:
            prompt, chat = self.prompt.toPlainText(), self.chat.isChecked()
            max_new = self.max_new.value()

            def job(ctx: WorkerContext):
                from workbench.core.generation import prepare_prompt

                loaded = ctx.model()
                ids = prepare_prompt(loaded, prompt, chat, max_new)[0][0].tolist()
                return ids, *with_texts(loaded, next_token_logits(loaded, ids))
        else:
            def job(ctx: WorkerContext):
                loaded = ctx.model()
                return prefix, *with_texts(loaded, next_token_logits(loaded, prefix))

        self.explore_job = own_job(self, self.worker, "Next-token distribution", job,
                                   finished=self._explore_done, failed=self._explore_failed,
                                   cancelled=self._explore_cancelled)

    def settings_changed(self) -> None:
        if self.explore.isChecked() and self.explore_logits is not None:
            self.redraw_explorer()

    def redraw_explorer(self) -> None:
        if self.candidate_chart is None or self.explore_logits is None:
            return
        settings = self.settings()
        try:
            dist = explore_distribution(self.explore_logits, settings, TOP_N, self.explore_prefix)
        except Exception as exc:  # a value mid-edit, e.g. top-p at its limit
            self.candidate_chart.plot.setTitle(f"Cannot apply these settings: {exc}", size="9pt")
            return
        # the top candidates by raw probability, decoded on the worker: its tokenizer is
        # not for this thread (a fast tokenizer used by two threads says "Already borrowed")
        texts = [self.explore_texts.get(t, str(t)) for t in dist.token_ids]
        where = "after the prompt" if self.selected_step is None else f"at step {self.selected_step}"
        title = (f"Explorer {where}: {settings.describe()}<br>kept {dist.kept_count} tokens, "
                 f"{dist.kept_mass:.1%} of the mass, entropy {dist.entropy:.2f} bits")
        self.candidate_chart.show_candidates(title, texts, dist.raw, dist.processed, dist.kept,
                                             None)

    # --- compare -------------------------------------------------------------------------------
    def start_compare(self) -> None:
        if self.job_id is not None or self.compare_job is not None:
            return
        base = self.settings()
        try:
            specs = [line for line in self.strategies.toPlainText().splitlines() if line.strip()]
            if not 2 <= len(specs) <= 6:
                raise WorkbenchError(f"Give 2 to 6 strategies, one a line (now {len(specs)}).")
            strategies = [parse_strategy(spec, base) for spec in specs]
        except WorkbenchError as exc:
            self.show_error("Cannot compare", str(exc))
            return
        prompt = self.prompt.toPlainText()
        seed, max_new, chat = base.seed, base.max_new_tokens, base.chat
        self.compare_owners = batch_owners(strategies)
        self._make_columns([s.name for s in strategies])
        self.compare_pending.clear()
        self.compare_result = None
        self.compare_note.setText("Comparing…")

        def job(ctx: WorkerContext) -> CompareResult:
            return compare(ctx.model(), prompt, strategies, seed=seed, max_new_tokens=max_new,
                           chat=chat, ctx=ctx, top_n=0)

        self.compare_job = own_job(self, self.worker, "Compare strategies", job,
                                   event=self._compare_event, finished=self._compare_done,
                                   failed=self._compare_failed,
                                   cancelled=self._compare_cancelled)
        self.generate_button.setEnabled(False)
        self.compare_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.flush_timer.start()

    def _make_columns(self, names: list[str]) -> None:
        while self.columns_layout.count():
            item = self.columns_layout.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.compare_views = []
        for name in names:
            column = QWidget()
            layout = QVBoxLayout(column)
            layout.setContentsMargins(0, 0, 0, 0)
            header = QLabel(f"<b>{name}</b>")
            header.setObjectName("column-header")
            view = TokenView(f"column-{len(self.compare_views)}")
            layout.addWidget(header)
            layout.addWidget(view, 1)
            self.columns_layout.addWidget(column, 1)
            self.compare_views.append(view)

    def _flush_compare(self) -> None:
        for event in self.compare_pending:
            strategy, sequence = owner_of(event.sequence, self.compare_owners)
            if sequence == 0 and strategy < len(self.compare_views) and event.step is not None:
                self.compare_views[strategy].append_token(event.text, event.probability,
                                                          token_tooltip(event.step))
        self.compare_pending.clear()

    def show_compare(self, result: CompareResult) -> None:
        self.compare_result = result
        for view, r in zip(self.compare_views, result.strategies, strict=False):
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
            values = self.summary_row(r)
            for col, value in enumerate(values):
                item = QTableWidgetItem()
                item.setData(Qt.ItemDataRole.DisplayRole, value)
                self.summary.setItem(row, col, item)
        # rows in the order the strategies were given until the user sorts by a column
        self.summary.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
        self.summary.setSortingEnabled(True)
        if self.overlay is not None:
            divergences = [r.diverges_at for r in result.strategies[1:] if r.diverges_at is not None]
            self.overlay.set_series([r.name for r in result.strategies],
                                    [[s.surprisal for s in r.sequences[0].steps] if r.sequences
                                     else [] for r in result.strategies],
                                    min(divergences) if divergences else None)
        notes = [f"{result.seconds:.1f} s in all."] + result.notes
        self.compare_note.setText(" ".join(notes))
        self.export_csv_button.setEnabled(True)
        self.export_png_button.setEnabled(True)

    @staticmethod
    def summary_row(r) -> list:
        def num(x: float | None, digits: int):
            return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, digits)

        return [r.name, num(r.mean_logprob, 3), num(r.perplexity, 2), num(r.distinct_1, 3),
                num(r.distinct_2, 3), num(r.self_bleu, 2), num(r.tokens_per_second, 1),
                "-" if r.diverges_at is None else r.diverges_at]

    def export_table(self, path: str | None = None) -> None:
        if self.compare_result is None:
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
                for r in self.compare_result.strategies:
                    writer.writerow(self.summary_row(r) + [r.sequences[0].text if r.sequences else ""])
        except OSError as exc:
            self.show_error("Cannot export the table", str(exc))

    def export_plot(self, path: str | None = None) -> None:
        if self.overlay is None or self.compare_result is None:
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export the plot", "compare.png",
                                                  "PNG (*.png)")
        if path:
            try:
                self.overlay.export_png(path)
            except OSError as exc:
                self.show_error("Cannot export the plot", str(exc))

    # --- job ends: each job's own handlers (its handle delivers only its signals) -----------
    def _branch_done(self, result: object) -> None:
        self.branch_job = None
        if isinstance(result, Branch):
            self._add_branch(result)

    def _branch_failed(self, error: object, details: str) -> None:
        self.branch_job = None
        self.stats.setText(f"Failed: {error}")

    def _branch_cancelled(self) -> None:
        self.branch_job = None

    def _session_saved(self, result: object) -> None:
        self.session_job = None
        self.stats.setText(f"Session saved to {result}.")

    def _session_failed(self, error: object, details: str) -> None:
        self.session_job = None
        self.stats.setText(f"Failed: {error}")

    def _session_cancelled(self) -> None:
        self.session_job = None

    def _explore_done(self, result: object) -> None:
        self.explore_job = None
        self.explore_prefix, self.explore_logits, self.explore_texts = result  # type: ignore[misc]
        if self.explore.isChecked():
            self.redraw_explorer()

    def _explore_failed(self, error: object, details: str) -> None:
        self.explore_job = None
        self.explore.setChecked(False)

    def _explore_cancelled(self) -> None:
        self.explore_job = None

    def _generation_done(self, result: object) -> None:
        if isinstance(result, GenerationResult):
            self.flush_tokens(curves=False)  # they are drawn once, at the end (in _done)
            self.result = result
            self.steps = {i: s.steps for i, s in enumerate(result.sequences)}
            self.save_session_button.setEnabled(True)
            self.inspect_button.setEnabled(True)
            note = " (stopped)" if result.stopped else ""
            used = SamplingSettings(**result.settings).describe()
            self.stats.setText(" ".join(
                [f"{result.new_tokens} tokens in {result.seconds:.1f} s, "
                 f"{result.tokens_per_second:.1f} tokens/s{note} · {used} · click a token "
                 "to inspect it."] + [f"<b>Note:</b> {n}" for n in result.notices]))
            if result.settings.get("num_beams", 1) > 1:
                self.show_sequence(self.sequence_picker.currentIndex())
        self._done(generation=True)

    def _generation_failed(self, error: object, details: str) -> None:
        self.stats.setText(f"Failed: {error}")
        self._done(generation=True)

    def _generation_cancelled(self) -> None:
        self.stats.setText("Cancelled.")
        self._done(generation=True)

    def _compare_done(self, result: object) -> None:
        if isinstance(result, CompareResult):
            self.flush_tokens()
            self.show_compare(result)
        self._done(generation=False)

    def _compare_failed(self, error: object, details: str) -> None:
        self.compare_note.setText(f"Failed: {error}")
        self._done(generation=False)

    def _compare_cancelled(self) -> None:
        self.compare_note.setText("Cancelled.")
        self._done(generation=False)

    def _done(self, generation: bool) -> None:
        """The generation (or the comparison) ended: show what is left, and when neither
        runs any more, make the buttons available again."""
        if generation:
            self.job_id = None
        self.flush_tokens(final=True)  # after job_id is cleared: x to the steps there are
        if not generation:
            self.compare_job = None
        if self.job_id is None and self.compare_job is None:
            self.flush_timer.stop()
            self.generate_button.setEnabled(True)
            self.compare_button.setEnabled(True)
            self.stop_button.setEnabled(False)

    def shutdown(self) -> None:
        self.flush_timer.stop()

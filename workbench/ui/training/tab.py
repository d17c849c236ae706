"""Fine-tune tab: a form for a Trainer run, live charts, stop / resume, probe texts,
"Use this model", and monitoring of any run folder written by another process."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import signal
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QSettings, QSignalBlocker, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGraphicsItem,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QSplitter,
    QStackedLayout,
    QVBoxLayout,
    QWidget,
)

from workbench.core.common import paths
from workbench.core.common.errors import WorkbenchError
from workbench.core.common.files import write_atomically
from workbench.core.common.threads import sharing_the_gil
from workbench.core.models.catalog import MINILM, SMOLLM2
from workbench.core.training.finetune import (
    FinetuneConfig,
    check_output_dir,
    save_config,
    saved_config,
    split_names,
)
from workbench.core.training.inputs import check_data, check_model
from workbench.core.training.process import (
    LOG_FILE,
    PROBES_FILE,
    RUN_FILE,
    RunState,
    kill_run,
    launch,
    request_stop,
    run_state,
    train_command,
)
from workbench.core.training.runs import RunMonitor, check_run_folder
from workbench.ui.common.skeleton import combo, dspin, line, spin, text_box
from workbench.ui.common.state import remembered_folders
from workbench.ui.common.tab_base import WorkbenchTab
from workbench.ui.common.widgets import ProgressThrottle, Section
from workbench.ui.common.worker import ModelWorker, bulk_reading

if TYPE_CHECKING:  # numpy comes with it: loaded after the window is shown, not before
    from workbench.core.training.curves import CurveData

RESOURCES = paths.sample_data()
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def curves_key(rows: list[dict], smoothing: float, unit: str) -> tuple:
    """What a run's curve data depends on: its rows (they only grow, or are replaced by a
    new list), the smoothing and the throughput unit."""
    return (len(rows), id(rows[-1]) if rows else None, smoothing, unit)


class RunCurves:
    """The curves of one run on the shared charts."""

    def __init__(self, charts: dict, name: str, color) -> None:
        import pyqtgraph as pg

        pen = pg.mkPen(color, width=1)
        self.name = name
        # The min/max band: the range of the raw losses around each step, as wide as
        # the smoothing's window.
        # (curves that are not shown themselves: a PlotDataItem without a pen has no path)
        self.band_low = pg.PlotCurveItem([], [], pen=pg.mkPen(None))
        self.band_high = pg.PlotCurveItem([], [], pen=pg.mkPen(None))
        self.band = pg.FillBetweenItem(self.band_low, self.band_high, brush=(*color, 45))
        charts["loss"].addItem(self.band)
        # the raw losses as a faint line behind the smoothed one, as TensorBoard draws them
        # (a path: thousands of scatter symbols cost pyqtgraph Python work at every change)
        self.raw = charts["loss"].plot([], [], pen=pg.mkPen((*color, 70), width=1))
        self.smooth = charts["loss"].plot([], [], pen=pen, name=f"{name} loss")
        self.eval = charts["loss"].plot([], [], pen=pg.mkPen(color, width=1,
                                                             style=Qt.PenStyle.DashLine),
                                        symbol="s", symbolSize=6, symbolBrush=color,
                                        name=f"{name} validation")
        self.spikes = charts["loss"].plot([], [], pen=None, symbol="x", symbolSize=10,
                                          symbolPen=pg.mkPen(220, 0, 0, width=2))
        for item in (self.eval, self.spikes):
            # symbols are rebuilt at every vertical range change while the item guards
            # against values far outside the view; these points are few and near the curves
            item.setDynamicRangeLimit(None)
        self.lr = charts["lr"].plot([], [], pen=pen)
        self.grad = charts["grad"].plot([], [], pen=pen)
        self.speed = charts["speed"].plot([], [], pen=pen)
        self.drawn: dict[str, tuple] = {}  # chart -> the rows and smoothing it shows
        self.warnings: list[str] = []

    def update(self, data: CurveData, version: tuple,
               charts: tuple[str, ...] = ("loss", "lr", "grad", "speed")) -> None:
        """Redraw those of ``charts`` that do not show ``data`` (computed in the core, see
        ``training_curves.analyse``; ``version`` names it) yet: a finished run's curves are
        not set again on every redraw of a running one. The health warnings are kept in
        ``warnings``."""
        charts = tuple(c for c in charts if self.drawn.get(c) != version)
        if not charts:
            return
        for chart in charts:
            self.drawn[chart] = version
        if "loss" in charts:
            self.raw.setData(data.steps, data.losses)  # every point, or each bin's extremes
            band = data.band
            with QSignalBlocker(self.band_low):  # the fill's path is built once, not twice
                self.band_low.setData(band.steps, band.low)
            self.band_high.setData(band.steps, band.high)
            self.smooth.setData(data.steps if data.smoothed_steps is None
                                else data.smoothed_steps, data.smoothed)
            self.eval.setData(data.eval.steps, data.eval.values)
            self.spikes.setData(data.spikes.steps, data.spikes.values)
            # empty items are hidden: a scatter's bounds cost pyqtgraph Python work at
            # every paint, even with no points, and an empty fill counts as a point at
            # (0, 0) in the chart's range (validation keeps its legend entry: shown)
            self.spikes.setVisible(len(data.spikes.steps) > 0)
            self.band.setVisible(len(band.steps) > 0)
        if "lr" in charts:
            self.lr.setData(data.lr.steps, data.lr.values)
        if "grad" in charts:
            self.grad.setData(data.grad.steps, data.grad.values)
        if "speed" in charts:
            self.speed.setData(data.speed.steps, data.speed.values)
        self.warnings = [f"{self.name}: {alarm.message}" for alarm in data.alarms
                         if alarm.kind != "nan"]


@dataclass(eq=False)
class FollowedRun:
    """A run folder the tab follows: one it started (its state, output and probes are
    followed too) or one attached to (its numbers only)."""

    name: str
    folder: Path
    monitor: RunMonitor
    started_here: bool = False
    process: subprocess.Popen | None = None  # when this session of the window started it
    log_offset: int = 0
    probe_offset: int = 0
    reported: bool = False  # its end has been shown
    last_error: str | None = None
    seen: tuple = ()


@dataclass
class PollResult:
    run: FollowedRun
    rows: list[dict] | None
    rows_changed: bool
    log_lines: list[str] = field(default_factory=list)
    probes: list[dict] = field(default_factory=list)
    state: RunState | None = None
    ended: bool = False
    error: str | None = None
    curves: tuple[tuple, CurveData] | None = None  # computed here, off the GUI thread


def read_new_lines(path: Path, offset: int, limit: int = 1 << 20) -> tuple[list[str], int]:
    """The complete lines added to ``path`` after byte ``offset`` (at most ``limit`` bytes
    a call), and the offset to read from next time. A file that shrank (rewritten) is read
    again from its start."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < offset:
                offset = 0
            f.seek(offset)
            data = f.read(min(limit, size - offset))
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a line being written waits for its end
    lines = data[:end].decode("utf-8", errors="replace").splitlines()
    return lines, offset + end


def poll_runs(runs: list[FollowedRun], smoothing: float, unit: str) -> list[PollResult]:
    """What each followed run folder added since the last call, and the curves of those
    that changed (Qt-free: it runs on a reader thread, never on the GUI thread)."""
    with sharing_the_gil(), bulk_reading():
        return [_poll_one(run, smoothing, unit) for run in runs]


def _poll_one(run: FollowedRun, smoothing: float, unit: str) -> PollResult:
    try:
        rows: list[dict] | None = run.monitor.poll().rows
    except WorkbenchError:
        rows = None  # a folder being written; read again at the next tick
    changed = False
    if rows is not None:
        seen = (len(rows), id(rows[-1]) if rows else None)
        changed, run.seen = seen != run.seen, seen  # (each poll's rows are a new list)
    result = PollResult(run, rows, changed)
    if changed:
        from workbench.core.training.curves import analyse, for_display

        result.curves = (curves_key(rows, smoothing, unit),
                         for_display(analyse(rows, smoothing, unit)))
    if run.started_here:
        result.log_lines, run.log_offset = read_new_lines(run.folder / LOG_FILE,
                                                          run.log_offset)
        for line in result.log_lines:
            if line.startswith("error: "):
                run.last_error = line[len("error: "):]
        probe_lines, run.probe_offset = read_new_lines(run.folder / PROBES_FILE,
                                                       run.probe_offset)
        for line in probe_lines:
            try:
                probe = json.loads(line)
            except ValueError:
                continue
            if isinstance(probe, dict):
                result.probes.append(probe)
        if not run.reported:
            code = run.process.poll() if run.process is not None else None
            if run.process is None or code is not None:  # a run it started goes until then
                result.state = run_state(run.folder)
            result.ended = code is not None if run.process is not None \
                else not result.state.live
            if result.ended and code:
                result.error = run.last_error
    return result


CHART_NAMES = ("loss", "lr", "grad", "speed")
CHART_TURNS = ("loss", "lr", "loss", "grad", "loss", "speed")  # the loss chart most often


class FinetuneTab(WorkbenchTab):
    title = "Fine-tune"
    use_model = Signal(str)  # a trained model folder for the other tabs

    log_line = Signal(str, str)  # a line for the log dock, its level
    read_done = Signal()  # (from the reader thread) a poll of the run folders has finished

    def __init__(self, worker: ModelWorker, parent: QWidget | None = None) -> None:
        super().__init__(worker, parent)
        self.followed: dict[str, FollowedRun] = {}
        self.curve_data: dict[str, tuple[tuple, CurveData]] = {}  # run -> (its key, data)
        self.active: FollowedRun | None = None  # the run this tab started or found going
        self.stopping = False
        self.remember_runs = True  # found again at the next start (not the screenshots' demo)
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="run-reader")
        self.pending: Future | None = None
        self.charts: dict | None = None
        self.runs: dict[str, RunCurves] = {}
        self.rows: dict[str, list[dict]] = {}
        self.attached: list[str] = []
        self.final_model: str | None = None
        self.speed_shown = "tokens"  # the unit of the throughput chart
        self._build_form()
        # no chart before there is data: a line saying how to get some
        self.chart_holder = QWidget()
        self.chart_pages = QStackedLayout(self.chart_holder)
        self.no_run = QLabel("No run yet: fill in the form and press Start training, or "
                             "Attach run folder… to follow a run written elsewhere.")
        self.no_run.setObjectName("no-run")
        self.no_run.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.no_run.setWordWrap(True)
        self.no_run.setStyleSheet("color: #666")
        self.chart_pages.addWidget(self.no_run)
        self.progress = QProgressBar()
        self.progress.setObjectName("train-progress")
        self.progress.setFormat("%p%")
        self.eta = QLabel("")
        self.eta.setObjectName("train-eta")
        self.health = QLabel("")
        self.health.setObjectName("train-health")
        self.health.setStyleSheet("color: #b00000")
        self.health.setWordWrap(True)
        self.smoothing = QSlider(Qt.Orientation.Horizontal)
        self.smoothing.setObjectName("smoothing")
        self.smoothing.setRange(0, 99)
        self.smoothing.setValue(60)
        self.smoothing.valueChanged.connect(lambda _value: self.redraw(("loss",)))
        self.probes = QPlainTextEdit()
        self.probes.setObjectName("probe-texts")
        self.probes.setReadOnly(True)
        self.probes.setPlaceholderText("Probe generations appear here by step (causal LM runs "
                                       "with probe prompts).")
        self.probes.setMaximumHeight(90)
        status = QHBoxLayout()
        status.addWidget(self.progress, 2)
        status.addWidget(self.eta, 1)
        status.addWidget(QLabel("Smoothing"))
        status.addWidget(self.smoothing, 1)
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addLayout(status)
        rl.addWidget(self.health)
        rl.addWidget(self.chart_holder, 1)
        rl.addWidget(self.probes)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.form_panel)
        split.addWidget(right)
        split.setSizes([380, 900])
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_label)
        layout.addWidget(split, 1)
        # Log rows can arrive many times a second: while a run goes, one chart is redrawn
        # each second in turn (the loss chart every 2 s, the others every 6 s), so no
        # single pass of the event loop repaints all four, and the window's share of the
        # CPU stays small (on the CPU every millisecond it paints is one the training
        # waits for); the charts hold their ranges (see steady_range), so a new point does
        # not re-layout the axes.
        self.redraw_timer = QTimer(self)
        self.redraw_timer.setSingleShot(True)
        self.redraw_timer.timeout.connect(self.redraw_next)
        self.chart_turn = 0
        self.data_version = 0  # bumped by new rows; a chart is stale until it has drawn it
        self.drawn: dict[str, int] = {}
        self.held: dict[str, tuple[float, float]] = {}  # y ranges held during a run
        self.run_max_steps = 0
        self.progress_ticks = ProgressThrottle()
        # Run folders are read on a reader thread; each tick applies what it read and
        # asks for the next read.
        self.poll = QTimer(self)
        self.poll.setInterval(500)
        self.poll.timeout.connect(self._poll_tick)
        self.read_done.connect(self._take_result)  # queued: it comes from the reader thread
        self.task.currentIndexChanged.connect(self._task_changed)
        self._task_changed()

    def _build_form(self) -> None:
        # short enough for the form's column (the longer names were cut)
        self.task = combo("task", ["classify (text → label)", "lm (next token)"])
        self.task.setToolTip("classify: sequence classification (a label for each text); "
                             "lm: causal language modelling (predict each next token)")
        self.train_file = line("train-file", "", ".txt, .jsonl, .csv or .tsv")
        self.validation_file = line("validation-file", "", "optional (default: 10% split)")
        self.text_column = line("text-column", "text")
        self.label_column = line("label-column", "label")
        self.learning_rate = dspin("learning-rate", 1e-7, 1.0, 2e-5, decimals=7, step=1e-5)
        self.epochs = dspin("epochs", 0.01, 1000, 3.0, decimals=2, step=1)
        self.max_steps = spin("max-steps", 0, 10_000_000, 0)
        self.max_steps.setSpecialValueText("by epochs")
        self.batch_size = spin("batch-size", 1, 4096, 8)
        self.grad_accum = spin("gradient-accumulation", 1, 1024, 1)
        self.max_length = spin("max-length", 8, 8192, 128)
        self.weight_decay = dspin("weight-decay", 0.0, 1.0, 0.0, decimals=4, step=0.01)
        self.warmup = spin("warmup-steps", 0, 1_000_000, 0)
        self.scheduler = combo("scheduler", ["linear", "cosine", "constant",
                                             "constant_with_warmup", "polynomial"])
        self.seed = spin("train-seed", 0, 2**31 - 1, 42)
        self.logging_steps = spin("logging-steps", 1, 100000, 5)
        self.eval_steps = spin("eval-steps", 1, 1_000_000, 50)
        self.save_steps = spin("save-steps", 1, 1_000_000, 50)
        self.output_dir = line("output-dir", "", "default: a new one in the app's data")
        self.output_dir.setToolTip("A new folder for this run (default: one in the app's "
                                   "data folder)")
        self.probe_prompts = text_box("probe-prompts", "Probe prompts, one a line (lm)",
                                      "The lighthouse keeper")
        self.probe_prompts.setMaximumHeight(50)
        self.probe_every = spin("probe-every", 0, 100000, 10)
        self.lora = QCheckBox("Train a LoRA adapter (peft)")
        self.lora.setObjectName("lora")
        self.lora.setToolTip("Causal LM only: train small low-rank adapters instead of every "
                             "weight. The final model has the adapter merged in; the run's "
                             "adapter/ folder keeps it on its own.")
        self.lora_r = spin("lora-r", 1, 4096, 8)
        self.lora_alpha = spin("lora-alpha", 1, 65536, 16)
        self.lora_dropout = dspin("lora-dropout", 0.0, 0.99, 0.05, decimals=2, step=0.05)
        self.lora_targets = line("lora-target-modules", "", "default for the architecture "
                                 "(e.g. q_proj,v_proj)")
        self.lora.toggled.connect(self._task_changed)
        self.processes = spin("processes", 1, 64, 1)
        self.processes.setToolTip("Training processes: more than 1 launches the run with "
                                  "accelerate launch --num_processes N (data parallel; on the "
                                  "CPU with --cpu, on GPUs one process each)")
        self.start_button = QPushButton("Start training")
        self.start_button.setProperty("primary", True)  # Run ▸ Run: Ctrl+Return
        self.start_button.setObjectName("start-button")
        self.start_button.clicked.connect(lambda: self.start())
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("stop-training-button")
        self.stop_button.setToolTip("Save a checkpoint and stop (resumable)")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue the run in the output folder from its last "
                                      "checkpoint, up to the epochs / max steps above")
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.use_button = QPushButton("Use this model")
        self.use_button.setToolTip("Load the trained model for Generate, Attention and Evaluate")
        self.use_button.setEnabled(False)
        self.use_button.clicked.connect(lambda: self.use_model.emit(self.final_model or ""))
        self.attach_button = QPushButton("Attach run folder…")
        self.attach_button.setToolTip("Follow a run written by another process (this app's, "
                                      "any Hugging Face Trainer output, TensorBoard events)")
        self.attach_button.clicked.connect(lambda: self.attach())
        self.export_button = QPushButton("Export launch command…")
        self.export_button.clicked.connect(lambda: self.export_launch())
        # The options a run needs stay in view; the rarely changed ones fold away in
        # sections (opened with a click, remembered), so that at 1280×800 the form fits
        # without scrolling and Start is always in view below it.
        form = QFormLayout()
        for label, widget in [
                ("Task", self.task), ("Training file", self.train_file),
                ("Validation file", self.validation_file), ("Text column", self.text_column),
                ("Label column", self.label_column), ("Output folder", self.output_dir),
                ("Learning rate", self.learning_rate), ("Epochs", self.epochs),
                ("Max steps", self.max_steps), ("Batch size", self.batch_size),
                ("Max length", self.max_length), ("Processes", self.processes)]:
            form.addRow(label, widget)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.sections: list[Section] = []
        for title, name, rows in [
                ("Schedule, logging, checkpoints", "finetune-section-schedule", [
                    ("Schedule", self.scheduler), ("Warmup steps", self.warmup),
                    ("Gradient accumulation", self.grad_accum),
                    ("Weight decay", self.weight_decay), ("Seed", self.seed),
                    ("Log every", self.logging_steps), ("Evaluate every", self.eval_steps),
                    ("Save every", self.save_steps)]),
                ("LoRA adapter (causal LM)", "finetune-section-lora", [
                    ("LoRA", self.lora), ("Rank r", self.lora_r), ("Alpha", self.lora_alpha),
                    ("Dropout", self.lora_dropout), ("Target modules", self.lora_targets)]),
                ("Probe generations (causal LM)", "finetune-section-probes", [
                    ("Probe prompts", self.probe_prompts),
                    ("Probe every (steps)", self.probe_every)])]:
            section = Section(title, name)
            for label, widget in rows:
                section.add_row(label, widget)
            self.sections.append(section)
        for choice in (self.task, self.scheduler):  # narrow enough for the panel, no clipping
            choice.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            choice.setMinimumContentsLength(12)
        for edit in (self.train_file, self.validation_file, self.output_dir):
            # a path longer than the field shows its end; the whole of it in the tooltip
            tip = edit.toolTip()
            edit.textChanged.connect(lambda text, e=edit, tip=tip: e.setToolTip(text or tip))
        box = QWidget()
        column = QVBoxLayout(box)
        column.addLayout(form)
        for section in self.sections:
            column.addWidget(section)
        column.addStretch(1)
        self.form_scroll = QScrollArea()
        self.form_scroll.setWidgetResizable(True)
        self.form_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.form_scroll.setWidget(box)
        # the buttons stay below the form, visible however far it scrolls
        buttons = QGridLayout()
        buttons.addWidget(self.start_button, 0, 0)
        buttons.addWidget(self.stop_button, 0, 1)
        buttons.addWidget(self.resume_button, 1, 0)
        buttons.addWidget(self.use_button, 1, 1)
        buttons.addWidget(self.attach_button, 2, 0)
        buttons.addWidget(self.export_button, 2, 1)
        self.form_panel = QWidget()
        panel = QVBoxLayout(self.form_panel)
        panel.setContentsMargins(0, 0, 0, 0)
        panel.addWidget(self.form_scroll, 1)
        panel.addLayout(buttons)

    def build_deferred(self) -> None:
        if self.charts is not None:
            return
        import pyqtgraph as pg

        grid = pg.GraphicsLayoutWidget()
        grid.setObjectName("training-charts")
        self.charts = {}
        for key, title, row, col in (("loss", "loss", 0, 0), ("lr", "learning rate", 0, 1),
                                     ("grad", "gradient norm", 1, 0),
                                     ("speed", "tokens per second", 1, 1)):
            plot = grid.addPlot(row=row, col=col, title=title)
            plot.showGrid(y=True, alpha=0.3)
            plot.setLabel("bottom", "step")
            plot.getAxis("left").enableAutoSIPrefix(False)
            plot.getAxis("bottom").enableAutoSIPrefix(False)
            # A fixed width: tick labels of a new width would re-lay out all four charts
            # (twice the cost of a range change on the GUI thread).
            plot.getAxis("left").setWidth(52)
            for side in ("left", "bottom"):  # repainted from a pixmap until they change
                plot.getAxis(side).setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
            # see-through (not painted at all) until it first draws rows: the first sight
            # of a large attached run then paints one chart a pass, not all four at once
            plot.setOpacity(0.0)
            self.charts[key] = plot
        # the legend (two entries a run) in the title's place, above the curves
        from workbench.ui.common.charts import legend_above

        legend_above(self.charts["loss"], labelTextSize="8pt")
        self.chart_pages.addWidget(grid)
        self.chart_widget = grid
        for name in self.rows:  # runs followed before the charts existed
            self._curves_for(name)

    def restore(self) -> None:
        """Follow again the runs attached before, and the runs started here that still go."""
        for folder in remembered_folders("finetune/attached"):
            if Path(folder).is_dir():
                self.attach(folder, remember=False)
        self.find_started_runs()

    # --- the form ----------------------------------------------------------------------------
    def _task_changed(self) -> None:
        lm = self.task.currentIndex() == 1
        defaults = {str(RESOURCES / "sentiment.csv"), str(RESOURCES / "corpus.txt"), ""}
        if self.train_file.text() in defaults:
            self.train_file.setText(str(RESOURCES / ("corpus.txt" if lm else "sentiment.csv")))
        self.label_column.setEnabled(not lm)
        self.probe_prompts.setEnabled(lm)
        self.probe_every.setEnabled(lm)
        self.lora.setEnabled(lm)  # peft's LoRA here is for causal LMs only
        for widget in (self.lora_r, self.lora_alpha, self.lora_dropout, self.lora_targets):
            widget.setEnabled(lm and self.lora.isChecked())

    def config(self) -> FinetuneConfig:
        lm = self.task.currentIndex() == 1
        model = self.loaded.reference if self.loaded is not None else \
            (SMOLLM2.name if lm else MINILM.name)
        output = self.output_dir.text().strip() or str(
            paths.data_dir() / "runs" / datetime.datetime.now().strftime("run-%Y%m%d-%H%M%S"))
        return FinetuneConfig(
            task="lm" if lm else "classify", model=model,
            train_file=self.train_file.text().strip(), output_dir=output,
            validation_file=self.validation_file.text().strip() or None,
            text_column=self.text_column.text().strip() or "text",
            label_column=self.label_column.text().strip() or "label",
            learning_rate=self.learning_rate.value(), lr_scheduler=self.scheduler.currentText(),
            warmup_steps=self.warmup.value(), epochs=self.epochs.value(),
            max_steps=self.max_steps.value() or -1, batch_size=self.batch_size.value(),
            gradient_accumulation=self.grad_accum.value(), max_length=self.max_length.value(),
            weight_decay=self.weight_decay.value(), seed=self.seed.value(),
            logging_steps=self.logging_steps.value(), eval_steps=self.eval_steps.value(),
            save_steps=self.save_steps.value(),
            probe_prompts=[p for p in self.probe_prompts.toPlainText().splitlines() if p.strip()]
            if lm else [], probe_every=self.probe_every.value() if lm else 0,
            lora=lm and self.lora.isChecked(), lora_r=self.lora_r.value(),
            lora_alpha=self.lora_alpha.value(), lora_dropout=self.lora_dropout.value(),
            lora_target_modules=split_names(self.lora_targets.text()),
            # what the user allowed for the loaded model holds for its training run
            trust_remote_code=bool(self.loaded and self.loaded.options.trust_remote_code),
            allow_pickle=bool(self.loaded and self.loaded.options.allow_pickle))

    # --- running --------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether a run started (or found) by this tab is going."""
        return self.active is not None

    def live_run(self) -> FollowedRun | None:
        return self.active

    def start(self, resume: bool = False) -> None:
        """Start a run as a process of its own (``python -m workbench.train``), or resume
        the run in the output folder; the tab then follows its folder."""
        if self.active is not None:
            return
        config = self.config()
        if resume and not (Path(config.output_dir).expanduser() / RUN_FILE).is_file():
            chosen = QFileDialog.getExistingDirectory(self, "Resume which run folder?")
            if not chosen:
                return
            config.output_dir = chosen
        try:  # everything is checked before the run's folder is made
            config.validate()
            if resume:  # the saved run decides the data and the model
                folder = check_output_dir(config, resume)
                self.check_inputs(saved_config(folder))  # readable and valid
            else:
                self.check_inputs(config)
                folder = check_output_dir(config, resume)
        except WorkbenchError as exc:
            self.show_error("Cannot fine-tune", str(exc))
            return
        self.output_dir.setText(str(folder))
        limits = {"max_steps": config.max_steps if config.max_steps > 0 else None,
                  "epochs": None if config.max_steps > 0 else config.epochs}
        processes = self.processes.value()
        cpu = not (self.loaded is not None and self.loaded.device.startswith("cuda"))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if resume:
                command = train_command(folder / RUN_FILE, True, processes=processes, cpu=cpu,
                                        **limits)
            else:
                command = train_command(save_config(config, folder), processes=processes,
                                        cpu=cpu)
            process = launch(folder, command)
        except OSError as exc:
            self.show_error("Cannot fine-tune", f"Cannot start the run in {folder}: "
                            f"{exc.strerror or exc}.")
            return
        self.remember_run(folder)
        name = folder.name
        if not resume:
            self.rows[name] = []
        run = self.follow(folder, name, started_here=True, process=process)
        run.log_offset = self._log_size(folder)  # the new launch line onwards
        self.log_line.emit(f"{name}: started {' '.join(command)} (output in "
                           f"{folder / LOG_FILE})", "info")
        self._became_active(run, "Starting: loading the model and the data…")

    def check_inputs(self, config: FinetuneConfig) -> None:
        """The run's data files, read as the run will read them, and the loaded model when
        the run starts from it: bad input is refused here, before its folder is made and
        its process started (WorkbenchError)."""
        check_data(config)
        if self.loaded is not None and self.loaded.reference == config.model:
            check_model(config, self.loaded)

    def _became_active(self, run: FollowedRun, message: str) -> None:
        self.active = run
        if self.charts is not None:
            self.chart_pages.setCurrentWidget(self.chart_widget)
            self._curves_for(run.name)  # added now, not while the run competes for the CPU
            for plot in self.charts.values():
                plot.setOpacity(1.0)
            self.chart_widget.viewport().repaint()  # and painted now, for the same reason
        self.run_max_steps = 0
        self.held.clear()
        self.health.clear()
        self.probes.clear()
        self.progress.setValue(0)
        self.eta.setText(message)
        self.stopping = False
        self.start_button.setEnabled(False)
        self.resume_button.setEnabled(False)
        self.stop_button.setText("Stop")
        self.stop_button.setToolTip("Save a checkpoint at the next step and stop (resumable)")
        self.stop_button.setEnabled(True)
        self.use_button.setEnabled(False)
        self.poll.start()

    def stop(self) -> None:
        """First press: ask the run to stop at the next step with a checkpoint. Second
        press ("Stop now…"), after a confirmation: end its processes without saving."""
        run = self.active
        if run is None:
            return
        if not self.stopping:
            try:
                request_stop(run.folder)
            except OSError as exc:
                self.show_error("Cannot stop the run", f"Cannot write the stop request in "
                                f"{run.folder}: {exc.strerror or exc}.")
                return
            self.stopping = True
            self.eta.setText("Stopping: saving a checkpoint…")
            self.stop_button.setText("Stop now…")
            self.stop_button.setToolTip("End the run at once, without saving a checkpoint")
            return
        if self.confirm_stop_now():
            self.stop_now()

    def confirm_stop_now(self) -> bool:
        answer = QMessageBox.question(
            self, "Stop now?", "End the run at once, without saving a checkpoint? Training "
            "since its last checkpoint is lost.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def stop_now(self) -> None:
        run = self.active
        if run is None:
            return
        killed = False
        if run.process is not None and run.process.poll() is None and hasattr(os, "killpg"):
            try:
                os.killpg(run.process.pid, signal.SIGKILL)  # the session launch() made
                killed = True
            except OSError:
                pass
        if not killed:
            kill_run(run_state(run.folder))
        self.eta.setText("Stopped without saving.")

    def end_demo_run(self) -> None:
        """End this tab's run at once, without saving or asking, and stop following it (the
        screenshots' demo run, whose folder is removed, when it outlasts its wait)."""
        run = self.active
        if run is not None:
            self.stop_now()
            self._show_end(run, None, dialog=False)

    def ask_close_choice(self) -> str:
        """While a run goes and the window closes: "keep" it training in the background
        (the default), "stop" it with a checkpoint, or "cancel" the close."""
        box = QMessageBox(QMessageBox.Icon.Question, "A fine-tuning run is going",
                          f"The run {self.active.name if self.active else ''} trains in a "
                          "process of its own. Keep it training after the window closes? "
                          "The Fine-tune tab finds it again at the next start.",
                          QMessageBox.StandardButton.NoButton, self)
        keep = box.addButton("Keep training in the background",
                             QMessageBox.ButtonRole.AcceptRole)
        stop = box.addButton("Stop with a checkpoint", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(keep)
        box.exec()
        clicked = box.clickedButton()
        return "keep" if clicked is keep else "stop" if clicked is stop else "cancel"

    def remember_run(self, folder: Path) -> None:
        if not self.remember_runs:
            return
        started = [f for f in remembered_folders("finetune/runs") if f != str(folder)]
        QSettings().setValue("finetune/runs", ([str(folder)] + started)[:10])

    def find_started_runs(self) -> None:
        """At start: follow the runs this tab started in an earlier session that still go
        (the newest becomes the tab's run), and show the newest other one as it ended."""
        shown_ended = False
        for folder in remembered_folders("finetune/runs"):
            path = Path(folder)
            if not path.is_dir():
                continue
            try:
                state = run_state(path)
            except Exception as exc:  # a damaged folder never stops the window
                self.log_line.emit(f"Skipped the remembered run {folder}: {exc}", "warning")
                continue
            if state.live:
                run = self.follow(path, path.name, started_here=True)
                run.log_offset = self._log_size(path)
                if self.active is None:
                    self._became_active(run, f"Following the run in {path} (it kept "
                                        "training while the window was closed)…")
                    self.output_dir.setText(str(path))
                self.log_line.emit(f"{path.name}: still training (process {state.pid}); "
                                   "following it", "info")
            elif not shown_ended and state.state != "prepared":
                shown_ended = True
                run = self.follow(path, path.name, started_here=True)
                run.log_offset = self._log_size(path)
                run.reported = True
                self._show_end(run, state, dialog=False)

    @staticmethod
    def _log_size(folder: Path) -> int:
        try:
            return (folder / LOG_FILE).stat().st_size
        except OSError:
            return 0

    # --- following run folders -------------------------------------------------------------------
    def follow(self, folder: Path, name: str, started_here: bool = False,
               process: subprocess.Popen | None = None) -> FollowedRun:
        run = FollowedRun(name, Path(folder), RunMonitor(folder), started_here, process)
        self.followed[name] = run
        self.rows.setdefault(name, [])
        if self.charts is not None:  # its curves made now: the pass that draws a long run's
            self._curves_for(name)   # rows has enough to do
        self.poll.start()
        return run

    def attach(self, folder: str | None = None, remember: bool = True) -> None:
        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Attach to a training run folder")
        if not folder:
            return
        try:
            check_run_folder(folder)  # its numbers are read on the reader thread
        except WorkbenchError as exc:
            self.show_error("Cannot attach to the run", str(exc))
            return
        if folder not in self.attached:
            self.attached.append(folder)
        if remember:
            recent = [f for f in remembered_folders("finetune/attached") if f != folder]
            QSettings().setValue("finetune/attached", ([folder] + recent)[:5])
        name = f"{Path(folder).name} (attached)"
        if name not in self.followed:
            self.follow(Path(folder), name)
        self.poll_attached()

    def poll_attached(self) -> None:
        """Read what every followed folder added, off the GUI thread; the result is applied
        as soon as it is ready (see :meth:`_take_result`), the next read starts at the next
        tick of the poll timer."""
        if self.pending is None and self.followed:
            runs = list(self.followed.values())
            from workbench.core.training.curves import speed_unit

            self.pending = self.reader.submit(poll_runs, runs, self.smoothing.value() / 100,
                                              speed_unit(list(self.rows.values())))
            self.pending.add_done_callback(self._signal_read_done)

    def _signal_read_done(self, _future: Future) -> None:
        try:
            self.read_done.emit()
        except RuntimeError:  # the tab is gone (the window closed while a read went)
            pass

    def _take_result(self) -> None:
        """Apply the finished read's results, if it has finished."""
        if self.pending is not None and self.pending.done():
            future, self.pending = self.pending, None
            try:
                results = future.result()
            except Exception as exc:  # never the window's end; said once in the log
                self.log_line.emit(f"Reading the run folders failed: {exc}", "warning")
                results = []
            self._apply(results)

    def _poll_tick(self) -> None:
        self._take_result()
        if self.pending is None:
            if not self.followed:
                self.poll.stop()
                return
            self.poll_attached()

    def _apply(self, results: list[PollResult]) -> None:
        changed = False
        for result in results:
            run = result.run
            if self.followed.get(run.name) is not run:
                continue  # no longer followed
            if result.rows is not None and result.rows_changed:
                self.rows[run.name] = result.rows
                if result.curves is not None:
                    self.curve_data[run.name] = result.curves
                changed = True
            for text in result.log_lines:
                self.log_line.emit(f"{run.name}: {text}", "info")
            for probe in result.probes:
                self.probes.appendPlainText(f"step {probe.get('step')} · {probe.get('prompt')!r}"
                                            f" → {probe.get('text')}")
            if run is self.active:
                self._show_progress(self.rows.get(run.name, []))
                if result.ended:
                    self._show_end(run, result.state, dialog=True, log_error=result.error)
        if changed:
            self.charts_changed()

    def _show_progress(self, rows: list[dict]) -> None:
        last = next((r for r in reversed(rows) if r.get("max_steps")), None)
        if last is None:
            return
        step, total = int(last.get("step") or 0), int(last["max_steps"])
        self.run_max_steps = total
        if self.progress_ticks.due(force=step >= total):
            self.progress.setMaximum(total)
            self.progress.setValue(min(step, total))
            seconds = last.get("seconds") or 0
            if step and seconds and not self.stopping:
                left = seconds / max(step - self._first_step(rows), 1) * (total - step)
                self.eta.setText(f"step {step}/{total} · about {int(left // 60)} min "
                                 f"{int(left % 60)} s left")

    @staticmethod
    def _first_step(rows: list[dict]) -> int:
        """The step this session of the run started from (0, or a resumed checkpoint's)."""
        first = 0
        for a, b in zip(rows, rows[1:], strict=False):
            if (b.get("seconds") or 0) < (a.get("seconds") or 0):  # a resume started here
                first = int(a.get("step") or 0)
        return first

    def _show_end(self, run: FollowedRun, state: RunState | None, dialog: bool,
                  log_error: str | None = None) -> None:
        """The tab's run ended: say how, and make Resume or Use this model available."""
        if run is self.active:
            self.active = None
            self._run_ended()
        run.reported = True
        if state is None:
            state = run_state(run.folder)
        if state.state == "finished":
            self.final_model = state.final_model
            self.use_button.setEnabled(bool(state.final_model))
            self.eta.setText(f"Finished at step {state.step}; the model is in "
                             f"{state.final_model}.")
        elif state.state == "stopped":
            self.eta.setText(f"Stopped at step {state.step}; checkpoint saved: press Resume "
                             "to continue.")
        elif state.state == "failed" or log_error:
            message = state.message if state.state == "failed" else log_error
            self.eta.setText(f"Failed: {message}")
            if dialog:
                self.show_error("Fine-tuning failed", message or "The run failed.")
        else:  # interrupted ("Stop now", killed) or never got going
            self.eta.setText(state.message or "The run's process ended.")
        self.output_dir.setText(str(run.folder))

    def _run_ended(self) -> None:
        """Draw every row in the held ranges now, then fit each chart to its data in
        turn (a fit re-lays out the axes, too much for all four in one pass)."""
        self.stopping = False
        self.start_button.setEnabled(True)
        self.resume_button.setEnabled(True)
        self.stop_button.setText("Stop")
        self.stop_button.setEnabled(False)
        self.redraw(hold=True)
        self.charts_changed()

    def redraw(self, charts: tuple[str, ...] = CHART_NAMES, hold: bool | None = None) -> None:
        """Draw ``charts`` from the rows. Their ranges are held while a run goes here
        (``hold`` None), or as ``hold`` says; otherwise they fit the data."""
        if self.charts is None:
            return
        if any(self.rows.values()) or self.running:
            self.chart_pages.setCurrentWidget(self.chart_widget)
        smoothing = self.smoothing.value() / 100
        from workbench.core.training.curves import analyse, for_display, speed_unit

        unit = speed_unit(list(self.rows.values()))
        if "speed" in charts and unit != self.speed_shown:
            self.speed_shown = unit
            self.charts["speed"].setTitle(f"{unit} per second")
        for name, rows in self.rows.items():
            key = curves_key(rows, smoothing, unit)
            cached = self.curve_data.get(name)
            if cached is None or cached[0] != key:  # new rows not read by the reader thread,
                cached = self.curve_data[name] = (key, for_display(analyse(rows, smoothing,
                                                                          unit)))
            self._curves_for(name).update(cached[1], key, charts)
        self.health.setText(" · ".join(w for run in self.runs.values() for w in run.warnings))
        from workbench.ui.common.charts import round_ceiling, steady_range

        hold = self.running if hold is None else hold
        shown = 1.0 if self.running or any(self.rows.values()) else 0.0
        for chart in charts:
            self.charts[chart].setOpacity(shown)
            box = self.charts[chart].getViewBox()
            if not hold:
                self.held.pop(chart, None)
                box.enableAutoRange()
                continue
            (x0, x1), (y0, y1) = [r if r is not None else (0.0, 1.0)
                                  for r in box.childrenBounds()]
            y = steady_range(self.held.get(chart), y0, y1)
            right = max(self.run_max_steps, x1) if self.run_max_steps else round_ceiling(x1)
            if y != self.held.get(chart) or box.viewRange()[0] != [0, right] or \
                    box.autoRangeEnabled()[0]:
                box.disableAutoRange()
                box.setRange(xRange=(0, right), yRange=y, padding=0)
                self.held[chart] = y

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        """Draw the rows that came while another tab was shown: in turn while a run goes,
        all at once otherwise."""
        super().showEvent(event)
        if self.running:
            self.charts_changed()
        elif any(self.drawn.get(c, -1) < self.data_version for c in CHART_NAMES):
            self.drawn = dict.fromkeys(CHART_NAMES, self.data_version)
            self.redraw()

    def _curves_for(self, name: str) -> RunCurves:
        """The curves of run ``name`` (a key of ``rows``), added to the charts if new."""
        if name not in self.runs:
            color = COLORS[len(self.runs) % len(COLORS)]
            self.runs[name] = RunCurves(self.charts, name, color)
        return self.runs[name]

    def charts_changed(self) -> None:
        """The rows changed: every chart is stale and redraws in its turn."""
        self.data_version += 1
        if not self.redraw_timer.isActive():
            self._next_turn()

    def _next_turn(self) -> None:
        """Start the wait for the next chart's turn: a second while a run goes (every
        millisecond the window paints is one the training waits for); otherwise the next
        chart follows once this one has painted (one chart's fit a pass)."""
        self.redraw_timer.start(1000 if self.running else 50)

    def redraw_next(self) -> None:
        """Redraw the next chart that does not show the latest rows yet, then wait for
        the next turn while any other is behind."""
        stale = [c for c in CHART_NAMES if self.drawn.get(c, -1) < self.data_version]
        if not stale or not self.isVisible():  # another tab is shown: drawn when this is
            return
        turns = CHART_TURNS[self.chart_turn:] + CHART_TURNS[:self.chart_turn]
        index = next(i for i, c in enumerate(turns) if c in stale)
        chart = turns[index]
        self.chart_turn = (self.chart_turn + index + 1) % len(CHART_TURNS)
        self.drawn[chart] = self.data_version
        self.redraw((chart,))
        if len(stale) > 1:
            self._next_turn()

    def export_launch(self, path: str | None = None) -> str | None:
        config = self.config()
        try:  # the launch starts a new run in the output folder: checked as Start checks it
            config.validate()
            self.check_inputs(config)
            folder = check_output_dir(config, False)
        except WorkbenchError as exc:
            self.show_error("Cannot fine-tune", str(exc))
            return None
        if path is None:
            path = str(folder / "launch.json")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, config.to_json())
        except OSError as exc:
            self.show_error("Cannot fine-tune", f"Cannot write {path}: {exc.strerror or exc}.")
            return None
        command = f"accelerate launch -m workbench.train --config {shlex.quote(path)}"
        box = QMessageBox(QMessageBox.Icon.Information, "Launch command",
                          f"The run configuration is in {path}.\n\nRun it anywhere with:\n\n"
                          f"{command}\n\nthen attach to {config.output_dir} here to follow it.",
                          QMessageBox.StandardButton.Ok, self)
        box.setObjectName("launch-dialog")
        box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        box.open()
        self.launch_dialog = box
        return command

    def shutdown(self) -> None:
        """The window closes: stop reading run folders (the runs themselves go on)."""
        self.poll.stop()
        self.redraw_timer.stop()
        self.reader.shutdown(wait=False, cancel_futures=True)

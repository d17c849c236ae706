"""Fine-tune tab: a form for a Trainer run, live charts, stop / resume, probe texts,
"Use this model", and monitoring of any run folder written by another process."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QSplitter,
    QStackedLayout,
    QVBoxLayout,
    QWidget,
)

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.files import write_atomically
from workbench.core.common.threads import sharing_the_gil
from workbench.core.training.config import FinetuneConfig
from workbench.core.training.inputs import check_data, check_model
from workbench.core.training.memory import check_run_memory
from workbench.core.training.monitor import (
    CurveSettings,
    FollowedRun,
    PollResult,
    first_step,
    log_size,
    poll_runs,
)
from workbench.core.training.process import (
    LOG_FILE,
    RUN_FILE,
    RunState,
    kill_run,
    launch,
    request_stop,
    run_state,
    train_command,
)
from workbench.core.training.run_folder import check_output_dir, save_config, saved_config
from workbench.core.training.runs import RunMonitor, check_run_folder
from workbench.ui.common.collection import bulk_reading
from workbench.ui.common.job_thread import JobSlot, JobThread
from workbench.ui.common.setting_widgets import setting_slider, slider_value
from workbench.ui.common.state import remembered_folders
from workbench.ui.common.tab_base import WorkbenchTab
from workbench.ui.common.widgets import ProgressThrottle
from workbench.ui.common.worker import ModelWorker
from workbench.ui.training.charts import CHART_NAMES, RunCharts, RunCurves
from workbench.ui.training.form import RunForm

if TYPE_CHECKING:  # numpy comes with it: loaded after the window is shown, not before
    from workbench.core.training.curves import CurveData


def read_runs(runs: list[FollowedRun], smoothing: float, unit: str) -> list[PollResult]:
    """:func:`~workbench.core.training.monitor.poll_runs` on the reader thread: it hands
    the GIL back to the GUI thread quickly, and what it makes is kept out of the GUI
    thread's collections."""
    with sharing_the_gil(), bulk_reading():
        return poll_runs(runs, smoothing, unit)


class FinetuneTab(RunForm, RunCharts, WorkbenchTab):
    title = "Fine-tune"
    use_model = Signal(str)  # a trained model folder for the other tabs

    log_line = Signal(str, str)  # a line for the log dock, its level

    def __init__(self, worker: ModelWorker, parent: QWidget | None = None) -> None:
        super().__init__(worker, parent)
        self.followed: dict[str, FollowedRun] = {}
        self.curve_data: dict[str, tuple[tuple, CurveData]] = {}  # run -> (its key, data)
        self.active: FollowedRun | None = None  # the run this tab started or found going
        self.stopping = False
        self.remember_runs = True  # found again at the next start (not the screenshots' demo)
        # the run folders are read on the tab's own thread, one read at a time
        self.reader = JobThread("run-reader", self)
        self.read = JobSlot(self, self.reader)
        self.charts: dict | None = None
        self.runs: dict[str, RunCurves] = {}
        self.rows: dict[str, list[dict]] = {}
        self.attached: list[str] = []
        self.final_model: str | None = None
        self.speed_shown = "tokens"  # the unit of the throughput chart
        self._build_form()
        right = self._build_run_panel()
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.form_panel)
        split.addWidget(right)
        split.setSizes([380, 900])
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_label)
        layout.addWidget(split, 1)
        self._make_redraw_turns()
        self.run_max_steps = 0
        self.progress_ticks = ProgressThrottle()
        # Run folders are read on the reader thread; a read is applied when it ends, and
        # each tick asks for the next read.
        self.poll = QTimer(self)
        self.poll.setInterval(500)
        self.poll.timeout.connect(self._poll_tick)
        self.task.currentIndexChanged.connect(self._task_changed)
        self._task_changed()

    def _build_run_panel(self) -> QWidget:
        """The right side: progress, smoothing, health warnings, the charts and the probe
        texts."""
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
        self.smoothing = setting_slider(CurveSettings, "smoothing")
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
        return right

    def build_deferred(self) -> None:
        if self.charts is not None:
            return
        self._build_charts()

    def restore(self) -> None:
        """Follow again the runs attached before, and the runs started here that still go."""
        for folder in remembered_folders("finetune/attached"):
            if Path(folder).is_dir():
                self.attach(folder, remember=False)
        self.find_started_runs()

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
        run.log_offset = log_size(folder)  # the new launch line onwards
        self.log_line.emit(f"{name}: started {' '.join(command)} (output in "
                           f"{folder / LOG_FILE})", "info")
        self._became_active(run, "Starting: loading the model and the data…")

    def check_inputs(self, config: FinetuneConfig) -> None:
        """The run's data files, read as the run will read them, the loaded model when the
        run starts from it, and whether the run fits in memory: bad input is refused here,
        before its folder is made and its process started (WorkbenchError). The memory
        check reads headers only (milliseconds, no torch): it counts on the loaded model's
        device, the CPU when none is loaded; the run's process checks again on its own."""
        check_data(config)
        if self.loaded is not None and self.loaded.reference == config.model:
            check_model(config, self.loaded)
        check_run_memory(config, self.loaded.device if self.loaded is not None else "cpu")

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
                run.log_offset = log_size(path)
                if self.active is None:
                    self._became_active(run, f"Following the run in {path} (it kept "
                                        "training while the window was closed)…")
                    self.output_dir.setText(str(path))
                self.log_line.emit(f"{path.name}: still training (process {state.pid}); "
                                   "following it", "info")
            elif not shown_ended and state.state != "prepared":
                shown_ended = True
                run = self.follow(path, path.name, started_here=True)
                run.log_offset = log_size(path)
                run.reported = True
                self._show_end(run, state, dialog=False)

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
        as soon as it is ready (see :meth:`_apply`), the next read starts at the next tick
        of the poll timer."""
        if not self.read.running and self.followed:
            runs = list(self.followed.values())
            from workbench.core.training.curves import speed_unit

            smoothing = slider_value(CurveSettings, "smoothing", self.smoothing)
            unit = speed_unit(list(self.rows.values()))
            self.read.start("Read the run folders",
                            lambda _ctx: read_runs(runs, smoothing, unit),
                            finished=self._apply, failed=self._read_failed)

    def _read_failed(self, error: object, _details: str) -> None:
        # never the window's end; said once in the log
        self.log_line.emit(f"Reading the run folders failed: {error}", "warning")
        self._apply([])

    def _poll_tick(self) -> None:
        if not self.read.running:
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
                left = seconds / max(step - first_step(rows), 1) * (total - step)
                self.eta.setText(f"step {step}/{total} · about {int(left // 60)} min "
                                 f"{int(left % 60)} s left")

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

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        """Draw the rows that came while another tab was shown: in turn while a run goes,
        all at once otherwise."""
        super().showEvent(event)
        if self.running:
            self.charts_changed()
        elif any(self.drawn.get(c, -1) < self.data_version for c in CHART_NAMES):
            self.drawn = dict.fromkeys(CHART_NAMES, self.data_version)
            self.redraw()

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
        self.reader.stop()  # after the read under way, which no one hears of

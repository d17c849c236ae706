"""The Generate tab's single run: the output streamed in and coloured by probability, the
candidates of a step, per-step curves, branches and sessions (the distribution explorer and
the sampler-stage inspector: :mod:`workbench.ui.generation.step_views`). The view owns the
jobs it starts: the generation, the explorer's logits, a step's sampler stages, a branch, a
session being saved."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from workbench.core.common.errors import WorkbenchError
from workbench.core.generation.explore import Branch, branch
from workbench.core.generation.generate import generate
from workbench.core.generation.records import GenerationResult, StepRecord, TokenEvent
from workbench.core.generation.settings import SamplingSettings
from workbench.core.generation.step_inspection import TOP_N
from workbench.ui.common.job_thread import JobSlot
from workbench.ui.common.stale import mark_stale
from workbench.ui.common.widgets import StatusLine, TokenView, visible_token
from workbench.ui.common.worker import ModelWorker, WorkerContext
from workbench.ui.generation.controls import DecodingControls
from workbench.ui.generation.step_views import StepViews
from workbench.ui.interpret.attribution_view import AttributionDialog


def token_tooltip(step: StepRecord) -> str:
    raw = "" if math.isnan(step.raw_probability) else f", model p = {step.raw_probability:.3f}"
    return (f"step {step.index}: {step.text!r} (id {step.token_id}), "
            f"p = {step.probability:.3f}{raw}")


class SingleRunView(StepViews, QWidget):
    """The "Generate" page of the tab. ``run_ended`` follows the end of a generation, however
    it ended; ``inspect_attention`` carries the prompt and the shown sequence."""

    run_ended = Signal()
    inspect_attention = Signal(str)

    def __init__(self, worker: ModelWorker, prompt: QPlainTextEdit, controls: DecodingControls,
                 show_error: Callable[[str, str], object], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.worker, self.prompt, self.controls = worker, prompt, controls
        self.show_error = show_error
        # the view's jobs, one slot for each kind (a slot's ``running``: whether its job runs)
        self.run_slot = JobSlot(self, worker)  # the generation
        self.explore_slot = JobSlot(self, worker)  # the explorer's logits
        self.branch_slot = JobSlot(self, worker)  # a branch while it is generated
        self.session_slot = JobSlot(self, worker)  # a session while it is saved
        self.stage_slot = JobSlot(self, worker)  # the selected step's sampler stages
        self.stage_request = 0  # the latest stages asked for; an earlier job's answer is late
        self.stage_inspector = None  # made with the charts (build_deferred)
        self.logged: list[tuple[str, str]] = []  # lines for the log (see log)
        self.pending: list[TokenEvent] = []
        self.result: GenerationResult | None = None
        self.branches: list[Branch] = []
        # what a generation that fails or is cancelled shows again (greyed): the run before
        # it, its branches and the sequence that was shown
        self.previous: tuple[GenerationResult | None, list[Branch], int] = (None, [], 0)
        self.steps: dict[int, list[StepRecord]] = {}
        self.selected_step: int | None = None
        self.explore_logits = None
        self.explore_texts: dict[int, str] = {}  # token id -> text, decoded on the worker
        self.explore_prefix: list[int] = []
        self.explore_breakers: dict[str, frozenset[int]] = {}  # DRY's, found on the worker
        self.candidate_chart = self.step_curves = None
        self.flush_timer = QTimer(self)  # tokens arrive faster than a repaint should happen
        self.flush_timer.setInterval(40)
        self.flush_timer.timeout.connect(self.flush_tokens)
        self.curves_drawn = 0.0  # when the step curves were last redrawn while streaming
        top = self._build_top_row()
        self._build_results()
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.results_view, 1)

    def _build_top_row(self) -> QHBoxLayout:
        """The run's numbers, the sequence shown, and the buttons on the run and its
        selected token."""
        top = QHBoxLayout()
        self.sequence_picker = QComboBox()
        self.sequence_picker.setToolTip("Which returned sequence to show")
        self.sequence_picker.currentIndexChanged.connect(self.show_sequence)
        self.sequence_picker.setVisible(False)
        self.stats = StatusLine("generation-stats")
        self.stats.setText("Press Generate: the text streams in below, each token coloured by "
                           "its probability.")
        self.save_session_button = QPushButton("Save session…")
        self.save_session_button.setToolTip("Save prompt, settings, model hash, outputs and "
                                            "branches")
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
        self.why_button = QPushButton("Why this token?")
        self.why_button.setObjectName("why-this-token")
        self.why_button.setToolTip("Input attribution of the clicked token (captum): which "
                                   "tokens before it made the model choose it")
        self.why_button.setEnabled(False)
        self.why_button.clicked.connect(self.why_this_token)
        top.addWidget(self.why_button)
        self.stages_button = QPushButton("Sampler stages")
        self.stages_button.setObjectName("sampler-stages")
        self.stages_button.setCheckable(True)
        self.stages_button.setToolTip("The clicked token's step after each processor of the "
                                      "sampler chain, in the order generation applies them "
                                      "(one forward pass of the text before it)")
        self.stages_button.setEnabled(False)
        self.stages_button.toggled.connect(self._stages_toggled)
        top.addWidget(self.stages_button)
        self.attribution: AttributionDialog | None = None  # made on first use
        top.addWidget(self.open_session_button)
        top.addWidget(self.save_session_button)
        return top

    def _build_results(self) -> None:
        """``results_view``: the output above the candidates and the curves, or the sampler
        stages in their place."""
        self.output = TokenView("output", "Generated text appears here, token by token. Each "
                                "token's background shows the probability the sampler gave it "
                                "(red: unlikely, green: near certain); click a token to see "
                                "its candidates.")
        self.output.token_clicked.connect(self.select_step)
        # no object name: a view, not a setting to restore (restored on, it asked for logits
        # at launch, before any model was loaded, and said it failed)
        self.explore = QCheckBox("Explore: reshape this step with the sliders")
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
        # the candidates and curves, or the sampler stages in their place (Sampler stages)
        self.lower_stack = QStackedWidget()
        self.lower_stack.addWidget(lower)
        self.stages_holder = QWidget()
        QVBoxLayout(self.stages_holder).setContentsMargins(0, 0, 0, 0)
        self.lower_stack.addWidget(self.stages_holder)
        self.results_view = QSplitter(Qt.Orientation.Vertical)  # greyed out when stale
        self.results_view.addWidget(self.output)
        self.results_view.addWidget(self.lower_stack)
        self.results_view.setSizes([150, 330])

    def build_deferred(self) -> None:
        """Create the pyqtgraph charts (after the window is shown: they cost start-up time)."""
        if self.candidate_chart is not None:
            return
        from workbench.ui.common.charts import CandidateChart, StepCurves

        self.candidate_chart = CandidateChart()
        self.candidate_chart.candidate_clicked.connect(self.branch_from)
        self.chart_holder.layout().addWidget(self.candidate_chart)
        self.step_curves = StepCurves()
        self.curves_holder.layout().addWidget(self.step_curves)
        from workbench.ui.generation.stage_inspector import StageInspector

        self.stage_inspector = StageInspector()
        self.stages_holder.layout().addWidget(self.stage_inspector)

    # --- a generation ------------------------------------------------------------------------
    def start(self, prompt: str, settings: SamplingSettings) -> None:
        """Generate with ``settings`` (already checked); the earlier run is shown again,
        greyed, if this one fails or is cancelled."""
        self.previous = (self.result, list(self.branches), self.sequence_picker.currentIndex())
        self.results_view.setEnabled(True)
        self.output.clear_tokens()
        self.pending.clear()
        self.steps = {}
        self.result = None
        self.branches = []
        self.save_session_button.setEnabled(False)
        self.selected_step = None
        self.explore.setChecked(False)
        self._stages_stale()
        self.stats.setText("Generating…")
        self._fill_picker([f"Sequence {i + 1}" for i in range(settings.num_return_sequences)])

        def job(ctx: WorkerContext) -> GenerationResult:
            return generate(ctx.model(), prompt, settings, ctx, top_n=TOP_N)

        self.run_slot.start("Generate", job,
                            event=self._generation_event, finished=self._generation_done,
                            failed=lambda error, details: self._generation_ended(
                                f"Failed: {error}"),
                            cancelled=lambda: self._generation_ended("Cancelled."))
        self._update_curves()  # the charts' frames now, before the tokens stream in
        self.flush_timer.start()

    def stop(self) -> None:
        self.run_slot.cancel()

    def _generation_event(self, event: object) -> None:
        if isinstance(event, TokenEvent):
            self.pending.append(event)

    def _generation_done(self, result: object) -> None:
        if isinstance(result, GenerationResult):
            self.flush_tokens(curves=False)  # they are drawn once, at the end (in _ended)
            self.result = result
            self.previous = (None, [], 0)
            self.steps = {i: s.steps for i, s in enumerate(result.sequences)}
            self.save_session_button.setEnabled(True)
            self.inspect_button.setEnabled(True)
            note = " (stopped)" if result.stopped else ""
            # the decoding path, when it is not the loaded model (the status bar names it)
            path = "" if result.decoding == "exact" else f" ({result.decoding})"
            used = SamplingSettings(**result.settings).describe()
            self.stats.setText(" ".join(
                [f"{result.new_tokens} tokens in {result.seconds:.1f} s, "
                 f"{result.tokens_per_second:.1f} tokens/s{path}{note} · {used} · click a "
                 "token to inspect it."] + [f"<b>Note:</b> {n}" for n in result.notices]))
            if result.settings.get("num_beams", 1) > 1:
                self.show_sequence(self.sequence_picker.currentIndex())
        self._ended()

    def _generation_ended(self, message: str) -> None:
        """The generation failed or was cancelled: what it streamed is dropped, and the run
        before it (if any) is shown again, greyed out and said to be the previous one."""
        self.pending.clear()
        result, branches, shown = self.previous
        if result is not None:
            self._show_result(result, branches, shown)
            message = mark_stale(self.results_view, message)
        else:
            self.output.clear_tokens()
            self.steps = {}
            self._fill_picker([])
            self.inspect_button.setEnabled(False)
        self.stats.setText(message)
        self._ended()

    def _ended(self) -> None:
        self._sync_stages_button()
        self.flush_tokens(final=True)  # the job is cleared by now: x to the steps there are
        self.flush_timer.stop()
        self.run_ended.emit()

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

    # --- what is shown -----------------------------------------------------------------------
    def _fill_picker(self, names: list[str], current: int = 0) -> None:
        self.sequence_picker.blockSignals(True)
        self.sequence_picker.clear()
        self.sequence_picker.addItems(names)
        self.sequence_picker.setCurrentIndex(min(max(current, 0), len(names) - 1))
        self.sequence_picker.blockSignals(False)
        self.sequence_picker.setVisible(len(names) > 1)

    def _show_result(self, result: GenerationResult, branches: Sequence[Branch] = (),
                     shown: int = 0) -> None:
        """Show a whole run (a session's, or the one before a failed generation) and its
        sequence ``shown``."""
        self.result = result
        self.branches = list(branches)
        self.steps = {i: s.steps for i, s in enumerate(result.sequences)}
        names = [f"Sequence {i + 1}" for i in range(len(result.sequences))]
        for n, b in enumerate(self.branches):
            self.steps[len(result.sequences) + n] = b.sequence.steps
            names.append(f"Branch {n + 1}: {b.label}")
        self._fill_picker(names, shown)
        self.save_session_button.setEnabled(True)
        self.inspect_button.setEnabled(True)
        self.show_sequence(self.sequence_picker.currentIndex())

    def show_sequence(self, index: int) -> None:
        self.output.clear_tokens()
        for step in self.steps.get(max(index, 0), []):
            self.output.append_token(step.text, step.probability, token_tooltip(step))
        self.selected_step = None
        self.why_button.setEnabled(False)
        self._stages_stale()
        self._update_curves()

    def current_steps(self) -> list[StepRecord]:
        return self.steps.get(max(self.sequence_picker.currentIndex(), 0), [])

    def _update_curves(self) -> None:
        if self.step_curves is None:
            return
        steps = self.current_steps()
        streaming = self.controls.settings().max_new_tokens if self.run_slot.running else None
        self.step_curves.set_steps([s.entropy for s in steps], [s.surprisal for s in steps],
                                   [s.kept_count for s in steps], streaming)
        self.step_curves.mark(self.selected_step)

    def select_step(self, index: int) -> None:
        steps = self.current_steps()
        if not 0 <= index < len(steps):
            return
        self.selected_step = index
        self.why_button.setEnabled(not self.run_slot.running)
        self._sync_stages_button()
        if self.stages_button.isChecked():
            self.request_stages()
        self._update_curves()
        if self.explore.isChecked():
            self._request_logits()
        else:
            self._show_recorded(steps[index])

    def why_this_token(self) -> None:
        """Open the attribution window on the clicked token of the sequence shown."""
        steps = self.current_steps()
        if self.result is None or self.selected_step is None or self.selected_step >= len(steps):
            return
        if self.attribution is None:
            self.attribution = AttributionDialog(self.worker, self, self.show_error)
        prompt, prompt_ids = self.result.prompt, list(self.result.prompt_token_ids)
        ids, texts = [s.token_id for s in steps], [s.text for s in steps]
        index = self.selected_step
        self.attribution.open_on(lambda view: view.set_generated(
            prompt, ids, index, prompt_ids=prompt_ids, output_texts=texts))

    def _selected_record(self) -> StepRecord | None:
        steps = self.current_steps()
        if self.selected_step is not None and self.selected_step < len(steps):
            return steps[self.selected_step]
        return None

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

    # --- branches ----------------------------------------------------------------------------
    def branch_from(self, candidate: int) -> None:
        """Continue generation from the selected step with candidate ``candidate`` instead."""
        if (self.result is None or self.selected_step is None or self.explore.isChecked()
                or self.branch_slot.running or self.run_slot.running):
            return
        shown = max(self.sequence_picker.currentIndex(), 0)
        steps = self.current_steps()
        if candidate >= len(steps[self.selected_step].candidates):
            return
        token = steps[self.selected_step].candidates[candidate].token_id
        if token == steps[self.selected_step].token_id:  # a branch to itself: the same text
            self.stats.setText(f"{visible_token(steps[self.selected_step].text)} is the token "
                               f"chosen at step {self.selected_step}: click another candidate "
                               "to branch.")
            return
        base = self.result if shown < len(self.result.sequences) else GenerationResult(
            self.result.prompt, [self.branches[shown - len(self.result.sequences)].sequence],
            0.0, False, prompt_token_ids=self.result.prompt_token_ids)
        parent = shown if shown < len(self.result.sequences) else 0
        step, settings = self.selected_step, self.controls.settings()

        def job(ctx: WorkerContext) -> Branch:
            return branch(ctx.model(), base, parent, step, token, settings, ctx, top_n=TOP_N)

        self.branch_slot.start("Branch", job, finished=self._branch_done,
                               failed=self._branch_failed, cancelled=self._branch_cancelled)
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

    def _branch_done(self, result: object) -> None:
        if isinstance(result, Branch):
            self._add_branch(result)

    def _branch_failed(self, error: object, details: str) -> None:
        self.stats.setText(f"Failed: {error}")

    def _branch_cancelled(self) -> None:
        self.stats.setText("Branch cancelled.")

    # --- sessions ----------------------------------------------------------------------------
    def save_session(self, path: str | None = None) -> None:
        if self.result is None:
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save session", "session.json",
                                                  "LM Workbench session (*.json)")
        if not path:
            return
        prompt, settings, result = self.prompt.toPlainText(), self.controls.settings(), self.result
        branches = list(self.branches)

        def job(ctx: WorkerContext) -> str:
            from workbench.core.generation.session import model_fingerprint, save_session

            ctx.progress("Hashing the model files…", None)
            return str(save_session(path, prompt, settings, result, model_fingerprint(ctx.model()),
                                    branches))

        self.session_slot.start("Save session", job, finished=self._session_saved,
                                failed=self._session_failed, cancelled=self._session_cancelled)

    def _session_saved(self, result: object) -> None:
        self.stats.setText(f"Session saved to {result}.")

    def _session_failed(self, error: object, details: str) -> None:
        self.stats.setText(f"Failed: {error}")

    def _session_cancelled(self) -> None:
        pass  # nothing to say: the slot has let go of the job

    def open_session(self, path: str | None = None) -> None:
        from workbench.core.generation.session import load_session

        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Open session", "",
                                                  "LM Workbench session (*.json);;All files (*)")
        if not path:
            return
        try:
            session = load_session(path)
        except WorkbenchError as exc:
            self.show_error("Cannot open the session", str(exc))
            return
        self.prompt.setPlainText(session.prompt)
        self.controls.set_settings(session.settings)
        self.results_view.setEnabled(True)
        if session.result is not None:
            self._show_result(session.result, session.branches)
        else:
            self.branches = []
        for note in session.notes:
            self.log(f"{note} in {path}; the rest of the session is shown.", "warning")
        model = session.model.get("name", "an unknown model")
        digest = (session.model.get("files") or [{}])[0].get("sha256", "")[:12]
        shown = len(session.branches)
        self.stats.setText(f"Session from {session.created[:19]} with {model}"
                           + (f" (weights sha256 {digest}…)" if digest else "")
                           + (f", {shown} branch{'es' if shown != 1 else ''}" if shown else "")
                           + "." + (f" {len(session.notes)} damaged part(s) left out: see "
                                    "the log." if session.notes else ""))

    def log(self, message: str, level: str = "info") -> None:
        """A line for the window's log dock (as ``show_error`` reaches its dialogs); a view
        outside a window has no log, and the line stays in ``logged``."""
        self.logged.append((message, level))
        log = getattr(self.window(), "log", None)
        if log is not None and hasattr(log, "append"):
            log.append(message, level)

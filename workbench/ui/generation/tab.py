"""Generate tab: decoding controls, streaming output coloured by probability, per-token
candidates, per-step curves, a distribution explorer, and strategies side by side.

The tab puts its parts together and dispatches between them: the controls
(``generate_controls``), the single run with its explorer, branches and sessions
(``generate_single``), and the comparison (``generate_compare``). One run at a time: a
generation or a comparison; Stop cancels this tab's run only.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QSplitter, QTabWidget, QVBoxLayout, QWidget

from workbench.core.common.errors import WorkbenchError
from workbench.core.generation.records import GenerationResult, StepRecord
from workbench.core.generation.settings import SamplingSettings
from workbench.core.models.catalog import CAUSAL_LM
from workbench.ui.common.skeleton import text_box
from workbench.ui.common.tab_base import WorkbenchTab
from workbench.ui.common.worker import ModelWorker
from workbench.ui.generation.compare import CompareView
from workbench.ui.generation.controls import DecodingControls
from workbench.ui.generation.single import SingleRunView


class GenerateTab(WorkbenchTab):
    inspect_attention = Signal(str)  # the prompt and the shown sequence, for the Attention tab
    title = "Generate"
    tasks = (CAUSAL_LM,)
    needs_text = "a causal language model (e.g. SmolLM2-135M-Instruct)"

    def __init__(self, worker: ModelWorker, parent: QWidget | None = None) -> None:
        super().__init__(worker, parent)
        self.controls = DecodingControls(self.show_error)
        self.prompt = text_box("prompt", "Type a prompt…", "Write one sentence about the sea.")
        self.prompt.setMaximumHeight(90)
        self.single = SingleRunView(worker, self.prompt, self.controls, self.show_error)
        self.compare = CompareView(worker, self.prompt, self.show_error)
        self.modes = QTabWidget()
        self.modes.setObjectName("generate-modes")
        self.modes.addTab(self.single, "Generate")
        self.modes.addTab(self.compare, "Compare strategies")

        self.controls.generate_button.clicked.connect(self.start)
        self.controls.stop_button.clicked.connect(self.stop)
        self.compare.compare_button.clicked.connect(self.start_compare)
        self.controls.changed.connect(self.single.settings_changed)
        self.single.inspect_attention.connect(self.inspect_attention)
        self.single.run_ended.connect(self._sync_buttons)
        self.compare.run_ended.connect(self._sync_buttons)

        outputs = QWidget()
        layout = QVBoxLayout(outputs)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Prompt"))
        layout.addWidget(self.prompt)
        layout.addWidget(self.modes, 1)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.controls)
        splitter.addWidget(outputs)
        splitter.setStretchFactor(1, 3)
        splitter.setSizes([330, 950])
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_label)
        layout.addWidget(splitter, 1)

        # The names the window, the launcher, the benchmarks and the saved-state tests reach
        # the tab's parts by.
        controls, single = self.controls, self.single
        self.sample, self.chat = controls.sample, controls.chat
        self.temperature, self.top_k, self.top_p = controls.temperature, controls.top_k, controls.top_p
        self.max_new, self.seed = controls.max_new, controls.seed
        self.preset, self.sliders = controls.preset, controls.sliders
        self.generate_button, self.stop_button = controls.generate_button, controls.stop_button
        self.output, self.stats, self.explore = single.output, single.stats, single.explore

    def build_deferred(self) -> None:
        """Create the pyqtgraph charts (after the window is shown: they cost start-up time)."""
        self.single.build_deferred()
        self.compare.build_deferred()

    # --- dispatch ----------------------------------------------------------------------------
    def running(self) -> bool:
        """Whether a generation or a comparison of this tab runs (or waits to)."""
        return self.single.run_slot.running or self.compare.run_slot.running

    def start(self) -> None:
        """Generate with the settings shown, or say in one dialog why they cannot run."""
        if self.running():
            return
        settings = self.controls.settings()
        try:
            settings.validate()
        except WorkbenchError as exc:
            self.show_error("Cannot generate", str(exc))
            return
        self.modes.setCurrentIndex(0)
        self.single.start(self.prompt.toPlainText(), settings)
        self._sync_buttons()

    def start_compare(self) -> None:
        if not self.running() and self.compare.start(self.controls.settings()):
            self._sync_buttons()

    def primary_button(self):
        """Ctrl+Return: Compare in the comparison view, else Generate."""
        if self.modes.currentWidget() is self.compare:
            return self.compare.compare_button
        return self.controls.generate_button

    def stop(self) -> None:
        self.single.stop()  # this tab's own run only
        self.compare.stop()

    def busy_changed(self, busy: bool) -> None:
        self._sync_buttons()

    def _sync_buttons(self) -> None:
        idle = not self.running()
        self.controls.generate_button.setEnabled(idle)
        self.compare.compare_button.setEnabled(idle)
        self.controls.stop_button.setEnabled(not idle)

    def shutdown(self) -> None:
        self.single.flush_timer.stop()
        self.compare.flush_timer.stop()

    # --- the parts' state and actions, by the names other modules use -------------------------
    @property
    def result(self) -> GenerationResult | None:
        return self.single.result

    @property
    def explore_logits(self):
        return self.single.explore_logits

    def settings(self) -> SamplingSettings:
        return self.controls.settings()

    def set_settings(self, settings: SamplingSettings) -> None:
        self.controls.set_settings(settings)

    def reload_presets(self) -> None:
        self.controls.reload_presets()

    def apply_preset(self, name: str) -> None:
        self.controls.apply_preset(name)

    def open_session(self, path: str | None = None) -> None:
        self.single.open_session(path)

    def current_steps(self) -> list[StepRecord]:
        return self.single.current_steps()

    def select_step(self, index: int) -> None:
        self.single.select_step(index)

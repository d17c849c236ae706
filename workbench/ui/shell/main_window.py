"""The main window: model bar, four tabs, log dock, status bar, menus, persisted settings."""

from __future__ import annotations

from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTabWidget,
    QToolBar,
    QWidget,
)

from workbench import APP_NAME
from workbench.core.common.errors import NeedsPickle, NeedsRemoteCode, WorkbenchError
from workbench.core.common.jobs import LogLine, Progress
from workbench.core.models.catalog import CAUSAL_LM, DEFAULT_MODEL
from workbench.core.models.loader import LoadedModel, LoadOptions
from workbench.ui.common import theme
from workbench.ui.common.collection import gui_thread_garbage_collection
from workbench.ui.common.job_thread import JobHandle, JobSlot
from workbench.ui.common.state import (
    as_bytes,
    as_number,
    as_text,
    open_settings,
    read_value,
    reset,
    restore_controls,
    save_controls,
    settings_notes,
    shown,
)
from workbench.ui.common.tab_base import WorkbenchTab
from workbench.ui.common.widgets import ProgressThrottle
from workbench.ui.common.worker import ModelWorker
from workbench.ui.evaluation.tab import EvaluateTab
from workbench.ui.generation.tab import GenerateTab
from workbench.ui.interpret.tab import AttentionTab
from workbench.ui.shell.about import about_html
from workbench.ui.shell.log_panel import LogPanel
from workbench.ui.shell.model_picker import ModelPicker
from workbench.ui.training.tab import FinetuneTab

RUN_SHORTCUT = "Ctrl+Return"


def initial_theme(explicit: str | None) -> tuple[str, str]:
    """The theme to start with: ``--theme``, else the saved choice, else the system's; and
    a note when a saved value had to be reset."""
    if explicit is not None:
        return explicit, ""
    notes: list[str] = []
    try:
        settings = open_settings()
    except WorkbenchError:
        return "system", ""

    def choice(value: object) -> str:
        if value not in theme.THEMES:
            raise ValueError(f"{shown(value)} is not one of {', '.join(theme.THEMES)}")
        return str(value)

    saved = read_value(settings, "window/theme", choice, notes)
    return saved or "system", " ".join(notes)


class MainWindow(QMainWindow):
    def __init__(self, initial_model: str | None = None, device: str | None = None,
                 autoload: bool = True, parent: QWidget | None = None,
                 theme_choice: str | None = None) -> None:
        super().__init__(parent)
        try:  # before anything reads the settings: stored objects are cut out, unread
            open_settings()
        except WorkbenchError:
            pass  # restore_settings says so in the log, and reads nothing
        # the colours first, so that every widget and chart is made in them
        self.theme_choice, self.theme_note = initial_theme(theme_choice)
        theme.apply(QApplication.instance(), self.theme_choice)
        self.setWindowTitle(APP_NAME)
        self.resize(1280, 820)
        self.worker = ModelWorker(self)
        self.loaded: LoadedModel | None = None
        self.load_slot = JobSlot(self, self.worker)  # the model load while it runs
        self.permission_asked: set[int] = set()  # failed loads answered by a permission dialog
        self.job_titles: dict[int, str] = {}  # a failed job's dialog is titled after it
        self.last_dialog: QMessageBox | None = None
        self._requested: tuple[str, LoadOptions] | None = None
        self.persist = True  # save settings on close (off for --screenshot)

        self.picker = ModelPicker()
        self.picker.load_requested.connect(self.load_model)
        bar = QToolBar("Model")
        bar.setObjectName("model-toolbar")
        bar.setMovable(False)
        bar.addWidget(self.picker)
        self.addToolBar(bar)

        self.tabs = QTabWidget()
        self.tabs.setObjectName("tabs")
        generate = GenerateTab(self.worker)
        self.tab_pages: list[WorkbenchTab] = [
            generate, AttentionTab(self.worker), FinetuneTab(self.worker),
            EvaluateTab(self.worker, current_settings=generate.settings)]
        for page in self.tab_pages:
            self.tabs.addTab(page, page.title)
            page.set_model(None)
        self.setCentralWidget(self.tabs)

        self.log = LogPanel(self)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.log)
        self.picker.discovery_finished.connect(self._log_discovery)

        self._build_status_bar()
        self._build_menus()
        self.show_shortcuts_in_tooltips()
        self._connect_worker()
        self.memory_timer = QTimer(self)
        self.memory_timer.setInterval(2000)
        self.memory_timer.timeout.connect(self.update_memory)
        self.memory_timer.start()

        self.restore_settings()
        self.picker.decode.currentTextChanged.connect(self.set_decode)
        self.set_decode(self.picker.decode.currentText())
        if initial_model:
            self.picker.set_reference(initial_model)
        if device:
            self.picker.device.setCurrentText(device)
        self.autoload = autoload
        self.started = False  # True once the window has appeared and restored its pages
        # Charts, the cache listing and the model load wait until the window has appeared.
        # The window is the timer's context: a window closed and deleted sooner is not called.
        QTimer.singleShot(50, self, self._after_show)

    # --- construction -------------------------------------------------------------------
    def _build_status_bar(self) -> None:
        status = self.statusBar()
        self.model_status = QLabel("No model")
        self.model_status.setObjectName("model-status")
        self.device_status = QLabel("")
        self.memory_status = QLabel("")
        self.job_status = QLabel("")
        self.progress = QProgressBar()
        self.progress_ticks = ProgressThrottle()
        self.progress.setMaximumWidth(220)
        self.progress.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Cancel the running job (Esc)")
        self.cancel_button.clicked.connect(self.cancel_job)
        for widget in (self.model_status, self.device_status, self.memory_status):
            status.addWidget(widget)
        status.addPermanentWidget(self.job_status)
        status.addPermanentWidget(self.progress)
        status.addPermanentWidget(self.cancel_button)
        self._set_busy(False)

    def _action(self, menu, text: str, slot, shortcut=None) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        menu.addAction(action)
        return action

    def _build_menus(self) -> None:
        menus = self.menuBar()
        file_menu = menus.addMenu("&File")
        self._action(file_menu, "Open model &folder…", self.picker.open_folder, "Ctrl+O")
        self._action(file_menu, "Open &GGUF file…", self.picker.open_gguf, "Ctrl+Shift+O")
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        model_menu = menus.addMenu("&Model")
        self._action(model_menu, "&Load selected model", self.picker.request_load, "Ctrl+L")
        self.cancel_action = self._action(model_menu, "&Cancel running job", self.cancel_job,
                                          "Esc")
        run_menu = menus.addMenu("&Run")
        self.run_action = self._action(run_menu, "&Run this page's main action",
                                       self.run_primary, RUN_SHORTCUT)
        run_menu.addAction(self.cancel_action)
        view_menu = menus.addMenu("&View")
        for index, page in enumerate(self.tab_pages):
            self._action(view_menu, page.title, lambda _=False, i=index: self.tabs.setCurrentIndex(i),
                         f"Ctrl+{index + 1}")
        view_menu.addSeparator()
        theme_menu = view_menu.addMenu("&Theme")
        group = QActionGroup(self)
        self.theme_actions: dict[str, QAction] = {}
        for choice in theme.THEMES:
            action = self._action(theme_menu, choice.capitalize(),
                                  lambda _=False, c=choice: self.set_theme(c))
            action.setCheckable(True)
            action.setChecked(choice == self.theme_choice)
            group.addAction(action)
            self.theme_actions[choice] = action
        view_menu.addSeparator()
        toggle = self.log.toggleViewAction()
        toggle.setShortcut(QKeySequence("Ctrl+Shift+L"))
        view_menu.addAction(toggle)
        help_menu = menus.addMenu("&Help")
        self._action(help_menu, f"&About {APP_NAME}", self.show_about, "F1")

    def run_primary(self) -> None:
        """Press the current page's main button (Generate, Compute, Start training, an
        Evaluate page's Start), as Ctrl+Return does; say so when it cannot run now."""
        page = self.tab_pages[self.tabs.currentIndex()]
        button = page.primary_button()
        if button is None:
            self.statusBar().showMessage(f"The {page.title} page has no main action here.", 4000)
        elif not button.isEnabled():
            self.statusBar().showMessage(f"{button.text()} cannot run now (a job is running, "
                                         "or no model is loaded).", 4000)
        else:
            button.click()

    def show_shortcuts_in_tooltips(self) -> None:
        """Each page's main button names its shortcut in its tooltip."""
        key = QKeySequence(RUN_SHORTCUT).toString(QKeySequence.SequenceFormat.NativeText)
        for page in self.tab_pages:
            for button in page.findChildren(QPushButton):
                if button.property("primary") and key not in button.toolTip():
                    tip = button.toolTip() or button.text().replace("&", "")
                    button.setToolTip(f"{tip} ({key})")

    def set_theme(self, choice: str) -> None:
        """Light, dark or the system's colours, now (the charts too) and at the next start."""
        self.theme_choice = choice
        theme.apply(QApplication.instance(), choice)
        theme.restyle_charts(self)
        self.theme_actions[choice].setChecked(True)

    def _connect_worker(self) -> None:
        w = self.worker
        w.job_started.connect(self._job_started)
        w.job_event.connect(self._job_event)
        w.job_finished.connect(self._job_finished)
        w.job_failed.connect(self._job_failed)
        w.job_cancelled.connect(self._job_cancelled)
        w.model_changed.connect(self._model_changed)
        w.idle.connect(lambda: self._set_busy(False))
        for page in self.tab_pages:
            w.model_changed.connect(page.set_model)
        self.tab_pages[2].use_model.connect(self.use_trained_model)
        self.tab_pages[2].log_line.connect(self.log.append)
        self.tab_pages[3].log_line.connect(self.log.append)
        for note in self.tab_pages[3].history_notes:  # read before the log existed
            self.log.append(note, "warning")
        self.tab_pages[0].inspect_attention.connect(self.inspect_attention)

    def _after_show(self) -> None:
        gui_thread_garbage_collection()
        for page in self.tab_pages:
            page.build_when_shown = True  # the others build their charts when first shown
            try:
                page.restore()
                if page is self.tabs.currentWidget():
                    page.build_deferred()
            except Exception as exc:  # a page that cannot build never stops the start-up
                self.log.append(f"The {page.title} tab could not restore everything: {exc}",
                                "warning")
        self.started = True
        self._list_cached_models()
        if self.autoload:
            self.picker.request_load()

    def _list_cached_models(self) -> None:
        # the Hugging Face cache and the other tools' folders, off the GUI thread
        self.picker.start_discovery()

    def _log_discovery(self, lines: list) -> None:
        for index, line in enumerate(lines):
            self.log.append(str(line), "info" if index == 0 else "note")

    # --- models ---------------------------------------------------------------------------
    def _trust_key(self, reference: str, what: str) -> str:
        return f"trust/{what}/{reference.replace('/', '|')}"

    def load_options(self, reference: str, device: str, dtype: str) -> LoadOptions:
        settings = QSettings()
        return LoadOptions(
            device=device, dtype=dtype,
            trust_remote_code=settings.value(self._trust_key(reference, "remote_code"),
                                             False, type=bool),
            allow_pickle=settings.value(self._trust_key(reference, "pickle"), False, type=bool))

    def load_model(self, reference: str, device: str = "auto", dtype: str = "auto"
                   ) -> JobHandle:
        options = self.load_options(reference, device, dtype)
        self._requested = (reference, options)
        self.log.append(f"Loading {reference} (device {device}, dtype {dtype})")
        handle = self.worker.submit_load(reference, options)
        job_id = handle.id
        return self.load_slot.hold(
            handle, failed=lambda error, _details: self._load_failed(job_id, error))

    def _load_failed(self, job_id: int, error: object) -> None:
        """A load failed (before the window hears of it, in :meth:`_job_failed`): a model
        that needs a permission asks for it instead of an error dialog."""
        if isinstance(error, (NeedsRemoteCode, NeedsPickle)):
            self.permission_asked.add(job_id)
            self._offer_permission(error)

    def inspect_attention(self, text: str) -> None:
        """Show the attention of a generated sequence in the Attention tab."""
        attention = self.tab_pages[1]
        attention.text.setPlainText(text)
        attention.text_b.clear()
        self.tabs.setCurrentIndex(1)
        attention.start()

    def use_trained_model(self, folder: str) -> None:
        """Load a model the Fine-tune tab trained, and go to the Generate tab."""
        if folder:
            self.picker.set_reference(folder)
            self.load_model(folder, self.picker.device.currentText(),
                            self.picker.dtype.currentText())
            self.tabs.setCurrentIndex(0)

    def _model_changed(self, loaded: LoadedModel | None) -> None:
        self.loaded = loaded
        if loaded is None:
            self.model_status.setText("No model")
            self.device_status.setText("")
            return
        self.model_status.setText(f"Model: {loaded.name}")
        self.model_status.setToolTip(f"{loaded.source.origin}\n{loaded.folder}")
        self.show_decoding()
        self.setWindowTitle(f"{loaded.name} — {APP_NAME}")
        self.update_memory()

    def set_decode(self, requested: str) -> None:
        """The model bar's decoding path: the worker gives it to the model at each job."""
        self.worker.store.decode = requested
        self.show_decoding()

    def show_decoding(self) -> None:
        """The device, dtype and the decoding path generation will run on, in the status bar."""
        from workbench.core.models.decoding import DecodePath, check_decode, plan

        loaded = self.loaded
        if loaded is None:
            return
        text = f"Device: {loaded.device} ({loaded.dtype})"
        if loaded.storage:
            text = f"Device: {loaded.device} ({loaded.storage} · float32 activations)"
        note = ""
        if loaded.task == CAUSAL_LM:
            name, base, note = plan(check_decode(self.picker.decode.currentText()),
                                    loaded.model)
            text += f" · decoding {DecodePath(name, loaded.model, note, base).label}"
        self.device_status.setText(text)
        self.device_status.setToolTip(note)

    def update_memory(self) -> None:
        from workbench.core.models.device import memory_in_use

        self.memory_status.setText(memory_in_use().describe())

    # --- jobs -------------------------------------------------------------------------------
    def _set_busy(self, busy: bool) -> None:
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)
        self.job_status.setVisible(busy)
        for page in self.tab_pages:
            page.busy_changed(busy)

    def cancel_job(self) -> None:
        if self.worker.busy:
            self.log.append("Cancelling the running job…")
            self.worker.cancel()

    @property
    def loading(self) -> bool:
        """True from a load request until its result (or error) reached the window."""
        return self.load_slot.running

    def _job_started(self, job_id: int, title: str) -> None:
        self.job_titles[job_id] = title
        self._set_busy(True)
        self.job_status.setText(title)
        self.progress.setRange(0, 0)
        self.log.append(f"Started: {title}")

    def _job_event(self, job_id: int, event: object) -> None:
        if isinstance(event, Progress):
            stage = event.fraction in (None, 0.0, 1.0)
            if not self.progress_ticks.due(force=stage):
                return
            self.job_status.setText(event.message[:60])
            if event.fraction is None:
                self.progress.setRange(0, 0)
            else:
                self.progress.setRange(0, 1000)
                self.progress.setValue(int(event.fraction * 1000))
            if stage:  # stage changes, not every tick
                self.log.append(event.message)
        elif isinstance(event, LogLine):
            self.log.append(event.message, event.level)

    def _job_finished(self, job_id: int, result: object) -> None:
        self.job_titles.pop(job_id, None)
        if isinstance(result, LoadedModel):
            self.log.append(f"Loaded {result.describe()} from {result.source.origin} "
                            f"in {result.load_seconds:.1f} s")
        else:
            self.log.append("Finished.")

    def _job_cancelled(self, job_id: int) -> None:
        self.job_titles.pop(job_id, None)
        self.log.append("Cancelled.")

    def _job_failed(self, job_id: int, error: object, details: str) -> None:
        title = self.job_titles.pop(job_id, "The job")
        if job_id in self.permission_asked:  # see _load_failed
            self.permission_asked.discard(job_id)
            return
        message = str(error).strip() or type(error).__name__
        if not isinstance(error, WorkbenchError):  # unexpected: say what kind of error
            message = f"{type(error).__name__}: {message.splitlines()[0]}"
        self.show_error(f"{title} failed", message, details)

    def show_error(self, title: str, message: str, details: str = "") -> QMessageBox:
        box = QMessageBox(QMessageBox.Icon.Critical, title, message,
                          QMessageBox.StandardButton.Ok, self)
        box.setObjectName("error-dialog")
        if details:
            box.setDetailedText(details)
        box.open()  # window-modal, but does not block the event loop
        self.last_dialog = box
        return box

    def _offer_permission(self, error: Exception) -> None:
        assert self._requested is not None
        reference, options = self._requested
        what = "remote_code" if isinstance(error, NeedsRemoteCode) else "pickle"
        box = QMessageBox(QMessageBox.Icon.Warning, "Allow this model?",
                          f"{error}\n\nAllow this for {reference} only, and load it?",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
        box.setObjectName("permission-dialog")
        box.setDefaultButton(QMessageBox.StandardButton.No)

        def answered(button) -> None:
            if box.standardButton(button) == QMessageBox.StandardButton.Yes:
                QSettings().setValue(self._trust_key(reference, what), True)
                self.log.append(f"Allowed {what.replace('_', ' ')} for {reference}.", "warning")
                self.load_model(reference, options.device, options.dtype)
            else:
                self.log.append(f"Did not load {reference}.")

        box.buttonClicked.connect(answered)
        box.open()
        self.last_dialog = box

    def show_about(self) -> None:
        box = QMessageBox(QMessageBox.Icon.Information, f"About {APP_NAME}",
                          about_html(self.loaded.device if self.loaded else None),
                          QMessageBox.StandardButton.Ok, self)
        box.setObjectName("about-dialog")
        box.open()
        self.last_dialog = box

    # --- settings ---------------------------------------------------------------------------
    def save_settings(self) -> None:
        try:  # a write makes QSettings parse the whole file: stored objects go first
            settings = open_settings()
        except WorkbenchError as exc:
            self.log.append(f"{exc} Nothing was saved.", "warning")
            return
        settings.setValue("window/geometry", self.saveGeometry())
        settings.setValue("window/state", self.saveState())
        settings.setValue("window/tab", self.tabs.currentIndex())
        settings.setValue("window/theme", self.theme_choice)
        settings.setValue("model/last", self.loaded.reference if self.loaded
                          else self.picker.reference())
        save_controls(self.picker, settings, "model")
        for page in self.tab_pages:
            save_controls(page, settings, f"tabs/{page.objectName()}")
        settings.sync()

    def restore_settings(self) -> None:
        """Saved settings are data: stored objects are cut out unread, each value is read
        with its type and range, and one that does not fit is reset and named in the log."""
        notes: list[str] = []
        try:
            settings = open_settings()
        except WorkbenchError as exc:
            settings = None
            notes.append(str(exc))
        notes[:0] = settings_notes()
        state_restored = False
        if settings is not None:
            geometry = read_value(settings, "window/geometry", as_bytes, notes)
            if geometry is not None and not self.restoreGeometry(geometry):
                reset(settings, "window/geometry", "not a saved window geometry", notes)
            state = read_value(settings, "window/state", as_bytes, notes)
            state_restored = state is not None and self.restoreState(state)
            if state is not None and not state_restored:
                reset(settings, "window/state", "not a saved window layout", notes)
            notes += restore_controls(self.picker, settings, "model")
            last = read_value(settings, "model/last", as_text, notes)
            self.picker.set_reference(DEFAULT_MODEL if last is None else last)
            for page in self.tab_pages:
                notes += restore_controls(page, settings, f"tabs/{page.objectName()}")
            last_tab = self.tabs.count() - 1
            tab = read_value(settings, "window/tab",
                             lambda value: as_number(value, 0, last_tab, integer=True), notes)
            if tab is not None:
                self.tabs.setCurrentIndex(tab)
        else:
            self.picker.set_reference(DEFAULT_MODEL)
        if not state_restored:  # first start: a slim log, most of the height for the tabs
            QTimer.singleShot(0, self, lambda: self.resizeDocks([self.log], [110],
                                                          Qt.Orientation.Vertical))
        if self.theme_note:
            notes.append(self.theme_note)
        for note in notes:
            self.log.append(note, "warning")

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt API)
        finetune = self.tab_pages[2]
        if finetune.live_run() is not None:  # it trains in a process of its own
            choice = finetune.ask_close_choice()
            if choice == "cancel":
                event.ignore()
                return
            if choice == "stop":
                finetune.stop()  # the run saves a checkpoint and ends by itself
        if self.persist:
            self.save_settings()
        self.memory_timer.stop()
        if self.worker.busy:
            self.log.append("Closing: cancelling the running job…")
        if not self.worker.shutdown(5000):
            self.log.append("The worker did not stop within 5 s.", "warning")
        for page in self.tab_pages:
            page.shutdown()
        event.accept()

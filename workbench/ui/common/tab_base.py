"""What every tab shares: the worker, the current model, and a note on compatibility."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractButton, QLabel, QWidget

from workbench.core.models.loader import LoadedModel
from workbench.ui.common.worker import ModelWorker


class WorkbenchTab(QWidget):
    """A tab wired to the shared worker and model picker."""

    title = ""
    #: model tasks this tab works with (empty: any)
    tasks: tuple[str, ...] = ()
    needs_text = ""

    def __init__(self, worker: ModelWorker, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(self.title.lower().replace("-", ""))
        self.worker = worker
        self.loaded: LoadedModel | None = None
        self.model_label = QLabel("No model loaded")
        self.model_label.setObjectName("model-note")
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.model_label.setWordWrap(True)

    def compatible(self, loaded: LoadedModel | None) -> bool:
        return loaded is not None and (not self.tasks or loaded.task in self.tasks)

    def set_model(self, loaded: LoadedModel | None) -> None:
        self.loaded = loaded
        if loaded is None:
            self.model_label.setText("No model loaded: pick one in the model bar and press Load.")
        elif self.compatible(loaded):
            layers = f", {loaded.layers} layers × {loaded.heads} heads" if loaded.layers else ""
            self.model_label.setText(f"Model: <b>{loaded.name}</b> ({loaded.task}{layers}, "
                                     f"{loaded.device}, {loaded.dtype})")
        else:
            article = "an" if loaded.task[0] in "aeiou" else "a"
            self.model_label.setText(f"Model: <b>{loaded.name}</b> is {article} {loaded.task} "
                                     f"model; this tab needs {self.needs_text}.")
        self.model_changed(loaded)

    def model_changed(self, loaded: LoadedModel | None) -> None:
        """Override to react to a newly loaded model."""

    def show_error(self, title: str, message: str) -> None:
        """One clear dialog, through the main window when the tab is in one."""
        window = self.window()
        if window is not self and hasattr(window, "show_error"):
            window.show_error(title, message)
        else:
            from PySide6.QtWidgets import QMessageBox

            QMessageBox.critical(self, title, message)

    def primary_button(self) -> QAbstractButton | None:
        """The button of this page's main action, which Run ▸ Run (Ctrl+Return) presses:
        the first one in view marked with the ``primary`` property (an Evaluate page's Start
        when that page is shown)."""
        for button in self.findChildren(QAbstractButton):
            if button.property("primary") and button.isVisibleTo(self):
                return button
        return None

    #: set by the window once it has appeared: from then on a page builds its costly widgets
    #: the first time it is shown (a window opened on one tab never pays for the others')
    build_when_shown = False

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if self.build_when_shown:
            self.build_deferred()
        super().showEvent(event)

    def build_deferred(self) -> None:
        """Override to build costly widgets (charts) the first time the page is shown after
        the window appeared; what arrived before is drawn then. Called again, it does
        nothing."""

    def restore(self) -> None:
        """Override to restore, once the window has appeared, what the page follows
        (the Fine-tune tab's runs), whichever tab is shown."""

    def shutdown(self) -> None:
        """Override to release resources (web views) when the window closes."""

    def busy_changed(self, busy: bool) -> None:
        """Override to enable or disable run buttons while the worker is busy."""

"""The shared model bar: pick a built-in or cached model, a folder or a GGUF file, and load."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QWidget,
)

from workbench.core.catalog import BUILTIN_MODELS, DEFAULT_MODEL
from workbench.core.device import DEVICE_CHOICES, DTYPE_CHOICES


class ModelPicker(QWidget):
    """Emits ``load_requested(reference, device, dtype)`` when the user asks to load."""

    load_requested = Signal(str, str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.addWidget(QLabel("Model:"))
        self.combo = QComboBox()
        self.combo.setObjectName("model")
        self.combo.setEditable(True)
        self.combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.combo.setMinimumContentsLength(34)
        self.combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.combo.setToolTip("A built-in model, a model in your Hugging Face cache, a folder, "
                              "a .gguf file or a Hub id")
        for entry in BUILTIN_MODELS:
            self.combo.addItem(entry.name)
            self.combo.setItemData(self.combo.count() - 1, entry.description, 3)  # tooltip
        self.combo.setCurrentText(DEFAULT_MODEL)
        self.combo.lineEdit().returnPressed.connect(self.request_load)
        layout.addWidget(self.combo, 1)
        self.open_folder_button = QPushButton("Open folder…")
        self.open_folder_button.clicked.connect(self.open_folder)
        layout.addWidget(self.open_folder_button)
        self.open_gguf_button = QPushButton("Open GGUF…")
        self.open_gguf_button.clicked.connect(self.open_gguf)
        layout.addWidget(self.open_gguf_button)
        layout.addWidget(QLabel("Device:"))
        self.device = QComboBox()
        self.device.setObjectName("device")
        self.device.addItems(list(DEVICE_CHOICES))
        layout.addWidget(self.device)
        layout.addWidget(QLabel("Dtype:"))
        self.dtype = QComboBox()
        self.dtype.setObjectName("dtype")
        self.dtype.addItems(list(DTYPE_CHOICES))
        layout.addWidget(self.dtype)
        self.load_button = QPushButton("Load")
        self.load_button.setObjectName("load-button")
        self.load_button.setDefault(True)
        self.load_button.clicked.connect(self.request_load)
        layout.addWidget(self.load_button)

    def reference(self) -> str:
        return self.combo.currentText().strip()

    def set_reference(self, reference: str) -> None:
        if self.combo.findText(reference) < 0:
            self.combo.addItem(reference)
        self.combo.setCurrentText(reference)

    def add_cached_models(self, names: list[str]) -> None:
        """Add models found in the Hugging Face cache (after the window is shown)."""
        for name in names:
            if self.combo.findText(name) < 0:
                self.combo.addItem(name)
                self.combo.setItemData(self.combo.count() - 1, "Hugging Face cache", 3)

    def request_load(self) -> None:
        if self.reference():
            self.load_requested.emit(self.reference(), self.device.currentText(),
                                     self.dtype.currentText())

    def open_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a transformers model folder")
        if folder:
            self.set_reference(folder)
            self.request_load()

    def open_gguf(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a GGUF model", "",
                                              "GGUF models (*.gguf);;All files (*)")
        if path:
            self.set_reference(path)
            self.request_load()

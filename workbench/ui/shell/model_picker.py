"""The shared model bar: pick a built-in model, a model already on this machine (the Hugging
Face cache, LM Studio, Ollama, GPT4All, llama.cpp's cache), a folder or a GGUF file; see the
memory it will need; and load."""

from __future__ import annotations

import html
import sys
import time

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QFont, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSizePolicy,
    QWidget,
)

from workbench.core.models.catalog import BUILTIN_MODELS, DEFAULT_MODEL
from workbench.core.models.decoding import DECODE_CHOICES
from workbench.core.models.device import DEVICE_CHOICES, DTYPE_CHOICES
from workbench.ui.common.job_thread import JobSlot, JobThread

REFERENCE_ROLE = Qt.ItemDataRole.UserRole  # what an item loads: a Hub id, a path, ollama:NAME
GROUP_ROLE = Qt.ItemDataRole.UserRole + 1  # the group an item belongs to ("header" for titles)
TOOLTIP_ROLE = Qt.ItemDataRole.ToolTipRole
HF_GROUP = ("hf-cache", "Hugging Face cache")


def discover_models() -> tuple[list, list, float]:
    """Everything the picker lists beyond the built-ins (runs on the picker's thread): the
    Hugging Face cache's rows, the other tools' scans, and the seconds it took."""
    from workbench.core.models.catalog import hf_cache_models
    from workbench.core.models.local_models import discover

    start = time.perf_counter()
    rows = [row for row in hf_cache_models() if row.available]
    scans = discover()
    return rows, scans, time.perf_counter() - start


def _device_hint(device: str) -> str:
    """The device ``auto`` will pick, if torch is already imported and can say so cheaply;
    never imports torch on the GUI thread."""
    if device != "auto":
        return device
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            return "cuda"
        if torch is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu" if torch is not None else "auto"
    except Exception:  # half-imported by the worker: do not guess
        return "auto"


class ModelPicker(QWidget):
    """Emits ``load_requested(reference, device, dtype)`` when the user asks to load."""

    load_requested = Signal(str, str, str)
    discovery_finished = Signal(list)  # lines for the log: what was found, what was skipped

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(4, 2, 4, 2)
        layout.addWidget(QLabel("Model:"))
        self._add_model_choice(layout)
        self._add_load_choices(layout)
        self.groups: dict[str, list[str]] = {}  # group title -> the names listed under it
        self.discovery_seconds: float | None = None
        self.last_dialog: QMessageBox | None = None
        self._estimates: dict[str, object] = {}  # reference -> MemoryEstimate
        self._start_helpers()

    def _add_model_choice(self, layout: QHBoxLayout) -> None:
        """The model's name (a list of the known ones, editable) and the Open buttons."""
        self.combo = QComboBox()
        self.combo.setObjectName("model")
        self.combo.setModel(QStandardItemModel(self.combo))
        self.combo.setEditable(True)
        self.combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.combo.setMinimumContentsLength(26)
        self.combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.combo.setToolTip("A built-in model, a model already on this machine (Hugging Face "
                              "cache, LM Studio, Ollama, GPT4All, llama.cpp), a folder, a .gguf "
                              "file or a Hub id")
        for entry in BUILTIN_MODELS:
            self.combo.addItem(entry.name)
            self.combo.setItemData(self.combo.count() - 1, entry.description, TOOLTIP_ROLE)
        self.combo.setCurrentText(DEFAULT_MODEL)
        self.combo.lineEdit().returnPressed.connect(self.request_load)
        layout.addWidget(self.combo, 1)
        self.open_folder_button = QPushButton("Open folder…")
        self.open_folder_button.clicked.connect(self.open_folder)
        layout.addWidget(self.open_folder_button)
        self.open_gguf_button = QPushButton("Open GGUF…")
        self.open_gguf_button.clicked.connect(self.open_gguf)
        layout.addWidget(self.open_gguf_button)

    def _add_load_choices(self, layout: QHBoxLayout) -> None:
        """Device, dtype and decoding path, the memory estimate, and Load."""
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
        layout.addWidget(QLabel("Decoding:"))
        self.decode = QComboBox()
        self.decode.setObjectName("decode")
        self.decode.addItems(list(DECODE_CHOICES))
        self.decode.setToolTip(
            "The path generation runs on (no reload needed):\n"
            "auto: int8 weights with bfloat16 on a CPU with native bfloat16, for a model too "
            "big for its caches (2-3x faster there); else exact\n"
            "exact: the loaded model itself (float32 on the CPU), the numbers of transformers\n"
            "int8 / bf16: a reduced-precision copy of the model\n"
            "compiled: auto's model compiled by torch.compile with a static cache; the first "
            "generation of each shape compiles (10-60 s, cached on disk), then decodes "
            "faster (about 1.1x on a CPU, far more on a GPU)\n"
            "Perplexity, attention, attribution and evaluation always use the loaded model.")
        layout.addWidget(self.decode)
        # Fixed width: a label that grows would re-lay out the whole window.
        self.memory = QLabel("")
        self.memory.setObjectName("memory-estimate")
        self.memory.setTextFormat(Qt.TextFormat.RichText)
        self.memory.setFixedWidth(self.fontMetrics().horizontalAdvance(
            "≈ 888 GB fp32 · 888 GB bf16 · 88.8 GB free") + 8)
        layout.addWidget(self.memory)
        self.load_button = QPushButton("Load")
        self.load_button.setObjectName("load-button")
        self.load_button.setDefault(True)
        self.load_button.clicked.connect(self.request_load)
        layout.addWidget(self.load_button)

    def _start_helpers(self) -> None:
        """The file system's thread, its jobs, and the timer that starts the memory
        estimate."""
        # One thread for the file system, the picker's own (a discovery never waits behind
        # a generation); it stops when the picker goes, and its jobs' handles go with it.
        self.files = JobThread("model-discovery", self)
        self.discovery = JobSlot(self, self.files)
        self.estimating = JobSlot(self, self.files)
        self._estimate_soon = QTimer(self)
        self._estimate_soon.setSingleShot(True)
        self._estimate_soon.setInterval(150)
        self._estimate_soon.timeout.connect(self._start_estimate)
        self.combo.currentTextChanged.connect(lambda _text: self._estimate_soon.start())
        self.device.currentTextChanged.connect(lambda _text: self.update_memory_label())
        self.dtype.currentTextChanged.connect(lambda _text: self.update_memory_label())

    # --- the reference -----------------------------------------------------------------------
    def reference(self) -> str:
        """What to load: the item's reference for a listed model (a path, ``ollama:NAME``),
        else the text as typed."""
        text = self.combo.currentText().strip()
        index = self.combo.findText(text)
        if index >= 0:
            data = self.combo.itemData(index, REFERENCE_ROLE)
            if isinstance(data, str) and data:
                return data
        return text

    def set_reference(self, reference: str) -> None:
        index = self._index_of_reference(reference)
        if index >= 0:
            self.combo.setCurrentIndex(index)
            return
        if self.combo.findText(reference) < 0:
            self.combo.addItem(reference)
        self.combo.setCurrentText(reference)

    def _index_of_reference(self, reference: str) -> int:
        for index in range(self.combo.count()):
            if self.combo.itemData(index, REFERENCE_ROLE) == reference:
                return index
        return -1

    # --- discovery ---------------------------------------------------------------------------
    def start_discovery(self) -> None:
        """List the models already on this machine, off the GUI thread; the groups appear
        when it is done (``discovery_finished`` then carries the lines for the log)."""
        if not self.discovery.running:
            self.discovery.start("Look for local models", lambda _ctx: discover_models(),
                                 finished=self._take_discovery,
                                 failed=self._discovery_failed)

    @property
    def discovering(self) -> bool:
        return self.discovery.running

    def add_cached_models(self, names: list[str]) -> None:
        """Add models found in the Hugging Face cache (loaded by their Hub id)."""
        self._add_group(HF_GROUP[0], HF_GROUP[1],
                        [(name, name, "Hugging Face cache") for name in names])

    def _add_group(self, group: str, title: str, items: list[tuple[str, str, str]],
                   label: str = "") -> None:
        """A title line, then (name shown, reference, tooltip) items, after what is listed;
        a name listed already elsewhere gets `` (label)`` added."""
        model = self.combo.model()
        assert isinstance(model, QStandardItemModel)
        # a model already listed (in this group or another) is not listed twice
        fresh = [item for item in items if self._index_of_reference(item[1]) < 0]
        if not fresh:
            return
        current = self.combo.currentText()
        header = QStandardItem(f"— {title} —")
        header.setFlags(Qt.ItemFlag.NoItemFlags)  # a title: cannot be chosen
        font = QFont(header.font())
        font.setBold(True)
        header.setFont(font)
        header.setData("header", GROUP_ROLE)
        model.appendRow(header)
        shown = self.groups.setdefault(title, [])
        for name, ref, tip in fresh:
            loose = self.combo.findText(name)
            if loose >= 0 and not self.combo.itemData(loose, GROUP_ROLE):
                self.combo.removeItem(loose)  # typed or restored earlier: now listed here
            if self.combo.findText(name) >= 0:  # the same name in two places
                name = f"{name} ({label or title})"
            item = QStandardItem(name)
            item.setData(ref, REFERENCE_ROLE)
            item.setData(group, GROUP_ROLE)
            item.setData(tip, TOOLTIP_ROLE)
            model.appendRow(item)
            shown.append(name)
        index = self._index_of_reference(current)
        if index >= 0:  # a restored path that is a listed model: show it by its name
            self.combo.setCurrentIndex(index)
        else:
            self.combo.setCurrentText(current)

    def _discovery_failed(self, error: object, _details: str) -> None:
        # never the window's end; said in the log
        self.discovery_finished.emit([f"Looking for local models failed: {error}"])

    def _take_discovery(self, found: tuple[list, list, float]) -> None:
        from workbench.core.common.memory import format_bytes
        from workbench.core.models.memory import MemoryEstimate

        rows, scans, seconds = found
        self.discovery_seconds = seconds
        self._add_group(HF_GROUP[0], HF_GROUP[1],
                        [(r.name, r.reference or r.name, f"Hugging Face cache\n{r.location}")
                         for r in rows])
        lines: list[str] = []
        counts = [f"{len(rows)} in the Hugging Face cache"] if rows else []
        for scan in scans:
            loc = scan.location
            items = []
            for m in scan.models:
                if not m.available:
                    continue
                tip = [f"{loc.label}: {m.path}"]
                if m.parameters:
                    tip.append(f"{m.parameters / 1e9:.2f} billion parameters"
                               + (f", {m.architecture}" if m.architecture else "")
                               + (f", {m.quantization}" if m.quantization else ""))
                    tip.append(MemoryEstimate(m.parameters).describe())
                tip.append(f"{format_bytes(m.size_bytes)} on disk")
                items.append((m.name, m.reference, "\n".join(tip)))
            folders = ", ".join(str(f) for f in loc.folders)
            self._add_group(loc.source, f"{loc.label} ({folders})", items, loc.label)
            if scan.models:
                counts.append(f"{len(scan.models)} in {loc.label}")
            lines += [f"{loc.label}: {note}" for note in scan.notes]
        found = ", ".join(counts) if counts else "none"
        lines.insert(0, f"Models already on this machine: {found} ({seconds:.2f} s).")
        self.discovery_finished.emit(lines)
        self._estimate_soon.start()

    # --- memory --------------------------------------------------------------------------------
    def _start_estimate(self) -> None:
        reference = self.reference()
        if not reference or reference in self._estimates:
            self.update_memory_label()
            return
        if self.estimating.running:  # one at a time; the latest is asked for next
            return
        from workbench.core.models.memory import estimate_reference

        self.estimating.start(
            "Memory estimate", lambda _ctx: estimate_reference(reference),
            finished=lambda estimate: self._take_estimate(reference, estimate),
            failed=lambda _error, _details: self._take_estimate(reference, None))
        self.update_memory_label()

    def _take_estimate(self, reference: str, estimate: object) -> None:
        if estimate is not None:
            self._estimates[reference] = estimate
        if reference != self.reference():
            self._start_estimate()  # the choice changed meanwhile
        else:
            self.update_memory_label()

    def estimate(self):
        """The memory estimate of the chosen model, once known (else None)."""
        return self._estimates.get(self.reference())

    def chosen_dtype(self) -> str | None:
        """The dtype the load will use, when the picker can tell without torch."""
        from workbench.core.models.memory import effective_dtype

        estimate = self.estimate()
        return effective_dtype(self.dtype.currentText(), _device_hint(self.device.currentText()),
                               estimate.stored_dtype if estimate is not None else "")

    def update_memory_label(self) -> None:
        from workbench.core.common.memory import available_memory, format_bytes
        from workbench.core.models.memory import refusal

        estimate = self.estimate()
        if estimate is None:
            self.memory.setText("")
            self.memory.setToolTip("")
            return
        free = available_memory()
        dtype = self.chosen_dtype()
        parts = []
        for name, short in (("float32", "fp32"), ("bfloat16", "bf16")):
            text = f"{format_bytes(estimate.weights_bytes(name))} {short}"
            parts.append(f"<b>{text}</b>" if name == dtype or (
                dtype == "float16" and name == "bfloat16") else text)
        quantized = self.stays_quantized(estimate)
        if quantized:  # a GGUF kept on its quantized weights
            parts = [f"<b>{format_bytes(estimate.quantized_bytes)} quantized</b>"]
        message = refusal(estimate, dtype or "float32", free, quantized=quantized) \
            if dtype or quantized else None
        text = f"≈ {' · '.join(parts)} · {format_bytes(free)} free"
        self.memory.setText(f"<span style='color:#b00020'>{text}</span>" if message else text)
        tip = [f"{self.reference()} {estimate.describe(free)}.", estimate.details()]
        if message:
            tip.append(message)
        elif dtype is None:
            tip.append("Dtype auto: float32 on the CPU, 16 bits on a GPU.")
        self.memory.setToolTip(html.escape("\n".join(tip)).replace("\n", "<br>"))

    def refusal(self) -> str | None:
        """Why the chosen model will not fit in free memory in the chosen dtype, or None
        (also when that is not known yet: the load checks again before reading weights)."""
        from workbench.core.common.memory import available_memory
        from workbench.core.models.memory import refusal

        estimate = self.estimate()
        dtype = self.chosen_dtype()
        quantized = estimate is not None and self.stays_quantized(estimate)
        if estimate is None or (dtype is None and not quantized):
            return None
        return refusal(estimate, dtype or "float32", available_memory(),
                       self.combo.currentText().strip(), quantized=quantized)

    def stays_quantized(self, estimate: object) -> bool:
        """Whether the load will keep the chosen GGUF on its quantized weights."""
        from workbench.core.models.memory import stays_quantized

        return stays_quantized(estimate, "auto", _device_hint(self.device.currentText()),
                               self.dtype.currentText())

    # --- actions --------------------------------------------------------------------------------
    def request_load(self) -> None:
        if not self.reference():
            return
        message = self.refusal()
        if message is not None:
            box = QMessageBox(QMessageBox.Icon.Warning, "Not enough memory", message,
                              QMessageBox.StandardButton.Ok, self)
            box.setObjectName("memory-dialog")
            box.open()  # window-modal, but does not block the event loop
            self.last_dialog = box
            return
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

"""The Generate tab's decoding controls: presets, the sampling sliders, the settings every
strategy shares, GenerationConfig import and export, and the Generate and Stop buttons.
They hold one :class:`SamplingSettings` and run nothing themselves."""

from __future__ import annotations

import json
from collections.abc import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QPushButton,
    QScrollArea,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from workbench.core.errors import WorkbenchError
from workbench.core.sampling import PRESETS, SamplingSettings
from workbench.ui.skeleton import dspin, spin
from workbench.ui.state import preset_names, read_preset, write_preset

SAMPLING_ONLY = ("Temperature", "Top-k", "Top-p", "Min-p", "Typical-p")


def shown_number(value: float) -> str:
    """A number for a message: a whole number of any size stays one short line."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 20 else f"a {len(text.lstrip('-'))}-digit number"


class DecodingControls(QScrollArea):
    """The settings panel. ``changed`` says a setting that shapes the next-token
    distribution moved (the explorer redraws from it)."""

    changed = Signal()

    def __init__(self, show_error: Callable[[str, str], object],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.show_error = show_error
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
        self.import_button.clicked.connect(lambda: self.import_config())
        self.export_button = QPushButton("Export config…")
        self.export_button.setToolTip("Save these settings as a transformers GenerationConfig JSON")
        self.export_button.clicked.connect(lambda: self.export_config())
        io.addWidget(self.import_button)
        io.addWidget(self.export_button)
        grid.addLayout(io)
        self.generate_button = QPushButton("Generate")
        self.generate_button.setObjectName("generate-button")
        self.generate_button.setDefault(True)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("stop-button")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("Stop generating (Esc)")
        buttons = QHBoxLayout()
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.generate_button)
        grid.addLayout(buttons)
        grid.addStretch(1)
        self.sample.toggled.connect(self._sync_enabled)
        for widget in (self.temperature, self.top_k, self.top_p, self.min_p, self.typical_p,
                       self.repetition, self.no_repeat):
            widget.valueChanged.connect(self.changed)
        self.sample.toggled.connect(self.changed)
        self.setWidgetResizable(True)
        self.setWidget(box)
        self.setMinimumWidth(300)
        self._sync_enabled()

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

    def _sync_enabled(self) -> None:
        sampling = self.sample.isChecked()
        for box in (self.temperature, self.top_k, self.top_p, self.min_p, self.typical_p):
            box.setEnabled(sampling)
        for name in SAMPLING_ONLY:
            self.sliders[name].setEnabled(sampling)

    # --- the settings ------------------------------------------------------------------------
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
        """Show ``s``; every value must fit its control (see :meth:`check_fits`)."""
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

    def check_fits(self, settings: SamplingSettings, source: str) -> None:
        """Raise WorkbenchError unless every value fits its control: a control would clamp
        it silently (or, past a 32-bit integer, refuse it with an exception), and the
        settings shown would not be the ones read."""
        boxes = {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                 "min_p": self.min_p, "typical_p": self.typical_p,
                 "repetition_penalty": self.repetition, "no_repeat_ngram_size": self.no_repeat,
                 "max_new_tokens": self.max_new, "seed": self.seed,
                 "num_return_sequences": self.sequences, "num_beams": self.beams}
        for name, box in boxes.items():
            value = getattr(settings, name)
            if not box.minimum() <= value <= box.maximum():
                raise WorkbenchError(
                    f"{source}: {name.replace('_', ' ')} {shown_number(value)} is outside the "
                    f"{shown_number(box.minimum())}–{shown_number(box.maximum())} this tab "
                    "allows; nothing was applied.")

    # --- presets ---------------------------------------------------------------------------
    def reload_presets(self) -> None:
        self.preset.clear()
        self.preset.addItem("Choose…")  # the combo box acts as a menu of presets
        self.preset.addItems(list(PRESETS))
        self.preset.addItems(preset_names())

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

    # --- GenerationConfig files -------------------------------------------------------------
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
            self.check_fits(settings, "This config")
        except RecursionError:
            self.show_error("Cannot import the generation config",
                            f"{path}: it is nested too deeply.")
            return
        except (OSError, ValueError, TypeError, WorkbenchError) as exc:
            self.show_error("Cannot import the generation config", f"{path}: {exc}")
            return
        self.set_settings(settings)

    def export_config(self, path: str | None = None) -> None:
        settings = self.settings()
        try:  # before a file is chosen: settings that cannot run are not worth a file
            settings.validate()
        except WorkbenchError as exc:
            self.show_error("Cannot export the generation config", str(exc))
            return
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export a GenerationConfig",
                                                  "generation_config.json", "JSON (*.json)")
        if not path:
            return
        try:
            data = settings.to_generation_config()
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
        except (OSError, ValueError) as exc:  # ValueError: GenerationConfig's own checks
            self.show_error("Cannot export the generation config", str(exc))

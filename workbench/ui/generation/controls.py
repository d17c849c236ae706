"""The Generate tab's decoding controls: presets, the sampling sliders, the settings every
strategy shares, GenerationConfig import and export, and the Generate and Stop buttons.
They hold one :class:`SamplingSettings` and run nothing themselves."""

from __future__ import annotations

import json
from collections.abc import Callable

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.settings import description
from workbench.core.generation.settings import PRESETS, STAGES, SamplingSettings, sampler_order
from workbench.ui.common.setting_widgets import box_value, setting_box
from workbench.ui.common.state import preset_names, read_preset, write_preset

SAMPLING_ONLY = ("Temperature", "Top-k", "Top-p", "Min-p", "Typical-p")
# the "More samplers" boxes, by SamplingSettings field
MORE_NUMBERS = ("top_h", "epsilon_cutoff", "eta_cutoff", "top_n_sigma", "dynatemp_low",
                "dynatemp_high", "dynatemp_exponent", "smoothing_factor", "smoothing_curve",
                "xtc_threshold", "xtc_probability", "mirostat_tau", "mirostat_eta",
                "dry_multiplier", "dry_base")
MORE_SAMPLING_ONLY = ("top_h", "epsilon_cutoff", "eta_cutoff", "top_n_sigma", "dynatemp_low",
                      "dynatemp_high", "dynatemp_exponent", "smoothing_factor",
                      "smoothing_curve", "xtc_threshold", "xtc_probability", "mirostat_tau",
                      "mirostat_eta")
class DecodingControls(QWidget):
    """The settings panel: the settings scroll when the window is short, the Generate and
    Stop buttons stay in view below them. ``changed`` says a setting that shapes the
    next-token distribution moved (the explorer redraws from it)."""

    changed = Signal()

    def __init__(self, show_error: Callable[[str, str], object],
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.show_error = show_error
        box = QWidget()
        grid = QVBoxLayout(box)
        self._add_presets(grid)
        self._make_boxes()
        self._add_sampling(grid)
        self._add_more_samplers(grid)
        self._add_all_strategies(grid)
        self._add_config_files(grid)
        buttons = self._make_run_buttons()
        grid.addStretch(1)
        self._connect_changes()
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(box)
        self.scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll, 1)
        outer.addLayout(buttons)
        self.setMinimumWidth(300)
        self._sync_enabled()
        self._show_order()

    def _add_presets(self, grid: QVBoxLayout) -> None:
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

    def _make_boxes(self) -> None:
        """The controls of the classic settings, each made from its description."""
        self.sample = QCheckBox("Sample (off: greedy or beam search)")
        self.sample.setObjectName("do-sample")
        self.sample.setChecked(True)
        self.chat = QCheckBox("Use the chat template")
        self.chat.setObjectName("chat")
        self.chat.setChecked(True)
        self.temperature = setting_box(SamplingSettings, "temperature")
        self.top_k = setting_box(SamplingSettings, "top_k")
        self.top_p = setting_box(SamplingSettings, "top_p")
        self.min_p = setting_box(SamplingSettings, "min_p")
        self.typical_p = setting_box(SamplingSettings, "typical_p")
        self.repetition = setting_box(SamplingSettings, "repetition_penalty")
        self.no_repeat = setting_box(SamplingSettings, "no_repeat_ngram_size")
        self.max_new = setting_box(SamplingSettings, "max_new_tokens")
        self.seed = setting_box(SamplingSettings, "seed")
        self.sequences = setting_box(SamplingSettings, "num_return_sequences")
        self.beams = setting_box(SamplingSettings, "num_beams")
        self.sliders: dict[str, QSlider] = {}

    def _add_sampling(self, grid: QVBoxLayout) -> None:
        sampling = QGroupBox("Sampling")
        sampling_layout = QVBoxLayout(sampling)
        for label, name, scale in [("Temperature", "temperature", 100), ("Top-k", "top_k", 1),
                                   ("Top-p", "top_p", 100), ("Min-p", "min_p", 100),
                                   ("Typical-p", "typical_p", 100)]:
            sampling_layout.addLayout(self._linked(label, name, scale))
        sampling_layout.addWidget(self.sample)
        grid.addWidget(sampling)

    def _add_all_strategies(self, grid: QVBoxLayout) -> None:
        other = QGroupBox("All strategies")
        form = QFormLayout(other)
        form.addRow(self._linked("Repetition penalty", "repetition_penalty", 100))
        form.addRow("No-repeat n-gram", self.no_repeat)
        form.addRow("Max new tokens", self.max_new)
        form.addRow("Seed", self.seed)
        form.addRow("Sequences", self.sequences)
        form.addRow("Beams", self.beams)
        form.addRow(self.chat)
        grid.addWidget(other)

    def _add_config_files(self, grid: QVBoxLayout) -> None:
        """Import and export of a transformers GenerationConfig, and what an export left out."""
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
        self.config_note = QLabel()  # what the last export left out
        self.config_note.setWordWrap(True)
        self.config_note.hide()
        grid.addWidget(self.config_note)

    def _make_run_buttons(self) -> QHBoxLayout:
        self.generate_button = QPushButton("Generate")
        self.generate_button.setObjectName("generate-button")
        self.generate_button.setDefault(True)
        self.generate_button.setProperty("primary", True)  # Run ▸ Run: Ctrl+Return
        self.stop_button = QPushButton("Stop")
        self.stop_button.setObjectName("stop-button")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("Stop generating (Esc)")
        buttons = QHBoxLayout()
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.generate_button)
        return buttons

    def _connect_changes(self) -> None:
        """``changed`` follows every setting that shapes the next-token distribution."""
        self.sample.toggled.connect(self._sync_enabled)
        for widget in (self.temperature, self.top_k, self.top_p, self.min_p, self.typical_p,
                       self.repetition, self.no_repeat):
            widget.valueChanged.connect(self.changed)
        self.sample.toggled.connect(self.changed)
        for widget in self.more.values():
            widget.valueChanged.connect(self.changed)
        for check in (self.dynamic_temperature, self.mirostat):
            check.toggled.connect(self.changed)
        for line in (self.dry_breakers, self.order_text):
            line.textChanged.connect(self.changed)
        self.changed.connect(self._show_order)

    def _add_more_samplers(self, grid: QVBoxLayout) -> None:
        """A collapsible group: DRY, XTC, Mirostat 2.0, dynamic temperature, top-nσ,
        quadratic smoothing, transformers' top-h, epsilon and eta, and the sampler order."""
        self.more_toggle = QToolButton()
        self.more_toggle.setText("More samplers")
        self.more_toggle.setObjectName("more-samplers")
        self.more_toggle.setCheckable(True)
        self.more_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.more_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.more_toggle.setToolTip("DRY, XTC, Mirostat, dynamic temperature, top-nσ, "
                                    "smoothing, top-h, epsilon, eta and the order of the chain")
        self.more_group = QGroupBox()
        self.more_group.setVisible(False)
        self.more_toggle.toggled.connect(self._more_toggled)
        self._make_more_boxes()
        form = QFormLayout(self.more_group)
        form.setContentsMargins(2, 4, 2, 4)
        form.setHorizontalSpacing(4)
        self._add_more_rows(form)
        form.addRow("Order", self._make_order())
        form.addRow("", self.order_text)
        grid.addWidget(self.more_toggle)
        grid.addWidget(self.more_group)

    def _make_more_boxes(self) -> None:
        defaults = SamplingSettings()
        self.more: dict[str, QDoubleSpinBox | QSpinBox] = {}
        for name in MORE_NUMBERS:
            self.more[name] = setting_box(SamplingSettings, name)
        self.dry_allowed = setting_box(SamplingSettings, "dry_allowed_length")
        self.more["dry_allowed_length"] = self.dry_allowed
        self.dynamic_temperature = QCheckBox("Dyn. temp.")
        self.dynamic_temperature.setObjectName("dynamic-temperature")
        self.dynamic_temperature.setToolTip("Entropy-scaled temperature between low and high "
                                            "(replaces Temperature)")
        self.mirostat = QCheckBox("Mirostat 2")
        self.mirostat.setObjectName("mirostat")
        self.mirostat.setToolTip("Mirostat 2.0: aim at a surprise of tau bits per token")
        self.dry_breakers = QLineEdit(defaults.dry_sequence_breakers)
        self.dry_breakers.setObjectName("dry-sequence-breakers")
        self.dry_breakers.setToolTip('DRY\'s sequence breakers: quoted texts separated by '
                                     'commas, e.g. "\\n", ":"')

    def _add_more_rows(self, form: QFormLayout) -> None:
        def row(*widgets: QWidget, tips: tuple[str, ...] = ()) -> QHBoxLayout:
            line = QHBoxLayout()
            line.setSpacing(4)
            for i, widget in enumerate(widgets):
                if i < len(tips):
                    widget.setToolTip(tips[i])
                line.addWidget(widget, 1)
            return line

        m = self.more
        form.addRow("Top-h, nσ", row(m["top_h"], m["top_n_sigma"], tips=(
            "transformers' top-h (0: off)",
            "top-nσ: keep the logits within n standard deviations of the top one (0: off)")))
        form.addRow("ε, η cutoff", row(m["epsilon_cutoff"], m["eta_cutoff"], tips=(
            "epsilon cutoff (0: off)", "eta cutoff (0: off)")))
        form.addRow(self.dynamic_temperature, row(m["dynatemp_low"], m["dynatemp_high"],
                                                  m["dynatemp_exponent"],
                                                  tips=("lowest", "highest", "exponent")))
        form.addRow("Smoothing", row(m["smoothing_factor"], m["smoothing_curve"], tips=(
            "quadratic smoothing factor (0: off)", "curve: 1 quadratic, 3 cubic")))
        form.addRow("XTC", row(m["xtc_threshold"], m["xtc_probability"], tips=(
            "threshold", "probability (0: off)")))
        form.addRow(self.mirostat, row(m["mirostat_tau"], m["mirostat_eta"],
                                       tips=("tau (target surprise, bits)", "eta")))
        form.addRow("DRY", row(m["dry_multiplier"], m["dry_base"], self.dry_allowed, tips=(
            "multiplier (0: off)", "base", "allowed length")))
        form.addRow("Breakers", self.dry_breakers)

    def _make_order(self) -> QHBoxLayout:
        """The chain's order: a list with the stages that are on in bold, buttons that move
        the selected stage, and the order as text."""
        self.order_list = QListWidget()
        self.order_list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.order_list.setToolTip("The order of the chain; the stages that are on are in bold")
        self.order_list.setFixedHeight(6 * self.order_list.fontMetrics().height() + 8)
        self.order_text = QLineEdit()
        self.order_text.setObjectName("sampler-order")
        self.order_text.setPlaceholderText("default order")
        self.order_text.setToolTip("Stages separated by commas: the ones named take that "
                                   "order, the others keep theirs (empty: the default)")
        buttons = QVBoxLayout()
        for text, tip, step in (("▲", "Earlier in the chain", -1), ("▼", "Later in the chain", 1)):
            button = QToolButton()
            button.setText(text)
            button.setToolTip(tip)
            button.clicked.connect(lambda _=False, step=step: self.move_stage(step))
            buttons.addWidget(button)
        reset = QToolButton()
        reset.setText("↺")
        reset.setToolTip("The default order")
        reset.clicked.connect(lambda: self.order_text.setText(""))
        buttons.addWidget(reset)
        buttons.addStretch(1)
        order = QHBoxLayout()
        order.addWidget(self.order_list, 1)
        order.addLayout(buttons)
        return order

    def _more_toggled(self, shown: bool) -> None:
        self.more_group.setVisible(shown)
        self.more_toggle.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    # --- the sampler order -------------------------------------------------------------------
    def _order(self) -> tuple[str, ...]:
        try:
            return sampler_order(self.order_text.text())
        except WorkbenchError:
            return tuple(self.order_list.item(i).text() for i in range(self.order_list.count())) \
                or STAGES

    def _show_order(self) -> None:
        """The list shows the order the text asks for, the stages that are on in bold."""
        order = self._order()
        try:
            active = set(self.settings().active_stages())
        except WorkbenchError:
            active = set()
        if [self.order_list.item(i).text() for i in range(self.order_list.count())] != \
                list(order):
            current = self.order_list.currentRow()
            self.order_list.clear()
            self.order_list.addItems(list(order))
            self.order_list.setCurrentRow(current)
        grey = QBrush(self.order_list.palette().color(QPalette.ColorRole.PlaceholderText))
        for i, name in enumerate(order):
            item = self.order_list.item(i)
            font = item.font()
            font.setBold(name in active)
            item.setFont(font)
            item.setForeground(QBrush() if name in active else grey)

    def move_stage(self, step: int) -> None:
        """Move the selected stage one place earlier (-1) or later (+1) in the chain."""
        row = self.order_list.currentRow()
        order = list(self._order())
        if not 0 <= row < len(order) or not 0 <= row + step < len(order):
            return
        order[row], order[row + step] = order[row + step], order[row]
        self.order_list.setCurrentRow(row + step)
        self.order_text.setText("" if tuple(order) == STAGES else ",".join(order))
        self.order_list.setCurrentRow(row + step)

    def _linked(self, label: str, name: str, scale: float) -> QHBoxLayout:
        """A slider over the setting's typical values beside its spin box (the whole range):
        the slider moves the box, and follows it within its reach."""
        box = getattr(self, {"repetition_penalty": "repetition"}.get(name, name))
        low, high = description(SamplingSettings, name).typical or (box.minimum(),
                                                                    box.maximum())
        slider = QSlider(Qt.Orientation.Horizontal)
        slider.setRange(int(round(max(low, box.minimum()) * scale)),
                        int(round(min(high, box.maximum()) * scale)))
        slider.setValue(int(round(box.value() * scale)))
        slider.valueChanged.connect(lambda v: box.setValue(v / scale if scale != 1 else v))

        def follow(value: float) -> None:
            slider.blockSignals(True)  # a value past the slider's reach stays in the box
            slider.setValue(int(round(value * scale)))
            slider.blockSignals(False)

        box.valueChanged.connect(follow)
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
        for box in (self.temperature, self.top_k, self.top_p, self.min_p, self.typical_p,
                    self.dynamic_temperature, self.mirostat,
                    *(self.more[name] for name in MORE_SAMPLING_ONLY)):
            box.setEnabled(sampling)
        for name in SAMPLING_ONLY:
            self.sliders[name].setEnabled(sampling)

    # --- the settings ------------------------------------------------------------------------
    def boxes(self) -> dict[str, QSpinBox | QDoubleSpinBox]:
        """The spin box of each number setting, by SamplingSettings field."""
        return {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "min_p": self.min_p, "typical_p": self.typical_p,
                "repetition_penalty": self.repetition, "no_repeat_ngram_size": self.no_repeat,
                "max_new_tokens": self.max_new, "seed": self.seed,
                "num_return_sequences": self.sequences, "num_beams": self.beams, **self.more}

    def settings(self) -> SamplingSettings:
        return SamplingSettings(
            do_sample=self.sample.isChecked(), chat=self.chat.isChecked(),
            dynamic_temperature=self.dynamic_temperature.isChecked(),
            mirostat_mode=2 if self.mirostat.isChecked() else 0,
            dry_sequence_breakers=self.dry_breakers.text(),
            sampler_order=self.order_text.text().strip(),
            **{name: box_value(SamplingSettings, name, box)
               for name, box in self.boxes().items()})

    def set_settings(self, s: SamplingSettings) -> None:
        """Show ``s``, which must be valid (``validate``): the controls offer exactly the
        settings' ranges, so every valid value fits its control."""
        self.sample.setChecked(s.do_sample)
        for name, box in self.boxes().items():
            box.setValue(getattr(s, name))
        self.chat.setChecked(s.chat)
        self.dynamic_temperature.setChecked(s.dynamic_temperature)
        self.mirostat.setChecked(s.mirostat_mode == 2)
        self.dry_breakers.setText(s.dry_sequence_breakers)
        self.order_text.setText(s.sampler_order)
        try:
            more = bool(s.not_in_generation_config()) or bool(s.top_h or s.epsilon_cutoff
                                                              or s.eta_cutoff)
        except WorkbenchError:  # an order that does not read: shown as it is, to correct
            more = True
        if more:
            self.more_toggle.setChecked(True)  # show the samplers these settings use

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
            settings.validate()
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
            return
        left = settings.not_in_generation_config()
        self.config_note.setText(
            f"Exported without {', '.join(left)}: a GenerationConfig has no field for "
            f"{'it' if len(left) == 1 else 'them'}." if left else "")
        self.config_note.setVisible(bool(left))

"""The Fine-tune tab's form: the run's fields (the rarely changed ones in folding
sections), the buttons below them, and the run configuration they make."""

from __future__ import annotations

import datetime

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from workbench.core.common import paths
from workbench.core.models.catalog import MINILM, SMOLLM2
from workbench.core.training.config import SCHEDULERS, FinetuneConfig, split_names
from workbench.ui.common.setting_widgets import box_value, setting_box
from workbench.ui.common.skeleton import combo, line, spin, text_box
from workbench.ui.common.widgets import Section

RESOURCES = paths.sample_data()


class RunForm:
    """The form part of :class:`~workbench.ui.training.tab.FinetuneTab` (a mixin: its
    fields are the tab's attributes, its buttons call the tab's ``start``, ``stop``,
    ``attach`` and ``export_launch``)."""

    def _build_form(self) -> None:
        """The fields, then the buttons, laid out in ``form_panel`` (the tab's left side)."""
        self._make_fields()
        self._make_lora_fields()
        self._make_buttons()
        self._lay_out_form(self._main_rows(), self._make_sections())

    def _make_fields(self) -> None:
        # short enough for the form's column (the longer names were cut)
        self.task = combo("task", ["classify (text → label)", "lm (next token)"])
        self.task.setToolTip("classify: sequence classification (a label for each text); "
                             "lm: causal language modelling (predict each next token)")
        self.train_file = line("train-file", "", ".txt, .jsonl, .csv or .tsv")
        self.validation_file = line("validation-file", "", "optional (default: a held-out split)")
        self.validation_file.setToolTip("Optional: without it, the validation split (in "
                                        "Schedule, evaluation, checkpoints) is held out of the "
                                        "training file")
        self.validation_split = setting_box(FinetuneConfig, "validation_split")
        self.validation_file.textChanged.connect(  # a validation file: nothing is held out
            lambda text: self.validation_split.setEnabled(not text.strip()))
        self.text_column = line("text-column", "text")
        self.label_column = line("label-column", "label")
        self.learning_rate = setting_box(FinetuneConfig, "learning_rate")
        self.epochs = setting_box(FinetuneConfig, "epochs")
        self.max_steps = setting_box(FinetuneConfig, "max_steps")
        self.max_steps.setMinimum(0)  # 0 here is the core's -1: by epochs
        self.max_steps.setValue(0)
        self.max_steps.setSpecialValueText("by epochs")
        self.batch_size = setting_box(FinetuneConfig, "batch_size")
        self.grad_accum = setting_box(FinetuneConfig, "gradient_accumulation")
        self.max_length = setting_box(FinetuneConfig, "max_length")
        self.weight_decay = setting_box(FinetuneConfig, "weight_decay")
        self.warmup = setting_box(FinetuneConfig, "warmup_steps")
        self.scheduler = combo("scheduler", list(SCHEDULERS))
        self.seed = setting_box(FinetuneConfig, "seed", "train-seed")
        self.logging_steps = setting_box(FinetuneConfig, "logging_steps")
        self.eval_steps = setting_box(FinetuneConfig, "eval_steps")
        self.save_steps = setting_box(FinetuneConfig, "save_steps")
        self.output_dir = line("output-dir", "", "default: a new one in the app's data")
        self.output_dir.setToolTip("A new folder for this run (default: one in the app's "
                                   "data folder)")
        self.probe_prompts = text_box("probe-prompts", "Probe prompts, one a line (lm)",
                                      "The lighthouse keeper")
        self.probe_prompts.setMaximumHeight(50)
        self.probe_every = setting_box(FinetuneConfig, "probe_every")
        self.probe_every.setValue(10)  # the form's own default: probes are shown

    def _make_lora_fields(self) -> None:
        self.lora = QCheckBox("Train a LoRA adapter (peft)")
        self.lora.setObjectName("lora")
        self.lora.setToolTip("Causal LM only: train small low-rank adapters instead of every "
                             "weight. The final model has the adapter merged in; the run's "
                             "adapter/ folder keeps it on its own.")
        self.lora_r = setting_box(FinetuneConfig, "lora_r")
        self.lora_alpha = setting_box(FinetuneConfig, "lora_alpha")
        self.lora_dropout = setting_box(FinetuneConfig, "lora_dropout")
        self.lora_targets = line("lora-target-modules", "", "default for the architecture "
                                 "(e.g. q_proj,v_proj)")
        self.lora.toggled.connect(self._task_changed)
        self.processes = spin("processes", 1, 64, 1)
        self.processes.setToolTip("Training processes: more than 1 launches the run with "
                                  "accelerate launch --num_processes N (data parallel; on the "
                                  "CPU with --cpu, on GPUs one process each)")

    def _make_buttons(self) -> None:
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

    def _main_rows(self) -> QFormLayout:
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
        return form

    def _make_sections(self) -> list[Section]:
        self.sections: list[Section] = []
        for title, name, rows in [
                ("Schedule, evaluation, checkpoints", "finetune-section-schedule", [
                    ("Schedule", self.scheduler), ("Warmup steps", self.warmup),
                    ("Gradient accumulation", self.grad_accum),
                    ("Weight decay", self.weight_decay), ("Seed", self.seed),
                    ("Log every", self.logging_steps), ("Evaluate every", self.eval_steps),
                    ("Validation split", self.validation_split),
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
        return self.sections

    def _lay_out_form(self, form: QFormLayout, sections: list[Section]) -> None:
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
        for section in sections:
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
            lr_scheduler=self.scheduler.currentText(), **self._numbers(),
            max_steps=self.max_steps.value() or -1,
            probe_prompts=[p for p in self.probe_prompts.toPlainText().splitlines() if p.strip()]
            if lm else [], probe_every=self.probe_every.value() if lm else 0,
            lora=lm and self.lora.isChecked(),
            lora_target_modules=split_names(self.lora_targets.text()),
            # what the user allowed for the loaded model holds for its training run
            trust_remote_code=bool(self.loaded and self.loaded.options.trust_remote_code),
            allow_pickle=bool(self.loaded and self.loaded.options.allow_pickle))

    def setting_boxes(self) -> dict:
        """The spin box of each number setting of the run, by the setting's name."""
        return {"validation_split": self.validation_split,
                "learning_rate": self.learning_rate, "epochs": self.epochs,
                "max_steps": self.max_steps, "batch_size": self.batch_size,
                "gradient_accumulation": self.grad_accum, "max_length": self.max_length,
                "weight_decay": self.weight_decay, "warmup_steps": self.warmup,
                "seed": self.seed, "logging_steps": self.logging_steps,
                "eval_steps": self.eval_steps, "save_steps": self.save_steps,
                "probe_every": self.probe_every, "lora_r": self.lora_r,
                "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout}

    def _numbers(self) -> dict:
        """The run's number settings that the form's spin boxes hold as they are (the max
        steps and the probe interval have their own cases)."""
        return {name: box_value(FinetuneConfig, name, box)
                for name, box in self.setting_boxes().items()
                if name not in ("max_steps", "probe_every")}

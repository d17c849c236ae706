"""Fine-tune tab: local fine-tuning with live charts and run monitoring (skeleton)."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QVBoxLayout, QWidget

from workbench.core.catalog import CAUSAL_LM, CLASSIFIER, ENCODER, MASKED_LM
from workbench.ui.skeleton import combo, dspin, form_with_run, line, pending_panel, spin
from workbench.ui.tab_base import WorkbenchTab
from workbench.ui.worker import ModelWorker


class FinetuneTab(WorkbenchTab):
    title = "Fine-tune"
    tasks = (CAUSAL_LM, CLASSIFIER, ENCODER, MASKED_LM)
    needs_text = "a causal LM or an encoder"

    def __init__(self, worker: ModelWorker, parent: QWidget | None = None) -> None:
        super().__init__(worker, parent)
        form, self.run_button = form_with_run("Run", [
            ("Task", combo("task", ["classify (sequence classification)",
                                    "lm (causal language modelling)"])),
            ("Training file", line("train-file", "", ".txt, .jsonl, .csv or .tsv")),
            ("Validation file", line("validation-file", "", "optional")),
            ("Learning rate", dspin("learning-rate", 1e-7, 1.0, 2e-5, decimals=7, step=1e-5)),
            ("Epochs", spin("epochs", 1, 1000, 3)),
            ("Batch size", spin("batch-size", 1, 4096, 8)),
            ("Max length", spin("max-length", 8, 8192, 128)),
            ("Output folder", line("output-dir", "", "a new folder for this run")),
        ], "Start training", "Fine-tuning is not built yet.")
        charts = pending_panel("Training charts", [
            "training and validation loss, learning rate, gradient norm, throughput",
            "stop, resume and probe prompts",
            "attaching to any Hugging Face Trainer or TensorBoard run folder",
        ])
        body = QHBoxLayout()
        body.addWidget(form, 1)
        body.addWidget(charts, 2)
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_label)
        layout.addLayout(body, 1)

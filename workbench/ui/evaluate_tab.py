"""Evaluate tab: perplexity, BLEU / chrF / TER and significance tests (skeleton)."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QVBoxLayout, QWidget

from workbench.ui.skeleton import combo, form_with_run, line, pending_panel, spin
from workbench.ui.tab_base import WorkbenchTab
from workbench.ui.worker import ModelWorker


class EvaluateTab(WorkbenchTab):
    title = "Evaluate"

    def __init__(self, worker: ModelWorker, parent: QWidget | None = None) -> None:
        super().__init__(worker, parent)
        form, self.run_button = form_with_run("Evaluation", [
            ("Metric", combo("metric", ["perplexity", "BLEU / chrF / TER",
                                        "generate then score", "classification"])),
            ("Text or hypothesis file", line("hyp-file", "", "a UTF-8 text file")),
            ("Reference file(s)", line("ref-files", "", "for BLEU / chrF / TER")),
            ("Window (tokens)", spin("max-length", 2, 32768, 1024)),
            ("Stride", spin("stride", 1, 32768, 512)),
        ], "Evaluate", "Evaluation is not built yet.")
        results = pending_panel("Results", [
            "perplexity, NLL per token and bits per byte, per-token surprisal",
            "sacrebleu BLEU, chrF and TER with signatures and significance tests",
            "a results history, exportable as CSV and JSON",
        ])
        body = QHBoxLayout()
        body.addWidget(form, 1)
        body.addWidget(results, 2)
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_label)
        layout.addLayout(body, 1)

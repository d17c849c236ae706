"""Attention tab: bertviz views, heatmaps, head statistics and logit lens (skeleton)."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QVBoxLayout, QWidget

from workbench.ui.skeleton import combo, form_with_run, line, pending_panel, spin, text_box
from workbench.ui.tab_base import WorkbenchTab
from workbench.ui.worker import ModelWorker


class AttentionTab(WorkbenchTab):
    title = "Attention"
    needs_text = "a model with attention layers"

    def __init__(self, worker: ModelWorker, parent: QWidget | None = None) -> None:
        super().__init__(worker, parent)
        self.text = text_box("text", "Sentence A: the text whose attention you want to see",
                             "The cat sat on the mat because it was tired.")
        self.text.setMaximumHeight(90)
        self.text_b = text_box("text-b", "Sentence B (optional, encoders only)")
        self.text_b.setMaximumHeight(60)
        form, self.run_button = form_with_run("Input", [
            ("Text", self.text),
            ("Sentence B", self.text_b),
            ("View", combo("view", ["head view", "model view", "heatmap", "head statistics",
                                    "logit lens"])),
            ("Max tokens", spin("max-tokens", 2, 1024, 64)),
            ("Layers", line("layers", "", "all, or e.g. 0,5,11")),
        ], "Show attention", "The attention views are not built yet.")
        views = pending_panel("Views", [
            "bertviz head and model views, offline and script-safe",
            "a heatmap of one layer and head with token labels",
            "a layers × heads grid of head statistics",
            "the logit lens of decoder models",
        ])
        body = QHBoxLayout()
        body.addWidget(form, 1)
        body.addWidget(views, 2)
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_label)
        layout.addLayout(body, 1)

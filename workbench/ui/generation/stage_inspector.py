"""The sampler-stage inspector of the Generate tab: for one generated step, the next-token
distribution after each processor of the chain, in the order generation applies them
(raw → repetition penalty → … → top-k → top-p → …), as small multiples: one bar chart per
stage of the same candidates, with the stage's kept count, kept mass, entropy and the
chosen token's rank and probability.

:func:`~workbench.core.generation.step_inspection.inspect_step` computes them on the
worker thread; ``StageInspector`` only draws what it returns. Imported after the window
is shown, like :mod:`workbench.ui.common.charts` (pyqtgraph costs start-up time)."""

from __future__ import annotations

import html
import math

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QFontMetrics
from PySide6.QtWidgets import QGridLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

from workbench.core.generation.settings import Stage
from workbench.core.generation.step_inspection import TOP_N, StageInspection
from workbench.ui.common.charts import CUT_BRUSH, KEPT_BRUSH, RAW_BRUSH, Placeholder
from workbench.ui.common.widgets import visible_token

LABEL_WIDTH = 76  # the token labels' axis, in the first chart of each row
ROW_PIXELS = 12  # the least height of one candidate's bar and label
SMALL_POINTS = 8  # the charts' titles and labels: several charts share a small area

STAGE_NAMES = {
    "raw": "raw (model)", "repetition_penalty": "repetition penalty",
    "no_repeat_ngram": "no-repeat n-gram", "dry": "DRY", "temperature": "temperature",
    "dynamic_temperature": "dynamic temperature", "quadratic_smoothing": "quadratic smoothing",
    "top_n_sigma": "top-nσ", "top_h": "top-h", "top_k": "top-k", "top_p": "top-p",
    "min_p": "min-p", "typical_p": "typical-p", "epsilon_cutoff": "epsilon cutoff",
    "eta_cutoff": "eta cutoff", "mirostat": "Mirostat", "xtc": "XTC"}


def stage_title(stage: Stage) -> str:
    return STAGE_NAMES.get(stage.name, stage.name)


def stage_numbers(stage: Stage) -> str:
    """The stage's numbers in a few words (the chart's title under its name)."""
    chosen = ("chosen removed" if stage.chosen_rank is None else
              f"chosen #{stage.chosen_rank}, p {stage.chosen_probability:.3f}")
    return (f"kept {stage.kept_count:,} ({stage.kept_mass:.1%}) · {stage.entropy:.2f} bits"
            f"\n{chosen}")


def numbers_table(stages: list[Stage]) -> str:
    """The stages' numbers as a small HTML table (a tooltip)."""
    head = ("<tr><th align=left>stage</th><th>kept</th><th>kept mass</th><th>entropy</th>"
            "<th>chosen rank</th><th>chosen p</th></tr>")
    rows = "".join(
        f"<tr><td>{html.escape(stage_title(s))}</td><td align=right>{s.kept_count:,}</td>"
        f"<td align=right>{s.kept_mass:.1%}</td><td align=right>{s.entropy:.2f} bits</td>"
        f"<td align=right>{'removed' if s.chosen_rank is None else s.chosen_rank}</td>"
        f"<td align=right>{s.chosen_probability:.4f}</td></tr>" for s in stages)
    return f"<table cellspacing=4>{head}{rows}</table>"


class StagePanel(QWidget):
    """One stage: its name and numbers above a horizontal bar chart of the candidates'
    probability after it (grey behind: the model's raw probability; red: removed by this
    stage or one before), the chosen token outlined. It shows as many candidates as
    ``room`` says (the inspector gives every chart the same number); ``resized`` asks for
    a new one."""

    resized = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.room = TOP_N
        self.title = QLabel()
        self.title.setObjectName("stage-title")
        self.title.setWordWrap(True)
        self.title.setTextFormat(Qt.TextFormat.RichText)  # the text is escaped
        font = self.title.font()
        font.setPointSize(SMALL_POINTS)
        self.title.setFont(font)
        # a fixed height, so that all the charts of a row line up whatever their titles say
        self.title.setFixedHeight(3 * self.title.fontMetrics().lineSpacing() + 2)
        self.title.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.plot = pg.PlotWidget()
        self.plot.setObjectName("stage-chart")
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.setMenuEnabled(False)
        self.plot.invertY(True)  # the most likely candidate on top
        self.plot.getAxis("bottom").enableAutoSIPrefix(False)
        for name in ("left", "bottom"):
            self.plot.getAxis(name).setStyle(tickFont=font)
        self.plot.getAxis("bottom").setHeight(20)
        self.plot.getAxis("left").setWidth(LABEL_WIDTH)
        self.plot.setMinimumSize(60, 40)
        self.raw_bars = pg.BarGraphItem(x0=0, y=[], height=0.8, width=[], brush=RAW_BRUSH,
                                        pen=pg.mkPen(None))
        self.bars = pg.BarGraphItem(x0=0, y=[], height=0.45, width=[], brush=KEPT_BRUSH,
                                    pen=pg.mkPen(None))
        self.chosen = pg.BarGraphItem(x0=0, y=[], height=0.9, width=[],
                                      brush=pg.mkBrush(0, 0, 0, 0))
        for item in (self.raw_bars, self.bars, self.chosen):
            self.plot.addItem(item)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.title)
        layout.addWidget(self.plot, 1)
        self.labels: list[str] = []  # each shown candidate's whole token, whitespace shown
        self.tips: list[str] = []
        self.data: tuple = ()
        self.plot.scene().sigMouseMoved.connect(self._hovered)
        self.plot.getViewBox().sigResized.connect(lambda *_: self.resized.emit())

    def show_stage(self, number: int, stage: Stage, texts: list[str], raw: list[float],
                   probabilities: list[float], chosen: int, x_max: float,
                   labels_shown: bool, scale_shown: bool) -> None:
        """Stage ``number`` of the chain: ``probabilities`` after it of the candidates
        ``texts`` (``raw`` before any), the candidate ``chosen`` outlined; x from 0 to
        ``x_max`` in every chart; token labels on the left when ``labels_shown``, the
        probability scale under it when ``scale_shown`` (the charts' lowest row)."""
        self.title.setText(f"<b>{number}. {html.escape(stage_title(stage))}</b><br>"
                           + html.escape(stage_numbers(stage)).replace("\n", "<br>"))
        self.title.setToolTip(numbers_table([stage]))
        self.plot.getPlotItem().showAxis("left", labels_shown)  # the row's first chart's
        self.plot.getPlotItem().showAxis("bottom", scale_shown)
        # the outline in the theme's foreground (it may have changed since the chart was made)
        self.chosen.setOpts(pen=pg.mkPen(pg.getConfigOption("foreground"), width=2))
        self.data = (list(texts), list(raw), list(probabilities), chosen)
        self.plot.setXRange(0, x_max, padding=0)
        self._draw()

    def fitting_rows(self) -> int:
        """How many candidates this chart has the height for (at least 3)."""
        return max(int(self.plot.getViewBox().height() // ROW_PIXELS), 3)

    def set_room(self, room: int) -> None:
        self.room = room
        self._draw()

    def shown_rows(self) -> list[int]:
        """The candidates the chart has room for: the most likely ones, and the chosen one
        (last, when it is not among them)."""
        if not self.data:
            return []
        texts, _, _, chosen = self.data
        rows = list(range(min(self.room, len(texts))))
        if 0 <= chosen < len(texts) and chosen not in rows:
            rows[-1] = chosen
        return rows

    def _draw(self) -> None:
        if not self.data:
            return
        texts, raw, probabilities, chosen = self.data
        rows = self.shown_rows()
        ys = list(range(len(rows)))
        self.raw_bars.setOpts(y=ys, width=[raw[r] for r in rows],
                              brushes=[RAW_BRUSH if probabilities[r] > 0 else CUT_BRUSH
                                       for r in rows])
        self.bars.setOpts(y=ys, width=[probabilities[r] for r in rows])
        at = rows.index(chosen) if chosen in rows else None
        if at is None:
            self.chosen.setOpts(y=[], width=[])
        else:
            self.chosen.setOpts(y=[at], width=[max(raw[chosen], probabilities[chosen], 1e-9)])
        self.labels = [visible_token(texts[r]) for r in rows]
        self.tips = [f"{visible_token(texts[r])}{' (chosen)' if r == chosen else ''}: "
                     f"p {probabilities[r]:.4f} after this stage"
                     f"{' (removed)' if probabilities[r] == 0 else ''}, {raw[r]:.4f} raw"
                     for r in rows]
        axis = self.plot.getAxis("left")
        metrics = QFontMetrics(axis.style.get("tickFont") or self.plot.font())
        axis.setTicks([[(y, metrics.elidedText(label, Qt.TextElideMode.ElideRight,
                                               LABEL_WIDTH - 12))
                        for y, label in zip(ys, self.labels, strict=True)]])
        self.plot.setYRange(-0.6, max(len(rows), 1) - 0.4, padding=0)

    def _hovered(self, scene_pos) -> None:
        """The whole token under the pointer and its probabilities (its label may be cut)."""
        view = self.plot.getViewBox()
        index = round(view.mapSceneToView(scene_pos).y())
        inside = self.plot.sceneBoundingRect().contains(scene_pos)
        self.plot.setToolTip(self.tips[index] if inside and 0 <= index < len(self.tips) else "")


class StageInspector(QWidget):
    """Small multiples of the sampler's stages at one step, in the chain's order; a line
    saying what it will show while it has nothing."""

    HINT = ("Click a generated token, then Sampler stages: the distribution after each "
            "processor of the chain at that step appears here.")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("stage-inspector")
        self.header = QLabel()
        self.header.setObjectName("stage-header")
        self.header.setWordWrap(True)
        self.header.setTextFormat(Qt.TextFormat.PlainText)  # tokens such as <s> are text
        self.header.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.header.setFixedHeight(2 * self.header.fontMetrics().lineSpacing() + 2)
        self.grid = QGridLayout()
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setHorizontalSpacing(6)
        self.grid.setVerticalSpacing(4)
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.header)
        layout.addLayout(self.grid, 1)
        self.panels: list[StagePanel] = []
        self.inspection: StageInspection | None = None
        self.fit_timer = QTimer(self)  # the charts resize one by one: fit them once after
        self.fit_timer.setSingleShot(True)
        self.fit_timer.setInterval(0)
        self.fit_timer.timeout.connect(self.fit)
        self.placeholder = Placeholder(content, self.HINT)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.placeholder)

    def show_message(self, text: str) -> None:
        """Nothing to show (yet): ``text`` in place of the charts."""
        self.inspection = None
        self.placeholder.note.setText(text)
        self.placeholder.show_content(False)

    def show_inspection(self, inspection: StageInspection) -> None:
        self.inspection = inspection
        stages = inspection.stages
        columns = columns_for(len(stages))
        while len(self.panels) < len(stages):
            self.panels.append(StagePanel())
            self.panels[-1].resized.connect(self.fit_timer.start)
        for panel in self.panels:
            self.grid.removeWidget(panel)
            panel.setVisible(False)
        for c in range(self.grid.columnCount()):
            self.grid.setColumnStretch(c, 0)
        chosen = inspection.token_ids.index(inspection.chosen_id)
        x_max = max([p for ps in inspection.probabilities for p in ps] + [0.01]) * 1.05
        raw = inspection.probabilities[0]
        for number, (stage, probabilities) in enumerate(
                zip(stages, inspection.probabilities, strict=True)):
            panel = self.panels[number]
            row, column = divmod(number, columns)
            self.grid.addWidget(panel, row, column)
            panel.setVisible(True)
            panel.show_stage(number, stage, inspection.texts, raw, probabilities, chosen,
                             x_max, labels_shown=column == 0,
                             scale_shown=number + columns >= len(stages))
        for c in range(columns):  # equal chart areas: the first column also holds the labels
            self.grid.setColumnStretch(c, 1)
        self.grid.setColumnMinimumWidth(0, LABEL_WIDTH)
        chosen_text = visible_token(inspection.chosen_text)
        notes = "".join(f" Note: {n}" for n in inspection.notes)
        self.header.setText(
            f"Step {inspection.step}: chose {chosen_text} · {inspection.settings.describe()} "
            f"({inspection.source}) · grey: raw, blue: after the stage, outlined: chosen."
            + notes)
        self.header.setToolTip(numbers_table(stages))
        self.fit()
        self.placeholder.show_content(True)

    def row_count(self) -> int:
        """Rows of charts shown."""
        count = len(self.inspection.stages) if self.inspection is not None else 0
        return math.ceil(count / columns_for(count)) if count else 0

    def shown_panels(self) -> list[StagePanel]:
        count = len(self.inspection.stages) if self.inspection is not None else 0
        return self.panels[:count]

    def fit(self) -> None:
        """The same candidates in every chart: as many as the smallest chart has room for."""
        panels = self.shown_panels()
        if panels:
            room = min(TOP_N, *(panel.fitting_rows() for panel in panels))
            for panel in panels:
                if panel.room != room:
                    panel.set_room(room)

    def rows(self) -> list[tuple[str, int, float, float, int | None, float]]:
        """The numbers shown, a row per stage: name, kept count, kept mass, entropy (bits),
        chosen rank, chosen probability."""
        if self.inspection is None:
            return []
        return [(s.name, s.kept_count, s.kept_mass, s.entropy, s.chosen_rank,
                 s.chosen_probability) for s in self.inspection.stages]


def columns_for(count: int) -> int:
    """Charts a row: all in one row up to five, else in rows of at most six (two rows for
    up to twelve stages)."""
    if count <= 5:
        return max(count, 1)
    return math.ceil(count / math.ceil(count / 6))

"""The sampling sweep's page in the Evaluate tab, as a user drives it: the heatmap is the
core's grid (a sweep run here on the same model, settings and seed), its ticks are the
axes' values, a click on a cell shows that cell's samples, bad input is one dialog, cancel
stops the run, and the result goes into the history and to a JSON file."""

import json
import math

import numpy as np
import pytest
from dialogs import record_dialogs
from PySide6.QtCore import QPointF, Qt

from workbench.core.evaluation.history import load_history
from workbench.core.evaluation.sweep import METRIC_LABELS, parse_axis, sweep
from workbench.core.generation.settings import SamplingSettings
from workbench.core.models.loader import LoadOptions, load_model

PROMPT = "the cat"
BASE = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, chat=False)


@pytest.fixture
def worker(qtbot):
    from workbench.ui.common.worker import ModelWorker

    w = ModelWorker()
    yield w
    assert w.shutdown(5000)


@pytest.fixture
def tab(qtbot, worker, tiny):
    """The Evaluate tab on its Sampling sweep page, the tiny GPT-2 loaded."""
    from workbench.ui.evaluation.tab import EvaluateTab

    t = EvaluateTab(worker)
    qtbot.addWidget(t)
    worker.model_changed.connect(t.set_model)
    t.resize(1280, 760)
    t.show()
    t.modes.setCurrentWidget(t.sweep_page)
    handle = worker.submit_load(str(tiny("gpt2")), LoadOptions(device="cpu"))
    with qtbot.waitSignal(handle.finished, timeout=30000):
        pass
    qtbot.waitUntil(lambda: t.sweep_page.loaded is not None, timeout=5000)
    return t


def fill_form(page, x="temperature=0.5,1.5", y="top_p=0.5,1.0", n=2, max_new=4, seed=3):
    page.prompt.setPlainText(PROMPT)
    page.x_axis.setting.setCurrentText(x.split("=")[0])
    page.x_axis.values.setText(x.split("=")[1])
    page.y_axis.setting.setCurrentText(y.split("=")[0])
    page.y_axis.values.setText(y.split("=")[1])
    page.samples.setValue(n)
    page.max_new.setValue(max_new)
    page.seed.setValue(seed)
    page.chat.setChecked(False)


def image_equals(page, grid) -> None:
    """The heatmap's cells are ``grid`` (rows y, columns x), or their logarithm (base 10)
    when the colour bar is on a log scale: then only when they span a decade or more."""
    expected = np.array([[np.nan if v is None else v for v in row] for row in grid], float)
    known = expected[np.isfinite(expected)]
    log = page.colour_bar.axis.logMode
    assert log == (page.metric_name() == "perplexity" and known.max() >= 10 * known.min())
    shown = 10 ** page.image.image if log else page.image.image
    np.testing.assert_allclose(shown, expected, rtol=1e-6, equal_nan=True)


def cell_centre_on_screen(page, row: int, column: int):
    scene = page.image.mapToScene(QPointF(column + 0.5, row + 0.5))
    return page.plot.mapFromScene(scene)


def test_the_heatmap_is_the_cores_grid_and_a_click_shows_the_cells_samples(
        qtbot, tab, tiny, tmp_path, monkeypatch):
    page = tab.sweep_page
    assert tab.modes.tabText(tab.modes.indexOf(page)) == "Sampling sweep"
    assert tab.modes.tabText(tab.modes.indexOf(page) - 1) == "Sentence pairs"
    fill_form(page)
    page.start()
    assert page.run_slot.handle is not None
    qtbot.waitUntil(lambda: page.run_slot.handle is None, timeout=60000)
    x, y = parse_axis("temperature=0.5,1.5", BASE), parse_axis("top_p=0.5,1.0", BASE)
    expected = sweep(load_model(str(tiny("gpt2"))), PROMPT, x, y, 2, BASE, 4, 3)

    # rows are the y values, columns the x values; the perplexity is shown first
    assert page.metric.currentText() == METRIC_LABELS["perplexity"]
    image_equals(page, expected.grid("perplexity"))
    bottom, left = page.plot.getAxis("bottom"), page.plot.getAxis("left")
    assert [label for _, label in bottom._tickLevels[0]] == ["0.5", "1.5"]
    assert [label for _, label in left._tickLevels[0]] == ["0.5", "1"]
    assert bottom.labelText == "temperature" and left.labelText == "top_p"
    finite = [v for row in expected.grid("perplexity") for v in row if v is not None
              and math.isfinite(v)]
    low, high = page.colour_bar.levels()
    if page.colour_bar.axis.logMode:  # labelled in perplexities
        low, high = 10 ** low, 10 ** high
    assert low <= min(finite) and max(finite) <= high
    assert len(page.cell_texts) == 4

    page.metric.setCurrentText(METRIC_LABELS["distinct_2"])
    image_equals(page, expected.grid("distinct_2"))
    assert not page.colour_bar.axis.logMode
    assert [page.cell_texts[k].toPlainText() for k in range(4)] == \
        [f"{v:.3f}" for row in expected.grid("distinct_2") for v in row]

    # a click at the centre of the cell (top_p 1.0, temperature 0.5) shows its samples
    qtbot.mouseClick(page.plot.viewport(), Qt.MouseButton.LeftButton,
                     pos=cell_centre_on_screen(page, 1, 0))
    assert page.selected == (1, 0)
    cell = expected.cells[1][0]
    shown = [page.sample_table.item(r, 4).text() for r in range(page.sample_table.rowCount())]
    assert shown == [s.text for s in cell.samples] and len(shown) == 2
    assert "temperature 0.5 · top_p 1" in page.cell_numbers.text()
    # ... and the cell list, by keyboard, another one
    page.cell.setFocus()
    qtbot.keyClick(page.cell, Qt.Key.Key_Down)
    assert page.selected == (1, 1)
    shown = [page.sample_table.item(r, 4).text() for r in range(page.sample_table.rowCount())]
    assert shown == [s.text for s in expected.cells[1][1].samples]

    # one history entry, saved, and the whole result to a JSON file
    [entry] = load_history()
    assert entry.kind == "sweep" and tab.history.item(0, 1).text() == "sweep"
    assert entry.inputs["x"] == "temperature=0.5,1.5" and entry.inputs["prompt"] == PROMPT
    assert entry.results["metrics"]["distinct_2"] == expected.to_dict()["metrics"]["distinct_2"]
    seen = record_dialogs(monkeypatch)
    seen.answers.append(str(tmp_path / "sweep.json"))
    page.export_button.click()
    saved = json.loads((tmp_path / "sweep.json").read_text(encoding="utf-8"))
    want = expected.to_dict()
    assert saved["metrics"] == want["metrics"] and seen == []
    assert [[[s["text"] for s in c["samples"]] for c in row] for row in saved["cells"]] == \
        [[[s["text"] for s in c["samples"]] for c in row] for row in want["cells"]]
    tab.export_history(str(tmp_path / "history.csv"))
    assert ",sweep," in (tmp_path / "history.csv").read_text(encoding="utf-8")

    # perplexities a decade apart and more are coloured on a log scale; a cell without one
    # is blank (grey) with a dash
    expected.cells[0][0].metrics["perplexity"] = 5000.0
    expected.cells[1][1].metrics["perplexity"] = float("nan")
    page.metric.setCurrentText(METRIC_LABELS["perplexity"])
    page.show_result(expected)
    assert page.colour_bar.axis.logMode
    image_equals(page, expected.grid("perplexity"))
    assert page.cell_texts[0].toPlainText() == "5000" and page.cell_texts[3].toPlainText() == "–"


@pytest.mark.parametrize("x, y, message", [
    ("temperature=0.5,x", "top_p=0.5,1.0", "not a number"),
    ("top_p=0.5,0.9", "top_p=0.6,1.0", "Both axes vary top_p"),
    ("top_k=0.5,2", "top_p=0.5,1.0", "whole numbers"),
    ("temperature=", "top_p=0.5,1.0", "An axis is written"),
])
def test_bad_input_is_one_dialog_and_nothing_runs(qtbot, worker, x, y, message):
    from workbench.ui.evaluation.sweep import SweepPage

    errors = []
    page = SweepPage(worker, lambda *entry: None, lambda title, text: errors.append(text))
    qtbot.addWidget(page)
    fill_form(page, x, y)
    page.start()
    assert page.run_slot.handle is None and len(errors) == 1 and message in errors[0]


def test_no_model_is_one_dialog(qtbot, worker):
    from workbench.ui.evaluation.sweep import SweepPage

    errors = []
    page = SweepPage(worker, lambda *entry: None, lambda title, text: errors.append(text))
    qtbot.addWidget(page)
    page.start()  # the defaults: a sound form
    assert not page.run_slot.running and errors == ["No model is loaded: pick one in the model bar "
                                           "and press Load."]


def test_an_axis_set_to_another_setting_gets_its_suggested_values(qtbot, worker):
    from workbench.ui.evaluation.sweep import SweepPage

    page = SweepPage(worker, lambda *entry: None, lambda *error: None)
    qtbot.addWidget(page)
    page.y_axis.setting.setCurrentText("top_k")
    assert parse_axis(page.y_axis.spec()).name == "top_k"  # whole numbers, valid
    page.y_axis.values.setText("3,7")
    page.y_axis.setting.setCurrentText("min_p")
    assert page.y_axis.values.text() == "3,7"  # typed values stay


def test_cancel_stops_the_sweep_and_records_nothing(qtbot, tab, monkeypatch):
    import workbench.core.evaluation.sweep as core

    page = tab.sweep_page
    fill_form(page, "temperature=0.5:1.5:3", "top_p=0.5,0.8,1.0", n=2, max_new=4)
    calls = []
    generate = core.generate

    def first_cell_then_cancel(*args, **kwargs):  # on the worker: Esc during the first cell
        calls.append(1)
        out = generate(*args, **kwargs)
        page.run_slot.handle.cancel()
        return out

    monkeypatch.setattr(core, "generate", first_cell_then_cancel)
    page.start()
    qtbot.waitUntil(lambda: page.run_slot.handle is None, timeout=60000)
    assert calls == [1] and page.status.text().startswith("Cancelled.")
    assert page.result is None and load_history() == [] and page.run_button.isEnabled()


def test_the_perplexity_is_under_the_reference_model_when_one_is_named(qtbot, tab, tiny):
    page = tab.sweep_page
    fill_form(page, "temperature=1", "top_p=0.5,1.0")
    page.reference.setText(str(tiny("llama")))  # loaded on the worker, for this run
    page.start()
    qtbot.waitUntil(lambda: page.run_slot.handle is None, timeout=60000)
    x, y = parse_axis("temperature=1", BASE), parse_axis("top_p=0.5,1.0", BASE)
    expected = sweep(load_model(str(tiny("gpt2"))), PROMPT, x, y, 2, BASE, 4, 3,
                     reference=load_model(str(tiny("llama"))))
    image_equals(page, expected.grid("perplexity"))
    assert f"perplexity under {expected.reference}" in page.numbers.text()
    assert tab.sweep_page.loaded.name == expected.model  # the window's model is unchanged


def test_the_cells_start_from_the_generate_tabs_settings_when_asked(qtbot, worker):
    from workbench.ui.evaluation.sweep import SweepPage

    generate_tab = SamplingSettings(temperature=0.7, top_k=7, repetition_penalty=1.2, chat=True)
    page = SweepPage(worker, lambda *entry: None, lambda *error: None, lambda: generate_tab)
    qtbot.addWidget(page)
    page.chat.setChecked(False)
    assert page.base_settings() == BASE  # by default as the command: every filter off
    page.from_generate.setChecked(True)
    base = page.base_settings()
    assert (base.top_k, base.repetition_penalty, base.chat) == (7, 1.2, False)

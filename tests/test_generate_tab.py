"""The Generate tab as a user drives it: inspect tokens, explore, compare, presets, configs."""

import csv
import json

import pytest
from PySide6.QtCore import QPoint, Qt

from workbench.core.compare import compare
from workbench.core.generation import explore_distribution, generate
from workbench.core.loader import load_model
from workbench.core.sampling import SamplingSettings, parse_strategy
from workbench.ui.main_window import MainWindow


@pytest.fixture
def window(qtbot, tiny):
    w = MainWindow(autoload=False)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    w.load_model(str(tiny("llama")))
    qtbot.waitUntil(lambda: not w.loading and w.tab_pages[0].candidate_chart is not None,
                    timeout=60000)
    return w


@pytest.fixture
def tab(window):
    t = window.tab_pages[0]
    t.prompt.setPlainText("the cat sat on")
    t.chat.setChecked(False)
    t.max_new.setValue(8)
    return t


def run_generation(qtbot, tab):
    tab.start()
    qtbot.waitUntil(lambda: tab.job_id is None, timeout=30000)


def test_clicking_a_token_shows_its_candidates(qtbot, tab, tiny):
    tab.sample.setChecked(False)
    run_generation(qtbot, tab)
    steps = tab.current_steps()
    assert len(steps) == 8
    # click in the middle of the third token's text
    cursor = tab.output.textCursor()
    cursor.setPosition(tab.output.starts[2] + 1)
    point = tab.output.cursorRect(cursor).center()
    qtbot.mouseClick(tab.output.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(point))
    assert tab.selected_step == 2
    chart = tab.candidate_chart
    title = chart.plot.plotItem.titleLabel.text
    assert f"Step 2: chose {steps[2].text!r}" in title
    assert chart.labels[0]  # token labels on the axis
    heights = chart.kept_bars.opts["height"]
    assert list(heights) == pytest.approx([c.probability for c in steps[2].candidates])
    assert tab.step_curves.markers[0].value() == 2
    xs, ys = tab.step_curves.entropy.getData()
    assert list(ys) == pytest.approx([s.entropy for s in steps])


def test_explorer_reshapes_from_stored_logits(qtbot, tab, tiny):
    tab.explore.setChecked(True)  # no generation yet: the next token after the prompt
    qtbot.waitUntil(lambda: tab.explore_logits is not None, timeout=30000)
    tab.sample.setChecked(True)
    tab.top_k.setValue(0)
    tab.top_p.setValue(1.0)
    tab.temperature.setValue(1.0)
    tab.top_k.setValue(3)  # the slider move redraws at once, without the model
    heights = list(tab.candidate_chart.kept_bars.opts["height"])
    assert sum(h > 0 for h in heights) == 3
    expected = explore_distribution(tab.explore_logits, tab.settings(), 10, tab.explore_prefix)
    assert heights == pytest.approx(expected.processed)
    assert "kept 3 tokens" in tab.candidate_chart.plot.plotItem.titleLabel.text


def test_several_sequences_can_be_shown_one_by_one(qtbot, tab):
    tab.sequences.setValue(3)
    tab.temperature.setValue(2.0)
    run_generation(qtbot, tab)
    assert tab.sequence_picker.count() == 3 and tab.sequence_picker.isVisible()
    tab.sequence_picker.setCurrentIndex(2)
    assert tab.output.toPlainText() == tab.result.sequences[2].text


def test_compare_fills_columns_table_and_plot(qtbot, window, tab, tiny, tmp_path):
    tab.strategies.setPlainText("greedy\ntemperature=1.5,n=2\nbeams=2")
    tab.modes.setCurrentIndex(1)
    tab.start_compare()
    qtbot.waitUntil(lambda: tab.compare_job is None, timeout=60000)
    result = tab.compare_result
    expected = compare(load_model(str(tiny("llama"))), "the cat sat on",
                       [parse_strategy(s, tab.settings()) for s in
                        ("greedy", "temperature=1.5,n=2", "beams=2")],
                       seed=0, max_new_tokens=8, chat=False)
    assert [r.sequences[0].token_ids for r in result.strategies] == [
        r.sequences[0].token_ids for r in expected.strategies]
    assert tab.compare_views[0].toPlainText() == result.strategies[0].sequences[0].text
    assert "[2]" in tab.compare_views[1].toPlainText()
    assert tab.summary.rowCount() == 3
    assert tab.summary.item(0, 0).text() == "greedy"
    assert tab.overlay.curves[0].isVisible() and len(tab.overlay.curves[0].getData()[1]) == 8
    out = tmp_path / "table.csv"
    tab.export_table(str(out))
    rows = list(csv.reader(out.open()))
    assert rows[0][:3] == ["strategy", "mean log-prob", "perplexity"]
    assert rows[1][0] == "greedy" and float(rows[1][2]) == pytest.approx(
        result.strategies[0].perplexity, rel=1e-2)
    png = tmp_path / "plot.png"
    tab.export_plot(str(png))
    assert png.stat().st_size > 1000
    tab.export_plot(str(tmp_path / "gone" / "plot.png"))  # a folder that is not there
    assert "could not write" in window.last_dialog.text()


def test_bad_strategy_list_gives_a_dialog(qtbot, window, tab):
    tab.strategies.setPlainText("greedy\nwarp=9")
    tab.start_compare()
    assert "warp=9" in window.last_dialog.text()
    assert tab.compare_job is None


def test_generation_config_export_and_import(qtbot, tab, tmp_path):
    tab.temperature.setValue(0.55)
    tab.top_k.setValue(33)
    tab.no_repeat.setValue(2)
    tab.sequences.setValue(5)
    path = tmp_path / "generation_config.json"
    tab.export_config(str(path))
    data = json.loads(path.read_text())
    assert data["temperature"] == 0.55 and data["top_k"] == 33
    assert data["no_repeat_ngram_size"] == 2 and data["num_return_sequences"] == 5
    from transformers import GenerationConfig

    assert GenerationConfig.from_pretrained(tmp_path).top_k == 33  # transformers reads it
    tab.set_settings(SamplingSettings())
    tab.import_config(str(path))
    assert tab.top_k.value() == 33 and tab.temperature.value() == pytest.approx(0.55)


def test_importing_a_broken_config_says_so(qtbot, window, tab, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    tab.import_config(str(bad))
    assert "Cannot import" in window.last_dialog.windowTitle()


def test_presets_apply_and_user_presets_persist(qtbot, tab, monkeypatch):
    tab.apply_preset("greedy")
    assert not tab.sample.isChecked()
    tab.apply_preset("nucleus 0.9")
    assert tab.sample.isChecked() and tab.top_p.value() == pytest.approx(0.9)
    assert tab.top_k.value() == 0
    tab.temperature.setValue(1.11)
    from PySide6.QtWidgets import QInputDialog

    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("mine", True))
    tab.save_preset()
    assert tab.preset.findText("mine") >= 0
    tab.temperature.setValue(0.3)
    tab.apply_preset("mine")
    assert tab.temperature.value() == pytest.approx(1.11)


def test_gui_and_core_give_the_same_sampled_text(qtbot, tab, tiny):
    tab.temperature.setValue(1.2)
    tab.seed.setValue(5)
    run_generation(qtbot, tab)
    expected = generate(load_model(str(tiny("llama"))), "the cat sat on", tab.settings())
    assert tab.result.token_ids == expected.token_ids


def click_candidate(qtbot, chart, index):
    from PySide6.QtCore import QPointF

    view = chart.plot.getViewBox()
    scene_point = view.mapViewToScene(QPointF(index, 0.001))
    point = chart.plot.mapFromScene(scene_point)
    qtbot.mouseClick(chart.plot.viewport(), Qt.MouseButton.LeftButton, pos=point)


def test_clicking_a_candidate_branches(qtbot, tab):
    tab.sample.setChecked(False)
    run_generation(qtbot, tab)
    tab.select_step(2)
    step = tab.current_steps()[2]
    click_candidate(qtbot, tab.candidate_chart, 1)
    qtbot.waitUntil(lambda: tab.branch_job is None and len(tab.branches) == 1, timeout=30000)
    b = tab.branches[0]
    assert b.step == 2 and b.sequence.token_ids[2] == step.candidates[1].token_id
    assert b.sequence.token_ids[:2] == tab.result.token_ids[:2]
    assert tab.sequence_picker.count() == 2 and tab.sequence_picker.isVisible()
    assert tab.sequence_picker.currentText().startswith("Branch 1: branch at step 2")
    assert tab.output.toPlainText() == b.sequence.text


def test_save_and_open_a_session(qtbot, tab, tmp_path, window):
    tab.temperature.setValue(1.4)
    run_generation(qtbot, tab)
    text = tab.output.toPlainText()
    path = tmp_path / "session.json"
    tab.save_session(str(path))
    qtbot.waitUntil(lambda: tab.session_job is None, timeout=30000)
    assert path.is_file()
    tab.prompt.setPlainText("something else")
    tab.temperature.setValue(0.2)
    tab.output.clear_tokens()
    tab.open_session(str(path))
    assert tab.prompt.toPlainText() == "the cat sat on"
    assert tab.temperature.value() == pytest.approx(1.4)
    assert tab.output.toPlainText() == text
    assert "Session from" in tab.stats.text() and "sha256" in tab.stats.text()
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    tab.open_session(str(bad))
    assert "not an LM Workbench session" in window.last_dialog.text()


def test_inspect_attention_opens_the_generated_text(qtbot, window, tab):
    tab.sample.setChecked(False)
    run_generation(qtbot, tab)
    assert tab.inspect_button.isEnabled()
    tab.inspect_button.click()
    attention = window.tab_pages[1]
    assert window.tabs.currentIndex() == 1
    assert attention.text.toPlainText() == "the cat sat on" + tab.output.toPlainText()
    qtbot.waitUntil(lambda: attention.job_id is None, timeout=60000)
    assert attention.current is not None and attention.current.result.is_decoder


def test_the_stats_line_keeps_its_height_and_shows_all_in_its_tooltip(qtbot, tab):
    height = tab.stats.height()
    run_generation(qtbot, tab)  # "Generating…", then the stats of the result
    assert "tokens in" in tab.stats.text() and tab.stats.toolTip() == tab.stats.text()
    long = "a note that goes on and on " * 20
    tab.stats.setText(long)
    qtbot.wait(50)
    # a text of another length does not re-lay out the tab (and repaint every chart)
    assert tab.stats.height() == height and tab.stats.toolTip() == long

"""The Generate tab as a user drives it: inspect tokens, explore, compare, presets, configs."""

import csv
import json

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QFontMetrics

from workbench.core.generation.compare import compare
from workbench.core.generation.generate import generate
from workbench.core.generation.settings import SamplingSettings, parse_strategy
from workbench.core.models.loader import load_model
from workbench.ui.shell.main_window import MainWindow


@pytest.fixture
def window(qtbot, tiny):
    w = MainWindow(autoload=False)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    w.load_model(str(tiny("llama")))
    qtbot.waitUntil(lambda: not w.loading and w.tab_pages[0].single.candidate_chart is not None,
                    timeout=60000)
    return w


@pytest.fixture
def tab(window):
    t = window.tab_pages[0]
    t.prompt.setPlainText("the cat sat on")
    t.controls.chat.setChecked(False)
    t.controls.max_new.setValue(8)
    return t


def run_generation(qtbot, tab):
    tab.start()
    qtbot.waitUntil(lambda: not tab.single.run_slot.running, timeout=30000)


def test_charts_say_what_they_will_show_until_they_have_data(qtbot, tab):
    single = tab.single
    charts = (single.candidate_chart, single.step_curves, tab.compare.overlay)
    for chart in charts:  # a line saying what will come, not axes from 0 to 1
        assert chart.placeholder.currentWidget() is chart.placeholder.note
        assert chart.placeholder.note.text()
    run_generation(qtbot, tab)
    assert single.step_curves.placeholder.currentWidget() is not single.step_curves.placeholder.note
    single.select_step(2)
    assert single.candidate_chart.placeholder.currentWidget() is single.candidate_chart.plot
    assert tab.compare.overlay.placeholder.currentWidget() is tab.compare.overlay.placeholder.note


def test_clicking_a_token_shows_its_candidates(qtbot, tab, tiny):
    tab.controls.sample.setChecked(False)
    run_generation(qtbot, tab)
    steps = tab.single.current_steps()
    assert len(steps) == 8
    # click in the middle of the third token's text
    cursor = tab.single.output.textCursor()
    cursor.setPosition(tab.single.output.starts[2] + 1)
    point = tab.single.output.cursorRect(cursor).center()
    qtbot.mouseClick(tab.single.output.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(point))
    assert tab.single.selected_step == 2
    chart = tab.single.candidate_chart
    title = chart.plot.plotItem.titleLabel.text
    assert f"Step 2: chose {steps[2].text!r}" in title
    # each candidate's whole token (whitespace shown) is its tooltip; its axis label is cut
    # to the room a candidate has, so that neighbours never overlap
    assert chart.labels == [c.text.replace("\n", "⏎").replace("\t", "→").replace(" ", "·")
                            or "∅" for c in steps[2].candidates]
    axis = chart.plot.getAxis("bottom")
    metrics = QFontMetrics(axis.style.get("tickFont") or chart.plot.font())
    room = chart.plot.getViewBox().width() / len(chart.labels)
    shown = [text for _, text in axis._tickLevels[0]]
    assert len(shown) == len(chart.labels)
    assert all(metrics.horizontalAdvance(text) <= max(room - 6, 12) for text in shown)
    heights = chart.kept_bars.opts["height"]
    assert list(heights) == pytest.approx([c.probability for c in steps[2].candidates])
    assert tab.single.step_curves.markers[0].value() == 2
    xs, ys = tab.single.step_curves.entropy.getData()
    assert list(ys) == pytest.approx([s.entropy for s in steps])


def sampled_distributions(folder, prompt_ids, settings):
    """The model's raw next-token distribution and the one transformers' own generate()
    samples the first new token from (its ``output_logits`` and ``output_scores``), for
    ``settings``: the reference the explorer must match."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([prompt_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1,
                         do_sample=True, temperature=settings.temperature,
                         top_k=settings.top_k, top_p=settings.top_p,
                         min_p=settings.min_p or None, typical_p=settings.typical_p,
                         repetition_penalty=settings.repetition_penalty,
                         output_logits=True, output_scores=True, return_dict_in_generate=True,
                         pad_token_id=0)
    return torch.softmax(out.logits[0][0].float(), -1), torch.softmax(out.scores[0][0].float(), -1)


def assert_chart_shows(chart, folder, prefix, settings):
    raw, sampled = sampled_distributions(folder, prefix, settings)
    top = raw.topk(10).indices  # the chart's candidates: the 10 most likely, raw
    assert list(chart.raw_bars.opts["height"]) == pytest.approx(raw[top].tolist(), abs=1e-6)
    assert list(chart.kept_bars.opts["height"]) == pytest.approx(sampled[top].tolist(), abs=1e-6)
    assert f"kept {int((sampled > 0).sum())} tokens" in chart.plot.plotItem.titleLabel.text


@pytest.mark.parametrize("controls_set", [  # the controls' attribute names and values
    dict(temperature=1.0, top_k=3, top_p=1.0),
    dict(temperature=0.5, top_k=0, top_p=0.8, repetition=1.3),
    dict(temperature=1.5, top_k=20, top_p=0.95, min_p=0.05, typical_p=0.9),
])
def test_explorer_shows_the_distribution_transformers_samples_from(qtbot, tab, tiny,
                                                                   controls_set):
    from transformers import AutoTokenizer

    single, controls = tab.single, tab.controls
    folder = tiny("llama")
    single.explore.setChecked(True)  # no generation yet: the next token after the prompt
    qtbot.waitUntil(lambda: single.explore_logits is not None, timeout=30000)
    prompt_ids = AutoTokenizer.from_pretrained(folder)("the cat sat on")["input_ids"]
    assert single.explore_prefix == prompt_ids
    controls.sample.setChecked(True)
    for name, value in controls_set.items():  # each move redraws at once, without the model
        getattr(controls, name).setValue(value)
        assert getattr(controls, name).value() == pytest.approx(value)
    assert_chart_shows(single.candidate_chart, folder, prompt_ids, controls.settings())


def test_explorer_at_a_step_reshapes_that_step(qtbot, tab, tiny):
    single, controls = tab.single, tab.controls
    controls.sample.setChecked(False)
    run_generation(qtbot, tab)
    prompt_ids, generated = single.result.prompt_token_ids, single.result.token_ids
    controls.sample.setChecked(True)
    controls.temperature.setValue(1.0)
    controls.top_k.setValue(0)
    controls.top_p.setValue(1.0)
    controls.repetition.setValue(1.5)  # depends on the tokens before the step
    single.select_step(3)
    single.explore.setChecked(True)
    qtbot.waitUntil(lambda: not single.explore_slot.running and single.explore_logits is not None,
                    timeout=30000)
    assert single.explore_prefix == prompt_ids + generated[:3]
    assert_chart_shows(single.candidate_chart, tiny("llama"), single.explore_prefix,
                       controls.settings())
    assert "Explorer at step 3" in single.candidate_chart.plot.plotItem.titleLabel.text


def test_several_sequences_can_be_shown_one_by_one(qtbot, tab):
    tab.controls.sequences.setValue(3)
    tab.controls.temperature.setValue(2.0)
    run_generation(qtbot, tab)
    assert tab.single.sequence_picker.count() == 3 and tab.single.sequence_picker.isVisible()
    tab.single.sequence_picker.setCurrentIndex(2)
    assert tab.single.output.toPlainText() == tab.single.result.sequences[2].text


def test_compare_fills_columns_table_and_plot(qtbot, window, tab, tiny, tmp_path):
    tab.compare.strategies.setPlainText("greedy\ntemperature=1.5,n=2\nbeams=2")
    tab.modes.setCurrentIndex(1)
    tab.start_compare()
    qtbot.waitUntil(lambda: not tab.compare.run_slot.running, timeout=60000)
    result = tab.compare.result
    expected = compare(load_model(str(tiny("llama"))), "the cat sat on",
                       [parse_strategy(s, tab.controls.settings()) for s in
                        ("greedy", "temperature=1.5,n=2", "beams=2")],
                       seed=0, max_new_tokens=8, chat=False)
    assert [r.sequences[0].token_ids for r in result.strategies] == [
        r.sequences[0].token_ids for r in expected.strategies]
    assert tab.compare.views[0].toPlainText() == result.strategies[0].sequences[0].text
    assert "[2]" in tab.compare.views[1].toPlainText()
    assert tab.compare.summary.rowCount() == 3
    assert tab.compare.summary.item(0, 0).text() == "greedy"
    curve = tab.compare.overlay.curves[0]
    assert curve.isVisible() and len(curve.getData()[1]) == 8
    out = tmp_path / "table.csv"
    tab.compare.export_table(str(out))
    rows = list(csv.reader(out.open()))
    assert rows[0][:3] == ["strategy", "mean log-prob", "perplexity"]
    assert rows[1][0] == "greedy" and float(rows[1][2]) == pytest.approx(
        result.strategies[0].perplexity, rel=1e-2)
    png = tmp_path / "plot.png"
    tab.compare.export_plot(str(png))
    assert png.stat().st_size > 1000
    tab.compare.export_plot(str(tmp_path / "gone" / "plot.png"))  # a folder that is not there
    assert "could not write" in window.last_dialog.text()


def test_bad_strategy_list_gives_a_dialog(qtbot, window, tab):
    tab.compare.strategies.setPlainText("greedy\nwarp=9")
    tab.start_compare()
    assert "warp=9" in window.last_dialog.text()
    assert not tab.compare.run_slot.running


def test_generation_config_export_and_import(qtbot, tab, tmp_path):
    tab.controls.temperature.setValue(0.55)
    tab.controls.top_k.setValue(33)
    tab.controls.no_repeat.setValue(2)
    tab.controls.sequences.setValue(5)
    path = tmp_path / "generation_config.json"
    tab.controls.export_config(str(path))
    data = json.loads(path.read_text())
    assert data["temperature"] == 0.55 and data["top_k"] == 33
    assert data["no_repeat_ngram_size"] == 2 and data["num_return_sequences"] == 5
    from transformers import GenerationConfig

    assert GenerationConfig.from_pretrained(tmp_path).top_k == 33  # transformers reads it
    tab.controls.set_settings(SamplingSettings())
    tab.controls.import_config(str(path))
    assert tab.controls.top_k.value() == 33
    assert tab.controls.temperature.value() == pytest.approx(0.55)


def test_importing_a_broken_config_says_so(qtbot, window, tab, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    tab.controls.import_config(str(bad))
    assert "Cannot import" in window.last_dialog.windowTitle()


def test_presets_apply_and_user_presets_persist(qtbot, tab, monkeypatch):
    tab.controls.apply_preset("greedy")
    assert not tab.controls.sample.isChecked()
    tab.controls.apply_preset("nucleus 0.9")
    assert tab.controls.sample.isChecked() and tab.controls.top_p.value() == pytest.approx(0.9)
    assert tab.controls.top_k.value() == 0
    tab.controls.temperature.setValue(1.11)
    from PySide6.QtWidgets import QInputDialog

    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("mine", True))
    tab.controls.save_preset()
    assert tab.controls.preset.findText("mine") >= 0
    tab.controls.temperature.setValue(0.3)
    tab.controls.apply_preset("mine")
    assert tab.controls.temperature.value() == pytest.approx(1.11)


def test_gui_and_core_give_the_same_sampled_text(qtbot, tab, tiny):
    tab.controls.temperature.setValue(1.2)
    tab.controls.seed.setValue(5)
    run_generation(qtbot, tab)
    expected = generate(load_model(str(tiny("llama"))), "the cat sat on", tab.controls.settings())
    assert tab.single.result.token_ids == expected.token_ids


def click_candidate(qtbot, chart, index):
    from PySide6.QtCore import QPointF

    view = chart.plot.getViewBox()
    scene_point = view.mapViewToScene(QPointF(index, 0.001))
    point = chart.plot.mapFromScene(scene_point)
    qtbot.mouseClick(chart.plot.viewport(), Qt.MouseButton.LeftButton, pos=point)


def test_clicking_a_candidate_branches(qtbot, tab):
    tab.controls.sample.setChecked(False)
    run_generation(qtbot, tab)
    tab.single.select_step(2)
    step = tab.single.current_steps()[2]
    assert step.candidates[0].token_id == step.token_id  # greedy: the first candidate
    click_candidate(qtbot, tab.single.candidate_chart, 0)  # the chosen one: no branch to itself
    qtbot.wait(200)
    assert not tab.single.branch_slot.running and tab.single.branches == []
    assert "is the token chosen at step 2" in tab.single.stats.text()
    click_candidate(qtbot, tab.single.candidate_chart, 1)
    qtbot.waitUntil(lambda: not tab.single.branch_slot.running and len(tab.single.branches) == 1,
                    timeout=30000)
    b = tab.single.branches[0]
    assert b.step == 2 and b.sequence.token_ids[2] == step.candidates[1].token_id
    assert b.sequence.token_ids[:2] == tab.single.result.token_ids[:2]
    assert tab.single.sequence_picker.count() == 2 and tab.single.sequence_picker.isVisible()
    assert tab.single.sequence_picker.currentText().startswith("Branch 1: branch at step 2")
    assert tab.single.output.toPlainText() == b.sequence.text


def test_save_and_open_a_session(qtbot, tab, tmp_path, window):
    tab.controls.temperature.setValue(1.4)
    run_generation(qtbot, tab)
    text = tab.single.output.toPlainText()
    path = tmp_path / "session.json"
    tab.single.save_session(str(path))
    qtbot.waitUntil(lambda: not tab.single.session_slot.running, timeout=30000)
    assert path.is_file()
    tab.prompt.setPlainText("something else")
    tab.controls.temperature.setValue(0.2)
    tab.single.output.clear_tokens()
    tab.single.open_session(str(path))
    assert tab.prompt.toPlainText() == "the cat sat on"
    assert tab.controls.temperature.value() == pytest.approx(1.4)
    assert tab.single.output.toPlainText() == text
    assert "Session from" in tab.single.stats.text() and "sha256" in tab.single.stats.text()
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    tab.single.open_session(str(bad))
    assert "not an LM Workbench session" in window.last_dialog.text()


def test_a_reopened_session_keeps_its_branches(qtbot, tab, tmp_path, window):
    tab.controls.sample.setChecked(False)
    run_generation(qtbot, tab)
    tab.single.select_step(2)
    click_candidate(qtbot, tab.single.candidate_chart, 1)
    qtbot.waitUntil(lambda: not tab.single.branch_slot.running and len(tab.single.branches) == 1,
                    timeout=30000)
    branch_text = tab.single.output.toPlainText()
    label = tab.single.sequence_picker.currentText()
    path = tmp_path / "session.json"
    tab.single.save_session(str(path))
    qtbot.waitUntil(lambda: not tab.single.session_slot.running, timeout=30000)
    tab.start()  # a new run: its own result, no branches
    qtbot.waitUntil(lambda: not tab.single.run_slot.running, timeout=30000)
    assert tab.single.branches == []
    tab.single.open_session(str(path))
    picker = tab.single.sequence_picker
    assert [picker.itemText(i) for i in range(picker.count())] == ["Sequence 1", label]
    assert picker.isVisible() and "1 branch" in tab.single.stats.text()
    picker.setCurrentIndex(1)
    assert tab.single.output.toPlainText() == branch_text
    # a damaged branch is left out; the session opens, and the log says which and why
    data = json.loads(path.read_text())
    data["branches"].append(dict(data["branches"][0], step=-3))
    path.write_text(json.dumps(data))
    tab.single.open_session(str(path))
    assert picker.count() == 2 and tab.single.result is not None
    assert "left out" in tab.single.stats.text()
    assert "reset branches[1] (branches[1].step is -3, out of range" in window.log.text()


def test_inspect_attention_opens_the_generated_text(qtbot, window, tab):
    tab.controls.sample.setChecked(False)
    run_generation(qtbot, tab)
    assert tab.single.inspect_button.isEnabled()
    tab.single.inspect_button.click()
    attention = window.tab_pages[1]
    assert window.tabs.currentIndex() == 1
    assert attention.text.toPlainText() == "the cat sat on" + tab.single.output.toPlainText()
    qtbot.waitUntil(lambda: not attention.view_slot.running, timeout=60000)
    assert attention.current is not None and attention.current.result.is_decoder


def test_the_stats_line_keeps_its_height_and_shows_all_in_its_tooltip(qtbot, tab):
    stats = tab.single.stats
    height = stats.height()
    run_generation(qtbot, tab)  # "Generating…", then the stats of the result
    assert "tokens in" in stats.text() and stats.toolTip() == stats.text()
    long = "a note that goes on and on " * 20
    stats.setText(long)
    qtbot.wait(50)
    # a text of another length does not re-lay out the tab (and repaint every chart)
    assert stats.height() == height and stats.toolTip() == long


# --- a run that fails or is cancelled replaces nothing --------------------------------------------
def wait_for_dialog(qtbot, window):
    qtbot.waitUntil(lambda: window.last_dialog is not None, timeout=10000)
    return window.last_dialog


def test_a_failed_generation_shows_the_previous_run_greyed(qtbot, window, tab):
    single = tab.single
    tab.controls.sequences.setValue(2)
    run_generation(qtbot, tab)
    single.sequence_picker.setCurrentIndex(1)
    previous, text = single.result, single.output.toPlainText()
    tab.controls.max_new.setValue(4096)  # more than the tiny model's context of 128 tokens
    run_generation(qtbot, tab)
    dialog = wait_for_dialog(qtbot, window)
    assert dialog.windowTitle() == "Generate failed"
    assert dialog.text() == "4096 new tokens do not fit the model's context of 128 tokens."
    assert single.result is previous and single.sequence_picker.count() == 2
    assert single.sequence_picker.currentIndex() == 1 and single.output.toPlainText() == text
    assert not single.results_view.isEnabled()  # greyed, and the line says why
    assert single.stats.text() == ("Failed: 4096 new tokens do not fit the model's context of "
                                   "128 tokens. The results shown are from the previous run.")
    assert tab.controls.generate_button.isEnabled() and not tab.controls.stop_button.isEnabled()
    tab.controls.max_new.setValue(8)
    run_generation(qtbot, tab)  # the next run is shown as usual
    assert single.result is not previous and single.results_view.isEnabled()


def test_a_failed_first_generation_leaves_nothing_shown(qtbot, window, tab):
    tab.controls.max_new.setValue(4096)
    run_generation(qtbot, tab)
    wait_for_dialog(qtbot, window)
    single = tab.single
    assert single.result is None and single.output.toPlainText() == ""
    assert single.results_view.isEnabled() and single.stats.text().startswith("Failed: 4096")


def test_a_cancelled_generation_shows_the_previous_run_greyed(qtbot, window, tab):
    import threading

    single = tab.single
    run_generation(qtbot, tab)
    previous, text = single.result, single.output.toPlainText()
    release = threading.Event()
    window.worker.submit("Hold the worker", lambda ctx: release.wait(30))
    tab.controls.generate_button.click()  # queued behind it
    assert single.output.toPlainText() == "" and tab.controls.stop_button.isEnabled()
    tab.controls.stop_button.click()
    release.set()
    qtbot.waitUntil(lambda: not single.run_slot.running and not window.worker.busy, timeout=30000)
    assert single.result is previous and single.output.toPlainText() == text
    assert not single.results_view.isEnabled()
    assert single.stats.text() == "Cancelled. The results shown are from the previous run."
    assert window.last_dialog is None  # cancelling is no error


def test_a_failed_comparison_shows_the_previous_one_greyed(qtbot, window, tab):
    compare = tab.compare
    compare.strategies.setPlainText("greedy\nbeams=2")
    tab.start_compare()
    qtbot.waitUntil(lambda: not compare.run_slot.running, timeout=60000)
    previous = compare.result
    texts = [view.toPlainText() for view in compare.views]
    compare.strategies.setPlainText("greedy\ntop-k 40\nnucleus 0.9")
    tab.controls.max_new.setValue(4096)
    tab.start_compare()
    assert len(compare.views) == 3  # the new run's columns, while it runs
    qtbot.waitUntil(lambda: not compare.run_slot.running, timeout=60000)
    dialog = wait_for_dialog(qtbot, window)
    assert dialog.windowTitle() == "Compare strategies failed"
    assert compare.result is previous and [v.toPlainText() for v in compare.views] == texts
    assert compare.summary.rowCount() == 2 and compare.summary.item(1, 0).text() == "beams=2"
    assert not compare.results_view.isEnabled()
    assert compare.note.text().endswith("The results shown are from the previous run.")
    assert compare.export_csv_button.isEnabled()  # the previous comparison can still be saved
    assert tab.controls.generate_button.isEnabled() and compare.compare_button.isEnabled()


def test_a_failed_explorer_drops_its_logits(qtbot, window, tab):
    single, controls = tab.single, tab.controls
    single.explore.setChecked(True)
    qtbot.waitUntil(lambda: single.explore_logits is not None, timeout=30000)
    single.explore.setChecked(False)
    controls.max_new.setValue(4096)  # the prompt and 4096 new tokens do not fit the context
    single.explore.setChecked(True)
    qtbot.waitUntil(lambda: not single.explore_slot.running, timeout=30000)
    dialog = wait_for_dialog(qtbot, window)
    assert dialog.windowTitle() == "Next-token distribution failed"
    assert not single.explore.isChecked() and single.explore_logits is None
    chart = single.candidate_chart
    assert "Explorer: Failed: 4096 new tokens" in chart.plot.plotItem.titleLabel.text
    assert list(chart.kept_bars.opts["height"]) == []  # the earlier distribution is gone
    controls.top_k.setValue(7)  # a slider move draws nothing from logits that are gone
    assert list(chart.kept_bars.opts["height"]) == []


def test_the_explorer_is_off_at_the_next_launch(qtbot, window, tab):
    tab.single.explore.setChecked(True)
    qtbot.waitUntil(lambda: tab.single.explore_logits is not None, timeout=30000)
    window.close()  # saves the controls
    second = MainWindow(autoload=False)
    qtbot.addWidget(second)
    # a view, not a setting: restored on, it would ask for logits before any model is loaded
    assert not second.tab_pages[0].single.explore.isChecked() and not second.worker.busy
    assert second.last_dialog is None

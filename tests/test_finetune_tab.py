"""The Fine-tune tab: a run draws its curves, stops and resumes, and its model is used."""

import json

import pytest

from workbench.ui.shell.main_window import MainWindow


@pytest.fixture
def window(qtbot, tiny):
    w = MainWindow(autoload=False)
    qtbot.addWidget(w)
    w.show()
    w.load_model(str(tiny("bert")))
    w.tabs.setCurrentIndex(2)  # a page builds its charts when first shown
    qtbot.waitUntil(lambda: not w.loading and w.tab_pages[2].charts is not None, timeout=60000)
    return w


def drawn_losses(tab, name):
    """The raw losses the loss chart shows for run ``name`` (none before its first rows)."""
    curves = tab.runs.get(name)
    losses = curves.raw.getData()[1] if curves is not None else None
    return [] if losses is None else list(losses)


def csv_file(path):
    rows = ["text,label"] + [f"{'hello world' if i % 2 else 'the sea is blue'} {i},"
                             f"{'good' if i % 2 else 'bad'}" for i in range(40)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def form(tab, tmp_path, steps=6):
    tab.task.setCurrentIndex(0)
    tab.train_file.setText(csv_file(tmp_path / "d.csv"))
    tab.max_steps.setValue(steps)
    tab.batch_size.setValue(4)
    tab.logging_steps.setValue(1)
    tab.eval_steps.setValue(3)
    tab.save_steps.setValue(3)
    tab.learning_rate.setValue(1e-3)
    tab.max_length.setValue(32)
    tab.output_dir.setText(str(tmp_path / "run"))


def test_a_run_draws_live_curves_and_its_model_can_be_used(qtbot, window, tmp_path):
    tab = window.tab_pages[2]
    form(tab, tmp_path)
    tab.start()
    qtbot.waitUntil(lambda: not tab.running, timeout=180000)
    curves = tab.runs["run"]
    steps, losses = curves.raw.getData()
    assert list(steps) == [1, 2, 3, 4, 5, 6]
    assert len(curves.eval.getData()[0]) == 2  # validation at steps 3 and 6
    assert len(curves.lr.getData()[0]) == 6
    speed_steps, speeds = curves.speed.getData()  # tokens per second between logged steps
    assert tab.charts["speed"].titleLabel.text == "tokens per second"
    assert len(speed_steps) >= 3 and all(v > 0 for v in speeds)
    assert tab.progress.value() == 6 and "Finished at step 6" in tab.eta.text()
    assert tab.use_button.isEnabled()
    tab.use_button.click()
    qtbot.waitUntil(lambda: not window.loading, timeout=60000)
    assert window.loaded.folder == tmp_path / "run" / "final"
    assert window.loaded.task == "classifier" and window.tabs.currentIndex() == 0


def test_stop_then_resume(qtbot, window, tmp_path):
    tab = window.tab_pages[2]
    form(tab, tmp_path, steps=5000)  # far more than it reaches before Stop
    tab.save_steps.setValue(10000)
    tab.eval_steps.setValue(10000)
    tab.start()
    qtbot.waitUntil(lambda: len(tab.rows.get("run", [])) >= 2, timeout=120000)
    tab.stop()
    assert tab.eta.text() == "Stopping: saving a checkpoint…"
    qtbot.waitUntil(lambda: not tab.running, timeout=120000)
    assert "Stopped at step" in tab.eta.text()
    stopped_at = max(r["step"] for r in tab.rows["run"])
    assert (tmp_path / "run" / f"checkpoint-{stopped_at}").is_dir()
    tab.max_steps.setValue(stopped_at + 2)
    tab.start(resume=True)
    qtbot.waitUntil(lambda: not tab.running, timeout=180000)
    assert f"Finished at step {stopped_at + 2}" in tab.eta.text()
    steps = [r["step"] for r in tab.rows["run"] if r.get("loss") is not None]
    assert steps[-2:] == [stopped_at + 1, stopped_at + 2]


def test_attach_follows_a_run_written_elsewhere(qtbot, window, tmp_path):
    window.tabs.setCurrentIndex(2)
    tab = window.tab_pages[2]
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    metrics = folder / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 1, "loss": 2.0, "seconds": 1.0}) + "\n")
    tab.attach(str(folder))  # read on the reader thread, drawn by the window
    assert all(plot.opacity() == 0 for plot in tab.charts.values())  # nothing to show yet
    qtbot.waitUntil(lambda: drawn_losses(tab, "elsewhere (attached)") == [2.0], timeout=5000)
    qtbot.waitUntil(lambda: all(plot.opacity() == 1 for plot in tab.charts.values()),
                    timeout=5000)  # each chart shown once it has drawn the rows
    with metrics.open("a") as f:  # the other process goes on
        f.write(json.dumps({"step": 2, "loss": 1.5, "seconds": 2.0}) + "\n")
    qtbot.waitUntil(lambda: len(drawn_losses(tab, "elsewhere (attached)")) == 2,
                    timeout=5000)
    again = MainWindow(autoload=False)  # recently attached runs come back after a restart
    qtbot.addWidget(again)
    again.show()
    again.tabs.setCurrentIndex(2)
    qtbot.waitUntil(lambda: "elsewhere (attached)" in again.tab_pages[2].runs, timeout=10000)


def test_bad_input_is_a_dialog(qtbot, window, tmp_path):
    tab = window.tab_pages[2]
    form(tab, tmp_path)
    tab.label_column.setText("sentiment")
    tab.start()
    qtbot.waitUntil(lambda: not tab.running, timeout=120000)
    qtbot.waitUntil(lambda: window.last_dialog is not None, timeout=10000)  # its own event
    assert "no column 'sentiment'" in window.last_dialog.text()


def test_export_launch_command(qtbot, window, tmp_path):
    tab = window.tab_pages[2]
    form(tab, tmp_path)
    command = tab.export_launch()
    assert command == f"accelerate launch -m workbench.train --config {tmp_path / 'run' / 'launch.json'}"
    data = json.loads((tmp_path / "run" / "launch.json").read_text())
    assert data["max_steps"] == 6 and data["task"] == "classify"


def test_lora_controls_only_for_causal_lms_and_remembered(qtbot, window):
    from PySide6.QtCore import QSettings

    from workbench.ui.common.state import restore_controls, save_controls

    tab = window.tab_pages[2]
    tab.task.setCurrentIndex(1)  # lm
    assert tab.lora.isEnabled() and not tab.lora_r.isEnabled()  # its settings wait for it
    tab.lora.setChecked(True)
    assert all(w.isEnabled() for w in (tab.lora_r, tab.lora_alpha, tab.lora_dropout,
                                       tab.lora_targets))
    tab.lora_r.setValue(4)
    tab.lora_targets.setText("q_proj, v_proj")
    config = tab.config()
    assert (config.lora, config.lora_r, config.lora_alpha, config.lora_target_modules) == (
        True, 4, 16, ["q_proj", "v_proj"])
    tab.task.setCurrentIndex(0)  # classify: LoRA is off, whatever the box says
    assert not tab.lora.isEnabled() and not tab.lora_r.isEnabled()
    assert tab.config().lora is False
    save_controls(tab, QSettings(), "check")  # as the window does when it closes
    tab.lora.setChecked(False)
    tab.lora_r.setValue(8)
    restore_controls(tab, QSettings(), "check")
    assert tab.lora.isChecked() and tab.lora_r.value() == 4


def test_charts_hold_their_ranges_during_a_run_and_fit_after(qtbot, window):
    tab = window.tab_pages[2]
    tab.rows["held"] = [{"step": s, "loss": 0.7 - s / 100, "learning_rate": 1e-3,
                         "grad_norm": 2.0, "seconds": s / 4} for s in range(1, 11)]
    tab.run_max_steps = 40
    tab.redraw(hold=True)
    box = tab.charts["loss"].getViewBox()
    assert box.viewRange()[0] == [0, 40]  # every step of the run has its place already
    bottom, top = box.viewRange()[1]
    assert bottom <= 0.6 and 0.69 <= top <= 1.0
    tab.rows["held"].append({"step": 11, "loss": 0.58, "learning_rate": 1e-3,
                             "grad_norm": 2.0, "seconds": 2.75})
    tab.redraw(hold=True)
    assert box.viewRange() == [[0, 40], [bottom, top]]  # a new point: no new axis layout
    assert list(tab.runs["held"].raw.getData()[0])[-1] == 11
    tab.redraw(hold=False)
    assert box.autoRangeEnabled()[0]  # the run is over: the charts fit the data


def test_steady_range():
    from workbench.ui.common.charts import steady_range

    assert steady_range(None, 0.3, 0.72) == (0.2, 1.0)
    assert steady_range(None, 0.0, 2e-5) == (0.0, 2e-5)  # a warm-up from 0 stays at 0
    assert steady_range((0.2, 1.0), 0.25, 0.9) == (0.2, 1.0)  # still holds the data
    assert steady_range((0.2, 1.0), 0.25, 1.3) == (0.0, 2.0)  # outgrown: a round new top
    assert steady_range((0.0, 2.0), 0.1, 0.3) == (0.0, 0.5)  # data in a corner: refit
    assert steady_range(None, -3, -1) == (-5, 0)
    assert steady_range(None, 0, 0) == (0.0, 1.0)


def test_charts_wait_while_another_tab_is_shown(qtbot, window):
    tab = window.tab_pages[2]
    window.tabs.setCurrentIndex(0)
    tab.rows["later"] = [{"step": 1, "loss": 0.5, "seconds": 0.1}]
    tab.charts_changed()
    assert tab.redraw_timer.isActive()
    qtbot.waitUntil(lambda: not tab.redraw_timer.isActive(), timeout=5000)  # its turn came
    assert "later" not in tab.runs  # no redraw work for a hidden tab
    window.tabs.setCurrentIndex(2)
    qtbot.waitUntil(lambda: "later" in tab.runs and
                    list(tab.runs["later"].raw.getData()[1]) == [0.5], timeout=5000)


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # pyqtgraph, a NaN loss
def test_the_loss_band_spans_the_raw_losses_around_each_step(qtbot, window):
    tab = window.tab_pages[2]
    losses = [1.0, 0.8, 2.0, 0.7, float("nan"), 0.6]
    tab.rows["band"] = [{"step": s, "loss": v, "seconds": s / 4}
                        for s, v in enumerate(losses, start=1)]
    tab.smoothing.setValue(60)  # EMA weight 0.6: a window of 1 / 0.4 -> 3 points
    tab.redraw(hold=False)
    curves = tab.runs["band"]
    steps, low = curves.band_low.getData()
    assert list(steps) == [1, 2, 3, 4, 5, 6]
    assert list(low) == [0.8, 0.8, 0.7, 0.7, 0.6, 0.6]  # the NaN is skipped, not drawn
    assert list(curves.band_high.getData()[1]) == [1.0, 2.0, 2.0, 2.0, 0.7, 0.6]
    assert not curves.band.path().isEmpty()  # drawn as a filled area
    tab.smoothing.setValue(0)  # no smoothing: the band is the raw points themselves
    assert list(curves.band_high.getData()[1]) == [1.0, 0.8, 2.0, 0.7, 0.6]
    assert curves.band in tab.charts["loss"].items
    tab.rows["band"] = [{"step": 1, "loss": float("nan"), "seconds": 0.25}]
    tab.redraw(hold=True)  # nothing to fill: hidden, and not a point at 0 in the range
    assert not curves.band.isVisible()
    assert tab.charts["loss"].getViewBox().childrenBounds()[1] is None


def test_throughput_in_tokens_or_steps_per_second():
    from workbench.core.training.curves import speed_unit, throughput

    rows = [{"step": 1, "loss": 1.0, "tokens": 100, "seconds": 1.0},
            {"step": 2, "loss": 0.9, "tokens": 300, "seconds": 1.5},
            {"step": 2, "eval_loss": 1.1, "tokens": 300, "seconds": 3.0},  # an evaluation
            {"step": 3, "loss": 0.8, "tokens": 500, "seconds": 3.5},
            {"step": 4, "loss": 0.7, "tokens": 600, "seconds": 4.5}]
    assert throughput(rows, "tokens") == ([2, 4], [400.0, 100.0])  # not across the eval
    assert throughput(rows, "steps") == ([2, 4], [2.0, 1.0])
    untimed = [{"step": 5, "loss": 1.0}]  # a Trainer's state without times: no speed
    older = [{"step": 1, "loss": 1.0, "seconds": 1.0}, {"step": 2, "loss": 1.0, "seconds": 2}]
    assert speed_unit([rows, untimed]) == "tokens"
    assert speed_unit([rows, older]) == "steps"  # a run without token counts: steps for all


def long_form(tab, tmp_path):
    form(tab, tmp_path, steps=100000)  # far more than any test waits for
    tab.save_steps.setValue(100000)
    tab.eval_steps.setValue(100000)


def new_window(qtbot):
    again = MainWindow(autoload=False)
    qtbot.addWidget(again)
    again.show()
    again.tabs.setCurrentIndex(2)
    qtbot.waitUntil(lambda: again.tab_pages[2].charts is not None, timeout=10000)
    return again


@pytest.mark.parametrize("choice", ["keep", "stop"])
def test_closing_during_a_run_keeps_it_or_stops_it_with_a_checkpoint(qtbot, window, tmp_path,
                                                                     monkeypatch, choice):
    from workbench.core.training.process import run_state

    tab = window.tab_pages[2]
    long_form(tab, tmp_path)
    tab.start()
    qtbot.waitUntil(lambda: len(tab.rows.get("run", [])) >= 2, timeout=120000)
    asked = []
    monkeypatch.setattr(type(tab), "ask_close_choice", lambda self: asked.append(1) or choice)
    window.close()
    assert asked == [1]
    folder = tmp_path / "run"
    if choice == "keep":
        assert run_state(folder).live  # the window is gone, the run goes on
        again = new_window(qtbot)
        found = again.tab_pages[2]
        qtbot.waitUntil(lambda: found.running, timeout=10000)  # found and followed live
        assert found.active.name == "run" and found.stop_button.isEnabled()
        steps = len(found.rows.get("run", []))
        qtbot.waitUntil(lambda: len(found.rows.get("run", [])) > steps + 1, timeout=60000)
        found.stop()
        qtbot.waitUntil(lambda: not found.running, timeout=120000)
        assert "Stopped at step" in found.eta.text()
    else:
        qtbot.waitUntil(lambda: run_state(folder).state == "stopped", timeout=120000)
        assert run_state(folder).resumable
        again = new_window(qtbot)  # resume after a restart of the app
        found = again.tab_pages[2]
        qtbot.waitUntil(lambda: "Stopped at step" in found.eta.text(), timeout=10000)
        reached = run_state(folder).step
        found.output_dir.setText(str(folder))
        found.max_steps.setValue(reached + 2)
        found.start(resume=True)
        qtbot.waitUntil(lambda: not found.running, timeout=180000)
        assert f"Finished at step {reached + 2}" in found.eta.text()
        assert run_state(folder).state == "finished"


def test_a_demo_run_that_outlasts_its_wait_ends_without_a_question(qtbot, window, tmp_path,
                                                                    monkeypatch):
    """--screenshot ends its demo run when it is still going: closing the window then asks
    nothing (nobody answers an offscreen window) and no process is left behind."""
    from workbench.core.training.process import run_state

    tab = window.tab_pages[2]
    long_form(tab, tmp_path)
    tab.start()
    qtbot.waitUntil(lambda: len(tab.rows.get("run", [])) >= 1, timeout=120000)
    process = tab.active.process
    tab.end_demo_run()
    assert not tab.running and process.wait(timeout=30) is not None
    assert not run_state(tmp_path / "run").live
    asked = []
    monkeypatch.setattr(type(tab), "ask_close_choice", lambda self: asked.append(1) or "keep")
    window.close()
    assert asked == []


def test_cancelling_the_close_keeps_the_window(qtbot, window, tmp_path, monkeypatch):
    tab = window.tab_pages[2]
    long_form(tab, tmp_path)
    tab.start()
    qtbot.waitUntil(lambda: tab.running and len(tab.rows.get("run", [])) >= 1, timeout=120000)
    monkeypatch.setattr(type(tab), "ask_close_choice", lambda self: "cancel")
    window.close()
    assert window.isVisible() and tab.running
    monkeypatch.setattr(type(tab), "confirm_stop_now", lambda self: True)
    # as with a step that takes minutes: the run has not seen the stop request yet when
    # the user chooses Stop now (here it never does, so no checkpoint can race the kill)
    monkeypatch.setattr("workbench.ui.training.tab.request_stop", lambda folder: None)
    tab.stop()
    assert tab.stop_button.text() == "Stop now…"
    tab.stop()  # confirmed: ends it at once, without a checkpoint
    qtbot.waitUntil(lambda: not tab.running, timeout=60000)
    assert "without saving" in tab.eta.text() or "ended without saving" in tab.eta.text()
    assert not any((tmp_path / "run").glob("checkpoint-*"))


def test_a_failed_run_is_a_dialog_with_its_message(qtbot, window, tmp_path):
    tab = window.tab_pages[2]
    form(tab, tmp_path)
    (tmp_path / "d.csv").write_text("text\nhello\nworld\n")  # no label column
    tab.start()
    qtbot.waitUntil(lambda: not tab.running, timeout=120000)
    qtbot.waitUntil(lambda: window.last_dialog is not None, timeout=10000)
    assert "no column 'label'" in window.last_dialog.text()
    assert "Traceback" not in window.last_dialog.text()


def test_damaged_remembered_runs_never_stop_the_start(qtbot, tmp_path):
    from PySide6.QtCore import QSettings

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "status.json").write_text('{"state": "running", "pid": ')
    (odd / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 0.5}\n\xff\xfe{"step": 2, "lo')
    QSettings().setValue("finetune/runs", [str(odd), 3, str(tmp_path / "gone")])
    QSettings().setValue("finetune/attached", {"not": "a list"})
    w = MainWindow(autoload=False)
    qtbot.addWidget(w)
    w.show()
    w.tabs.setCurrentIndex(2)
    qtbot.waitUntil(lambda: w.tab_pages[2].charts is not None, timeout=10000)
    assert not w.tab_pages[2].running


@pytest.mark.timeout(400)
def test_a_two_process_run_is_followed_live(qtbot, window, tmp_path):
    tab = window.tab_pages[2]
    form(tab, tmp_path, steps=4)
    tab.processes.setValue(2)
    tab.start()
    qtbot.waitUntil(lambda: not tab.running, timeout=300000)
    assert "Finished at step 4" in tab.eta.text(), tab.eta.text()
    steps = [r["step"] for r in tab.rows["run"] if r.get("loss") is not None]
    assert steps == [1, 2, 3, 4]  # one set of rows: only the main process logs
    log = (tmp_path / "run" / "train.log").read_text()
    assert "accelerate.commands.launch --multi_gpu --num_processes 2" in log


def test_start_is_always_visible_and_no_empty_chart_is_shown(qtbot):
    w = MainWindow(autoload=False)
    qtbot.addWidget(w)
    w.resize(1280, 800)
    w.show()
    w.tabs.setCurrentIndex(2)
    tab = w.tab_pages[2]
    qtbot.waitUntil(lambda: tab.charts is not None, timeout=10000)
    assert tab.chart_pages.currentWidget() is tab.no_run  # a line saying what to do
    for button in (tab.start_button, tab.stop_button, tab.resume_button, tab.export_button):
        assert not button.visibleRegion().isEmpty()  # not below the fold, not clipped
        assert not tab.form_scroll.isAncestorOf(button)
    assert not tab.form_scroll.horizontalScrollBar().isVisible()
    tab.rows["shown"] = [{"step": 1, "loss": 0.5, "seconds": 0.1}]
    tab.redraw()
    assert tab.chart_pages.currentWidget() is tab.chart_widget

"""The main window as a user sees it: tabs, model bar, status bar, dialogs, settings."""

import json
import time

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QMessageBox

from workbench.core.common.jobs import Progress
from workbench.core.generation.generate import generate
from workbench.core.generation.settings import SamplingSettings
from workbench.core.models.loader import load_model
from workbench.ui.shell.main_window import MainWindow


@pytest.fixture
def window(qtbot):
    w = MainWindow(autoload=False)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitExposed(w)
    return w


def load(qtbot, window, reference):
    window.load_model(reference)
    qtbot.waitUntil(lambda: not window.loading, timeout=60000)


def test_four_tabs_and_both_builtins_in_the_picker(window):
    assert [window.tabs.tabText(i) for i in range(window.tabs.count())] == [
        "Generate", "Attention", "Fine-tune", "Evaluate"]
    items = [window.picker.combo.itemText(i) for i in range(window.picker.combo.count())]
    assert items[:2] == ["SmolLM2-135M-Instruct", "all-MiniLM-L6-v2"]
    assert window.picker.reference() == "SmolLM2-135M-Instruct"
    assert window.model_status.text() == "No model"
    assert "No model loaded" in window.tab_pages[1].model_label.text()


def test_loading_a_folder_updates_status_bar_and_tabs(qtbot, window, tiny, monkeypatch):
    from workbench.core.models import decoding

    # whatever this CPU is: the note under test is the one about the model's size
    monkeypatch.setattr(decoding, "cpu_has_native_bf16", lambda: True)
    load(qtbot, window, str(tiny("llama")))
    assert window.model_status.text() == "Model: llama"
    # a model this small decodes from the caches: auto keeps the loaded model
    assert window.device_status.text() == "Device: cpu (float32) · decoding exact (float32)"
    assert "small enough" in window.device_status.toolTip()
    window.picker.decode.setCurrentText("bf16")
    assert window.worker.store.decode == "bf16"
    assert "decoding bfloat16" in window.device_status.text() or \
        "not available" in window.device_status.toolTip()
    window.picker.decode.setCurrentText("compiled")  # names the path it compiles, or why not
    assert window.device_status.text().endswith(
        "decoding compiled (torch.compile, static cache) · exact (float32)") or \
        "compiled off" in window.device_status.toolTip()
    assert window.memory_status.text().startswith("RAM ")
    assert "2 layers × 4 heads" in window.tab_pages[0].model_label.text()
    assert "Loaded llama" in window.log.text()
    assert not window.progress.isVisible()


def test_a_tab_says_when_the_model_does_not_fit(qtbot, window, tiny):
    load(qtbot, window, str(tiny("bert")))
    note = window.tab_pages[0].model_label.text()
    assert "is an encoder model; this tab needs a causal language model" in note
    assert "2 layers × 2 heads" in window.tab_pages[1].model_label.text()


def test_bad_model_shows_one_dialog_and_the_app_keeps_working(qtbot, window, tiny):
    load(qtbot, window, "/no/such/model/folder")
    dialog = window.last_dialog
    assert dialog is not None and dialog.isVisible()
    assert dialog.text() == "Model path not found: /no/such/model/folder"
    assert dialog.windowTitle() == "Load /no/such/model/folder failed"
    dialog.accept()
    load(qtbot, window, str(tiny("gpt2")))
    assert window.loaded is not None and window.loaded.name == "gpt2"


def test_remote_code_model_asks_before_trusting(qtbot, window, tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "totally-custom", "auto_map": {"AutoConfig": "cfg.Custom"}}))
    (folder / "model.safetensors").write_bytes(b"")
    load(qtbot, window, str(folder))
    dialog = window.last_dialog
    assert dialog.objectName() == "permission-dialog" and "remote code" in dialog.text()
    dialog.button(QMessageBox.StandardButton.No).click()
    assert window.loaded is None
    assert "Did not load" in window.log.text()
    assert not QSettings().value(f"trust/remote_code/{str(folder).replace('/', '|')}", False,
                                 type=bool)
    dialog.button(QMessageBox.StandardButton.Yes).click()  # allowed: retried with trust
    qtbot.waitUntil(lambda: window.last_dialog is not dialog and not window.loading, timeout=30000)
    assert QSettings().value(f"trust/remote_code/{str(folder).replace('/', '|')}", type=bool)
    assert window.last_dialog.objectName() == "error-dialog"  # no code to run: a clear error


def test_generate_streams_the_same_text_as_the_core(qtbot, window, tiny):
    load(qtbot, window, str(tiny("llama")))
    tab = window.tab_pages[0]
    tab.prompt.setPlainText("the cat sat on")
    tab.sample.setChecked(False)
    tab.chat.setChecked(False)
    tab.max_new.setValue(10)
    qtbot.mouseClick(tab.generate_button, Qt.MouseButton.LeftButton)
    assert tab.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not tab.running(), timeout=30000)
    expected = generate(load_model(str(tiny("llama"))), "the cat sat on",
                        SamplingSettings(max_new_tokens=10, do_sample=False, chat=False))
    assert tab.output.toPlainText() == expected.text
    assert tab.stats.text().startswith("10 tokens in")
    assert tab.generate_button.isEnabled() and not tab.stop_button.isEnabled()


def test_escape_cancels_the_running_job(qtbot, window):
    def slow(ctx):
        for i in range(1000):
            time.sleep(0.01)
            yield Progress("working", i / 1000)

    with qtbot.waitSignal(window.worker.job_started, timeout=5000):
        window.worker.submit("Slow job", slow)
    qtbot.waitUntil(window.progress.isVisible)
    assert window.cancel_button.isVisible() and window.job_status.text() in ("Slow job", "working")
    with qtbot.waitSignal(window.worker.job_cancelled, timeout=2000):
        qtbot.keyClick(window, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: not window.progress.isVisible())
    assert "Cancelled." in window.log.text()


def test_closing_during_a_job_stops_the_worker_quickly(qtbot, tiny):
    w = MainWindow(autoload=False)
    w.show()

    def slow(ctx):
        for _ in range(100000):
            time.sleep(0.01)
            yield Progress("working")

    with qtbot.waitSignal(w.worker.job_started, timeout=5000):
        w.worker.submit("Slow job", slow)
    start = time.monotonic()
    w.close()
    assert w.worker.isFinished()
    assert time.monotonic() - start < 5


def test_settings_persist_between_launches(qtbot):
    first = MainWindow(autoload=False)
    qtbot.addWidget(first)
    tab = first.tab_pages[0]
    tab.temperature.setValue(1.3)
    tab.top_k.setValue(7)
    tab.prompt.setPlainText("Remember me")
    first.tab_pages[3].findChild(type(tab.top_k), "stride").setValue(256)
    first.picker.device.setCurrentText("cpu")
    first.picker.set_reference("all-MiniLM-L6-v2")
    first.tabs.setCurrentIndex(2)
    first.close()

    second = MainWindow(autoload=False)
    qtbot.addWidget(second)
    tab = second.tab_pages[0]
    assert tab.temperature.value() == pytest.approx(1.3)
    assert tab.top_k.value() == 7
    assert tab.sliders["Top-k"].value() == 7  # the linked slider follows
    assert tab.prompt.toPlainText() == "Remember me"
    assert second.tab_pages[3].findChild(type(tab.top_k), "stride").value() == 256
    assert second.picker.device.currentText() == "cpu"
    assert second.picker.reference() == "all-MiniLM-L6-v2"
    assert second.tabs.currentIndex() == 2


def test_about_lists_library_versions(window):
    from importlib.metadata import version

    window.show_about()
    text = window.last_dialog.text()
    assert f"<td>transformers</td><td>{version('transformers')}</td>" in text
    assert f"<td>PySide6</td><td>{version('PySide6')}</td>" in text
    assert "Devices:" in text


def test_an_unexpected_error_is_one_line_with_the_traceback_behind_details(qtbot, window):
    def broken(ctx):
        raise KeyError("a key\nthat spans lines")

    window.worker.submit("Broken job", broken)
    qtbot.waitUntil(lambda: window.last_dialog is not None, timeout=10000)
    dialog = window.last_dialog
    assert dialog.windowTitle() == "Broken job failed"
    assert dialog.text() == "KeyError: 'a key\\nthat spans lines'"
    assert "Traceback" in dialog.detailedText() and "Traceback" not in dialog.text()

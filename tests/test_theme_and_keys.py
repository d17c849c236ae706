"""The window's colours (light, dark, the system's) and its keyboard paths: every page's
main action on Ctrl+Return, named in its tooltip."""

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QPalette
from PySide6.QtWidgets import QApplication

from workbench.ui.common import theme
from workbench.ui.shell.main_window import MainWindow


@pytest.fixture
def keep_colours(qapp):
    """Each test leaves the application's style, palette and chart colours as it found
    them (they are global)."""
    import pyqtgraph as pg

    style, palette = qapp.style().name(), qapp.palette()
    options = {k: pg.getConfigOption(k) for k in ("background", "foreground")}
    yield
    qapp.setStyle(style)
    qapp.setPalette(palette)
    pg.setConfigOptions(**options)


def lightness(colour) -> int:
    return colour.lightness()


def make_window(qtbot, **kwargs) -> MainWindow:
    window = MainWindow(autoload=False, **kwargs)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.started, timeout=20000)
    return window


def evaluate_chart(qtbot, window: MainWindow):
    window.tabs.setCurrentIndex(3)  # a page builds its charts when first shown
    qtbot.waitUntil(lambda: window.tab_pages[3].surprisal_plot is not None, timeout=20000)
    return window.tab_pages[3].surprisal_plot


def test_dark_theme_gives_dark_widgets_and_charts_with_light_text(qtbot, keep_colours):
    window = make_window(qtbot, theme_choice="dark")
    palette = QApplication.instance().palette()
    assert lightness(palette.color(QPalette.ColorRole.Window)) < 80
    assert lightness(palette.color(QPalette.ColorRole.WindowText)) > 200
    # contrast of text on its background: WCAG-style, well above 4.5:1 in luminance terms
    assert lightness(palette.color(QPalette.ColorRole.Text)) - \
        lightness(palette.color(QPalette.ColorRole.Base)) > 150
    chart = evaluate_chart(qtbot, window)
    assert lightness(chart.backgroundBrush().color()) < 80
    axis = chart.getAxis("left")
    assert lightness(axis.textPen().color()) > 200
    assert window.theme_actions["dark"].isChecked()


def test_switching_to_light_restyles_the_charts_already_made(qtbot, keep_colours):
    window = make_window(qtbot, theme_choice="dark")
    chart = evaluate_chart(qtbot, window)
    window.set_theme("light")
    assert lightness(chart.backgroundBrush().color()) > 240
    assert lightness(chart.getAxis("left").textPen().color()) < 60
    assert lightness(QApplication.instance().palette().color(QPalette.ColorRole.Window)) > 150
    assert window.theme_actions["light"].isChecked()


def test_the_chosen_theme_is_kept_and_a_bad_saved_one_is_reset(qtbot, keep_colours):
    window = make_window(qtbot)
    window.set_theme("dark")
    window.close()  # saves the settings
    assert QSettings().value("window/theme") == "dark"
    again = make_window(qtbot)
    assert again.theme_choice == "dark" and theme.is_dark()
    again.persist = False
    again.close()
    QSettings().setValue("window/theme", "purple")
    QSettings().sync()
    third = make_window(qtbot)
    assert third.theme_choice == "system"
    assert "window/theme" in third.log.text() and "purple" in third.log.text()
    assert QSettings().value("window/theme") in (None, "system")


def test_the_system_scheme_decides_when_nothing_was_chosen(qapp, keep_colours, monkeypatch):
    monkeypatch.setattr(theme, "system_is_dark", lambda app: True)
    assert theme.apply(qapp, "system") is True and theme.is_dark(qapp)
    monkeypatch.setattr(theme, "system_is_dark", lambda app: False)
    assert theme.apply(qapp, "system") is False and not theme.is_dark(qapp)


def test_ctrl_return_in_the_prompt_presses_generate_not_a_new_line(qtbot, keep_colours):
    from PySide6.QtTest import QTest

    window = make_window(qtbot)
    tab = window.tab_pages[0]
    button = tab.controls.generate_button
    presses = []
    button.clicked.connect(lambda: presses.append(1))
    text = tab.prompt.toPlainText()
    tab.prompt.setFocus()
    QTest.keyClick(tab.prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert presses == [1]
    assert tab.prompt.toPlainText() == text
    assert "Ctrl+Return" in button.toolTip()


def test_every_page_has_a_main_action_on_ctrl_return(qtbot, keep_colours):
    window = make_window(qtbot)
    evaluate = window.tab_pages[3]
    pages = [(i, None) for i in range(3)] + [(3, m) for m in range(evaluate.modes.count())]
    for index, mode in pages:
        window.tabs.setCurrentIndex(index)
        if mode is not None:
            evaluate.modes.setCurrentIndex(mode)
        button = window.tab_pages[index].primary_button()
        where = window.tabs.tabText(index) + ("" if mode is None else
                                             f" / {evaluate.modes.tabText(mode)}")
        assert button is not None, where
        assert "Ctrl+Return" in button.toolTip(), where


def test_ctrl_return_compares_in_the_comparison_view(qtbot, keep_colours):
    window = make_window(qtbot)
    tab = window.tab_pages[0]
    tab.modes.setCurrentWidget(tab.compare)
    presses = []
    tab.compare.compare_button.clicked.connect(lambda: presses.append("compare"))
    tab.controls.generate_button.clicked.connect(lambda: presses.append("generate"))
    tab.compare.compare_button.setEnabled(True)
    window.run_action.trigger()
    assert presses == ["compare"]
    assert tab.modes.currentWidget() is tab.compare

"""The Attention tab: bertviz offline in a web view, heatmap, head statistics, logit lens."""

import numpy as np
import pytest

from workbench.core.attention import AttentionResult, bertviz_html, compute_attention
from workbench.core.loader import load_model
from workbench.ui.attention_tab import AttentionView
from workbench.ui.main_window import MainWindow

HOSTILE = ["</script><script>window.__pwned=1</script>", "<!--", "<img src=x onerror=window.__pwned=2>",
           "a&amp;b"]


@pytest.fixture
def window(qtbot):
    w = MainWindow(autoload=False)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.tab_pages[1].heat_plot is not None, timeout=10000)
    return w


def js(qtbot, web, script):
    out = []
    web.run_js(script, out.append)
    qtbot.waitUntil(lambda: len(out) > 0, timeout=10000)
    return out[0]


def load(qtbot, window, path):
    window.load_model(str(path))
    qtbot.waitUntil(lambda: not window.loading, timeout=60000)


def test_run_on_an_encoder_pair(qtbot, window, tiny, tmp_path):
    load(qtbot, window, tiny("bert"))
    tab = window.tab_pages[1]
    tab.text.setPlainText("the cat sat on the mat")
    tab.text_b.setPlainText("it was tired")
    tab.start()
    qtbot.waitUntil(lambda: tab.job_id is None, timeout=60000)
    r = tab.current.result
    expected = compute_attention(load_model(str(tiny("bert"))), "the cat sat on the mat",
                                 "it was tired")
    assert r.tokens == expected.tokens and np.allclose(r.weights, expected.weights, atol=1e-6)
    qtbot.waitUntil(lambda: (js(qtbot, tab.web, "document.querySelectorAll('svg text').length")
                             or 0) > 0, timeout=30000)
    assert js(qtbot, tab.web, "typeof d3 + ' ' + typeof jQuery") == "object function"
    assert tab.web.guard.blocked == []
    # heatmap of the mean over heads of layer 0, then a click in the statistics grid
    assert np.allclose(tab.heat_image.image.T, r.weights[0].mean(axis=0))
    tab.open_head(1, 1)
    assert tab.results.currentIndex() == 1
    assert np.allclose(tab.heat_image.image.T, r.weights[1, 1])
    assert "Layer 1, head 1" in tab.heat_plot.getPlotItem().titleLabel.text
    assert "needs a decoder" in tab.lens_table.item(0, 0).text()
    assert "learns an absolute position table" in tab.positions_note.text()
    assert tab.position_plots["learned"][1].image.shape == (128, 128)
    csv_path = tmp_path / "a.csv"
    tab.export_csv(str(csv_path))
    assert csv_path.read_text().splitlines()[0].startswith("query \\ key,[CLS],the")
    html_path = tmp_path / "a.html"
    tab.export_html(str(html_path))
    assert html_path.read_text() == tab.current.page
    png_path = tmp_path / "heatmap.png"
    tab.export_png(str(png_path))
    assert png_path.read_bytes().startswith(b"\x89PNG")
    tab.export_png(str(tmp_path / "gone" / "heatmap.png"))  # a folder that is not there
    assert "could not write" in window.last_dialog.text()


def contrast(a, b) -> float:
    """WCAG 2 contrast ratio of two QColors."""
    def luminance(colour):
        def channel(c):
            return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
        return 0.2126 * channel(colour.redF()) + 0.7152 * channel(colour.greenF()) + \
            0.0722 * channel(colour.blueF())
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_decoder_gets_a_logit_lens(qtbot, window, tiny):
    load(qtbot, window, tiny("llama"))
    tab = window.tab_pages[1]
    tab.text.setPlainText("the cat sat on the")
    tab.text_b.clear()
    tab.start()
    qtbot.waitUntil(lambda: tab.job_id is None, timeout=60000)
    # the page comes first; the lens follows once the page has loaded
    assert tab.lens_table.item(0, 0).text() == "Computing the logit lens…"
    qtbot.waitUntil(lambda: not tab.lens_wanted and tab.lens_job is None, timeout=60000)
    assert tab.lens_table.rowCount() == 2 and tab.lens_table.columnCount() == 5
    assert tab.lens_table.horizontalHeaderItem(1).text() == "cat"
    lens = tab.current.lens
    for row in range(2):
        for col in range(5):
            item = tab.lens_table.item(row, col)
            token, p = lens.top_tokens[row][col], lens.top_probs[row][col]
            # whitespace is visible (a space-only token looked like an empty cell) ...
            assert item.text().strip() and item.text() == token.replace(" ", "·").replace(
                "\n", "⏎").replace("\t", "→") or (token == "" and item.text() == "∅")
            # ... and readable on its shade: WCAG's contrast ratio of at least 4.5
            ratio = contrast(item.background().color(), item.foreground().color())
            assert ratio >= 4.5, (token, p, ratio)
    assert "rotary" in tab.positions_note.text()
    assert not tab.position_plots["learned"][0].isVisible()
    tab.text_b.setPlainText("another sentence")  # a pair on a decoder: this run fails
    tab.start()
    qtbot.waitUntil(lambda: tab.job_id is None, timeout=30000)
    assert tab.notice.text().startswith("Failed:")
    assert "from the previous run" in tab.notice.text() and not tab.results.isEnabled()


def test_pair_on_a_decoder_is_a_dialog(qtbot, window, tiny):
    load(qtbot, window, tiny("llama"))
    tab = window.tab_pages[1]
    tab.text_b.setPlainText("another sentence")
    tab.start()
    qtbot.waitUntil(lambda: tab.job_id is None, timeout=30000)
    qtbot.waitUntil(lambda: window.last_dialog is not None, timeout=10000)  # its own event
    assert "Sentence pairs are for encoders" in window.last_dialog.text()


def test_hostile_tokens_show_literally_and_run_nothing(qtbot, window):
    tab = window.tab_pages[1]
    rng = np.random.default_rng(1)
    w = rng.random((1, 2, len(HOSTILE), len(HOSTILE))).astype(np.float32)
    w /= w.sum(-1, keepdims=True)
    result = AttentionResult("test", HOSTILE, w)
    page, notices = bertviz_html(result, "head")
    tab.show_view(AttentionView(result, page, notices, None))
    with qtbot.waitSignal(tab.web.loaded, timeout=30000) as blocker:
        pass
    assert blocker.args == [True]
    qtbot.waitUntil(lambda: (js(qtbot, tab.web, "document.querySelectorAll('svg text').length")
                             or 0) > 0, timeout=20000)
    assert js(qtbot, tab.web, "String(window.__pwned)") == "undefined"
    shown = js(qtbot, tab.web, "Array.from(document.querySelectorAll('svg text'))"
                               ".map(e => e.textContent).join('|')")
    for token in HOSTILE:
        assert token in shown
    assert js(qtbot, tab.web, "document.querySelectorAll('img').length") == 0

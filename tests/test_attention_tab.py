"""The Attention tab: bertviz offline in a web view, heatmap, head statistics, logit lens."""

import numpy as np
import pytest

from workbench.core.interpret.attention import (
    AttentionResult,
    LensColumns,
    bertviz_html,
    compute_attention,
    logit_lens,
)
from workbench.core.models.loader import load_model
from workbench.ui.common.widgets import visible_token
from workbench.ui.interpret.tab import AttentionView
from workbench.ui.shell.main_window import MainWindow

HOSTILE = ["</script><script>window.__pwned=1</script>", "<!--", "<img src=x onerror=window.__pwned=2>",
           "a&amp;b"]


@pytest.fixture
def window(qtbot):
    w = MainWindow(autoload=False)
    qtbot.addWidget(w)
    w.show()
    w.tabs.setCurrentIndex(1)  # a page builds its charts when first shown
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
    qtbot.waitUntil(lambda: not tab.view_slot.running, timeout=60000)
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
    qtbot.waitUntil(lambda: not tab.view_slot.running, timeout=60000)
    # the page comes first; the lens follows once the page has loaded: until then its
    # table has the tokens and layers, and "…" in every cell
    assert tab.lens_table.item(0, 0).text() == "…" and tab.lens_table.columnCount() == 5
    assert tab.lens_table.horizontalHeaderItem(1).text() == "cat"
    qtbot.waitUntil(lambda: not tab.lens_wanted and not tab.lens_slot.running, timeout=60000)
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
    qtbot.waitUntil(lambda: not tab.view_slot.running, timeout=30000)
    assert tab.notice.text().startswith("Failed:")
    assert "from the previous run" in tab.notice.text() and not tab.results.isEnabled()


def test_pair_on_a_decoder_is_a_dialog(qtbot, window, tiny):
    load(qtbot, window, tiny("llama"))
    tab = window.tab_pages[1]
    tab.text_b.setPlainText("another sentence")
    tab.start()
    qtbot.waitUntil(lambda: not tab.view_slot.running, timeout=30000)
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


def test_the_lens_fills_the_columns_in_view_first(qtbot, window, tiny):
    load(qtbot, window, tiny("llama"))
    window.tabs.setCurrentIndex(1)
    tab = window.tab_pages[1]
    tab.results.setCurrentWidget(tab.lens_table)
    text = " ".join(["the cat sat on the mat because it was tired and the dog"] * 8)
    tab.text.setPlainText(text)  # 104 tokens: far wider than the table
    tab.max_tokens.setValue(120)
    tab.start()
    qtbot.waitUntil(lambda: not tab.view_slot.running and not tab.lens_slot.running, timeout=60000)
    table = tab.lens_table
    assert table.columnCount() == 104
    qtbot.waitUntil(lambda: table.horizontalScrollBar().maximum() > 0, timeout=5000)
    table.horizontalScrollBar().setValue(table.horizontalScrollBar().maximum() * 2 // 3)

    def in_view() -> list[int]:
        width = table.viewport().width()
        return [c for c in range(table.columnCount())
                if table.columnViewportPosition(c) < width
                and table.columnViewportPosition(c) + table.columnWidth(c) > 0]

    def shown(col: int) -> bool:
        return all(table.item(row, col).text() != "…" for row in range(table.rowCount()))

    arrivals = []  # at each chunk: its columns, those in view, and those shown

    def on_event(job_id, event):
        if isinstance(event, LensColumns):
            arrivals.append(((event.start, event.stop), in_view(),
                             [c for c in range(table.columnCount()) if shown(c)]))

    window.worker.job_event.connect(on_event)  # after the tab's own: it has drawn the chunk
    tab.start()  # the same text again, the table scrolled to its right part
    qtbot.waitUntil(lambda: not tab.view_slot.running and not tab.lens_slot.running, timeout=60000)
    window.worker.job_event.disconnect(on_event)
    (start, stop), visible, filled = arrivals[0]
    assert visible[0] > 20 and stop - start < 104  # a right part, not the whole text
    assert start <= visible[0] and visible[-1] < stop  # the first chunk: the columns in view
    assert filled == list(range(start, stop))  # shown at once; the others still "…"
    assert len(arrivals) > 2
    reference = logit_lens(load_model(str(tiny("llama"))), text, 120)
    for row in range(2):
        for col in range(104):
            assert table.item(row, col).text() == visible_token(reference.top_tokens[row][col])
    assert tab.current.lens.top_tokens == reference.top_tokens

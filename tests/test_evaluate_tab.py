"""The Evaluate tab as a user drives it."""

import json

import pytest
import sacrebleu

from workbench.core.evaluation import perplexity
from workbench.core.loader import load_model
from workbench.ui.main_window import MainWindow


@pytest.fixture
def window(qtbot, tiny):
    w = MainWindow(autoload=False)
    qtbot.addWidget(w)
    w.show()
    w.load_model(str(tiny("gpt2")))
    qtbot.waitUntil(lambda: not w.loading and w.tab_pages[3].surprisal_plot is not None,
                    timeout=60000)
    return w


@pytest.fixture
def tab(window):
    return window.tab_pages[3]


def test_perplexity_of_pasted_text(qtbot, tab, tiny):
    text = "the cat sat on the mat because it was tired . " * 8
    tab.ppl_text.setPlainText(text)
    tab.window.setValue(32)
    tab.stride.setValue(8)
    tab.start_perplexity()
    qtbot.waitUntil(lambda: tab.ppl_job is None, timeout=30000)
    expected = perplexity(load_model(str(tiny("gpt2"))), text, 32, 8)
    assert tab.ppl_result.perplexity == pytest.approx(expected.perplexity, rel=1e-6)
    assert f"Perplexity {expected.perplexity:.3f}" in tab.ppl_numbers.text()
    assert tab.ppl_tokens.toPlainText() == "".join(expected.token_texts)
    assert tab.worst.rowCount() == 15
    xs, ys = tab.surprisal_curve.getData()
    assert len(ys) == expected.tokens
    assert tab.history.rowCount() == 1 and "perplexity" in tab.history.item(0, 2).text()


def test_perplexity_needs_a_language_model(qtbot, window, tab, tiny):
    window.load_model(str(tiny("bert")))
    qtbot.waitUntil(lambda: not window.loading, timeout=30000)
    tab.start_perplexity()
    qtbot.waitUntil(lambda: tab.ppl_job is None, timeout=30000)
    qtbot.waitUntil(lambda: window.last_dialog is not None, timeout=10000)  # its own event
    assert "language-modelling head" in window.last_dialog.text()
    assert tab.ppl_numbers.text().startswith("Failed:")


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_bleu_with_significance_and_history(qtbot, tab, tmp_path):
    hyps = ["the cat sat on the mat", "a dog barked at night", "it rains in paris"] * 3
    refs = ["the cat is on the mat", "the dog barked at night", "it is raining in paris"] * 3
    other = ["mat cat the", "night dog", "paris rains"] * 3
    tab.hyp_file.setText(write(tmp_path / "h.txt", hyps))
    tab.ref_files.setText(write(tmp_path / "r.txt", refs))
    tab.sys2_file.setText(write(tmp_path / "o.txt", other))
    tab.start_bleu()
    qtbot.waitUntil(lambda: tab.bleu_job is None, timeout=60000)
    assert tab.corpus_table.item(0, 0).text() == "bleu"
    assert float(tab.corpus_table.item(0, 1).text()) == pytest.approx(
        sacrebleu.corpus_bleu(hyps, [refs]).score, abs=0.01)
    assert tab.corpus_table.item(0, 2).text().startswith("nrefs:1|case:mixed")
    assert tab.significance_table.rowCount() == 3
    assert tab.sentence_table.rowCount() == 9
    tab.sentence_table.selectRow(0)
    assert "line-through" in tab.diff.toHtml() or "background" in tab.diff.toHtml()
    out = tmp_path / "history.json"
    tab.export_history(str(out))
    kinds = [e["kind"] for e in json.loads(out.read_text())]
    assert kinds == ["bleu"]


def test_bleu_line_count_mismatch_is_a_dialog(qtbot, window, tab, tmp_path):
    tab.hyp_file.setText(write(tmp_path / "h.txt", ["a", "b"]))
    tab.ref_files.setText(write(tmp_path / "r.txt", ["a"]))
    tab.start_bleu()
    qtbot.waitUntil(lambda: tab.bleu_job is None, timeout=30000)
    qtbot.waitUntil(lambda: window.last_dialog is not None, timeout=10000)  # its own event
    assert "2 lines but reference 1 has 1" in window.last_dialog.text()


def test_history_persists(qtbot, tab, tiny):
    tab.ppl_text.setPlainText("the cat sat on the mat . " * 4)
    tab.start_perplexity()
    qtbot.waitUntil(lambda: tab.ppl_job is None, timeout=30000)
    again = MainWindow(autoload=False)
    qtbot.addWidget(again)
    assert again.tab_pages[3].history.rowCount() == tab.history.rowCount() >= 1

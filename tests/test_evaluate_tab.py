"""The Evaluate tab as a user drives it."""

import json
import math

import pytest
import sacrebleu

from workbench.core.evaluation.metrics import perplexity
from workbench.core.models.loader import load_model
from workbench.ui.common.widgets import probability_colour
from workbench.ui.shell.main_window import MainWindow


@pytest.fixture
def window(qtbot, tiny):
    w = MainWindow(autoload=False)
    qtbot.addWidget(w)
    w.show()
    w.load_model(str(tiny("gpt2")))
    w.tabs.setCurrentIndex(3)  # a page builds its charts when first shown
    qtbot.waitUntil(lambda: not w.loading and w.tab_pages[3].surprisal_plot is not None,
                    timeout=60000)
    return w


@pytest.fixture
def tab(window):
    return window.tab_pages[3]


def test_perplexity_of_pasted_text(qtbot, tab, tiny):
    text = "the cat sat on the mat because it was tired . " * 8
    tab.ppl_text.setPlainText(text)
    tab.window_size.setValue(32)
    tab.stride.setValue(8)
    tab.start_perplexity()
    qtbot.waitUntil(lambda: tab.ppl_slot.handle is None, timeout=30000)
    expected = perplexity(load_model(str(tiny("gpt2"))), text, 32, 8)
    assert tab.ppl_result.perplexity == pytest.approx(expected.perplexity, rel=1e-6)
    assert f"Perplexity {expected.perplexity:.3f}" in tab.ppl_numbers.text()
    assert tab.ppl_tokens.toPlainText() == "".join(expected.token_texts)
    assert tab.worst.rowCount() == 15
    xs, ys = tab.surprisal_curves[0].getData()
    assert len(ys) == expected.tokens
    assert not tab.colour_by.isEnabled()  # one model: nothing to choose
    assert tab.history.rowCount() == 1 and "perplexity" in tab.history.item(0, 2).text()


def test_empty_text_is_a_dialog(tab, window):
    tab.ppl_text.setPlainText("  ")
    tab.start_perplexity()
    assert window.last_dialog.text() == "The text is empty." and tab.ppl_slot.handle is None


def test_perplexity_needs_a_language_model(qtbot, window, tab, tiny):
    window.load_model(str(tiny("bert")))
    qtbot.waitUntil(lambda: not window.loading, timeout=30000)
    tab.start_perplexity()
    qtbot.waitUntil(lambda: tab.ppl_slot.handle is None, timeout=30000)
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
    qtbot.waitUntil(lambda: tab.bleu_slot.handle is None, timeout=60000)
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
    qtbot.waitUntil(lambda: tab.bleu_slot.handle is None, timeout=30000)
    qtbot.waitUntil(lambda: window.last_dialog is not None, timeout=10000)  # its own event
    assert "2 lines but reference 1 has 1" in window.last_dialog.text()


def test_history_persists(qtbot, tab, tiny):
    tab.ppl_text.setPlainText("the cat sat on the mat . " * 4)
    tab.start_perplexity()
    qtbot.waitUntil(lambda: tab.ppl_slot.handle is None, timeout=30000)
    again = MainWindow(autoload=False)
    qtbot.addWidget(again)
    assert again.tab_pages[3].history.rowCount() == tab.history.rowCount() >= 1


def test_perplexity_of_two_models_side_by_side(qtbot, tab, tiny):
    text = "the cat sat on the mat because it was tired . " * 6
    tab.ppl_text.setPlainText(text)
    tab.window_size.setValue(32)
    tab.compare_model.setCurrentText(str(tiny("llama")))
    tab.start_perplexity()
    qtbot.waitUntil(lambda: tab.ppl_slot.handle is None, timeout=60000)
    first = perplexity(load_model(str(tiny("gpt2"))), text, 32)
    second = perplexity(load_model(str(tiny("llama"))), text, 32)
    numbers = tab.ppl_numbers.text()
    assert f"{first.perplexity:.3f}" in numbers and f"{second.perplexity:.3f}" in numbers
    assert "tokenize the text alike" in numbers
    assert [len(c.getData()[1]) for c in tab.surprisal_curves] == [first.tokens, second.tokens]
    assert tab.colour_by.count() == 3 and "difference" in tab.colour_by.itemText(2)
    tab.colour_by.setCurrentIndex(2)
    tab.colour_by.activated.emit(2)
    assert tab.ppl_tokens.toPlainText() == "".join(first.token_texts)
    # the token where the two models differ most wears the strongest colour, and its
    # tooltip gives that difference in bits (second minus first)
    diff = [(b - a) / math.log(2) for a, b in zip(first.token_nll, second.token_nll,
                                                  strict=True)]
    position = max(range(len(diff)), key=lambda i: abs(diff[i]))
    formats = []
    for i in range(len(diff)):
        cursor = tab.ppl_tokens.textCursor()
        cursor.setPosition(tab.ppl_tokens.starts[i + 1] + 1)  # token i + 1 is scored as i
        formats.append(cursor.charFormat())
    assert formats[position].toolTip().startswith(f"position {position + 1}: "
                                                  f"{diff[position]:+.2f} bits")
    # the strongest colour is the one furthest from the neutral middle of the scale
    neutral = probability_colour(0.5)

    def distance(fmt):
        colour = fmt.background().color()
        return sum(abs(getattr(colour, c)() - getattr(neutral, c)()) for c in ("red", "green",
                                                                              "blue"))
    assert distance(formats[position]) == max(distance(f) for f in formats)
    assert tab.worker.store.current.name == "gpt2"  # the loaded model is still the first
    assert tab.history.rowCount() == 2


def test_generate_then_score(qtbot, window, tab, tiny, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("prompt\treference\nthe cat\tthe cat sat\nthe sea\tthe sea is blue\n",
                     encoding="utf-8")
    page = tab.generate_page
    assert page.strategy.itemText(0) == "Generate tab's settings"
    page.pairs_file.setText(str(pairs))
    page.strategy.setCurrentText("greedy")
    page.max_new.setValue(5)
    seen = []  # each row appears as soon as it is generated, before the scores
    shown = page._row_done

    def row_done(event):
        shown(event)
        if type(event).__name__ == "RowDone":
            seen.append((page.outputs.rowCount(), page.outputs.item(event.row - 1, 4).text(),
                         page.outputs.item(event.row - 1, 3).text()))
    page._row_done = row_done
    page.start()
    qtbot.waitUntil(lambda: page.run_slot.handle is None, timeout=60000)
    result = page.result
    assert seen == [(1, result.hypotheses[0], "the cat"), (2, result.hypotheses[1], "the sea")]
    refs = [["the cat sat", "the sea is blue"]]
    assert float(page.scores.item(0, 1).text()) == pytest.approx(
        sacrebleu.corpus_bleu(result.hypotheses, refs).score, abs=0.01)
    assert page.outputs.rowCount() == 2 and page.outputs.item(0, 4).text() == result.hypotheses[0]
    assert "saved in" in page.status.text()
    assert tab.history.item(0, 1).text() == "generate+score"
    from pathlib import Path

    assert (Path(result.saved_to) / "outputs.tsv").is_file()
    # the Generate tab's own settings are used when chosen
    generate = window.tab_pages[0]
    generate.temperature.setValue(0)
    page.strategy.setCurrentText("Generate tab's settings")
    assert page.settings().max_new_tokens == 5
    assert page.settings().temperature == 0


def test_generate_then_score_bad_file_is_a_dialog(qtbot, window, tab, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("no tab here\n", encoding="utf-8")
    tab.generate_page.pairs_file.setText(str(pairs))
    tab.generate_page.start()
    assert "has no tab" in window.last_dialog.text()
    assert tab.generate_page.run_slot.handle is None


def test_classifier_metrics_and_confusion_matrix(qtbot, window, tab, tiny, tmp_path):
    data = tmp_path / "labelled.csv"
    data.write_text("text,label\nthe cat sat,LABEL_0\nthe dog,LABEL_1\nhello world,LABEL_1\n"
                    "the sea is blue,LABEL_0\n", encoding="utf-8")
    window.load_model(str(tiny("bert-classifier")))
    qtbot.waitUntil(lambda: not window.loading, timeout=30000)
    page = tab.classify_page
    page.data_file.setText(str(data))
    page.start()
    qtbot.waitUntil(lambda: page.run_slot.handle is None, timeout=30000)
    r = page.result
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    true = ["LABEL_0", "LABEL_1", "LABEL_1", "LABEL_0"]
    predicted = [row["predicted"] for row in r.rows]
    assert f"Accuracy {accuracy_score(true, predicted):.4f}" in page.numbers.text()
    assert f"macro-F1 {f1_score(true, predicted, average='macro', zero_division=0):.4f}" in \
        page.numbers.text()
    matrix = confusion_matrix(true, predicted, labels=["LABEL_0", "LABEL_1"])
    assert [[int(page.confusion.item(i, j).text()) for j in range(2)] for i in range(2)] == \
        matrix.tolist()
    assert page.confusion.verticalHeaderItem(0).text() == "LABEL_0"
    assert page.errors.rowCount() == sum(t != p for t, p in zip(true, predicted, strict=True))
    assert tab.history.item(0, 1).text() == "classification"


def test_classifier_on_a_language_model_is_a_dialog(qtbot, window, tab, tmp_path):
    data = tmp_path / "labelled.csv"
    data.write_text("text,label\nthe cat,a\nthe dog,b\n", encoding="utf-8")
    tab.classify_page.data_file.setText(str(data))
    tab.classify_page.start()
    qtbot.waitUntil(lambda: tab.classify_page.run_slot.handle is None, timeout=30000)
    qtbot.waitUntil(lambda: window.last_dialog is not None, timeout=10000)
    assert "not a classifier" in window.last_dialog.text()


def test_a_failed_run_marks_the_earlier_results_stale(qtbot, window, tab, tmp_path):
    tab.ppl_text.setPlainText("the cat sat on the mat because it was tired . " * 4)
    tab.window_size.setValue(32)
    tab.stride.setValue(8)
    tab.start_perplexity()
    qtbot.waitUntil(lambda: tab.ppl_slot.handle is None, timeout=30000)
    assert tab.ppl_view.isEnabled()
    tab.compare_model.setCurrentText(str(tmp_path / "no-such-model"))  # this run fails
    tab.start_perplexity()
    qtbot.waitUntil(lambda: tab.ppl_slot.handle is None, timeout=30000)
    assert tab.ppl_numbers.text().startswith("Failed:")
    assert "from the previous run" in tab.ppl_numbers.text()
    assert not tab.ppl_view.isEnabled()  # greyed out: not this run's numbers
    assert window.last_dialog.windowTitle() == "Perplexity failed"
    tab.compare_model.setCurrentText("")
    tab.start_perplexity()
    qtbot.waitUntil(lambda: tab.ppl_slot.handle is None, timeout=30000)
    assert tab.ppl_view.isEnabled() and "Perplexity" in tab.ppl_numbers.text()


def test_a_failed_page_job_marks_its_earlier_results_stale(qtbot, window, tab):
    page = tab.generate_page
    page.has_result = True  # as after an earlier run

    def broken(ctx):
        raise RuntimeError("the model went away")

    page.submit(broken)
    qtbot.waitUntil(lambda: page.run_slot.handle is None, timeout=10000)
    assert page.status.text().startswith("Failed: the model went away")
    assert "from the previous run" in page.status.text()
    assert not page.result_view.isEnabled()

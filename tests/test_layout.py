"""The window is readable at 1280×800 (the screenshots' size) and at 1920×1080: every table
fits its columns in its width (no sideways scroll bar for a handful of columns) and shows
its rows where the page has room, and the Fine-tune form fits with Start in view."""

import random

import pytest
from PySide6.QtWidgets import QAbstractScrollArea, QTableView

from workbench.core.evaluation.classification import ClassificationResult, scores
from workbench.core.evaluation.generate_score import generate_and_score
from workbench.core.evaluation.metrics import perplexity, score_translation
from workbench.core.generation.compare import compare
from workbench.core.generation.settings import SamplingSettings, parse_strategy
from workbench.core.interpret.attention import LogitLens
from workbench.core.models.loader import load_model
from workbench.ui.shell.main_window import MainWindow

SIZES = [(1280, 800), (1920, 1080)]
LONG = ("Write a long and detailed story about a lighthouse keeper who climbs the spiral "
        "stairs every night, lights the great lamp and watches the ships pass the channel. ")


@pytest.fixture(scope="module")
def llama(tiny):
    return load_model(str(tiny("llama")))


def open_window(qtbot, size):
    w = MainWindow(autoload=False)
    w.persist = False
    qtbot.addWidget(w)
    w.resize(*size)
    w.show()
    qtbot.waitExposed(w)
    qtbot.waitUntil(lambda: w.tab_pages[0].single.candidate_chart is not None, timeout=20000)
    return w


def visible_rows(table: QTableView) -> int:
    height = table.viewport().height()
    return sum(1 for r in range(table.rowCount())
               if table.rowViewportPosition(r) >= 0
               and table.rowViewportPosition(r) + table.rowHeight(r) <= height)


def columns_width(table: QTableView) -> int:
    return sum(table.columnWidth(c) for c in range(table.columnCount())
               if not table.isColumnHidden(c))


def assert_fits(qtbot, table: QTableView, rows: int = 0) -> None:
    """Every column within the table's width, no sideways scroll bar, and at least
    ``rows`` rows (or all of them) in view."""
    assert table.isVisible(), table.objectName()
    # the columns are fitted once the event loop has run (many changes make one fit)
    qtbot.waitUntil(lambda: 0 < columns_width(table) <= table.viewport().width(), timeout=3000)
    qtbot.wait(50)
    assert columns_width(table) <= table.viewport().width(), table.objectName()
    assert not table.horizontalScrollBar().isVisible(), table.objectName()
    assert visible_rows(table) >= min(rows, table.rowCount()), table.objectName()


@pytest.mark.parametrize("size", SIZES)
def test_every_tab_fits_the_window(qtbot, size):
    w = open_window(qtbot, size)
    for index in range(w.tabs.count()):
        w.tabs.setCurrentIndex(index)
        qtbot.wait(20)
        # a tab whose least height is more than the window has makes the window taller
        # than the screen, and its bottom (buttons, the status bar) unreachable
        assert w.size().width() == size[0] and w.size().height() == size[1], w.tabs.tabText(index)
    assert w.minimumSizeHint().height() <= size[1]


@pytest.mark.parametrize("size", SIZES)
def test_the_compare_summary_fits_six_strategies(qtbot, size, llama):
    w = open_window(qtbot, size)
    tab = w.tab_pages[0]
    specs = ["greedy", "top-k 40", "nucleus 0.9", "temperature=1.5",
             "top_k=40,temperature=0.8,n=3", "creative"]
    base = SamplingSettings(max_new_tokens=6, chat=False)
    result = compare(llama, LONG * 3, [parse_strategy(s, base) for s in specs],
                     max_new_tokens=6, chat=False, top_n=0)
    tab.prompt.setPlainText(LONG * 3)
    tab.modes.setCurrentIndex(1)
    tab.compare._make_columns([s.name for s in result.strategies])
    tab.compare.show_result(result)
    summary = tab.compare.summary
    assert_fits(qtbot, summary, rows=6)
    assert [summary.item(r, 0).text() for r in range(6)] == specs  # named as given
    # every number whole: no column narrower than its contents
    for c in range(1, summary.columnCount()):
        assert summary.columnWidth(c) >= summary.sizeHintForColumn(c)


@pytest.mark.parametrize("size", SIZES)
def test_the_evaluate_tables_fit_and_show_their_rows(qtbot, size, llama, tmp_path):
    w = open_window(qtbot, size)
    tab = w.tab_pages[3]
    w.tabs.setCurrentIndex(3)
    # perplexity: the worst tokens beside the text, at least 5 of them in view
    tab.ppl_inputs = {"source": "pasted text"}
    tab.show_perplexity([perplexity(llama, LONG * 4)])
    tab.modes.setCurrentIndex(0)
    assert_fits(qtbot, tab.worst, rows=5)
    assert_fits(qtbot, tab.history)
    # BLEU / chrF / TER: all three metrics, the significance tests and 5 lines in view
    hyps = [f"the cat number {i} sat on the mat near the old door of the house" for i in range(20)]
    refs = [[f"the cat {i} sat on a mat near the door of the old house" for i in range(20)]]
    other = [f"a cat {i} was on the mat by the door" for i in range(20)]
    tab.bleu_inputs = {}
    tab.show_bleu(score_translation(hyps, refs, ("bleu", "chrf", "ter"), compare_hyps=other,
                                    tests=("bs",), n_samples=50))
    tab.modes.setCurrentIndex(1)
    assert_fits(qtbot, tab.corpus_table, rows=3)
    assert visible_rows(tab.corpus_table) == 3
    assert_fits(qtbot, tab.significance_table, rows=3)
    assert_fits(qtbot, tab.sentence_table, rows=5)
    # classification: four labels, the whole confusion matrix, 5 of the errors
    random.seed(1)
    labels = ["positive", "negative", "neutral", "mixed feelings"]
    true = [random.choice(labels) for _ in range(120)]
    predicted = [t if random.random() < 0.7 else random.choice(labels) for t in true]
    names, matrix, accuracy, macro_f1, per_label = scores(true, predicted)
    rows = [{"row": i + 1, "text": LONG, "label": t, "predicted": p, "confidence": 0.5}
            for i, (t, p) in enumerate(zip(true, predicted, strict=True))]
    page = tab.classify_page
    page.inputs = {}
    page.show_result(ClassificationResult(names, matrix, accuracy, macro_f1, per_label, 120,
                                          model="tiny", rows=rows))
    tab.modes.setCurrentIndex(3)
    assert_fits(qtbot, page.per_label, rows=4)
    assert_fits(qtbot, page.confusion, rows=4)
    assert_fits(qtbot, page.errors, rows=5)
    # generate then score: every metric's row, and the outputs with their long prompts
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{LONG}{i}\tune phrase {i}\n" for i in range(6)), encoding="utf-8")
    from workbench.core.common.data_files import read_pairs

    prompts, references = read_pairs(str(pairs))
    generated = generate_and_score(llama, prompts, references,
                                   SamplingSettings(max_new_tokens=4, chat=False), "greedy",
                                   ("bleu", "chrf", "ter"), True)
    page = tab.generate_page
    page.inputs = {}
    page.show_result(generated)
    tab.modes.setCurrentIndex(2)
    assert_fits(qtbot, page.scores, rows=3)
    assert_fits(qtbot, page.outputs, rows=5)


def test_a_long_text_is_cut_in_its_column_and_whole_in_a_tooltip(qtbot, llama):
    w = open_window(qtbot, (1280, 800))
    tab = w.tab_pages[3]
    w.tabs.setCurrentIndex(3)
    tab.modes.setCurrentIndex(1)
    hyps = [LONG * 3]
    tab.bleu_inputs = {}
    tab.show_bleu(score_translation(hyps, [[LONG]], ("bleu",)))
    table = tab.sentence_table
    assert_fits(qtbot, table)
    index = table.model().index(0, 4)
    assert table.sizeHintForIndex(index).width() > table.columnWidth(4)  # it is cut…
    from PySide6.QtCore import QEvent
    from PySide6.QtGui import QHelpEvent
    from PySide6.QtWidgets import QApplication, QToolTip

    rect = table.visualRect(index)
    event = QHelpEvent(QEvent.Type.ToolTip, rect.center(), table.viewport().mapToGlobal(
        rect.center()))
    QApplication.sendEvent(table.viewport(), event)
    assert QToolTip.isVisible() and QToolTip.text() == LONG * 3  # …and whole on hover
    QToolTip.hideText()


def test_the_logit_lens_fills_its_width_or_scrolls_when_it_cannot(qtbot):
    w = open_window(qtbot, (1280, 800))
    tab = w.tab_pages[1]
    w.tabs.setCurrentIndex(1)
    tab.results.setCurrentWidget(tab.lens_table)
    few = ["the", " cat", " sat"]
    tab.lens_table.fill_lens(LogitLens(few, [few, few], [[0.5] * 3, [0.9] * 3]))
    assert_fits(qtbot, tab.lens_table, rows=2)
    many = [f" t{i}" for i in range(60)]  # 60 columns of at least 56 px: wider than the tab
    tab.lens_table.fill_lens(LogitLens(many, [many, many], [[0.5] * 60, [0.9] * 60]))
    qtbot.waitUntil(lambda: tab.lens_table.horizontalScrollBar().maximum() > 0, timeout=3000)
    assert all(tab.lens_table.columnWidth(c) >= 56 for c in range(60))


def scroll_bars(area: QAbstractScrollArea) -> tuple[bool, bool]:
    return area.horizontalScrollBar().isVisible(), area.verticalScrollBar().isVisible()


@pytest.mark.parametrize("size", SIZES)
def test_the_finetune_form_fits_with_start_in_view(qtbot, size):
    w = open_window(qtbot, size)
    w.tabs.setCurrentIndex(2)
    tab = w.tab_pages[2]
    tab.train_file.setText("/home/someone/projects/a/very/long/path/to/the/data/folder/"
                           "sentiment-training-data.csv")
    qtbot.wait(50)
    assert tab.train_file.toolTip() == tab.train_file.text()  # the whole path on hover
    visible = tab.rect()
    for widget in (tab.task, tab.train_file, tab.output_dir, tab.learning_rate, tab.epochs,
                   tab.max_steps, tab.batch_size, tab.max_length, tab.processes,
                   tab.start_button, tab.stop_button, tab.resume_button, tab.use_button,
                   tab.attach_button, tab.export_button):
        # the whole widget inside the tab and not covered or scrolled away
        box = widget.rect().translated(widget.mapTo(tab, widget.rect().topLeft()))
        assert visible.contains(box), widget.objectName() or widget.text()
        assert widget.visibleRegion().boundingRect().size() == widget.size(), \
            widget.objectName() or widget.text()
    assert scroll_bars(tab.form_scroll) == (False, False)  # fits without scrolling
    for section in tab.sections:  # the rarely changed options, opened: the form scrolls
        section.toggle.setChecked(True)
    qtbot.wait(50)
    assert not tab.form_scroll.horizontalScrollBar().isVisible()
    assert tab.start_button.visibleRegion().boundingRect().size() == tab.start_button.size()
    for widget in (tab.scheduler, tab.lora_targets, tab.probe_prompts):
        tab.form_scroll.ensureWidgetVisible(widget)
        qtbot.wait(20)
        assert widget.visibleRegion().boundingRect().width() == widget.width()


def test_the_finetune_progress_has_one_source(qtbot):
    w = open_window(qtbot, (1280, 800))
    w.tabs.setCurrentIndex(2)
    tab = w.tab_pages[2]
    rows = [{"step": s, "max_steps": 20, "loss": 1.0, "seconds": s * 0.5} for s in range(1, 20)]
    tab._show_progress(rows)
    assert (tab.progress.value(), tab.progress.maximum()) == (19, 20)
    assert tab.progress.text() == "95%" and tab.eta.text().startswith("step 19/20")
    # a run is a process of its own, not a worker job: the status bar shows no other figure
    assert not w.progress.isVisible()

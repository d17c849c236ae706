"""Bad input in the window (issue #12, part 7): every bad input in the Attention, Fine-tune
and Evaluate tabs and the model bar gives exactly one dialog, titled after what failed, with
a one-line message (a traceback only behind "Details"); no exception escapes a Qt slot;
nothing is written or lost; nothing hangs.

Each case fills a form (or the model bar) from a fresh window, presses the button, waits
for the worker to be idle and then checks the dialogs that were opened (every
``QMessageBox`` is recorded instead of shown, and every file dialog answers "cancel") and
that the case's folder, the results history included, is byte for byte as before. (The
window a passed case leaves is brought back to a fresh one's state and checked against it
for the next case, which is far cheaper than a new window: see tests/dialogs.py.)

The Generate tab's cases are in test_generate_tab_bad_input.py; both record dialogs with
tests/dialogs.py.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dialogs import Dialogs, passed, quiet, record_dialogs, snapshot
from PySide6.QtCore import QSettings

from workbench.ui.shell.main_window import MainWindow

WORDS = "the cat sat on the mat because it was tired and the dog sat on the sea".split()
HYPS = ["the cat sat on the mat", "a dog barked at night", "it rains in paris"]
REFS = ["the cat is on the mat", "the dog barked at night", "it is raining in paris"]
# A read-only place even for root (os.access() says yes to root there; a write fails).
READ_ONLY = Path("/sys")


# --- what the user saw and what was written --------------------------------------------------
@pytest.fixture
def dialogs(monkeypatch) -> Dialogs:
    return record_dialogs(monkeypatch)


def assert_one_dialog(dialogs: Dialogs, title: str, fragments: tuple[str, ...]) -> None:
    assert len(dialogs) == 1, f"expected one dialog, got {len(dialogs)}: {list(dialogs)}"
    dialog = dialogs[0]
    text = dialog["text"]
    assert dialog["title"] == title, dialog
    assert text.strip() and "\n" not in text.strip(), f"not one line: {text!r}"
    assert "Traceback" not in text and 'File "' not in text, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"


@dataclass
class Case:
    """What a case's form filling gets: the window, the tab, a folder of its own."""

    qtbot: Any
    window: MainWindow
    tab: Any
    tmp: Path
    tiny: Any
    monkeypatch: Any

    def unwritable_data(self) -> None:
        """The app's data folder (results history, outputs) where nothing can be written."""
        self.monkeypatch.setenv("LMWB_DATA_DIR", str(READ_ONLY / "lmwb-data"))

    def load(self, path: Path | str) -> None:
        self.window.load_model(str(path))
        self.qtbot.waitUntil(lambda: not self.window.loading, timeout=60000)

    def file(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode("utf-8")
        path.write_bytes(content)
        return str(path)

    def folder(self, name: str) -> str:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return str(path)


def bad_files(c: Case, suffix: str = ".txt") -> dict[str, str]:
    """Paths of the usual bad files (made on first use)."""
    return {
        "missing": str(c.tmp / f"no-such-file{suffix}"),
        "folder": c.folder(f"a-folder{suffix}"),
        "binary": c.file(f"binary{suffix}", b"ok\n\xff\xfe\x00\x81 bad\n"),
        "empty": c.file(f"empty{suffix}", b""),
        "blank": c.file(f"blank{suffix}", " \n\n  \n"),
        "under a file": str(Path(c.file("plain.txt", "the cat\n")) / f"inside{suffix}"),
    }


FILE_MESSAGES = {
    "missing": "no such file",
    "folder": "is a folder, not a text file",
    "binary": "is not UTF-8 text",
    "empty": "is empty",
    "blank": "is empty",
}


def model_without_tokenizer(c: Case, family: str = "gpt2") -> str:
    target = c.tmp / f"{family}-no-tokenizer"
    target.mkdir()
    for path in c.tiny(family).iterdir():
        if not path.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy(path, target / path.name)
    return str(target)


def not_a_model_folder(c: Case) -> str:
    folder = c.tmp / "just-notes"
    folder.mkdir()
    (folder / "notes.txt").write_text("the cat sat on the mat\n", encoding="utf-8")
    return str(folder)


def labelled(rows: int = 40, labels: tuple[str, ...] = ("good", "bad")) -> str:
    lines = ["text,label"] + [f"{' '.join(WORDS[i % 7:i % 7 + 4])} {i},{labels[i % len(labels)]}"
                              for i in range(rows)]
    return "\n".join(lines) + "\n"


def run_case(c: Case, dialogs: Dialogs, start, idle, title: str | None,
             fragments: tuple[str, ...], timeout: int = 60000) -> None:
    """Press the button (``start``), wait until ``idle`` and the worker is idle, then check
    the dialogs (none when ``title`` is None), that no exception escaped and that nothing
    under the case's folder changed."""
    before = snapshot(c.tmp)
    history = c.window.tab_pages[3].history.rowCount()
    with c.qtbot.capture_exceptions() as exceptions:
        start()
        c.qtbot.waitUntil(lambda: idle() and not c.window.worker.busy and not c.window.loading,
                          timeout=timeout)
        if title is not None:
            c.qtbot.waitUntil(lambda: len(dialogs) > 0, timeout=10000)  # its own event
        c.qtbot.wait(150)  # a second dialog, or an exception in a slot, would come by now
    assert not exceptions, "an exception escaped a Qt slot: " + "; ".join(
        f"{e[0].__name__}: {e[1]}" for e in exceptions)
    if title is None:
        assert list(dialogs) == []
    else:
        assert_one_dialog(dialogs, title, fragments)
    assert dialogs.file_dialogs == []
    assert snapshot(c.tmp) == before, "something was written or lost"
    assert c.window.tab_pages[3].history.rowCount() == history


@pytest.fixture
def case(request, qtbot, tiny, tmp_path, dialogs, monkeypatch, window_pool):
    """``case(tab)`` → a :class:`Case` for ``tab`` (an index; the Evaluate page ``mode``
    shown) in a window with the tiny GPT-2 loaded (and then ``model``, when given; no model
    with ``models=()``), as a fresh window is: a new one, or one a passed case left,
    brought back to a fresh one's state and checked against it (tests/dialogs.py)."""
    taken = []

    def settle(window: MainWindow) -> None:
        qtbot.waitUntil(lambda: quiet(window), timeout=20000)

    def presets(window: MainWindow) -> None:
        window.tab_pages[0].reload_presets()
        window.tab_pages[3].generate_page.reload_strategies()

    def show(window: MainWindow, tab: int | None, mode: int | None) -> None:
        if tab is not None:
            window.tabs.setCurrentIndex(tab)  # the page a user acts on is the one shown
        if mode is not None:  # (a page of the Evaluate tab builds its widgets when shown)
            window.tab_pages[tab].modes.setCurrentIndex(mode)
        settle(window)

    def build(models: tuple[str, ...], tab: int | None, mode: int | None) -> MainWindow:
        window = MainWindow(autoload=False)
        window.show()
        qtbot.waitUntil(lambda: window.started, timeout=20000)
        for index, family in enumerate(models):  # the page shown, then the second model
            if index == 1:
                show(window, tab, mode)
            window.load_model(str(tiny(family)))
            qtbot.waitUntil(lambda: not window.loading, timeout=60000)
        show(window, tab, mode)
        return window

    def make(tab: int | None, mode: int | None = None, model: str | None = None,
             models: tuple[str, ...] = ("gpt2",)) -> Case:
        models = models + ((model,) if model else ())
        key = (tab, mode, models)
        taken.append(key)
        window = window_pool.take(key, lambda: build(models, tab, mode),
                                  lambda w: show(w, tab, mode), settle, reread=presets)
        assert list(dialogs) == []
        # (the app's data folder is in tmp_path too: see conftest)
        return Case(qtbot, window, window.tab_pages[tab or 0], tmp_path, tiny, monkeypatch)

    yield make
    for key in taken:
        window_pool.give_back(key, reusable=passed(request.node))


def register(table: dict, name: str, title: str | None, *fragments: str):
    def add(fill):
        table[name] = (fill, title, fragments)
        return fill
    return add


def params(table: dict, xfails: dict[str, str] | None = None) -> list:
    xfails = xfails or {}
    return [pytest.param(name, marks=pytest.mark.xfail(reason=xfails[name], strict=True))
            if name in xfails else name for name in table]


# --- Evaluate: perplexity ------------------------------------------------------------------
PERPLEXITY: dict = {}
PPL = "Cannot compute perplexity"
PPL_JOB = "Perplexity failed"

for _kind, _message in FILE_MESSAGES.items():
    register(PERPLEXITY, f"text file {_kind}", PPL, _message)(
        lambda c, kind=_kind: c.tab.ppl_file.setText(bad_files(c)[kind]))
register(PERPLEXITY, "text file under a file", PPL, "plain.txt")(
    lambda c: c.tab.ppl_file.setText(bad_files(c)["under a file"]))
register(PERPLEXITY, "pasted text blank", PPL, "The text is empty.")(
    lambda c: c.tab.ppl_text.setPlainText(" \n\t "))
register(PERPLEXITY, "one token", PPL_JOB, "perplexity needs at least 2")(
    lambda c: c.tab.ppl_text.setPlainText("cat"))
# (a window of one token: the window's box offers 2 and up, and reads 1 as "model context";
# see tests/test_settings.py)
register(PERPLEXITY, "window beyond the context", PPL_JOB, "longer than the model's context")(
    lambda c: c.tab.window_size.setValue(131072))


@register(PERPLEXITY, "stride beyond the window", PPL, "larger than the window")
def _(c):
    c.tab.window_size.setValue(16)
    c.tab.stride.setValue(64)


@register(PERPLEXITY, "compare with a missing folder", PPL_JOB, "no-such-model")
def _(c):
    c.tab.compare_model.setCurrentText(str(c.tmp / "no-such-model"))


@register(PERPLEXITY, "compare with the loaded model", PPL_JOB, "is the loaded model")
def _(c):
    c.tab.compare_model.setCurrentText(str(c.tiny("gpt2")))


@register(PERPLEXITY, "compare with a folder that is not a model", PPL_JOB,
          "is not a model folder")
def _(c):
    c.tab.compare_model.setCurrentText(not_a_model_folder(c))


@register(PERPLEXITY, "compare with a model without tokenizer", PPL_JOB,
          "tokenizer of gpt2-no-tokenizer is missing")
def _(c):
    c.tab.compare_model.setCurrentText(model_without_tokenizer(c))


@register(PERPLEXITY, "compare with a binary file", PPL_JOB, "is a file but not a model")
def _(c):
    c.tab.compare_model.setCurrentText(c.file("weights.bin", bytes(range(256)) * 4))


@register(PERPLEXITY, "an encoder loaded", PPL_JOB, "language-modelling head")
def _(c):
    c.load(c.tiny("bert"))


HISTORY = "Cannot save the results history"
register(PERPLEXITY, "the history cannot be saved", HISTORY, "evaluate-history.json")(
    Case.unwritable_data)


@register(PERPLEXITY, "the history of two models cannot be saved", HISTORY,
          "evaluate-history.json")
def _(c):
    c.unwritable_data()
    c.tab.compare_model.setCurrentText(str(c.tiny("llama")))


@pytest.mark.parametrize("name", params(PERPLEXITY))
def test_perplexity(case, dialogs, name):
    c = case(3, mode=0)
    c.tab.modes.setCurrentIndex(0)
    c.tab.ppl_text.setPlainText(" ".join(WORDS * 3))
    fill, title, fragments = PERPLEXITY[name]
    fill(c)
    run_case(c, dialogs, c.tab.start_perplexity, lambda: not c.tab.ppl_slot.running, title,
             fragments)
    assert c.tab.ppl_button.isEnabled()
    assert bool(c.tab.ppl_results) == (title == HISTORY)  # a result is shown, never lost


NO_MODEL = {  # the tab, its start, whether it is idle, the job's title
    "perplexity": (3, lambda t: t.start_perplexity, lambda t: not t.ppl_slot.running,
                   PPL_JOB),
    "generate then score": (3, lambda t: t.generate_page.start,
                            lambda t: not t.generate_page.run_slot.running,
                            "Generate and score failed"),
    "classification": (3, lambda t: t.classify_page.start,
                       lambda t: not t.classify_page.run_slot.running,
                       "Evaluate classifier failed"),
    "attention": (1, lambda t: t.start, lambda t: not t.view_slot.running, "Attention failed"),
}


@pytest.mark.parametrize("name", list(NO_MODEL))
def test_no_model_loaded(case, dialogs, name):
    index, start, idle, title = NO_MODEL[name]
    c = case(None, models=())  # the page is not shown: its button is pressed all the same
    tab = c.tab = c.window.tab_pages[index]
    run_case(c, dialogs, start(tab), lambda: idle(tab), title, ("No model is loaded",))


# --- Evaluate: BLEU / chrF / TER --------------------------------------------------------------
BLEU: dict = {}
SCORE = "Cannot score"
SCORE_JOB = "BLEU / chrF / TER failed"


def lines(items: list[str]) -> str:
    return "\n".join(items) + "\n"


def good_bleu(c: Case) -> None:
    c.tab.hyp_file.setText(c.file("hyp.txt", lines(HYPS)))
    c.tab.ref_files.setText(c.file("ref.txt", lines(REFS)))


for _kind, _message in FILE_MESSAGES.items():
    if _kind == "blank":  # blank lines are segments to sacrebleu: no error
        continue
    register(BLEU, f"hypothesis {_kind}", SCORE, _message)(
        lambda c, kind=_kind: c.tab.hyp_file.setText(bad_files(c)[kind]))
    register(BLEU, f"reference {_kind}", SCORE, _message)(
        lambda c, kind=_kind: c.tab.ref_files.setText(bad_files(c)[kind]))
register(BLEU, "second system missing", SCORE, "no such file")(
    lambda c: c.tab.sys2_file.setText(str(c.tmp / "no-such-system.txt")))
register(BLEU, "second reference of several missing", SCORE, "no such file")(
    lambda c: c.tab.ref_files.setText(f"{c.tab.ref_files.text()};{c.tmp / 'gone.txt'}"))
register(BLEU, "no hypothesis", SCORE, "Choose a hypothesis file.")(
    lambda c: c.tab.hyp_file.setText("  "))
register(BLEU, "no reference", SCORE, "reference")(lambda c: c.tab.ref_files.setText(""))
register(BLEU, "only separators as references", SCORE, "reference")(
    lambda c: c.tab.ref_files.setText(" ; ;; "))
register(BLEU, "no metric", SCORE, "Choose at least one metric.")(
    lambda c: [box.setChecked(False) for box in c.tab.metric_boxes.values()])
register(BLEU, "hypothesis longer than the reference", SCORE, "has 3 lines but reference 1 "
         "has 2")(lambda c: c.tab.ref_files.setText(c.file("short.txt", lines(REFS[:2]))))
register(BLEU, "second reference shorter", SCORE, "reference 2 has 1")(
    lambda c: c.tab.ref_files.setText(f"{c.tab.ref_files.text()};"
                                      f"{c.file('short.txt', lines(REFS[:1]))}"))
register(BLEU, "second system shorter", SCORE, "second system has 2 lines")(
    lambda c: c.tab.sys2_file.setText(c.file("sys2.txt", lines(HYPS[:2]))))
register(BLEU, "broken gzip", SCORE, "not a readable gzip file")(
    lambda c: c.tab.hyp_file.setText(c.file("hyp.txt.gz", b"not gzip")))
register(BLEU, "japanese tokenizer without its package", SCORE_JOB, "ja-mecab")(
    lambda c: c.tab.tokenize.setCurrentText("ja-mecab"))
register(BLEU, "flores tokenizer offline", SCORE_JOB, "flores101")(
    lambda c: c.tab.tokenize.setCurrentText("flores101"))
register(BLEU, "the history cannot be saved", HISTORY, "evaluate-history.json")(
    Case.unwritable_data)

@pytest.mark.parametrize("name", params(BLEU))
def test_bleu(case, dialogs, name):
    c = case(3, mode=1)
    c.tab.modes.setCurrentIndex(1)
    good_bleu(c)
    fill, title, fragments = BLEU[name]
    fill(c)
    run_case(c, dialogs, c.tab.start_bleu, lambda: not c.tab.bleu_slot.running, title,
             fragments)
    assert c.tab.bleu_button.isEnabled()
    assert (c.tab.bleu_result is not None) == (title == HISTORY)  # shown, never lost


# --- Evaluate: generate then score -----------------------------------------------------------
GENERATE: dict = {}
GEN = "Cannot generate and score"
GEN_JOB = "Generate and score failed"
PAIRS = "prompt\treference\nthe cat\tthe cat sat\nthe sea\tthe sea is blue\n"

for _kind, _message in FILE_MESSAGES.items():
    register(GENERATE, f"pairs file {_kind}", GEN, _message)(
        lambda c, kind=_kind: c.tab.generate_page.pairs_file.setText(bad_files(c, ".tsv")[kind]))
register(GENERATE, "no pairs file", GEN, "Choose a TSV file")(
    lambda c: c.tab.generate_page.pairs_file.setText(""))
register(GENERATE, "a line without a tab", GEN, "line 4 has no tab")(
    lambda c: c.tab.generate_page.pairs_file.setText(c.file("p.tsv", PAIRS + "no tab here\n")))
register(GENERATE, "a line with an extra reference", GEN, "line 3 has 3 fields")(
    lambda c: c.tab.generate_page.pairs_file.setText(c.file("p.tsv", PAIRS.replace(
        "the sea is blue", "the sea is blue\tand green"))))
register(GENERATE, "a header only", GEN, "has no rows after its header")(
    lambda c: c.tab.generate_page.pairs_file.setText(c.file("p.tsv", "prompt\treference\n")))
register(GENERATE, "no metric", GEN, "Choose at least one metric.")(
    lambda c: [box.setChecked(False) for box in c.tab.generate_page.metric_boxes.values()])


@register(GENERATE, "a damaged saved preset", GEN, "The preset 'broken' is damaged")
def _(c):
    QSettings().setValue("presets/broken", "{not json")
    c.tab.generate_page.reload_strategies()
    c.tab.generate_page.strategy.setCurrentText("broken")


@register(GENERATE, "an encoder loaded", GEN_JOB, "generating needs a causal language model")
def _(c):
    c.load(c.tiny("bert"))


@register(GENERATE, "the data folder is a file", GEN, "is a file")
def _(c):
    c.file("data-file", "not a folder")
    c.monkeypatch.setenv("LMWB_DATA_DIR", str(c.tmp / "data-file"))


register(GENERATE, "the data folder is read-only", GEN, "Cannot write the outputs")(
    Case.unwritable_data)


@pytest.mark.parametrize("name", params(GENERATE))
def test_generate_then_score(case, dialogs, name):
    c = case(3, mode=2)
    page = c.tab.generate_page
    c.tab.modes.setCurrentIndex(2)
    page.pairs_file.setText(c.file("pairs.tsv", PAIRS))
    page.strategy.setCurrentText("greedy")
    page.max_new.setValue(3)
    page.chat.setChecked(False)
    fill, title, fragments = GENERATE[name]
    fill(c)
    run_case(c, dialogs, page.start, lambda: page.run_slot.handle is None, title, fragments)
    assert page.run_button.isEnabled()


# --- Evaluate: classification ------------------------------------------------------------------
CLASSIFY: dict = {}
CLS = "Cannot evaluate the classifier"
CLS_JOB = "Evaluate classifier failed"

for _kind, _message in FILE_MESSAGES.items():
    register(CLASSIFY, f"labelled file {_kind}", CLS, _message)(
        lambda c, kind=_kind: c.tab.classify_page.data_file.setText(bad_files(c, ".csv")[kind]))
register(CLASSIFY, "no labelled file", CLS, "Choose a labelled file.")(
    lambda c: c.tab.classify_page.data_file.setText(" "))
register(CLASSIFY, "a text file", CLS, "must be .csv, .tsv or .jsonl")(
    lambda c: c.tab.classify_page.data_file.setText(c.file("d.txt", "the cat\n")))
register(CLASSIFY, "a row with a missing field", CLS, "d.csv line 3 has 1 field(s)")(
    lambda c: c.tab.classify_page.data_file.setText(
        c.file("d.csv", "text,label\nthe cat,LABEL_0\nthe dog\n")))
register(CLASSIFY, "an empty label", CLS, "d.csv line 3 has an empty 'label'")(
    lambda c: c.tab.classify_page.data_file.setText(
        c.file("d.csv", "text,label\nthe cat,LABEL_0\nthe dog,\n")))
register(CLASSIFY, "a jsonl text that is null", CLS, "'text' is null, not a string")(
    lambda c: c.tab.classify_page.data_file.setText(
        c.file("d.jsonl", '{"text": null, "label": "LABEL_0"}\n')))
register(CLASSIFY, "no such text column", CLS, "has no column 'sentence'")(
    lambda c: c.tab.classify_page.text_column.setText("sentence"))
register(CLASSIFY, "a language model loaded", CLS_JOB, "not a classifier")(lambda c: None)


@register(CLASSIFY, "labels the model does not know", CLS_JOB, "None of the file's labels")
def _(c):
    c.load(c.tiny("bert-classifier"))
    c.tab.classify_page.data_file.setText(c.file("d.csv", "text,label\nthe cat,good\n"
                                                          "the dog,bad\n"))


@pytest.mark.parametrize("name", params(CLASSIFY))
def test_classification(case, dialogs, name):
    c = case(3, mode=3)
    page = c.tab.classify_page
    c.tab.modes.setCurrentIndex(3)
    page.data_file.setText(c.file("labelled.csv", "text,label\nthe cat sat,LABEL_0\n"
                                                  "the dog,LABEL_1\n"))
    fill, title, fragments = CLASSIFY[name]
    fill(c)
    run_case(c, dialogs, page.start, lambda: page.run_slot.handle is None, title, fragments)
    assert page.run_button.isEnabled()


# --- Evaluate: exporting the history ----------------------------------------------------------
EXPORT_HISTORY = {
    "a folder": lambda c: c.folder("out.csv"),
    "a folder that does not exist": lambda c: str(c.tmp / "gone" / "h.json"),
    "a path under a file": lambda c: str(Path(c.file("plain.txt", "x")) / "h.csv"),
    "a read-only place": lambda c: str(READ_ONLY / "history.csv"),
}


@pytest.mark.parametrize("name", list(EXPORT_HISTORY))
def test_exporting_the_history(case, dialogs, name):
    c = case(3)
    path = EXPORT_HISTORY[name](c)
    run_case(c, dialogs, lambda: c.tab.export_history(path), lambda: True,
             "Cannot export the history", ())


# --- Attention -------------------------------------------------------------------------------
ATTENTION: dict = {}
ATT = "Cannot show attention"
ATT_JOB = "Attention failed"

register(ATTENTION, "blank text", ATT, "The text is empty.")(
    lambda c: c.tab.text.setPlainText("  \n "))
register(ATTENTION, "layers not numbers", ATT, "Layers are numbers separated by commas")(
    lambda c: c.tab.layers.setText("first, last"))
register(ATTENTION, "layers with a fraction", ATT, "Layers are numbers")(
    lambda c: c.tab.layers.setText("0.5"))
register(ATTENTION, "a layer beyond the model", ATT, "do not exist: the model has 2 layers")(
    lambda c: c.tab.layers.setText("0,99"))
register(ATTENTION, "a negative layer", ATT, "do not exist")(
    lambda c: c.tab.layers.setText("-1"))
register(ATTENTION, "an absurd layer number", ATT, "do not exist")(
    lambda c: c.tab.layers.setText("9" * 40))
register(ATTENTION, "a sentence pair for a decoder", ATT_JOB, "Sentence pairs are for encoders")(
    lambda c: c.tab.text_b.setPlainText("it was tired"))


@register(ATTENTION, "a cap below the special tokens of a pair", ATT_JOB, "allow at least")
def _(c):
    c.load(c.tiny("bert"))
    c.tab.text_b.setPlainText("it was tired")
    c.tab.max_tokens.setValue(2)


@pytest.mark.parametrize("name", params(ATTENTION))
def test_attention(case, dialogs, name):
    c = case(1)
    c.window.tabs.setCurrentIndex(1)
    c.tab.text.setPlainText("the cat sat on the mat")
    fill, title, fragments = ATTENTION[name]
    fill(c)
    run_case(c, dialogs, c.tab.start, lambda: not c.tab.view_slot.running, title, fragments)
    assert c.tab.run_button.isEnabled()


ATTENTION_EXPORTS = {  # (export, path, dialog title)
    "page to a folder": ("html", lambda c: c.folder("a.html"), "Cannot export the page"),
    "page under a file": ("html", lambda c: str(Path(c.file("plain.txt", "x")) / "a.html"),
                          "Cannot export the page"),
    "page to a read-only place": ("html", lambda c: str(READ_ONLY / "a.html"),
                                  "Cannot export the page"),
    "numbers to a folder": ("csv", lambda c: c.folder("a.csv"), "Cannot export the numbers"),
    "numbers to a read-only place": ("csv", lambda c: str(READ_ONLY / "a.csv"),
                                     "Cannot export the numbers"),
    "image to a folder": ("png", lambda c: c.folder("a.png"), "Cannot export the view"),
    "image to a missing folder": ("png", lambda c: str(c.tmp / "gone" / "a.png"),
                                  "Cannot export the view"),
}


@pytest.fixture(scope="module")
def attention_view(tiny):
    """An attention result of the tiny GPT-2, as the tab's job makes it (no web view)."""
    from workbench.core.interpret.attention import bertviz_html, compute_attention
    from workbench.core.models.loader import load_model
    from workbench.ui.interpret.tab import AttentionView

    result = compute_attention(load_model(str(tiny("gpt2"))), "the cat sat on the mat")
    page, notices = bertviz_html(result, "head", None)
    return AttentionView(result, page, notices, None)


@pytest.mark.parametrize("name", list(ATTENTION_EXPORTS))
def test_attention_exports(case, dialogs, attention_view, name):
    from workbench.core.interpret.attention import head_statistics

    c = case(1)
    c.tab.current = attention_view
    c.tab.stats = head_statistics(attention_view.result)
    kind, where, title = ATTENTION_EXPORTS[name]
    path = where(c)
    export = {"html": c.tab.export_html, "csv": c.tab.export_csv, "png": c.tab.export_png}[kind]
    run_case(c, dialogs, lambda: export(path), lambda: True, title, ())


# --- Fine-tune ---------------------------------------------------------------------------------
FINETUNE: dict = {}
FT = "Cannot fine-tune"

for _kind, _message in FILE_MESSAGES.items():
    register(FINETUNE, f"training file {_kind}", FT, _message)(
        lambda c, kind=_kind: c.tab.train_file.setText(bad_files(c, ".csv")[kind]))
    register(FINETUNE, f"validation file {_kind}", FT, _message)(
        lambda c, kind=_kind: c.tab.validation_file.setText(bad_files(c, ".csv")[kind]))
register(FINETUNE, "no training file", FT, "Choose a training file.")(
    lambda c: c.tab.train_file.setText(" "))
register(FINETUNE, "a text file to classify", FT, "must be .csv, .tsv or .jsonl")(
    lambda c: c.tab.train_file.setText(c.file("d.txt", "the cat sat\n")))
register(FINETUNE, "a row with a missing field", FT, "d.csv line 4 has 1 field(s)")(
    lambda c: c.tab.train_file.setText(c.file("d.csv", labelled(2) + "the dog\n")))
register(FINETUNE, "no such label column", FT, "has no column 'sentiment'")(
    lambda c: c.tab.label_column.setText("sentiment"))
register(FINETUNE, "no such text column", FT, "has no column 'sentence'")(
    lambda c: c.tab.text_column.setText("sentence"))
register(FINETUNE, "a single class", FT, "a single class (good)")(
    lambda c: c.tab.train_file.setText(c.file("d.csv", labelled(10, ("good",)))))
register(FINETUNE, "validation labels not in training", FT, "labels that are not in the "
         "training data: worse")(
    lambda c: c.tab.validation_file.setText(c.file("v.csv", labelled(4, ("good", "worse")))))
register(FINETUNE, "a max length beyond the model", FT, "beyond what bert can take")(
    lambda c: c.tab.max_length.setValue(4096))
register(FINETUNE, "output is a file", FT, "is a file, not a folder")(
    lambda c: c.tab.output_dir.setText(c.file("run", "not a folder")))
register(FINETUNE, "output under a file", FT, "is not a writable folder")(
    lambda c: c.tab.output_dir.setText(str(Path(c.file("plain.txt", "x")) / "run")))
register(FINETUNE, "output read-only", FT, "/sys")(
    lambda c: c.tab.output_dir.setText(str(READ_ONLY / "lmwb-run")))


@register(FINETUNE, "output holds a model", FT, "holds a model, not a run")
def _(c):
    folder = c.tmp / "model"
    shutil.copytree(c.tiny("bert"), folder)
    c.tab.output_dir.setText(str(folder))


@register(FINETUNE, "output holds a finished run", FT, "already holds a run")
def _(c):
    folder = Path(c.folder("run/final"))
    (folder.parent / "run.json").write_text("{}", encoding="utf-8")
    c.tab.output_dir.setText(str(folder.parent))


@register(FINETUNE, "language modelling with an encoder", FT, "needs a causal language model")
def _(c):
    c.tab.task.setCurrentIndex(1)
    c.tab.train_file.setText(c.file("corpus.txt", " ".join(WORDS * 20)))


@register(FINETUNE, "LoRA on a module the model lacks", FT, "no module named no_such_proj")
def _(c):
    c.load(c.tiny("gpt2"))
    c.tab.task.setCurrentIndex(1)
    c.tab.train_file.setText(c.file("corpus.txt", " ".join(WORDS * 20)))
    c.tab.lora.setChecked(True)
    c.tab.lora_targets.setText("c_attn, no_such_proj")


def resume_folder(c: Case, run_json: str, checkpoint: bool) -> None:
    folder = Path(c.folder("old-run"))
    (folder / "run.json").write_text(run_json, encoding="utf-8")
    if checkpoint:
        (folder / "checkpoint-2").mkdir()
        (folder / "checkpoint-2" / "trainer_state.json").write_text(
            json.dumps({"global_step": 2, "log_history": []}), encoding="utf-8")
    c.tab.output_dir.setText(str(folder))
    c.resume = True


register(FINETUNE, "resume without a checkpoint", FT, "has no complete checkpoint")(
    lambda c: resume_folder(c, "{}", checkpoint=False))
register(FINETUNE, "resume a damaged run.json", FT, "is damaged")(
    lambda c: resume_folder(c, '{"task": "lm", "batch_size": "eight"', checkpoint=True))


@pytest.mark.parametrize("name", params(FINETUNE))
def test_finetune(case, dialogs, name):
    c = case(2, model="bert")  # the tiny GPT-2 loaded, then the tiny BERT
    c.resume = False
    c.window.tabs.setCurrentIndex(2)
    tab = c.tab
    tab.task.setCurrentIndex(0)
    tab.train_file.setText(c.file("train.csv", labelled()))
    tab.max_steps.setValue(2)
    tab.batch_size.setValue(4)
    tab.max_length.setValue(32)
    tab.output_dir.setText(str(c.tmp / "new-run"))
    fill, title, fragments = FINETUNE[name]
    fill(c)
    run_case(c, dialogs, lambda: tab.start(resume=c.resume), lambda: not tab.running, title,
             fragments, timeout=180000)
    assert tab.start_button.isEnabled() and not tab.running


EXPORT_LAUNCH = {
    "output is a file": (lambda c: c.file("run", "x"), "is a file, not a folder"),
    "output under a file": (lambda c: str(Path(c.file("plain.txt", "x")) / "run"),
                            "is not a writable folder"),
    "output holds a model": (lambda c: str(shutil.copytree(c.tiny("bert"), c.tmp / "model")),
                             "holds a model, not a run"),
    "output read-only": (lambda c: str(READ_ONLY / "lmwb-run"), "/sys"),
    "training file missing": (None, "no such file"),
}


@pytest.mark.parametrize("name", list(EXPORT_LAUNCH))
def test_finetune_export_launch(case, dialogs, name):
    c = case(2)
    tab = c.tab
    tab.task.setCurrentIndex(0)
    tab.train_file.setText(c.file("train.csv", labelled()))
    tab.output_dir.setText(str(c.tmp / "new-run"))
    where, fragment = EXPORT_LAUNCH[name]
    if where is None:
        tab.train_file.setText(str(c.tmp / "gone.csv"))
    else:
        tab.output_dir.setText(where(c))
    run_case(c, dialogs, tab.export_launch, lambda: True, FT, (fragment,))


ATTACH = {
    "a missing folder": (lambda c: str(c.tmp / "gone"), "Run folder not found"),
    "a file": (lambda c: c.file("metrics.jsonl", "{}\n"), "is a file, not a run folder"),
    "a folder that is not a run": (lambda c: c.folder("empty"), "is not a training run"),
}


@pytest.mark.parametrize("name", list(ATTACH))
def test_finetune_attach(case, dialogs, name):
    c = case(2)
    where, fragment = ATTACH[name]
    folder = where(c)
    run_case(c, dialogs, lambda: c.tab.attach(folder), lambda: True, "Cannot attach to the run",
             (fragment,))
    assert c.tab.followed == {}


# --- the model bar -------------------------------------------------------------------------------
PICKER: dict = {}
register(PICKER, "a missing folder", "load", "no-such-model")(
    lambda c: str(c.tmp / "no-such-model"))
register(PICKER, "a folder that is not a model", "load", "is not a model folder")(
    not_a_model_folder)
register(PICKER, "an empty folder", "load", "is not a model folder")(
    lambda c: c.folder("empty"))
register(PICKER, "a model without tokenizer", "load", "tokenizer of gpt2-no-tokenizer is "
         "missing")(model_without_tokenizer)
register(PICKER, "a text file", "load", "is a file but not a model")(
    lambda c: c.file("notes.txt", "the cat sat\n"))
register(PICKER, "a random gguf", "load", "GGUF's magic bytes")(
    lambda c: c.file("random.gguf", bytes(range(256)) * 8))
register(PICKER, "a hub id while offline", "load", "nobody-here/no-model")(
    lambda c: "nobody-here/no-model")
register(PICKER, "blank", None)(lambda c: "   ")


def broken_model(c: Case, change) -> str:
    folder = c.tmp / "broken"
    shutil.copytree(c.tiny("gpt2"), folder)
    change(folder)
    return str(folder)


register(PICKER, "config.json not JSON", "load", "config.json is not valid JSON")(
    lambda c: broken_model(c, lambda f: (f / "config.json").write_text("{oops")))
register(PICKER, "config.json describes nothing", "load", "does not describe a model")(
    lambda c: broken_model(c, lambda f: (f / "config.json").write_text("[]")))
register(PICKER, "an unknown architecture", "load", "Unsupported architecture")(
    lambda c: broken_model(c, lambda f: (f / "config.json").write_text(
        json.dumps({"model_type": "no-such-architecture"}))))
register(PICKER, "no weights", "load", "has no model weights")(
    lambda c: broken_model(c, lambda f: (f / "model.safetensors").unlink()))
register(PICKER, "truncated weights", "load", "Cannot load the weights of broken")(
    lambda c: broken_model(c, lambda f: (f / "model.safetensors").write_bytes(
        (f / "model.safetensors").read_bytes()[:1000])))
register(PICKER, "a config with an absurd size", "load", "Cannot load the weights of broken")(
    lambda c: broken_model(c, lambda f: (f / "config.json").write_text(json.dumps(
        {**json.loads((f / "config.json").read_text()), "vocab_size": 10**12}))))


@pytest.mark.parametrize("name", params(PICKER))
def test_model_bar(case, dialogs, name):
    c = case(0)
    before = c.window.worker.store.current
    reference, title, fragments = PICKER[name]
    reference = reference(c)
    c.window.picker.combo.setCurrentText(reference)
    run_case(c, dialogs, c.window.picker.request_load, lambda: True,
             None if title is None else f"Load {reference.strip()} failed", fragments)
    # nothing lost: the model loaded before is still the one every tab uses
    assert c.window.worker.store.current is before and c.window.loaded is before

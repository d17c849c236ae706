"""Bad input in the Generate tab (issues #12 and #13): a damaged session, GenerationConfig or
preset opened through the tab's own actions, absurd values in its free-text controls (the
prompt, the strategy list), settings its controls cannot hold, a seed out of range, a place
that cannot be written. Each gives exactly one dialog with a one-line message; no exception
escapes a Qt slot; nothing is lost: the inputs stay as the user left them, the previous
output and comparison are still shown (greyed and said to be the previous run's when a run
failed), and nothing is written.

Each case starts from a window with the tiny Llama loaded and one generation done (and one
comparison, for the comparison's cases), sets its bad input, presses the button and waits
for the worker. Every ``QMessageBox`` is recorded instead of shown; a file dialog answers
with the case's path, or "cancel" when it has none. (The window a passed case leaves is
brought back to a fresh one's state and checked against it for the next case, which is far
cheaper than a new window: see tests/dialogs.py.)
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

from workbench.ui.common.stale import PREVIOUS_RUN
from workbench.ui.shell.main_window import MainWindow

PROMPT = "the cat sat on"
STRATEGIES = "greedy\ntop-k 40"


# --- what the user saw ------------------------------------------------------------------------
@pytest.fixture
def dialogs(monkeypatch) -> Dialogs:
    return record_dialogs(monkeypatch)


@dataclass
class Case:
    """What a case's input filling gets: the window, the tab, a folder of its own."""

    qtbot: Any
    window: MainWindow
    tab: Any
    tmp: Path
    tiny: Any
    dialogs: Dialogs

    def file(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return str(path)

    def choose(self, path: str) -> None:
        """The next file dialog answers ``path``."""
        self.dialogs.answers.append(path)

    def wait_idle(self) -> None:
        single = self.tab.single
        self.qtbot.waitUntil(lambda: not self.tab.running() and not single.session_slot.running
                             and not self.window.worker.busy and not self.window.loading,
                             timeout=60000)

    def session(self, change=None) -> str:
        """A session this tab saved, changed by ``change`` (a function of its JSON)."""
        path = self.tmp / "saved.json"
        if not path.exists():
            self.tab.single.save_session(str(path))
            self.wait_idle()
        data = json.loads(path.read_text(encoding="utf-8"))
        if change is not None:
            change(data)
        return self.file("changed.json", json.dumps(data, allow_nan=True))

    def without_start_token(self) -> None:
        """Load a copy of the tiny Llama whose tokenizer has no start token."""
        folder = self.tmp.parent / "llama-no-bos"
        shutil.copytree(self.tiny("llama"), folder)
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            path = folder / name
            if path.exists():
                data = json.loads(path.read_text(encoding="utf-8"))
                data.pop("bos_token", None)
                path.write_text(json.dumps(data), encoding="utf-8")
        self.window.load_model(str(folder))
        self.qtbot.waitUntil(lambda: not self.window.loading, timeout=60000)
        assert self.window.loaded.tokenizer.bos_token_id is None


@pytest.fixture
def case(request, qtbot, tiny, tmp_path, dialogs, window_pool):
    """``case()`` → a :class:`Case` in a window with the tiny Llama loaded and a generation
    done (and a comparison, with ``compared``), as a fresh window is: a new one, or one a
    passed case left, brought back to a fresh one's state and checked against it
    (tests/dialogs.py)."""
    folder = tmp_path / "case"
    folder.mkdir()
    taken = []

    def build() -> MainWindow:
        window = MainWindow(autoload=False)
        window.show()
        qtbot.waitUntil(lambda: window.tab_pages[0].single.candidate_chart is not None,
                        timeout=20000)
        window.load_model(str(tiny("llama")))
        qtbot.waitUntil(lambda: not window.loading, timeout=60000)
        settle(window)
        return window

    def settle(window: MainWindow) -> None:
        qtbot.waitUntil(lambda: quiet(window) and not window.tab_pages[0].running()
                        and not window.tab_pages[0].single.session_slot.running, timeout=60000)

    def prepare(window: MainWindow, compared: bool) -> None:
        tab = window.tab_pages[0]
        tab.prompt.setPlainText(PROMPT)
        tab.controls.chat.setChecked(False)
        tab.controls.max_new.setValue(8)
        tab.compare.strategies.setPlainText(STRATEGIES)
        tab.start()
        settle(window)
        if compared:
            tab.start_compare()
            settle(window)

    def make(compared: bool = False) -> Case:
        taken.append(compared)
        window = window_pool.take(compared, build, lambda w: prepare(w, compared), settle,
                                  reread=lambda w: w.tab_pages[0].reload_presets())
        tab = window.tab_pages[0]
        assert dialogs.seen == [] and tab.single.result is not None
        return Case(qtbot, window, tab, folder, tiny, dialogs)

    yield make
    for key in taken:
        window_pool.give_back(key, reusable=passed(request.node))


def inputs(tab) -> tuple:
    return tab.prompt.toPlainText(), tab.controls.settings(), tab.compare.strategies.toPlainText()


def shown(tab) -> tuple:
    """The results on screen: the generation's and the comparison's."""
    single, compare = tab.single, tab.compare
    return (single.result, single.output.toPlainText(), single.sequence_picker.count(),
            compare.result, [v.toPlainText() for v in compare.views],
            compare.summary.rowCount())


def run_case(c: Case, press, title: str, fragment: str) -> None:
    """Press the button (``press``), wait until the worker is idle, then check the one
    dialog, that no exception escaped, that the inputs are as they were and the previous
    results still shown (greyed when a run failed), and that nothing was written."""
    tab, dialogs = c.tab, c.dialogs
    before, given, files = shown(tab), inputs(tab), snapshot(c.tmp)
    with c.qtbot.capture_exceptions() as exceptions:
        press()
        c.wait_idle()
        c.qtbot.waitUntil(lambda: len(dialogs.seen) > 0, timeout=10000)  # its own event
        c.qtbot.wait(150)  # a second dialog, or an exception in a slot, would come by now
    assert not exceptions, "an exception escaped a Qt slot: " + "; ".join(
        f"{e[0].__name__}: {e[1]}" for e in exceptions)
    assert len(dialogs.seen) == 1, f"expected one dialog, got {dialogs.seen}"
    (seen_title, text), = dialogs.seen
    assert seen_title == title
    assert text.strip() and "\n" not in text and len(text) < 400, \
        f"not one short line ({len(text)} characters): {text[:300]!r}"
    assert "Traceback" not in text and fragment in text, text
    assert dialogs.answers == []  # the file dialog was asked, when the case gave it a path
    assert inputs(tab) == given, "an input changed"
    assert shown(tab) == before, "the previous results are gone"
    generation_failed = title == "Generate failed"
    comparison_failed = title == "Compare strategies failed"
    assert tab.single.results_view.isEnabled() is not generation_failed
    assert tab.compare.results_view.isEnabled() is not comparison_failed
    if generation_failed:
        assert tab.single.stats.text().endswith(PREVIOUS_RUN)
    if comparison_failed:
        assert tab.compare.note.text().endswith(PREVIOUS_RUN)
    assert snapshot(c.tmp) == files, "something was written or lost"
    assert tab.controls.generate_button.isEnabled() and not tab.controls.stop_button.isEnabled()


def register(table: dict, name: str, title: str, fragment: str):
    def add(fill):
        table[name] = (fill, title, fragment)
        return fill
    return add


# --- Generate: the prompt and the settings -------------------------------------------------------
GENERATE: dict = {}
REFUSED = "Cannot generate"
FAILED = "Generate failed"


@register(GENERATE, "greedy with 16 sequences", REFUSED, "Greedy decoding gives one sequence")
def _(c):
    c.tab.controls.sample.setChecked(False)
    c.tab.controls.sequences.setValue(16)


@register(GENERATE, "more sequences than beams", REFUSED, "at most as many sequences as it has")
def _(c):
    c.tab.controls.beams.setValue(2)
    c.tab.controls.sequences.setValue(5)


register(GENERATE, "max new tokens beyond the context", FAILED,
         "4096 new tokens do not fit the model's context of 128 tokens")(
    lambda c: c.tab.controls.max_new.setValue(4096))


@register(GENERATE, "empty prompt, no start token", FAILED, "has no start token")
def _(c):
    c.without_start_token()
    c.tab.prompt.setPlainText("")


@register(GENERATE, "blank prompt, no start token", FAILED, "has no start token")
def _(c):
    c.without_start_token()
    c.tab.prompt.setPlainText(" \n\t \u2029 ")


@pytest.mark.parametrize("name", list(GENERATE))
def test_generate(case, name):
    c = case()
    fill, title, fragment = GENERATE[name]
    fill(c)
    run_case(c, c.tab.controls.generate_button.click, title, fragment)


# --- Compare: the strategy list --------------------------------------------------------------------
COMPARE: dict = {}
BAD_LIST = "Cannot compare"
for _name, _text, _fragment in [
    ("no strategy", " \n\n\t", "Give 2 to 6 strategies, one a line (now 0)"),
    ("one strategy", "greedy", "(now 1)"),
    ("seven strategies", "\n".join(["greedy"] * 7), "(now 7)"),
    ("unknown key", "greedy\nwarp=9", "'warp=9' is not key=value"),
    ("a word for a number", "greedy\ntop_k=abc", "'abc' is not a number"),
    ("a float for a whole number", "greedy\ntop_k=1e3", "'1e3' is not a number"),
    ("NaN temperature", "greedy\ntemperature=nan", "Temperature must be a finite number"),
    ("infinite temperature", "greedy\ntemperature=inf", "Temperature must be a finite number"),
    ("negative temperature", "greedy\ntemperature=-1", "Temperature must be 0 (greedy) or"),
    ("top-p 0", "greedy\ntop_p=0", "Top-p must be in (0, 1]"),
    ("min-p 1", "greedy\nmin_p=1", "Min-p must be in [0, 1)"),
    ("zero beams", "greedy\nbeams=0", "The number of beams must be at least 1"),
    ("a seed in a strategy", "greedy\nseed=5", "'seed=5' is not key=value"),
    ("max new tokens in a strategy", "greedy\nmax_new_tokens=5", "is not key=value"),
    ("too many sequences", "greedy\nn=100000", "The number of sequences can be at most 10,000"),
    ("greedy that samples", "greedy\ngreedy,do_sample=true", "greedy does not sample"),
    ("a filter on greedy", "greedy\ngreedy,temperature=0.5", "only shapes sampling"),
    ("a key twice", "greedy\ntop_k=3,top_k=4", "it sets top_k twice"),
    ("commas only", "greedy\n,,,", "is not key=value"),
    ("neither true nor false", "greedy\ndo_sample=maybe", "takes true or false"),
    ("several greedy sequences", "greedy,n=3\ntop-k 40", "Greedy decoding gives one sequence"),
    ("a huge line", "greedy\n" + "x" * 1_000_000, "Cannot read strategy 'xxxx"),
    ("a huge number", "greedy\ntop_k=" + "9" * 5000, "is not a number"),
    ("control characters", "greedy\n\x00\x07=1", "is not key=value"),
]:
    register(COMPARE, _name, BAD_LIST, _fragment)(
        lambda c, text=_text: c.tab.compare.strategies.setPlainText(text))
register(COMPARE, "max new tokens beyond the context", "Compare strategies failed",
         "4096 new tokens do not fit the model's context of 128 tokens")(
    lambda c: c.tab.controls.max_new.setValue(4096))


@pytest.mark.parametrize("name", list(COMPARE))
def test_compare(case, name):
    c = case(compared=True)
    fill, title, fragment = COMPARE[name]
    fill(c)
    run_case(c, c.tab.compare.compare_button.click, title, fragment)


# --- Open session… --------------------------------------------------------------------------------
SESSIONS: dict = {}
BAD_SESSION = "Cannot open the session"


def setting(name: str, value: Any):
    def change(data: dict) -> None:
        data["settings"][name] = value
    return change


for _name, _content, _fragment in [
    ("not JSON", "{oops", "Cannot read session"),
    ("empty", "", "Cannot read session"),
    ("not UTF-8", b"{\xff\xfe\x00\x81}", "Cannot read session"),
    ("a list", "[]", "is not an LM Workbench session file"),
    ("nested too deeply", "[" * 100_000, "Cannot read session"),
]:
    register(SESSIONS, _name, BAD_SESSION, _fragment)(
        lambda c, content=_content: c.choose(c.file("bad.json", content)))
register(SESSIONS, "missing", BAD_SESSION, "Cannot read session")(
    lambda c: c.choose(str(c.tmp / "no-such-session.json")))
register(SESSIONS, "a folder", BAD_SESSION, "Cannot read session")(
    lambda c: c.choose(str(c.tmp)))
for _name, _change, _fragment in [
    ("another version", lambda d: d.update(version=99), "is a session of version 99"),
    ("no settings", lambda d: d.pop("settings"), "settings are missing"),
    ("seed out of range", setting("seed", 2**40), "The seed must be between 0 and"),
    ("seed at 2**32", setting("seed", 2**32), "The seed must be between 0 and 4294967295"),
    ("negative seed", setting("seed", -1), "The seed must be between 0 and"),
    ("max new tokens past a million", setting("max_new_tokens", 10**7),
     "Max new tokens can be at most 1,000,000"),
    ("NaN temperature", setting("temperature", float("nan")), "is damaged"),
    ("a word for top-k", setting("top_k", "forty"), "is damaged"),
    ("an unknown setting", setting("x" * 100_000, 1), "unknown setting"),
]:
    register(SESSIONS, _name, BAD_SESSION, _fragment)(
        lambda c, change=_change: c.choose(c.session(change)))


@pytest.mark.parametrize("name", list(SESSIONS))
def test_open_session(case, name):
    c = case()
    fill, title, fragment = SESSIONS[name]
    fill(c)
    run_case(c, c.tab.single.open_session_button.click, title, fragment)


# --- Import config… --------------------------------------------------------------------------------
CONFIGS: dict = {}
BAD_CONFIG = "Cannot import the generation config"
for _name, _content, _fragment in [
    ("not JSON", "{oops", "Expecting property name"),
    ("empty", "", "Expecting value"),
    ("not UTF-8", b"{\xff\xfe\x00\x81}", "codec can't decode"),
    ("a list", "[1, 2]", "not a JSON object"),
    ("nested too deeply", "[" * 100_000, "nested too deeply"),
    ("a word for the temperature", '{"temperature": "hot"}', "Temperature must be a finite"),
    ("infinite temperature", '{"temperature": Infinity}', "Temperature must be a finite"),
    ("true for top-k", '{"top_k": true}', "Top-k must be a whole number"),
    ("a huge top-k", '{"top_k": 1000000000000000000000000000000}',
     "Top-k can be at most 1,000,000, not a 31-digit number"),
    ("seed out of range", '{"seed": 1099511627776}', "The seed must be between 0 and"),
    ("seed at 2**32", '{"seed": 4294967296}', "The seed must be between 0 and 4294967295"),
    ("max new tokens 0", '{"max_new_tokens": 0}', "Max new tokens must be at least 1"),
    ("top-p 0", '{"top_p": 0}', "Top-p must be in (0, 1]"),
    ("greedy with sequences", '{"do_sample": false, "num_return_sequences": 3}',
     "Greedy decoding gives one sequence"),
]:
    register(CONFIGS, _name, BAD_CONFIG, _fragment)(
        lambda c, content=_content: c.choose(c.file("generation_config.json", content)))
register(CONFIGS, "missing", BAD_CONFIG, "No such file")(
    lambda c: c.choose(str(c.tmp / "no-such-config.json")))
register(CONFIGS, "a folder", BAD_CONFIG, "Is a directory")(lambda c: c.choose(str(c.tmp)))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_import_config(case, name):
    c = case()
    fill, title, fragment = CONFIGS[name]
    fill(c)
    run_case(c, c.tab.controls.import_button.click, title, fragment)


# --- a saved preset, chosen from the list -----------------------------------------------------------
PRESETS: dict = {}
for _name, _stored, _fragment in [
    ("not JSON", "{oops", "The preset 'bad' is damaged"),
    ("nested too deeply", "[" * 100_000, "nested too deeply"),
    ("a list", "[1]", "The preset 'bad' is damaged"),
    ("negative seed", '{"seed": -1}', "The preset 'bad' is damaged"),
    ("seed at 2**32", '{"seed": 4294967296}', "The seed must be between 0 and 4294967295"),
    ("top-k past a million", '{"top_k": 1000001}', "Top-k can be at most 1,000,000"),
]:
    register(PRESETS, _name, "Cannot apply preset", _fragment)(
        lambda c, stored=_stored: QSettings().setValue("presets/bad", stored))


def choose_preset(tab, name: str) -> None:
    tab.controls.reload_presets()
    index = tab.controls.preset.findText(name)
    tab.controls.preset.setCurrentIndex(index)
    tab.controls.preset.activated.emit(index)  # as a click in the list does


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset(case, name):
    c = case()
    fill, title, fragment = PRESETS[name]
    fill(c)
    run_case(c, lambda: choose_preset(c.tab, "bad"), title, fragment)


# --- places that cannot be written ---------------------------------------------------------------
def under_a_file(c: Case, name: str) -> str:
    return str(Path(c.file("plain.txt", "not a folder")) / name)


def test_saving_a_session_under_a_file(case):
    c = case()
    c.choose(under_a_file(c, "session.json"))
    run_case(c, c.tab.single.save_session_button.click, "Save session failed", "plain.txt")
    assert c.tab.single.stats.text().startswith("Failed:")


def test_saving_a_session_into_a_missing_folder(case):
    c = case()
    c.choose(str(c.tmp / "gone" / "session.json"))
    run_case(c, c.tab.single.save_session_button.click, "Save session failed", "gone")


def test_exporting_a_config_under_a_file(case):
    c = case()
    c.choose(under_a_file(c, "generation_config.json"))
    run_case(c, c.tab.controls.export_button.click, "Cannot export the generation config",
             "plain.txt")


def test_exporting_settings_that_cannot_run(case):
    c = case()
    c.tab.controls.sample.setChecked(False)
    c.tab.controls.sequences.setValue(3)
    run_case(c, c.tab.controls.export_button.click, "Cannot export the generation config",
             "Greedy decoding gives one sequence")


def test_exporting_the_table_under_a_file(case):
    c = case(compared=True)
    c.choose(under_a_file(c, "compare.csv"))
    run_case(c, c.tab.compare.export_csv_button.click, "Cannot export the table", "plain.txt")


def test_exporting_the_plot_under_a_file(case):
    c = case(compared=True)
    c.choose(under_a_file(c, "compare.png"))
    run_case(c, c.tab.compare.export_png_button.click, "Cannot export the plot", "plain.txt")


# --- absurd but usable: a run, a notice, no dialog -----------------------------------------------
@pytest.mark.parametrize("prompt, notice", [
    ("", "Empty prompt: generating from the model's start token."),
    (" \n\t ", "Empty prompt: generating from the model's start token."),
    ("the cat " * 100_000, "only its last 120 fit in the model's context of 128"),
    ("x" * 50_000, ""),  # one unknown word (a million took the tokenizer 60 s)
    ("\x00\x07 \u2028 ☃ 🙂 zzzz", ""),
])
def test_an_absurd_prompt_still_generates(case, prompt, notice):
    c = case()
    previous = c.tab.single.result
    c.tab.prompt.setPlainText(prompt)
    given = c.tab.prompt.toPlainText()  # as the box holds it (a line separator is a newline)
    with c.qtbot.capture_exceptions() as exceptions:
        c.tab.controls.generate_button.click()
        c.wait_idle()
        c.qtbot.wait(150)
    assert not exceptions and c.dialogs.seen == []
    assert c.tab.prompt.toPlainText() == given  # the prompt box is left as it was
    result = c.tab.single.result
    assert result is not previous and result.new_tokens > 0
    assert c.tab.single.results_view.isEnabled()
    assert notice in c.tab.single.stats.text()


def test_a_preset_with_an_odd_name_round_trips(case, monkeypatch):
    from PySide6.QtWidgets import QInputDialog

    c = case()
    name = "a=b; c#d [e] \\f %g ☃"
    c.tab.controls.temperature.setValue(1.23)
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: (name, True))
    c.tab.controls.save_preset()
    c.tab.controls.temperature.setValue(0.3)
    choose_preset(c.tab, name)
    assert c.dialogs.seen == []
    assert c.tab.controls.temperature.value() == pytest.approx(1.23)

"""Saved state is data, never code: settings, presets, the results history and sessions
are read with explicit types and checked whole; a bad value is reset and named, a bad
file gives one clear message, nothing is half applied and nothing stored ever runs."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
from PySide6.QtCore import QByteArray, QDateTime, QSettings

from workbench.core.common.errors import WorkbenchError
from workbench.core.evaluation.history import HistoryEntry, add_entry, load_history, save_history
from workbench.core.generation.session import FORMAT, VERSION, load_session, settings_from_data
from workbench.core.generation.settings import SamplingSettings
from workbench.core.models.catalog import DEFAULT_MODEL
from workbench.ui.common.state import clean_settings_file, stored_objects
from workbench.ui.shell.launch import make_application, use_fresh_state
from workbench.ui.shell.main_window import MainWindow


class RunsCode:
    """Pickled, it would create ``marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def qt_escaped(value, scratch: Path) -> bytes:
    """The raw INI text QSettings writes for ``value`` (for a Python object: the pickle)."""
    settings = QSettings(str(scratch), QSettings.Format.IniFormat)
    settings.setValue("k", value)
    settings.sync()
    del settings
    line = next(line for line in scratch.read_bytes().splitlines() if line.startswith(b"k="))
    return line[2:]


@pytest.fixture
def pickle_value(tmp_path):
    """``(raw INI value, marker)``: a pickle that creates ``marker`` if it is ever loaded."""
    marker = tmp_path / "code-ran"
    return qt_escaped(RunsCode(marker), tmp_path / "scratch.ini"), marker


@pytest.fixture
def settings_file():
    """Write the settings file of the app as raw bytes (the org-wide file is removed after)."""
    path = Path(QSettings().fileName())
    org_file = path.parent.with_name(path.parent.name + path.suffix)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(data: bytes, where: Path = path) -> Path:
        where.write_bytes(data)
        return where

    write.path = path
    write.org_file = org_file
    yield write
    org_file.unlink(missing_ok=True)


@pytest.fixture
def open_window(qtbot):
    def start() -> MainWindow:
        w = MainWindow(autoload=False)
        qtbot.addWidget(w)
        w.show()
        qtbot.waitExposed(w)
        return w

    return start


def warnings(window: MainWindow) -> list[str]:
    return [line.split("WARNING: ", 1)[1] for line in window.log.text().splitlines()
            if "WARNING: " in line]


# --- the threat, measured ----------------------------------------------------------------------
def test_plain_qsettings_would_run_a_stored_pickle(tmp_path, pickle_value):
    """Why the file is cleaned before QSettings reads it: in this PySide6, reading such a
    value unpickles it (so does remove(), or reading any key of the same section)."""
    raw, marker = pickle_value
    path = tmp_path / "victim.ini"
    path.write_bytes(b"[tabs]\nother=1\nevil=" + raw + b"\n")
    QSettings(str(path), QSettings.Format.IniFormat).value("tabs/other")
    assert marker.exists()


# --- the INI reader agrees with Qt --------------------------------------------------------------
def harmless_variant(tmp_path) -> bytes:
    """A @Variant( value Qt decodes with QDataStream (a map, which runs nothing)."""
    return qt_escaped({"a": 1}, tmp_path / "map.ini")


def plain(value) -> bool:
    items = value if isinstance(value, list) else [value]
    return all(isinstance(item, (str, QByteArray)) for item in items)


def test_the_app_saves_its_state_in_ini_files_on_every_system(qapp):
    """The Windows registry and macOS property lists are never read: stored objects are cut
    out of INI files before Qt reads them, and only there."""
    QSettings.setDefaultFormat(QSettings.Format.NativeFormat)
    try:
        make_application()
        assert QSettings().format() == QSettings.Format.IniFormat
    finally:
        QSettings.setDefaultFormat(QSettings.Format.IniFormat)


def test_screenshots_start_from_a_new_users_state(qtbot, sandbox, monkeypatch):
    """``--screenshot`` shows the app as a new user first sees it: the default model and
    empty settings, whatever this user saved; and it leaves the user's settings alone."""
    monkeypatch.setenv("LMWB_DATA_DIR", os.environ["LMWB_DATA_DIR"])  # restored after
    QSettings().setValue("model/last", "someone/another-model")
    QSettings().sync()
    folder = use_fresh_state()
    try:
        window = MainWindow(autoload=False)
        qtbot.addWidget(window)
        assert window.picker.reference() == DEFAULT_MODEL
        assert Path(QSettings().fileName()).is_relative_to(folder)
        assert Path(os.environ["LMWB_DATA_DIR"]).is_relative_to(folder)
    finally:
        QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope,
                          str(sandbox / "settings"))
        shutil.rmtree(folder, ignore_errors=True)
    assert QSettings().value("model/last") == "someone/another-model"


@pytest.mark.parametrize("section, line, decoded", [
    (b"[tabs]", b"k={V}", True),  # plain
    (b"[tabs]", b'k="{V}"', True),  # quoted
    (b"[tabs]", b'k="" {V}', True),  # after an empty quoted part
    (b"[tabs]", b"k=\\ {V}", True),  # a skipped escape before it
    (b"[tabs]", b"k=\\x40{V1}", True),  # '@' as a hex escape
    (b"[tabs]", b"k=\\100{V1}", True),  # '@' as an octal escape
    (b"[tabs]", b"k=first, {V}", True),  # in a list
    (b"[tabs]", b"k={VSPLIT}", True),  # continued on the next line
    (b"[%74abs]", b"k={V}", True),  # an escaped section name
    (b"[tabs]", b"k={DT}", True),  # a QDateTime is decoded with QDataStream too
    (b"[tabs]", b"k=@{V}", False),  # '@@' is a plain '@' in text
    (b"[tabs]", b"k=1;{V}", False),  # after ';' is a comment
    (b"[tabs]", b"k=@ByteArray(abc)", False),  # bytes: plain data
    (b"[tabs]", b"k=\\x41{V1}", False),  # 'A', not '@'
])
def test_stored_objects_are_found_exactly_where_qt_decodes_them(tmp_path, section, line,
                                                                decoded):
    variant = harmless_variant(tmp_path)
    values = {b"{V}": variant, b"{V1}": variant[1:],
              b"{VSPLIT}": variant[:5] + b"\\\n" + variant[5:],
              b"{DT}": qt_escaped(QDateTime.fromSecsSinceEpoch(0), tmp_path / "dt.ini")}
    for name, value in values.items():
        line = line.replace(name, value)
    data = section + b"\nbefore=1\n" + line + b"\nafter=2\n"
    path = tmp_path / "case.ini"
    path.write_bytes(data)
    qt = QSettings(str(path), QSettings.Format.IniFormat)  # safe: the objects are maps
    qt_decoded = sorted(key for key in qt.allKeys() if not plain(qt.value(key)))
    del qt
    assert qt_decoded == (["tabs/k"] if decoded else [])
    assert [key for _start, _length, key in stored_objects(data)] == qt_decoded
    assert clean_settings_file(path) == qt_decoded
    cleaned = QSettings(str(path), QSettings.Format.IniFormat)
    assert cleaned.value("tabs/before") == "1" and cleaned.value("tabs/after") == "2"
    assert (cleaned.value("tabs/k") is None) == decoded


# --- settings at start-up ------------------------------------------------------------------------
PICKLE = b"@PICKLE"


@pytest.mark.parametrize("data, key", [
    (b"[tabs]\ngenerate\\temperature=@PICKLE\n", "tabs/generate/temperature"),
    (b"[presets]\nevil=@PICKLE\n", "presets/evil"),
    (b"[window]\ntab=\\x40PICKLE\n", "window/tab"),
    (b"[finetune]\nruns=/tmp/a, @PICKLE\n", "finetune/runs"),
    (b"[model]\nlast=\"@PICKLE\"\n", "model/last"),
    (b"[General]\nstray=@PICKLE\n", "stray"),
    (b"\xef\xbb\xbf[window]\ngeometry=@PICKLE\n", "window/geometry"),
])
def test_a_stored_pickle_never_runs_and_is_named(qtbot, settings_file, open_window,
                                                 pickle_value, data, key):
    raw, marker = pickle_value
    if b"\\x40PICKLE" in data:
        data = data.replace(b"\\x40PICKLE", b"\\x40" + raw[1:])
    settings_file(data.replace(PICKLE, raw))
    window = open_window()
    qtbot.wait(100)  # the deferred start (remembered runs) reads settings too
    assert not marker.exists()
    assert f"Settings: reset {key} (a stored object, never loaded: it could run code)" in \
        warnings(window)
    assert raw not in settings_file.path.read_bytes()
    assert window.tab_pages[0].temperature.value() == pytest.approx(0.7)
    assert window.tab_pages[0].preset.findText("evil") < 0


def test_a_pickle_in_the_organization_file_is_removed_too(qtbot, settings_file, open_window,
                                                         pickle_value):
    raw, marker = pickle_value
    settings_file(b"[finetune]\nattached=" + raw + b"\n", settings_file.org_file)
    settings_file(b"[window]\ntab=1\n")
    window = open_window()
    qtbot.wait(100)
    assert not marker.exists()
    assert "Settings: reset finetune/attached (a stored object, never loaded: it could run " \
        "code)" in warnings(window)
    assert window.tabs.currentIndex() == 1


def test_legitimate_values_are_kept(qtbot, settings_file, open_window):
    first = open_window()
    first.tab_pages[0].temperature.setValue(1.3)
    first.tab_pages[0].prompt.setPlainText('@Variant(not code), "quoted"; and more')
    first.tabs.setCurrentIndex(2)
    first.close()
    text = settings_file.path.read_bytes()
    assert b"geometry=@ByteArray(" in text and b"@@Variant(not code)" in text
    second = open_window()
    assert warnings(second) == []
    assert second.tab_pages[0].temperature.value() == pytest.approx(1.3)
    assert second.tab_pages[0].prompt.toPlainText() == '@Variant(not code), "quoted"; and more'
    assert second.tabs.currentIndex() == 2


@pytest.mark.parametrize("data, key, why", [
    (b"[window]\ntab=abc\n", "window/tab", "abc is not a number"),
    (b"[window]\ntab=99\n", "window/tab", "99 is out of range 0\u20133"),
    (b"[window]\ntab=1.5\n", "window/tab", "1.5 is not a whole number"),
    (b"[tabs]\ngenerate\\temperature=1e999\n", "tabs/generate/temperature",
     "1e999 is out of range 0\u2013100"),
    (b"[tabs]\ngenerate\\top-p=nan\n", "tabs/generate/top-p", "nan is not a number"),
    (b"[tabs]\ngenerate\\max-new-tokens=" + b"9" * 5000 + b"\n", "tabs/generate/max-new-tokens",
     "out of range 1\u20131000000"),
    (b"[tabs]\ngenerate\\seed=-1\n", "tabs/generate/seed", "-1 is out of range 0\u20134294967295"),
    (b"[tabs]\ngenerate\\do-sample=maybe\n", "tabs/generate/do-sample",
     "maybe is not true or false"),
    (b"[tabs]\ngenerate\\prompt=one, two\n", "tabs/generate/prompt", "a list is not text"),
    (b"[tabs]\ngenerate\\seed=@ByteArray(xyz)\n", "tabs/generate/seed",
     "a QByteArray value is not a number"),
    (b"[tabs]\ngenerate\\temperature=\xff\xfe\n", "tabs/generate/temperature",
     "\ufffd\ufffd is not a number"),  # invalid UTF-8
    (b"[model]\ndevice=quantum\n", "model/device", "quantum is not one of its choices"),
    (b"[model]\nlast=a, b\n", "model/last", "a list is not text"),
    (b"[window]\ngeometry=abc\n", "window/geometry", "abc is not saved binary data"),
    (b"[window]\nstate=@ByteArray(garbage)\n", "window/state", "not a saved window layout"),
    (b"[window]\ngeometry=@ByteArray(garbage)\n", "window/geometry",
     "not a saved window geometry"),
])
def test_a_bad_value_is_reset_to_the_default_and_named(settings_file, open_window, data, key,
                                                       why):
    settings_file(b"[tabs]\ngenerate\\top-k=7\n" + data)
    window = open_window()
    notes = warnings(window)
    assert any(note.startswith(f"Settings: reset {key} (") and why in note for note in notes), \
        notes
    assert len(notes) == 1
    tab = window.tab_pages[0]
    assert tab.top_k.value() == 7  # the good values around it are restored
    defaults = {"window/tab": (lambda: window.tabs.currentIndex(), 0),
                "tabs/generate/temperature": (lambda: tab.temperature.value(), 0.7),
                "tabs/generate/top-p": (lambda: tab.top_p.value(), 0.9),
                "tabs/generate/max-new-tokens": (lambda: tab.max_new.value(), 64),
                "tabs/generate/seed": (lambda: tab.seed.value(), 0),
                "tabs/generate/do-sample": (lambda: tab.sample.isChecked(), True),
                "tabs/generate/prompt": (lambda: tab.prompt.toPlainText(),
                                         "Write one sentence about the sea."),
                "model/device": (lambda: window.picker.device.currentText(), "auto"),
                "model/last": (lambda: window.picker.reference(), "SmolLM2-135M-Instruct")}
    if key in defaults:
        read, default = defaults[key]
        assert read() == pytest.approx(default) if isinstance(default, float) else \
            read() == default
    window.close()  # saved again, with good values
    assert data.split(b"\n")[1] not in settings_file.path.read_bytes()


@pytest.mark.parametrize("data", [
    b"[tabs]\ngenerate\\temperature=1.5\n[win",  # cut off in a section name
    b"[tabs]\ngenerate\\temperature=1.5\nprompt=\"never closed",  # cut off in a quote
    b"[tabs]\ngenerate\\temperature=1.5\n[window]\ntab=@Variant(\\0\\0\\0\\x7f\\0\\0\\0\\x18PyS",
    b"[tabs]\ngenerate\\temperature=1.5\n\x00\x01\x02\xff garbage without an equals sign\n",
])
def test_a_truncated_or_garbled_file_never_stops_the_window(settings_file, open_window, data):
    settings_file(data)
    window = open_window()
    assert window.isVisible()
    assert window.tab_pages[0].temperature.value() == pytest.approx(1.5)


def test_an_unwritable_file_with_a_pickle_is_not_read_at_all(settings_file, open_window,
                                                            pickle_value, monkeypatch):
    import workbench.ui.common.state as state

    raw, marker = pickle_value
    settings_file(b"[tabs]\ngenerate\\top-k=7\nevil=" + raw + b"\n")

    def refuse(path):
        if Path(path).is_file() and stored_objects(Path(path).read_bytes()):
            raise PermissionError("read-only")
        return []

    monkeypatch.setattr(state, "clean_settings_file", refuse)
    window = open_window()
    assert not marker.exists()
    assert window.tab_pages[0].top_k.value() == 50  # nothing was read
    assert any("holds stored objects" in note and "were not read" in note
               for note in warnings(window))
    window.persist = False  # (closing would not write either)
    monkeypatch.undo()
    settings_file(b"")  # what the next test's QSettings().clear() reads


# --- presets -------------------------------------------------------------------------------------
def preset_json(**changes) -> str:
    return json.dumps({**asdict(SamplingSettings()), **changes})


@pytest.mark.parametrize("stored, message", [
    ("{oops", "The preset 'bad' is damaged (Expecting property name"),
    ("[1, 2]", "it is a list, not an object"),
    ('"just text"', "it is the text 'just text', not an object"),
    (preset_json(temperature="hot"), "it.temperature is the text 'hot', not a number"),
    (preset_json(temperature=float("nan")), "it.temperature is nan, not a finite number"),
    (preset_json(temperature=1e999), "it.temperature is inf, not a finite number"),
    (preset_json(top_k=10**400), "it.top_k is a number of 401 digits, out of range"),
    (preset_json(top_k=1.5), "it.top_k is the number 1.5, not a whole number"),
    (preset_json(do_sample="yes"), "it.do_sample is the text 'yes', not true or false"),
    (preset_json(warp=1), "it has an unknown setting 'warp'"),
    (preset_json(top_p=0), "Top-p must be in (0, 1]"),
    (preset_json(max_new_tokens=10**7), "Max new tokens can be at most 1,000,000"),
    ("[" * 100000, "nested too deeply"),
])
def test_a_damaged_preset_is_refused_whole(qtbot, open_window, stored, message):
    window = open_window()
    tab = window.tab_pages[0]
    tab.temperature.setValue(1.1)
    tab.top_k.setValue(9)
    QSettings().setValue("presets/bad", stored)
    tab.reload_presets()
    assert tab.preset.findText("bad") > 0
    before = tab.settings()
    tab.apply_preset("bad")
    assert tab.settings() == before  # nothing half applied
    assert window.last_dialog.windowTitle() == "Cannot apply preset"
    assert message in window.last_dialog.text()
    assert "nothing was applied" in window.last_dialog.text()
    page = window.tab_pages[3].generate_page
    page.reload_strategies()
    page.strategy.setCurrentText("bad")
    if "this tab" not in message:  # the Evaluate page checks the same way
        with pytest.raises(WorkbenchError, match=r"The preset 'bad' is damaged"):
            page.settings()


def test_a_preset_stored_as_a_list_or_a_pickle_is_refused(qtbot, settings_file, open_window,
                                                        pickle_value):
    raw, marker = pickle_value
    settings_file(b'[presets]\nlisted=1, 2\n')
    window = open_window()
    tab = window.tab_pages[0]
    tab.apply_preset("listed")
    assert "a list is not text" in window.last_dialog.text()
    settings_file(b"[presets]\nevil=" + raw + b"\n")
    tab.reload_presets()  # cuts it out before reading the names
    assert tab.preset.findText("evil") < 0 and not marker.exists()


def test_a_sound_preset_applies_whole(qtbot, open_window):
    window = open_window()
    tab = window.tab_pages[0]
    QSettings().setValue("presets/fine", json.dumps({"temperature": 1.25, "top_k": 12}))
    tab.apply_preset("fine")
    assert tab.temperature.value() == pytest.approx(1.25) and tab.top_k.value() == 12
    assert window.last_dialog is None


# --- sessions -----------------------------------------------------------------------------------
def session_data() -> dict:
    step = {"index": 0, "token_id": 5, "text": " sea", "raw_probability": 0.5,
            "probability": 0.6, "entropy": 1.2, "raw_entropy": 2.0, "surprisal": 1.0,
            "kept_count": 3, "kept_mass": 0.9,
            "candidates": [{"token_id": 5, "text": " sea", "raw_probability": 0.5,
                            "probability": 0.6, "kept": True}]}
    settings = asdict(SamplingSettings(temperature=1.2, seed=3))
    return {"format": FORMAT, "version": VERSION, "created": "2025-01-01T00:00:00+00:00",
            "prompt": "the", "settings": settings, "seed": 3,
            "model": {"name": "tiny", "reference": "tiny", "source": "folder", "task": "causal-lm",
                      "device": "cpu", "dtype": "float32",
                      "files": [{"name": "model.safetensors", "size": 10, "sha256": "ab" * 32}]},
            "libraries": {"torch": "2"},
            "result": {"prompt": "the", "seconds": 0.5, "stopped": False, "settings": settings,
                       "prompt_token_ids": [1, 2], "notices": [],
                       "sequences": [{"text": " sea", "token_ids": [5], "steps": [step]}]}}


def changed(path: str, value) -> dict:
    data = session_data()
    *parents, last = path.split(".")
    target = data
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    target[last] = value
    return data


BAD_SESSIONS = {
    "NaN temperature": (changed("settings.temperature", math.nan), "settings.temperature is nan"),
    "huge max_new_tokens": (changed("settings.max_new_tokens", 10**30), "settings.max_new_tokens"),
    "inf top_p": (changed("settings.top_p", math.inf), "settings.top_p is inf"),
    "text temperature": (changed("settings.temperature", "hot"), "not a number"),
    "float top_k": (changed("settings.top_k", 2.5), "settings.top_k is the number 2.5"),
    "settings a list": (changed("settings", [1]), "settings is a list, not an object"),
    "invalid settings": (changed("settings.num_beams", 0), "number of beams"),
    "prompt a number": (changed("prompt", 7), "prompt is the number 7, not text"),
    "token id text": (changed("result.sequences.0.token_ids", ["a"]),
                      "result.sequences[0].token_ids[0] is the text 'a'"),
    "probability 2": (changed("result.sequences.0.steps.0.probability", 2.0),
                      "result.sequences[0].steps[0].probability is 2"),
    "candidate kept text": (changed("result.sequences.0.steps.0.candidates.0.kept", "yes"),
                            "candidates[0].kept is the text 'yes'"),
    "no sequences": (changed("result.sequences", []), "result.sequences is empty"),
    "seconds NaN": (changed("result.seconds", math.nan), "result.seconds is nan"),
    "sha256 a number": (changed("model.files.0.sha256", 5), "model.files[0].sha256"),
    "model a list": (changed("model", ["x"]), "model is a list"),
    "libraries nested": (changed("libraries", {"torch": {"v": 2}}), "libraries.torch"),
}


@pytest.mark.parametrize("name", list(BAD_SESSIONS))
def test_a_damaged_session_gives_one_clear_error(tmp_path, name):
    data, message = BAD_SESSIONS[name]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data, allow_nan=True))
    with pytest.raises(WorkbenchError, match="is damaged") as error:
        load_session(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content, message", [
    (b"", "Cannot read session"),  # empty
    (json.dumps(session_data()).encode()[:200], "Cannot read session"),  # truncated
    (b'{"format": "lm-workbench-session", "prompt": "\xff\xfe"}', "Cannot read session"),
    (b"[1, 2, 3]", "not an LM Workbench session"),
    (b"[" * 100000, "Cannot read session"),  # nested deeper than the parser goes
    (json.dumps({"format": FORMAT, "version": "1"}).encode(), "version '1'"),
    (json.dumps({"format": FORMAT, "version": 1}).encode(), "settings are missing"),
])
def test_an_unreadable_session_file_gives_one_clear_error(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_bytes(content)
    with pytest.raises(WorkbenchError, match=message):
        load_session(path)


def test_a_sound_session_reads_back(tmp_path):
    path = tmp_path / "s.json"
    data = session_data()
    data["result"]["sequences"][0]["steps"][0]["surprisal"] = math.inf  # p = 0 underflowed
    path.write_text(json.dumps(data, allow_nan=True))
    session = load_session(path)
    assert session.settings == SamplingSettings(temperature=1.2, seed=3)
    assert session.result.sequences[0].steps[0].candidates[0].kept is True
    assert session.result.sequences[0].steps[0].surprisal == math.inf
    assert session.model["files"][0]["sha256"] == "ab" * 32


def test_settings_from_data_checks_types_before_validating():
    assert settings_from_data({"top_k": 3}) == SamplingSettings(top_k=3)
    with pytest.raises(WorkbenchError, match="settings.chat is the number 1, not true or false"):
        settings_from_data({"chat": 1})
    with pytest.raises(WorkbenchError, match="settings.seed is true/false, not a whole number"):
        settings_from_data({"seed": True})


@pytest.mark.parametrize("name", ["NaN temperature", "huge max_new_tokens", "token id text",
                                  "sha256 a number"])
def test_the_generate_tab_refuses_a_damaged_session_and_changes_nothing(qtbot, open_window,
                                                                       tmp_path, name):
    window = open_window()
    tab = window.tab_pages[0]
    tab.prompt.setPlainText("kept")
    tab.temperature.setValue(0.3)
    before = tab.settings()
    path = tmp_path / "s.json"
    path.write_text(json.dumps(BAD_SESSIONS[name][0], allow_nan=True))
    tab.open_session(str(path))
    assert window.last_dialog.windowTitle() == "Cannot open the session"
    assert BAD_SESSIONS[name][1] in window.last_dialog.text()
    assert tab.settings() == before and tab.prompt.toPlainText() == "kept"
    assert tab.result is None


def test_the_generate_tab_refuses_a_session_whose_settings_are_out_of_range(qtbot, open_window,
                                                                   tmp_path):
    window = open_window()
    tab = window.tab_pages[0]
    before = tab.settings()
    path = tmp_path / "s.json"
    path.write_text(json.dumps(changed("settings.max_new_tokens", 10**7)))
    tab.open_session(str(path))
    assert "Max new tokens can be at most 1,000,000" in window.last_dialog.text()
    assert tab.settings() == before and tab.result is None
    path.write_text(json.dumps(session_data()))
    tab.open_session(str(path))  # a sound one opens
    assert tab.temperature.value() == pytest.approx(1.2) and tab.prompt.toPlainText() == "the"
    assert tab.result is not None and tab.output.toPlainText() == " sea"


# --- the results history ------------------------------------------------------------------------
def good_entry(n: int) -> dict:
    return {"kind": "bleu", "summary": f"BLEU {n}", "inputs": {"n": n}, "results": {"b": n},
            "time": "2025-01-01T00:00:00"}


@pytest.mark.parametrize("content, why", [
    (b"{not json", "cannot be read (Expecting property name"),
    (b'{"kind": "bleu"}', "it holds an object, not a list of results"),
    (b"\xff\xfe[]", "cannot be read ("),  # invalid UTF-8
    (b"[" * 100000, "nested too deeply"),
    (json.dumps([good_entry(1)]).encode()[:30], "cannot be read ("),  # truncated
])
def test_an_unreadable_history_is_moved_aside_and_said(tmp_path, content, why):
    path = tmp_path / "history.json"
    path.write_bytes(content)
    messages: list[str] = []
    assert load_history(path, messages.append) == []
    assert len(messages) == 1 and why in messages[0]
    assert "moved to history.damaged.json" in messages[0]
    assert not path.exists() and (tmp_path / "history.damaged.json").read_bytes() == content
    path.write_bytes(content)  # damaged again: the first copy is kept too
    load_history(path, messages.append)
    assert (tmp_path / "history.damaged-2.json").read_bytes() == content


def test_bad_history_entries_are_dropped_one_by_one(tmp_path):
    path = tmp_path / "history.json"
    rows = [good_entry(1), ["a list"], {**good_entry(2), "inputs": [1]},
            {**good_entry(3), "kind": 5}, {"summary": "no kind"},
            {**good_entry(4), "from a newer version": 1}, good_entry(5)]
    path.write_text(json.dumps(rows))
    messages: list[str] = []
    entries = load_history(path, messages.append)
    assert [e.summary for e in entries] == ["BLEU 1", "BLEU 4", "BLEU 5"]
    assert all(isinstance(e, HistoryEntry) for e in entries)
    assert len(messages) == 1
    assert messages[0].startswith(
        "Results history: dropped 4 damaged entries of 7 (entry 2: it is a list, not an "
        "object; entry 3: its inputs is a list, not an object; entry 4: its kind is a number, "
        "not text; …)")
    assert "kept as history.damaged.json" in messages[0]
    assert json.loads((tmp_path / "history.damaged.json").read_text()) == rows
    messages.clear()
    assert [e.summary for e in load_history(path, messages.append)] == ["BLEU 1", "BLEU 4",
                                                                       "BLEU 5"]
    assert messages == []  # said once: the file now holds the sound entries


def test_adding_to_a_damaged_history_keeps_the_old_file(tmp_path):
    path = tmp_path / "history.json"
    path.write_text("{oops")
    messages: list[str] = []
    add_entry("bleu", "BLEU 9", {}, {}, path, messages.append)
    assert [e.summary for e in load_history(path)] == ["BLEU 9"]
    assert (tmp_path / "history.damaged.json").read_text() == "{oops"
    assert len(messages) == 1


def test_a_sound_history_round_trips(tmp_path):
    path = tmp_path / "history.json"
    entries = [HistoryEntry(**good_entry(1)), HistoryEntry("perplexity", "ppl 3.2")]
    save_history(entries, path)
    messages: list[str] = []
    assert load_history(path, messages.append) == entries and messages == []


def test_a_damaged_history_is_said_in_the_log_at_start(qtbot):
    from workbench.core.evaluation.history import history_file
    from workbench.ui.shell.main_window import MainWindow

    path = history_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('[{"kind": "bleu", "summary": ')  # cut short
    window = MainWindow(autoload=False)
    qtbot.addWidget(window)
    assert "Results history:" in window.log.text() and "moved to" in window.log.text()

"""What a user sees of bad input in the window, recorded instead of shown (shared by the
bad-input corpora of the GUI): every message box, and the file dialogs, which answer with
the paths queued in ``answers`` (the user picks that path) or are cancelled; and the window
those corpora share between cases (:class:`WindowPool`), each case starting from the state
a fresh window has."""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QAbstractListModel, QCoreApplication, QEvent, QObject, Qt
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QAbstractSlider,
    QAbstractSpinBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGraphicsView,
    QGroupBox,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QScrollBar,
    QSpinBox,
    QStackedWidget,
    QTabWidget,
    QTextEdit,
    QWidget,
)


class Dialogs(list):
    """Every message box opened, as a dict (title, text, details); the file dialogs asked
    for (their names); the paths they will answer, in turn."""

    def __init__(self) -> None:
        super().__init__()
        self.file_dialogs: list[str] = []
        self.answers: list[str] = []

    @property
    def seen(self) -> list[tuple[str, str]]:
        """The (title, text) of every message box opened."""
        return [(box["title"], box["text"]) for box in self]


def record_dialogs(monkeypatch) -> Dialogs:
    """Record every QMessageBox (opened, exec'd or static; a question is answered No) and
    answer every QFileDialog from the queue, for the rest of the test."""
    seen = Dialogs()

    def opened(box: QMessageBox, *args: Any) -> int:
        seen.append({"title": box.windowTitle(), "text": box.text(),
                     "details": box.detailedText()})
        return 0

    monkeypatch.setattr(QMessageBox, "open", opened)
    monkeypatch.setattr(QMessageBox, "exec", opened)
    for name in ("critical", "warning", "information", "question"):
        def static(parent, title, text, *args, _name=name, **kwargs):
            seen.append({"title": title, "text": text, "details": ""})
            return QMessageBox.StandardButton.No if _name == "question" \
                else QMessageBox.StandardButton.Ok
        monkeypatch.setattr(QMessageBox, name, staticmethod(static))
    for name in ("getOpenFileName", "getOpenFileNames", "getSaveFileName",
                 "getExistingDirectory"):
        def answer(*args, _name=name, **kwargs):
            seen.file_dialogs.append(_name)
            path = seen.answers.pop(0) if seen.answers else ""  # "": the user cancels
            if _name == "getExistingDirectory":
                return path
            return ([path] if path else [], "") if _name == "getOpenFileNames" else (path, "")
        monkeypatch.setattr(QFileDialog, name, staticmethod(answer))
    return seen


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``."""
    return {str(path.relative_to(folder)): path.read_bytes() if path.is_file() else None
            for path in sorted(folder.rglob("*"))}


# --- one window for many cases ---------------------------------------------------------------
# A new window costs far more than a case (building it and its charts, loading the model, and
# the full garbage collection after each load, which also frees the previous window's), so
# the corpora keep the window a passed case leaves and bring it back to a fresh one's state
# before the next case. What is compared with the state of a new window is everything a case
# can reach: every widget's value, range, items, enabled state, whether the app hid it, and
# text (the numbers in labels and buttons aside: timings, memory), each chart's data, the Python
# attributes of the app's own objects (data whole, except floats: times measured; objects by
# type; containers by length and their items' types), the model every part holds (by
# identity), the worker and the dialogs. Not compared: the log (it only grows, and nothing
# reads it), scroll bars (they follow the contents). What is set back: the dialogs the
# window kept, every control's value and label's text (as a user would set them), attributes
# holding data. A window that does not then match, that holds another model, or whose case
# failed, is closed, and the next case gets a new one.

_NUMBERS = re.compile(r"\d+(?:[.,]\d+)*")
_INNER = (QAbstractSpinBox, QComboBox)  # their line edit is theirs: set through them


def _plain(value: object) -> bool:
    """A value a fresh window's attribute can be given back whole: no object of the app."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return True
    if isinstance(value, (tuple, frozenset)):
        return all(_plain(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type) \
            and value.__dataclass_params__.frozen:  # type: ignore[union-attr]
        return all(_plain(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


def _data(value: object) -> bool:
    """Plain data (a result, inputs, a cache of estimates): nothing that acts (an object of
    the app or Qt, a thread, a job), so an attribute holding it can be set back."""
    if _plain(value) or type(value).__module__.split(".")[0] in ("numpy", "torch"):
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_data(item) for item in value)
    if isinstance(value, dict):
        return all(_data(k) and _data(v) for k, v in value.items())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return all(_data(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


_ABSENT = object()


def _same(a: object, b: object) -> bool:
    try:
        return _summary(a) == _summary(b) and bool(a == b)
    except (TypeError, ValueError, RuntimeError):  # arrays: compared element by element
        return False


def _summary(value: object, deep: bool = True) -> object:
    if _plain(value):
        return value
    if isinstance(value, QWidget):
        return "widget"  # compared as a widget
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        if not deep:
            return type(value).__name__, len(value)
        items = value.items() if isinstance(value, dict) else value
        return type(value).__name__, len(value), tuple(_summary(item, False) for item in items)
    if callable(value) and not isinstance(value, QObject):
        return "callable"
    return type(value).__name__


def _hidden(w: QWidget) -> bool:
    """Hidden by the app (``hide``, ``setVisible(False)``); not merely not shown yet, which
    depends on when Qt got round to it."""
    return w.testAttribute(Qt.WidgetAttribute.WA_WState_ExplicitShowHide) \
        and w.testAttribute(Qt.WidgetAttribute.WA_WState_Hidden)


def _widget_state(w: QWidget) -> tuple:
    if isinstance(w, QScrollBar) or w.objectName().startswith("qt_scrollarea_"):
        return type(w).__name__, w.objectName()  # they follow the contents' layout
    state: list = [type(w).__name__, w.objectName(), w.isEnabled(), _hidden(w)]
    if isinstance(w, QComboBox):
        state += [w.currentIndex(), w.currentText(), w.isEditable(),
                  tuple(w.itemText(i) for i in range(w.count()))]
    elif isinstance(w, QLineEdit):
        state += [w.text(), w.isReadOnly()]
    elif isinstance(w, (QPlainTextEdit, QTextEdit)):
        state += [w.toPlainText(), w.isReadOnly()]
    elif isinstance(w, (QSpinBox, QDoubleSpinBox)):
        state += [w.value(), w.minimum(), w.maximum()]
    elif isinstance(w, QAbstractSlider):
        state += [w.value(), w.minimum(), w.maximum()]
    elif isinstance(w, QAbstractButton):
        state += [w.isCheckable(), w.isChecked(), _NUMBERS.sub("#", w.text())]
    elif isinstance(w, QGroupBox):
        state += [w.isCheckable(), w.isChecked(), w.title()]
    elif isinstance(w, (QTabWidget, QStackedWidget)):
        state += [w.currentIndex(), w.count()]
    elif isinstance(w, QAbstractItemView):
        model = w.model()  # (a list model has one column, and does not say so)
        state += [None if model is None else (model.rowCount(), 1 if isinstance(
            model, QAbstractListModel) else model.columnCount())]
    elif isinstance(w, QLabel):
        state += [_NUMBERS.sub("#", w.text())]
    elif isinstance(w, QGraphicsView) and w.scene() is not None:
        items = w.scene().items()
        state += [len(items), tuple(_item_data(item) for item in items)]
    url = getattr(w, "url", None)  # a web view: the page it shows
    if callable(url) and type(w).__name__.endswith("WebEngineView"):
        state += [url().toString()]
    return tuple(state)


def _item_data(item) -> object:
    """How much a chart item shows: its points, or its image's shape."""
    for name in ("xData", "yData"):
        data = getattr(item, name, None)
        if data is not None and not callable(data):
            return type(item).__name__, len(data)
    image = getattr(item, "image", None)
    if image is not None and not callable(image):
        return type(item).__name__, getattr(image, "shape", None)
    return type(item).__name__


def _app_objects(window: QWidget) -> list[QObject]:
    """The window and every object of the app's own classes in it (pages, their parts)."""
    return [window] + [o for o in window.findChildren(QObject)
                       if type(o).__module__.startswith("workbench.")]


def _widgets(window) -> list[QWidget]:
    log = window.log  # the log only grows; nothing reads it back
    return [w for w in window.findChildren(QWidget) if w is not log and not log.isAncestorOf(w)]


@dataclass
class WindowState:
    """What a window holds, to compare with a fresh one's (see above)."""

    widgets: list[tuple]
    attributes: list[tuple]
    model: object  # the LoadedModel every part holds (compared by identity)
    models_agree: bool
    extra: tuple  # the window's own: idle worker, no job, no dialog
    label_texts: list  # each label's text, numbers and all (to set back; not compared)


def window_state(window) -> WindowState:
    model = window.worker.store.current
    holders = [window] + list(window.tab_pages)
    widgets = _widgets(window)
    return WindowState(
        widgets=[_widget_state(w) for w in widgets],
        attributes=[(type(o).__name__, tuple((name, _summary(value))
                                             for name, value in sorted(vars(o).items())))
                    for o in _app_objects(window)],
        model=model,
        models_agree=all(getattr(holder, "loaded", None) is model for holder in holders),
        extra=(window.worker.busy, window.loading, bool(window.job_titles),
               len(window.findChildren(QMessageBox)), window.last_dialog is None,
               window.isVisible()),
        label_texts=[w.text() if isinstance(w, QLabel) else None for w in widgets],
    )


def state_differences(now: WindowState, fresh: WindowState, limit: int = 5) -> list[str]:
    """What differs from the fresh state, said briefly (empty when nothing does).
    Attributes that hold two floats are times measured (when a chart was last drawn):
    they do not count."""
    out = []
    if now.model is not fresh.model or not now.models_agree:
        out.append("another model")
    if now.extra != fresh.extra:
        out.append(f"window {now.extra} != {fresh.extra}")
    if len(now.widgets) != len(fresh.widgets):
        out.append(f"{len(now.widgets)} widgets, not {len(fresh.widgets)}")
    out += [f"widget {a[:2]}: {str(a)[:200]} != {str(b)[:200]}"
            for a, b in zip(now.widgets, fresh.widgets, strict=False) if a != b]
    if len(now.attributes) != len(fresh.attributes):
        out.append(f"{len(now.attributes)} objects, not {len(fresh.attributes)}")
    for (kind, a), (_, b) in zip(now.attributes, fresh.attributes, strict=False):
        out += [f"{kind}.{x[0]}: {str(x[1])[:200]} != {str(y[1])[:200]}"
                for x, y in zip(a, b, strict=False)
                if x != y and not (isinstance(x[1], float) and isinstance(y[1], float))]
        if len(a) != len(b):
            out.append(f"{kind}: attributes {[n for n, _ in a]} != {[n for n, _ in b]}")
    return out[:limit]


def _restore_widget(w: QWidget, state: tuple, text: str | None) -> None:
    if len(state) <= 4:  # nothing of its own to set
        return
    if isinstance(w, QComboBox):
        index, current, _, items = state[4:8]
        if tuple(w.itemText(i) for i in range(w.count())) == items:
            if w.currentIndex() != index:
                w.setCurrentIndex(index)
            if w.isEditable() and w.currentText() != current:
                w.setCurrentText(current)
    elif isinstance(w, QLineEdit):
        if not isinstance(w.parent(), _INNER) and w.text() != state[4]:
            w.setText(state[4])
    elif isinstance(w, (QPlainTextEdit, QTextEdit)):
        if not w.isReadOnly() and w.toPlainText() != state[4]:
            w.setPlainText(state[4])
    elif isinstance(w, (QSpinBox, QDoubleSpinBox, QAbstractSlider)):
        if w.value() != state[4]:
            w.setValue(state[4])
    elif isinstance(w, (QAbstractButton, QGroupBox)):
        if w.isCheckable() and w.isChecked() != state[5]:
            w.setChecked(state[5])
    elif isinstance(w, (QTabWidget, QStackedWidget)):
        if w.currentIndex() != state[4]:
            w.setCurrentIndex(state[4])
    elif isinstance(w, QLabel):  # a notice, a summary: its fresh text
        if w.text() != text:
            w.setText(text)


def _flush_deletions() -> None:
    """Delete now what was handed to ``deleteLater`` (finished jobs' handles, dialogs)."""
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)


def app_attributes(window) -> dict[int, tuple[QObject, dict]]:
    """Each app object's attributes (data copied), by object, to set back later."""
    return {id(o): (o, {name: copy.deepcopy(value) if _data(value) else value
                        for name, value in vars(o).items()})
            for o in _app_objects(window)}


def restore_window(window, fresh: WindowState,
                   attributes: dict[int, tuple[QObject, dict]]) -> None:
    """Bring ``window`` back towards the fresh state: the dialogs it kept go, each control
    and label gets its fresh value back (as a user would set it), and each attribute that
    holds data gets its value in ``attributes`` (see :func:`app_attributes`) back, or goes
    when it was made since. Objects, and what cannot be set back, are left for the
    comparison."""
    for box in window.findChildren(QMessageBox):
        box.setParent(None)
        box.deleteLater()
    _flush_deletions()
    window.last_dialog = None
    widgets = _widgets(window)
    if [(type(w).__name__, w.objectName()) for w in widgets] != \
            [state[:2] for state in fresh.widgets]:
        return  # other widgets: nothing to match them with
    for w, state, text in zip(widgets, fresh.widgets, fresh.label_texts, strict=True):
        _restore_widget(w, state, text)
    for o in _app_objects(window):
        if id(o) not in attributes or attributes[id(o)][0] is not o:
            continue  # made since: compared only
        values = attributes[id(o)][1]
        for name, value in list(vars(o).items()):
            was = values.get(name, _ABSENT)
            if value is was or not _data(value) or not (was is _ABSENT or _data(was)):
                continue
            if was is _ABSENT:  # made by a run: a fresh window has none yet
                delattr(o, name)
            elif not _same(value, was):
                setattr(o, name, copy.deepcopy(was))


class WindowPool:
    """Windows kept between the cases of a module, one a key (what a case starts from).

    ``take(key, build, prepare, settle)`` gives a window in the state a fresh one has after
    ``build()`` (a new window, its model loaded, its page shown) and ``prepare(window)`` (the
    steps each case starts with; both end with ``settle(window)``, which waits until nothing
    more is to come; ``reread(window)`` reads again what a new window reads from the
    settings, which are cleared before each test): a kept one brought back to that state and
    checked against it (when setting it back is not enough, ``prepare`` runs again, from the
    attributes a new window had before it), else a new one. ``give_back(key, reusable)``
    keeps the window for the next case (if its model is the one it started with), or closes
    it. Where two new windows of a key differ, that key's cases each get a new window.
    """

    def __init__(self) -> None:
        # key → (window, its fresh state, its attributes before and after ``prepare``)
        self.kept: dict[object, tuple] = {}
        self.in_use: dict[object, tuple] = {}
        self.fresh: dict[object, WindowState] = {}
        self.new_windows = 0
        self.reused = 0
        self.refused: list[str] = []  # why a kept window was not used (for the curious)
        self.unsound: set = set()  # keys whose fresh windows differed: never kept

    def take(self, key, build, prepare, settle, reread=None):
        entry = self.kept.pop(key, None)
        if entry is not None:
            window, fresh, base, ready = entry
            self.in_use[key] = entry  # closed by give_back if what follows fails
            settle(window)  # what the last case started has arrived
            if reread is not None:  # what a new window reads from the (cleared) settings
                reread(window)
            restore_window(window, fresh, ready)
            differences = state_differences(window_state(window), fresh)
            if differences:  # a control's slot may have changed another: once more
                restore_window(window, fresh, ready)
                differences = state_differences(window_state(window), fresh)
            if differences:  # the last case changed more: its common steps again
                restore_window(window, fresh, base)
                prepare(window)
                _flush_deletions()
                differences = state_differences(window_state(window), fresh)
            if differences:
                self.refused.append(f"{key}: {'; '.join(differences)}")
                close_window(window, persist=False)  # the next window starts as the first
                entry = None
            else:
                self.reused += 1
        if entry is None:
            window = build()
            self.in_use[key] = window, None, None, None
            _flush_deletions()
            base = app_attributes(window)
            prepare(window)
            _flush_deletions()
            fresh = window_state(window)
            if key in self.fresh:  # every fresh window is the same: a sound reference
                differences = state_differences(fresh, self.fresh[key])
                differences = [d for d in differences if d != "another model"]
                if differences:  # not a sound reference: every case of this key a new window
                    self.unsound.add(key)
                    self.refused.append(f"{key}: two fresh windows differ: "
                                        f"{'; '.join(differences)}")
            self.fresh[key] = fresh
            entry = window, fresh, base, app_attributes(window)
            self.new_windows += 1
        self.in_use[key] = entry
        return entry[0]

    def give_back(self, key, reusable: bool) -> None:
        entry = self.in_use.pop(key, None)
        if entry is None:
            return
        window, fresh = entry[:2]
        if reusable and fresh is not None and key not in self.unsound \
                and window.isVisible() and not window.worker.busy \
                and window.worker.store.current is fresh.model:
            self.kept[key] = entry
        else:
            close_window(window)

    def close_all(self) -> None:
        for window, *_ in [*self.kept.values(), *self.in_use.values()]:
            close_window(window)
        self.kept.clear()
        self.in_use.clear()


def close_window(window, persist: bool = True) -> None:
    """As pytest-qt closes a test's windows (without saving the settings, when not
    ``persist``: the test goes on, and its next window reads them)."""
    window.persist = window.persist and persist
    window.close()
    window.deleteLater()
    _flush_deletions()


def quiet(window) -> bool:
    """Nothing is left to arrive: no job (its end has reached the window), no model search
    or memory estimate running."""
    picker = window.picker
    return (not window.worker.busy and not window.loading and not window.job_titles
            and window.progress.isHidden()
            and not picker.discovering
            and not picker.estimating.running and not picker._estimate_soon.isActive())


def passed(item) -> bool:
    """Whether the test ``item`` passed (its call did; see conftest.py)."""
    report = getattr(item, "report_call", None)
    return report is not None and report.passed

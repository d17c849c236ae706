"""Saving and restoring the controls of a tab with QSettings, and reading saved settings
as data, never as code.

Every input widget with an object name is stored under ``<group>/<objectName>``, so a
tab only has to name its controls for them to survive a restart.

PySide6 stores a Python object given to ``QSettings.setValue`` as a pickle
(``@Variant(...PySide::PyObjectWrapper...)`` in the INI file), and QSettings unpickles it
as soon as it parses the section that holds it: on ``value()``, but also on
``childKeys()``, ``contains()``, ``remove()`` or any write. So before QSettings reads the
file, :func:`open_settings` reads it as bytes, the way Qt splits and unescapes it, and
cuts out every value that Qt would decode with ``QDataStream`` (``@Variant(`` and
``@DateTime(``). What is left is text, numbers, lists of text and ``@ByteArray`` blobs
(the window geometry), each read with an explicit type and range by the code that uses it.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

from PySide6.QtCore import QByteArray, QLockFile, QSettings
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractSlider,
    QComboBox,
    QDoubleSpinBox,
    QLineEdit,
    QPlainTextEdit,
    QSpinBox,
    QWidget,
)

from workbench.core.common.errors import WorkbenchError
from workbench.core.generation.session import settings_from_data
from workbench.core.generation.settings import SamplingSettings

_TYPES = (QSpinBox, QDoubleSpinBox, QComboBox, QLineEdit, QPlainTextEdit, QAbstractSlider,
          QAbstractButton)
T = TypeVar("T")


# --- the settings file, read as bytes the way Qt reads it ------------------------------------------
# Qt (qsettings.cpp) splits an INI file into logical lines (readIniLine: a quote or a
# backslash joins lines, ';' starts a comment), then unescapes each value into text or a
# list of texts (iniUnescapedStringList), then turns each text into a QVariant
# (stringToVariant). Only these texts are decoded as values; anything else is plain text.
_PLAIN_AT = ("@@", "@ByteArray(", "@String(", "@Invalid()", "@Rect(", "@Size(", "@Point(")
_LINE_SPECIAL = re.compile(rb'[\n\r";=\\]')
_VALUE_SPECIAL = re.compile(rb'[\\",]')
_SPACES = b" \t\r\n"
_HEX = b"0123456789abcdefABCDEF"
_ESCAPES = {ord(k): v for k, v in {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
                                   "t": "\t", "v": "\v", '"': '"', "?": "?", "'": "'",
                                   "\\": "\\"}.items()}


def _ini_lines(data: bytes) -> Iterator[tuple[int, int, int]]:
    """``(start, length, equals)`` of each logical line, as Qt's readIniLine finds them."""
    size, pos = len(data), 0
    while True:
        start = pos
        while start < size and data[start] in _SPACES:
            start += 1
        i, quoted, equals = start, False, -1
        while i < size:
            found = _LINE_SPECIAL.search(data, i)
            if found is None:
                i = size
                break
            i = found.start()
            ch = data[i]
            i += 1
            if ch == 0x3D:  # =
                if not quoted and equals == -1:
                    equals = i - 1
            elif ch in (0x0A, 0x0D):
                if i == start + 1:
                    start += 1
                elif not quoted:
                    i -= 1
                    break
            elif ch == 0x5C:  # a backslash takes the next character, a line end too
                if i < size:
                    first = data[i]
                    i += 1
                    if i < size and {first, data[i]} == {0x0A, 0x0D}:
                        i += 1
            elif ch == 0x22:  # "
                quoted = not quoted
            else:  # ;
                if i == start + 1:
                    while i < size and data[i] not in (0x0A, 0x0D):
                        i += 1
                    while i < size and data[i] in _SPACES:
                        i += 1
                    start = i
                elif not quoted:
                    i -= 1
                    break
        pos = i
        if i - start <= 0:
            return
        yield start, i - start, equals


def _ini_texts(raw: bytes) -> list[str]:
    """The text (or texts, for a list) of a raw value, as iniUnescapedStringList gives it."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    texts: list[str] = []
    current, is_list, quoted = "", False, False
    size = len(raw)

    def skip_spaces(i: int) -> int:
        while i < size and raw[i] in (0x20, 0x09):
            i += 1
        return i

    i = skip_spaces(0)
    while i < size:
        ch = raw[i]
        if ch == 0x5C:  # backslash escapes
            i += 1
            if i >= size:
                break
            ch = raw[i]
            i += 1
            if ch in _ESCAPES:
                current += _ESCAPES[ch]
            elif ch == ord("x"):
                if i >= size:
                    break
                if raw[i] in _HEX:
                    value = 0
                    while i < size and raw[i] in _HEX:
                        value = ((value << 4) + int(chr(raw[i]), 16)) & 0xFFFF
                        i += 1
                    current += chr(value)
            elif 0x30 <= ch <= 0x37:  # octal
                value = ch - 0x30
                while i < size and 0x30 <= raw[i] <= 0x37:
                    value = ((value << 3) + raw[i] - 0x30) & 0xFFFF
                    i += 1
                current += chr(value)
            elif ch in (0x0A, 0x0D):
                if i < size and raw[i] in (0x0A, 0x0D) and raw[i] != ch:
                    i += 1
            # any other escaped character is skipped
        elif ch == 0x22:  # "
            i += 1
            quoted = not quoted
            if not quoted:
                i = skip_spaces(i)
        elif ch == 0x2C and not quoted:  # , outside quotes: a list
            texts.append(current)
            current, is_list = "", True
            i = skip_spaces(i + 1)
        else:
            found = _VALUE_SPECIAL.search(raw, i + 1)
            end = found.start() if found else size
            current += decoder.decode(raw[i:end])
            i = end
    return [*texts, current] if is_list else [current]


def _decoded_as_object(raw: bytes) -> bool:
    """Whether Qt would decode this raw value with QDataStream (``@Variant(``,
    ``@DateTime(``: a PySide6 ``PyObjectWrapper`` in them is a pickle, unpickled on
    reading) or as any other '@' form than the plain ones it writes for text and bytes."""
    if b"@" not in raw and b"\\" not in raw:  # nothing can unescape to '@'
        return False
    for text in _ini_texts(raw):
        text = text.lstrip("\ufffd")
        if text.startswith("@") and not text.startswith(_PLAIN_AT):
            return True
    return False


def _ini_key(raw: bytes) -> str:
    """A key or section name as Qt unescapes it (iniUnescapedKey), for messages."""
    text = raw.decode("utf-8", "replace").replace("\\", "/")
    return re.sub(r"%U([0-9A-Fa-f]{4})|%([0-9A-Fa-f]{2})",
                  lambda m: chr(int(m.group(1) or m.group(2), 16)), text)


def stored_objects(data: bytes) -> list[tuple[int, int, str]]:
    """``(start, length, key)`` of each line of an INI settings file whose value Qt would
    decode as an object rather than read as text, numbers or bytes."""
    offset = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    body = data[offset:]
    section, found = "", []
    for start, length, equals in _ini_lines(body):
        line = body[start:start + length]
        if line.startswith(b"["):
            end = line.find(b"]")
            name = line[1:end if end >= 0 else length].strip()
            if name.lower() == b"general":
                section = ""
            elif name.lower() == b"%general":
                section = name[1:].decode("ascii", "replace") + "/"
            else:
                section = _ini_key(name) + "/"
        elif equals >= 0 and _decoded_as_object(line[equals - start + 1:]):
            found.append((offset + start, length,
                          section + _ini_key(line[:equals - start].strip())))
    return found


def clean_settings_file(path: str | Path) -> list[str]:
    """Cut every stored object out of an INI settings file, before QSettings parses it;
    returns the keys cut. The rest of the file is kept byte for byte. Raises OSError when
    the file holds such a value and cannot be rewritten."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    found = stored_objects(data)
    if not found:
        return []
    kept, pos = [], 0
    for start, length, _key in found:
        kept.append(data[pos:start])
        pos = start + length
    kept.append(data[pos:])
    cleaned = b"".join(kept)
    lock = QLockFile(str(path) + ".lock")  # the lock QSettings takes to write the file
    locked = lock.tryLock(2000)
    try:
        try:  # atomically, as QSettings writes it
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(cleaned)
                os.chmod(tmp, path.stat().st_mode & 0o7777)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:  # a folder that cannot take a new file: rewrite the file itself
            with open(path, "r+b") as f:
                f.write(cleaned)
                f.truncate()
    finally:
        if locked:
            lock.unlock()
    return [key for _start, _length, key in found]


# --- opening the settings ----------------------------------------------------------------------
_unreported: list[str] = []
STORED_OBJECT = "a stored object, never loaded: it could run code"


def _settings_files() -> list[Path]:
    """The INI files QSettings() writes to, or falls back on, that this user can change:
    the application's file and the organization's. (The app makes INI the default format
    everywhere, see launch.make_application; a registry or property list is left to Qt.)"""
    settings = QSettings()
    native = settings.format() == QSettings.Format.NativeFormat
    if settings.format() != QSettings.Format.IniFormat and not (
            native and sys.platform not in ("win32", "darwin")):
        return []
    first = Path(settings.fileName())
    files = [first]
    if settings.applicationName() and settings.scope() == QSettings.Scope.UserScope \
            and first.parent.name == settings.organizationName():
        files.append(first.parent.with_name(first.parent.name + first.suffix))
    return files


def open_settings() -> QSettings:
    """QSettings for reading saved state, after every stored object (a pickle) has been cut
    out of its files, unread. Fallbacks (system-wide files) are off: the app only reads
    what it wrote. Raises WorkbenchError, and nothing should be read, when a file holds such
    a value and cannot be rewritten. What was cut is kept for :func:`settings_notes`."""
    for path in _settings_files():
        try:
            removed = clean_settings_file(path)
        except OSError as exc:
            raise WorkbenchError(
                f"Settings: {path} holds stored objects, which could run code when loaded, and "
                f"cannot be rewritten without them ({exc}); the saved settings were not "
                "read.") from None
        _unreported.extend(f"Settings: reset {key} ({STORED_OBJECT})" for key in removed)
    settings = QSettings()  # a new object re-reads a file that changed on disk
    settings.setFallbacksEnabled(False)
    return settings


def settings_notes() -> list[str]:
    """What :func:`open_settings` cut from the files since it was last asked, once."""
    notes = list(_unreported)
    _unreported.clear()
    return notes


# --- reading one value with an explicit type and range -----------------------------------------
def shown(value: object) -> str:
    """A saved value in a message: short text as it is, anything else by its kind."""
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:40] + "…"
        return text if text.isprintable() and text.strip() else repr(text)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, (bool, int, float)):
        return repr(value)
    return f"a {type(value).__name__} value"


def _bound(number: float) -> str:
    if isinstance(number, float) and number.is_integer():
        return str(int(number))  # 4294967295, not 4.29497e+09
    return f"{number:g}" if isinstance(number, float) else str(number)


def as_number(value: object, low: float, high: float, integer: bool = False) -> float | int:
    """A number from a saved value (text in an INI file; a number in other formats) that
    lies in ``[low, high]``; anything else raises ValueError saying why."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{shown(value)} is not a number")
    number: float | int
    if isinstance(value, str):
        text = value.strip()
        try:
            number = int(text) if integer else float(text)
        except ValueError:
            try:
                number = float(text)  # a float, or an integer too long for int()
            except ValueError:
                raise ValueError(f"{shown(value)} is not a number") from None
    else:
        number = value
    if isinstance(number, float) and math.isnan(number):
        raise ValueError(f"{shown(value)} is not a number")
    if not low <= number <= high:
        raise ValueError(f"{shown(value)} is out of range {_bound(low)}–{_bound(high)}")
    if integer:
        if isinstance(number, float) and not number.is_integer():
            raise ValueError(f"{shown(value)} is not a whole number")
        number = int(number)
    return number


def as_text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{shown(value)} is not text")
    return value


def as_flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValueError(f"{shown(value)} is not true or false")


def as_bytes(value: object) -> QByteArray:
    if not isinstance(value, QByteArray):
        raise ValueError(f"{shown(value)} is not saved binary data")
    return value


def read_value(settings: QSettings, key: str, parse: Callable[[object], T],
               notes: list[str]) -> T | None:
    """``parse(value)`` of a saved value; None when it is not saved. A value ``parse``
    refuses is removed, and ``notes`` gets a line naming it."""
    value = settings.value(key)
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as exc:
        reset(settings, key, str(exc), notes)
        return None


def reset(settings: QSettings, key: str, why: str, notes: list[str]) -> None:
    """Forget a saved value that cannot be used, and say so."""
    settings.remove(key)
    notes.append(f"Settings: reset {key} ({why})")


# --- the controls of a tab ---------------------------------------------------------------------
def _named_controls(root: QWidget):
    for widget in root.findChildren(QWidget):
        name = widget.objectName()
        if name and not name.startswith("qt_") and isinstance(widget, _TYPES):
            if isinstance(widget, QAbstractButton) and not widget.isCheckable():
                continue
            if isinstance(widget, QLineEdit) and isinstance(widget.parent(), QComboBox):
                continue  # a combo box's own line edit is saved with the combo box
            yield name, widget


def save_controls(root: QWidget, settings: QSettings, group: str) -> None:
    settings.beginGroup(group)
    for name, w in _named_controls(root):
        if isinstance(w, (QSpinBox, QDoubleSpinBox, QAbstractSlider)):
            settings.setValue(name, w.value())
        elif isinstance(w, QComboBox):
            settings.setValue(name, w.currentText())
        elif isinstance(w, QLineEdit):
            settings.setValue(name, w.text())
        elif isinstance(w, QPlainTextEdit):
            settings.setValue(name, w.toPlainText())
        elif isinstance(w, QAbstractButton):
            settings.setValue(name, w.isChecked())
    settings.endGroup()


def _acceptable(w: QLineEdit | QComboBox, text: str) -> None:
    validator = w.validator()
    if validator is not None and validator.validate(text, 0)[0] == QValidator.State.Invalid:
        raise ValueError(f"{shown(text)} is not accepted there")


def _restore(w: QWidget, value: object) -> None:
    """Set one control from its saved value, or raise ValueError and leave it as it is."""
    if isinstance(w, QDoubleSpinBox):  # no decimals: a whole number wider than a C int
        w.setValue(as_number(value, w.minimum(), w.maximum(), integer=w.decimals() == 0))
    elif isinstance(w, (QSpinBox, QAbstractSlider)):
        w.setValue(as_number(value, w.minimum(), w.maximum(), integer=True))
    elif isinstance(w, QComboBox):
        text = as_text(value)
        index = w.findText(text)
        if index >= 0:
            w.setCurrentIndex(index)
        elif w.isEditable():
            _acceptable(w, text)
            w.setEditText(text)
        elif w.count() and text:
            raise ValueError(f"{shown(text)} is not one of its choices")
        # an empty list is filled later (for a model, a result): nothing to choose yet
    elif isinstance(w, QLineEdit):
        text = as_text(value)
        _acceptable(w, text)
        if len(text) > w.maxLength():
            raise ValueError(f"{len(text)} characters is more than it holds")
        w.setText(text)
    elif isinstance(w, QPlainTextEdit):
        w.setPlainText(as_text(value))
    elif isinstance(w, QAbstractButton):
        w.setChecked(as_flag(value))


def restore_controls(root: QWidget, settings: QSettings, group: str) -> list[str]:
    """Set each named control from its saved value, read with the control's type and
    range. A value that does not fit is removed and the control keeps its default; the
    list returned names each one ("Settings: reset <group>/<name> (<why>)")."""
    notes: list[str] = []
    settings.beginGroup(group)
    try:
        for name, w in _named_controls(root):
            value = settings.value(name)
            if value is None:
                continue
            try:
                _restore(w, value)
            except ValueError as exc:
                settings.remove(name)
                notes.append(f"Settings: reset {group}/{name} ({exc})")
    finally:
        settings.endGroup()
    return notes


# --- presets -----------------------------------------------------------------------------------
def preset_names() -> list[str]:
    """The names of the presets the user saved (none when the settings cannot be read)."""
    try:
        settings = open_settings()
    except WorkbenchError:
        return []
    settings.beginGroup("presets")
    try:
        return settings.childKeys()
    finally:
        settings.endGroup()


def read_preset(name: str) -> SamplingSettings:
    """A saved preset, checked whole before any of it is used (types, finite numbers,
    :meth:`SamplingSettings.validate`); a damaged one raises one WorkbenchError."""
    raw = open_settings().value(f"presets/{name}")
    if raw is None:
        raise WorkbenchError(f"There is no preset '{name}'.")
    try:
        data = json.loads(as_text(raw))
    except (ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise WorkbenchError(f"The preset '{name}' is damaged ({why}); nothing was "
                             "applied.") from None
    try:
        return settings_from_data(data, "it")
    except WorkbenchError as exc:
        raise WorkbenchError(f"The preset '{name}' is damaged ({exc}); nothing was "
                             "applied.") from None


def write_preset(name: str, settings: SamplingSettings) -> None:
    open_settings().setValue(f"presets/{name}", json.dumps(asdict(settings)))


def remembered_folders(key: str) -> list[str]:
    """A remembered list of folders (attached or started runs), only its text items: a
    damaged or foreign value gives an empty list, never an exception."""
    try:
        value = QSettings().value(key, [])
    except Exception:
        return []
    if isinstance(value, str):  # an INI file holds a one-item list as plain text
        value = [value]
    if not isinstance(value, (list, tuple)):
        return []
    return [item for item in value if isinstance(item, str) and item.strip()]

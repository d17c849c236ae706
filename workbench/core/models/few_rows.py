"""Linear layers that multiply a few rows faster on the CPU.

Decoding runs every linear layer of the model on one row per sequence: one row for a
generation, four for a comparison of four strategies batched together. For 2 to 16 rows
``F.linear`` (MKL's ``sgemm`` with the input on the left) is slow here: on this project's
2-core machine, SmolLM2's output projection took 33 ms for 4 rows against 15 ms for one,
while the same product with the weight on the left, ``(W · xᵀ)ᵀ``, took 10 ms; the MLP's
projections 0.6-0.9× as long. Over a whole model, 4 sampled sequences cost 1.9× one with
``F.linear`` and about 1.0× with this (``python main.py bench --only compare_batched``).

Only the operand order changes; the weights, the module tree and what is saved stay
those of ``nn.Linear``. With gradients (fine-tuning), on other devices and dtypes, for one
row and for more than 16 rows, the layer is exactly ``nn.Linear``.
"""

from __future__ import annotations

import torch
from torch import nn

MAX_ROWS = 16


class FewRowsLinear(nn.Linear):
    """``nn.Linear`` computing ``(W · xᵀ)ᵀ`` for 2 to :data:`MAX_ROWS` rows without
    gradients on the CPU in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(x.shape[-1], 1)
        if not (2 <= rows <= MAX_ROWS) or torch.is_grad_enabled() or \
                x.device.type != "cpu" or x.dtype != torch.float32 or \
                self.weight.dtype != torch.float32:
            return super().forward(x)
        flat = x.reshape(rows, x.shape[-1]).t()
        if self.bias is None:
            out = torch.mm(self.weight, flat)
        else:
            out = torch.addmm(self.bias.unsqueeze(1), self.weight, flat)
        return out.t().contiguous().reshape(*x.shape[:-1], self.out_features)


def few_rows_helps() -> bool:
    """Whether this torch multiplies with MKL on the CPU, where the difference was
    measured (other BLAS libraries were not)."""
    return bool(torch.backends.mkl.is_available())


def use_few_rows_linears(model: nn.Module) -> int:
    """Make every plain ``nn.Linear`` of ``model`` a :class:`FewRowsLinear` in place (the
    class has no state of its own); return how many were changed."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FewRowsLinear
            count += 1
    return count


def _foldable(x: torch.Tensor) -> bool:
    """Whether ``matmul`` can view ``x`` as one matrix: its leading dimensions' strides
    nest, read literally (``is_contiguous`` overlooks the stride of a length-1 dimension,
    ``matmul`` does not)."""
    return all(x.stride(i) == x.stride(i + 1) * x.size(i + 1) for i in range(x.dim() - 2))


def _contiguous_input(module: nn.Module, args: tuple) -> tuple | None:
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and x.dim() > 2 and not torch.is_grad_enabled() \
            and not _foldable(x):
        return (x.clone(memory_format=torch.contiguous_format), *args[1:])
    return None


def contiguous_output_input(model: nn.Module) -> bool:
    """Hand ``model``'s output projection a contiguous input (a forward pre-hook; copies
    of the model keep it); True if it has one.

    ``generate``'s first step projects only the last position of each row,
    ``hidden[:, -1:, :]``: a strided view once there are several rows. ``F.linear`` passes
    it to ``matmul``, which cannot fold that 3-D view into one matrix product (even for one
    row: the view keeps the prompt's stride) and multiplies row by row instead, first
    copying the whole weight once per row (SmolLM2's decoding copy, 57 MB a row: 226 ms
    for 4 rows against 6 ms for the same product of a contiguous copy of the four input
    rows; with a 128k vocabulary and 4,096 features, 1 GB a row in bfloat16). Without
    gradients only; the product is the same.
    """
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(output, nn.Module):
        return False
    output.register_forward_pre_hook(_contiguous_input)
    return True

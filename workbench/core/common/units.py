"""Units of information: natural logarithms to bits, and the entropy of a distribution."""

from __future__ import annotations

import math
from typing import Any

LN2 = math.log(2.0)  # nats in one bit


def entropy(p: Any, logp: Any, dim: int = -1) -> Any:
    """Shannon entropy in nats of the distributions ``p`` (torch tensors, with their
    log-probabilities ``logp``) along ``dim``; impossible tokens (p = 0, log p = -inf)
    add nothing. Divide by :data:`LN2` for bits."""
    import torch

    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim)

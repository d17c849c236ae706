"""Choice of device and dtype, and how much memory the process uses."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def pick_device(requested: str = "auto") -> str:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; anything else is checked."""
    import torch

    from workbench.core.common.errors import WorkbenchError

    requested = (requested or "auto").lower()
    if requested not in DEVICE_CHOICES and not requested.startswith("cuda:"):
        raise WorkbenchError(f"Unknown device '{requested}': use one of {', '.join(DEVICE_CHOICES)}.")
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if requested.startswith("cuda") and not cuda:
        raise WorkbenchError("CUDA was requested but no CUDA GPU is available (torch sees none).")
    if requested == "mps" and not mps:
        raise WorkbenchError("Apple MPS was requested but is not available on this machine.")
    return requested


def pick_dtype(requested: str, device: str, stored: str = ""):
    """The torch dtype for ``requested`` on ``device``; ``auto`` is float32 on the CPU, but
    bfloat16 for weights ``stored`` in bfloat16 (a float32 copy would double them for no
    gain in what they hold)."""
    import torch

    from workbench.core.common.errors import WorkbenchError

    requested = (requested or "auto").lower()
    if requested == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device == "mps":
            return torch.float16
        return torch.bfloat16 if stored == "bfloat16" else torch.float32
    if requested not in DTYPE_CHOICES:
        raise WorkbenchError(f"Unknown dtype '{requested}': use one of {', '.join(DTYPE_CHOICES)}.")
    return getattr(torch, requested)


@dataclass(frozen=True)
class MemoryUse:
    """Resident memory of this process and, when there is one, allocated GPU memory."""

    rss_bytes: int
    gpu_bytes: int | None = None

    def describe(self) -> str:
        text = f"RAM {self.rss_bytes / 2**30:.2f} GB"
        if self.gpu_bytes is not None:
            text += f" · GPU {self.gpu_bytes / 2**30:.2f} GB"
        return text


def memory_in_use() -> MemoryUse:
    import sys

    import psutil

    rss = psutil.Process(os.getpid()).memory_info().rss
    gpu = None
    # Never import torch just to report memory; it may also be half-imported by the worker.
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    try:
        if cuda is not None and cuda.is_initialized():
            gpu = int(cuda.memory_allocated())
    except (AttributeError, RuntimeError):
        gpu = None
    return MemoryUse(rss, gpu)

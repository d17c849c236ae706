"""Memory free now, the share of it a job may take, and how a number of bytes reads."""

from __future__ import annotations

MEMORY_SHARE = 0.8  # of the memory available now: the rest is left to the system


def available_memory(device: str = "cpu") -> int:
    """Bytes free now on ``device``: its GPU's free memory for CUDA, else the RAM available
    to a new allocation without swapping (psutil's ``available``)."""
    import psutil

    if str(device).startswith("cuda"):
        import torch

        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, ValueError, AssertionError):
            pass
    return int(psutil.virtual_memory().available)


def format_bytes(n: float) -> str:
    """A size as people read it, in decimal units and three figures at most: "28 GB",
    "9.1 GB", "538 MB", "54 MB", "96 KB", "900 bytes"."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:,.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
    return f"{n:.0f} bytes"


def give_back_freed() -> bool:
    """Hand the heap's freed pages back to the system (glibc's ``malloc_trim``): a load that
    converts tensors one after another otherwise keeps every freed block (1.7 GB resident
    for 0.8 GB of weights, measured). Changing glibc's mmap threshold for the whole process
    did the same, but made a latent use-after-free in Qt crash the test suite. True where it
    ran (Linux, glibc)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # another C library (musl)
        return False

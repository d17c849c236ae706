"""Disk space: the check before a run starts, and a full disk told from other failures."""

from __future__ import annotations

import errno
import math
import shutil
from pathlib import Path
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.common.memory import format_bytes
from workbench.core.training.config import FinetuneConfig
from workbench.core.training.process import latest_checkpoint


def checkpoint_count(config: FinetuneConfig, train_items: int) -> int:
    """How many checkpoints the run will write (the Trainer also saves at the last step)."""
    if config.max_steps > 0:
        steps = config.max_steps
    else:
        per_epoch = math.ceil(train_items / config.batch_size / config.gradient_accumulation)
        steps = math.ceil(per_epoch * config.epochs)
    return math.ceil(steps / config.save_steps)


def check_free_space(folder: Path, model: Any, checkpoints: int, lora: bool,
                     ctx: JobContext) -> None:
    """Refuse to start when the disk of ``folder`` cannot even hold the trained model;
    warn when it cannot hold every checkpoint and the final model (the run will stop
    with a clear message when the disk fills, and can be resumed)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters()
                    if p.requires_grad)
    # A checkpoint: the weights that train (all of them, or the adapter) and AdamW's two
    # moments of each; the final model: every weight.
    checkpoint = (trainable if lora else weights) + 2 * trainable
    free = shutil.disk_usage(folder).free
    if free < weights:
        raise WorkbenchError(f"Only {format_bytes(free)} is free on the disk of {folder}: the trained "
                             f"model alone needs about {format_bytes(weights)}. Free space or choose "
                             "an output folder on another disk.")
    whole = weights + checkpoints * checkpoint
    if free < whole:
        ctx.log(f"Only {format_bytes(free)} is free on the disk of {folder}; this run's {checkpoints} "
                f"checkpoint(s) and final model need about {format_bytes(whole)}. It will stop with "
                "a message if the disk fills: free space then and resume.", "warning")


def is_disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc`` (or an exception behind it) comes from a full disk (or quota)."""
    seen = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left" in str(error) or "Disk quota exceeded" in str(error):
            return True  # safetensors says so in its own exception type
        error = error.__cause__ or error.__context__
    # torch.save on a full disk only says "unexpected pos …" (a RuntimeError): ask the disk.
    if isinstance(exc, (OSError, RuntimeError)):
        try:
            return shutil.disk_usage(folder).free < 8 * 2**20
        except OSError:
            return False
    return False


def disk_full_error(folder: Path, what: str, removed: list[str]) -> WorkbenchError:
    note = f" ({', '.join(removed)} was incomplete and is removed)" if removed else ""
    last = latest_checkpoint(folder)
    if last is None:
        return WorkbenchError(f"The disk is full while saving {what}{note}: no checkpoint was "
                              f"complete yet, so free space and start the run again in a new "
                              f"folder.")
    return WorkbenchError(f"The disk is full while saving {what}{note}: free space and resume; "
                          f"the last complete checkpoint is {last.name} in {folder}.")

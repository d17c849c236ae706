"""transformers' Trainer for a run: its arguments, its data collator and its mixed precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.core.training.config import FinetuneConfig
from workbench.core.training.data import PreparedData


def mixed_precision(device: str) -> str | None:
    """The autocast a run on ``device`` trains under: ``bf16`` on a GPU that has it, else
    ``fp16`` (with loss scaling) on CUDA; none on the CPU or Apple MPS (float32)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def build_trainer(config: FinetuneConfig, folder: Path, model: Any, tokenizer: Any,
                  data: PreparedData, device: str, callback: Any) -> Any:
    """transformers' Trainer for the run: its arguments from ``config``, the collator of the
    task, ``callback`` instead of its own progress printing; mixed precision on a GPU."""
    from transformers import (
        DataCollatorForLanguageModeling,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    amp = mixed_precision(device)
    args = TrainingArguments(
        output_dir=str(folder), learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler, warmup_steps=config.warmup_steps,
        num_train_epochs=config.epochs, max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        weight_decay=config.weight_decay, seed=config.seed, logging_steps=config.logging_steps,
        eval_strategy="steps" if data.validation is not None else "no",
        eval_steps=config.eval_steps, save_strategy="steps", save_steps=config.save_steps,
        report_to=["tensorboard"] if _has_tensorboard() else [], disable_tqdm=True,
        logging_nan_inf_filter=False, use_cpu=device == "cpu",
        bf16=amp == "bf16", fp16=amp == "fp16",
        dataloader_num_workers=0,
        # Under accelerate launch with N processes, True multiplies each process's loss by N
        # (for token-exact gradients) and the logged losses came out N times too high;
        # DDP's mean of the per-process means keeps the logged loss the run's real loss.
        average_tokens_across_devices=False,
        include_num_input_tokens_seen="non_padding")  # for the throughput chart
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False) if config.task == "lm" \
        else DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=model, args=args, train_dataset=data.train,
                      eval_dataset=data.validation, data_collator=collator,
                      compute_metrics=_accuracy if config.task == "classify" else None,
                      callbacks=[callback])
    for noisy in (PrinterCallback, ProgressCallback):  # the app reports progress itself
        trainer.remove_callback(noisy)
    return trainer



def _accuracy(prediction) -> dict:
    import numpy as np

    logits, labels = prediction
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def _has_tensorboard() -> bool:
    from importlib.util import find_spec

    return find_spec("tensorboard") is not None

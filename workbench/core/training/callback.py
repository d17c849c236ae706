"""The Trainer callback of a run: rows and probes to the run folder and the job; Stop; NaN loss."""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Any

from workbench.core.common.jobs import JobContext
from workbench.core.training.config import FinetuneConfig
from workbench.core.training.events import ProbeText, TrainLog
from workbench.core.training.run_folder import RunFolder


class TrainingEvents:
    """What a run does when the Trainer logs a row or ends a step: rows go to the job and to
    ``metrics.jsonl``, probes to ``probes.jsonl``; Stop (the job's cancel token or a stop
    request in the run folder) saves a checkpoint and stops; a NaN or infinite loss stops.

    A transformers ``TrainerCallback`` once :func:`training_callback` mixes it in
    (transformers is imported only when a run starts)."""

    def __init__(self, config: FinetuneConfig, run: RunFolder, tokenizer: Any,
                 ctx: JobContext) -> None:
        self.config, self.run, self.tokenizer, self.ctx = config, run, tokenizer, ctx
        self.started = time.perf_counter()
        self.nan_step: int | None = None  # the step whose loss was NaN or infinite
        self.stopped = False  # Stop was seen: a checkpoint is saved and training ends

    def stop_wanted(self) -> bool:
        return self.ctx.cancel.cancelled or self.run.stop_requested()

    def on_log(self, args, st, control, logs=None, **kwargs):
        logs = logs or {}
        row = TrainLog(
            step=st.global_step, max_steps=st.max_steps, epoch=float(st.epoch or 0),
            loss=logs.get("loss"), eval_loss=logs.get("eval_loss"),
            eval_accuracy=logs.get("eval_accuracy"), learning_rate=logs.get("learning_rate"),
            grad_norm=logs.get("grad_norm"),
            samples_per_second=logs.get("train_samples_per_second"),
            seconds=time.perf_counter() - self.started,
            tokens=logs.get("num_input_tokens_seen"))
        if row.loss is None and row.eval_loss is None:
            return
        if st.is_world_process_zero:
            # without the fields this row lacks: a run of 400,000 steps reads faster
            self.run.append(self.run.metrics, {k: v for k, v in asdict(row).items()
                                               if v is not None})
            self.ctx.emit(row)
        self.on_step_end(args, st, control, probe=False)  # the log comes after it
        for value in (row.loss, row.eval_loss):
            if value is not None and not math.isfinite(value):
                self.nan_step = st.global_step
                control.should_training_stop = True

    def on_step_end(self, args, st, control, probe=True, **kwargs):
        config = self.config
        self.ctx.progress(f"Step {st.global_step} of {st.max_steps}",
                          st.global_step / max(st.max_steps, 1))
        if not self.stopped and _agree(self.stop_wanted(), args.device):
            self.stopped = True
            control.should_save = True  # Stop keeps everything: a checkpoint first
            control.should_training_stop = True
        if (probe and config.task == "lm" and config.probe_every and config.probe_prompts
                and st.global_step % config.probe_every == 0 and st.is_world_process_zero):
            for prompt, text in _probe(kwargs["model"], self.tokenizer, config.probe_prompts):
                probe_text = ProbeText(st.global_step, prompt, text)
                self.run.append(self.run.probes, asdict(probe_text))
                self.ctx.emit(probe_text)


def training_callback(config: FinetuneConfig, run: RunFolder, tokenizer: Any,
                      ctx: JobContext) -> TrainingEvents:
    """:class:`TrainingEvents` as a transformers ``TrainerCallback``."""
    from transformers import TrainerCallback

    callback = type("TrainingCallback", (TrainingEvents, TrainerCallback), {})
    return callback(config, run, tokenizer, ctx)


def _agree(flag: bool, device: Any) -> bool:
    """``flag`` made the same in every process of a distributed run (any one wanting to
    stop stops them all at the same step, or they would wait for each other forever)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _probe(model: Any, tokenizer: Any, prompts: list[str], tokens: int = 20):
    import torch

    was_training = model.training
    model.eval()
    try:
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            yield prompt, tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    finally:
        if was_training:
            model.train()

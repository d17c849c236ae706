"""Fine-tuning with transformers' ``Trainer``: causal-LM training on a text corpus, or
sequence classification on a labelled file, into a run folder that can be stopped,
resumed and monitored.

A run folder holds ``run.json`` (the configuration), ``metrics.jsonl`` (one line per
logged step, written as training goes, so any process can follow it), the Trainer's
``checkpoint-N`` folders with ``trainer_state.json``, TensorBoard event files when
tensorboard is installed, and ``final/``: the trained model, loadable by every tab.
With LoRA (peft, causal LMs only) the checkpoints hold the adapter, ``adapter/`` keeps the
trained adapter and ``final/`` holds the base model with the adapter merged in.

A checkpoint counts as complete only once its ``trainer_state.json`` (which the Trainer
writes last) is there and reads as JSON, and ``final/`` appears only once it is whole: a
disk that fills during a run never leaves a half-written folder that looks finished.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.training.callback import training_callback
from workbench.core.training.config import FinetuneConfig
from workbench.core.training.data import prepare_data, read_data
from workbench.core.training.disk import (
    check_free_space,
    checkpoint_count,
    disk_full_error,
    is_disk_full,
)
from workbench.core.training.model import model_to_train
from workbench.core.training.process import (
    ADAPTER_DIR,
    FINAL_DIR,
    LAUNCHED_ENV,
    latest_checkpoint,
    this_process_started,
)
from workbench.core.training.run_folder import (
    RunFolder,
    check_output_dir,
    checkpoint_step,
    drop_incomplete_checkpoints,
    existing_ancestor,
    save_whole,
    saved_config,
    set_aside_nonfinite,
)
from workbench.core.training.trainer import build_trainer, mixed_precision


@dataclass
class RunResult:
    output_dir: str
    final_model: str | None
    global_step: int
    stopped: bool
    checkpoint: str | None
    train_loss: float | None
    summary: str = ""
    adapter: str | None = None  # the LoRA adapter folder, when the run trained one


def _launch_time() -> float | None:
    try:
        return float(os.environ.get(LAUNCHED_ENV, ""))
    except ValueError:
        return None


def _is_main_process() -> bool:
    """The process that writes the run's logs and status (rank 0 under accelerate)."""
    return os.environ.get("RANK", "0") == "0"


def run_finetune(config: FinetuneConfig, ctx: JobContext | None = None, resume: bool = False,
                 loaded: Any = None) -> RunResult:
    """Train as ``config`` says (or resume the run in its folder) and return the outcome.

    Events: :class:`TrainLog` rows and :class:`ProbeText`. Cancelling (the context's token,
    or a stop file in the run folder, see ``training_process``) stops at the next step
    boundary after writing a checkpoint, so the run can be resumed. On resume the saved run
    decides the data and model, and ``config``'s ``max_steps`` and ``epochs`` are the new
    limits. Everything is checked before anything is written.
    """
    ctx = ctx or JobContext()
    created = this_process_started()  # with the pid, tells this process from a later one
    # Stop requests count from when this run was launched (the window sets it, so a Stop
    # pressed while the process was still starting counts) or else from now.
    since = _launch_time() or time.time()
    config, folder, checkpoint = checked_config(config, resume)
    ctx.progress("Reading the data…", None)
    read = read_data(config)  # bad data is refused before torch and the model are loaded
    memory_note = _check_memory(config, loaded)  # before the model is loaded
    ctx.progress("Loading the model…", None)
    loaded, own = _loaded_for_run(config, loaded, ctx)
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    data = prepare_data(config, tokenizer, read)
    ctx.log(data.summary)
    if memory_note:
        ctx.log(memory_note)
    amp = mixed_precision(loaded.device)
    ctx.log(f"Training on {loaded.device} in float32"
            + (f" under {'bfloat16' if amp == 'bf16' else 'float16'} autocast" if amp else ""))
    model = model_to_train(config, loaded, data, ctx, own)
    check_free_space(existing_ancestor(folder), model,
                     checkpoint_count(config, len(data.train)), config.lora, ctx)
    run = RunFolder(folder, _is_main_process(), created, since)
    events = training_callback(config, run, tokenizer, ctx)
    trainer = build_trainer(config, folder, model, tokenizer, data, loaded.device, events)
    done, target = _steps(trainer, folder, checkpoint)
    # At its limit without a final model (the disk filled while saving it, or a new limit
    # at the step reached): nothing to train, the final model is saved from the checkpoint.
    finish_only = checkpoint is not None and done == target

    # --- everything is checked: from here on the run folder is written -----------------------
    import torch

    run.start(config, done, resume)
    torch.manual_seed(config.seed)
    try:
        if finish_only:
            ctx.log(f"The run is at step {done} of {target}: nothing to train; the final "
                    f"model is saved from {checkpoint.name}.")
        training_loss = _train(trainer, folder, checkpoint, done, finish_only)
        step = trainer.state.global_step
        if events.nan_step is not None:
            raise _nonfinite_error(folder, events.nan_step, run.main)
        if events.stopped:  # the callback set should_save with should_training_stop: it exists
            last = latest_checkpoint(folder)
            message = f"Stopped at step {step}; checkpoint {last.name if last else '-'} saved."
            ctx.log(message)
            run.end("stopped", step, message)
            return RunResult(str(folder), None, step, True, str(last) if last else None,
                             training_loss, data.summary)
        ctx.progress("Saving the final model…", None)
        final, adapter = _save_final(trainer, tokenizer, config, folder)
        summary = data.summary + _lora_note(final, adapter, ctx)
        last = latest_checkpoint(folder)
        run.end("finished", step, f"Finished at step {step}.", str(final))
        return RunResult(str(folder), str(final), step, False, str(last) if last else None,
                         training_loss, summary, str(adapter) if adapter else None)
    except BaseException as exc:
        reason = "Interrupted." if isinstance(exc, KeyboardInterrupt) else \
            str(exc) or type(exc).__name__
        run.end("failed", trainer.state.global_step, reason)
        raise


def _loaded_for_run(config: FinetuneConfig, loaded: Any, ctx: JobContext) -> tuple[Any, bool]:
    """The loaded model the run starts from, and whether the run owns it: ``loaded`` when it
    is the run's model in float32, else the model loaded for this run alone."""
    import torch

    from workbench.core.models.loader import LoadOptions, load_model

    # The weights train in float32 (on a GPU under bfloat16/float16 autocast: see
    # mixed_precision); a model loaded in half precision would round most of AdamW's small
    # updates away.
    own = (loaded is None or loaded.reference != config.model
           or next(loaded.model.parameters()).dtype != torch.float32)
    if own:  # loaded for this run alone: a language model trains as it is, not a copy
        loaded = load_model(config.model, LoadOptions(
            dtype="float32", trust_remote_code=config.trust_remote_code,
            allow_pickle=config.allow_pickle, training=True), ctx.emit)
    return loaded, own


def _check_memory(config: FinetuneConfig, loaded: Any) -> str | None:
    """The run's memory check (:mod:`~workbench.core.training.memory`) on the device it will
    train on; the line for its log when it fits. A run given a model already loaded in
    float32 (``loaded``) trains on that model's device, with its weights already held."""
    from workbench.core.models.device import pick_device
    from workbench.core.training.memory import check_run_memory

    if loaded is not None and loaded.reference == config.model:
        return None  # the weights are held already: what is free does not count them
    return check_run_memory(config, pick_device("auto"))


def _lora_note(final: Path, adapter: Path | None, ctx: JobContext) -> str:
    """What the run's summary adds about its LoRA adapter (logged too); "" without one."""
    if adapter is None:
        return ""
    ctx.log(f"LoRA adapter saved in {adapter}; {final} holds the base model with the "
            "adapter merged in.")
    return (f"; LoRA: the adapter is in {ADAPTER_DIR}/ and merged into the base "
            f"weights in {FINAL_DIR}/")


def checked_config(config: FinetuneConfig, resume: bool
                   ) -> tuple[FinetuneConfig, Path, Path | None]:
    """The configuration a run follows, its folder, and the checkpoint it resumes from,
    checked without writing anything. On resume the saved run decides the data and model,
    and ``config``'s ``max_steps`` and ``epochs`` are the new limits."""
    config.validate()
    folder = check_output_dir(config, resume)
    if not resume:
        return config, folder, None
    checkpoint = latest_checkpoint(folder)
    saved = saved_config(folder)
    saved.max_steps, saved.epochs = config.max_steps, config.epochs
    saved.validate()
    return saved, folder, checkpoint


def _steps(trainer: Any, folder: Path, checkpoint: Path | None) -> tuple[int, int]:
    """The step the run starts from and the step it ends at (as the Trainer computes it from
    the limits and the data); refused when a resumed run has nothing left to train."""
    target = trainer.set_initial_training_values(trainer.args,
                                                 trainer.get_train_dataloader())[-1]
    done = checkpoint_step(checkpoint) if checkpoint else 0
    if checkpoint and (done > target or done == target and (folder / FINAL_DIR).is_dir()):
        finished = " and finished" if (folder / FINAL_DIR).is_dir() else ""
        raise WorkbenchError(
            f"The run in {folder} already reached step {done}{finished}; with these limits it "
            f"would end at step {target}: nothing to train. Give more steps or epochs to train "
            "further.")
    return done, target


def _train(trainer: Any, folder: Path, checkpoint: Path | None, done: int,
           finish_only: bool) -> float | None:
    """Train from ``checkpoint`` (or from the start), or only load the checkpoint when the
    run is already at its limit; returns the training loss. A full disk becomes one error
    that says what to do, after the checkpoint it cut short is removed."""
    try:
        if finish_only:
            trainer._load_from_checkpoint(str(checkpoint))  # what train() would load
            trainer.state.global_step = done
            return None
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        return output.training_loss
    except Exception as exc:
        if not is_disk_full(exc, folder):
            raise
        removed = drop_incomplete_checkpoints(folder)
        what = removed[-1] if removed else f"the run's logs at step {trainer.state.global_step}"
        raise disk_full_error(folder, what, removed) from exc


def _nonfinite_error(folder: Path, step: int, main: bool) -> WorkbenchError:
    """The error of a run whose loss became NaN or infinite at ``step``; the checkpoints with
    non-finite weights are set aside first (by the main process)."""
    moved, finite = set_aside_nonfinite(folder) if main else ([], None)
    aside = f" ({', '.join(moved)} had non-finite weights and {'are' if len(moved) > 1 else 'is'} " \
        "kept under that name, never resumed)" if moved else ""
    where = f"resume from {finite.name}, the last checkpoint whose weights are all " \
        f"finite{aside}" if finite else f"no checkpoint has finite weights{aside}: " \
        "start again in a new folder"
    return WorkbenchError(f"The loss became NaN or infinite at step {step}: the run stopped. "
                          f"Lower the learning rate; {where}.")


def _save_final(trainer: Any, tokenizer: Any, config: FinetuneConfig, folder: Path
                ) -> tuple[Path, Path | None]:
    """Save ``final/`` (and, with LoRA, ``adapter/``, the adapter merged into ``final/``),
    each whole or not at all; returns both folders."""
    final = folder / FINAL_DIR
    adapter = folder / ADAPTER_DIR if config.lora else None
    try:
        if not trainer.args.should_save:
            pass  # one process writes (under accelerate launch)
        elif adapter is None:
            save_whole(final, lambda out: (trainer.save_model(out),
                                           tokenizer.save_pretrained(out)))
        else:
            peft_model = trainer.model
            save_whole(adapter, peft_model.save_pretrained)
            merged = peft_model.merge_and_unload()  # plain weights: every tab loads them
            save_whole(final, lambda out: (merged.save_pretrained(out),
                                           tokenizer.save_pretrained(out)))
    except Exception as exc:
        if not is_disk_full(exc, folder):
            raise
        raise disk_full_error(folder, "the final model", []) from exc
    return final, adapter

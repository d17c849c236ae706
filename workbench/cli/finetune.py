"""``finetune`` and ``monitor``: a fine-tuning run into a run folder, and its progress."""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from workbench.cli.common import TerminalProgress, add_setting_options, check_options, print_json
from workbench.core.common.jobs import LogLine
from workbench.core.training.config import SCHEDULERS, FinetuneConfig
from workbench.core.training.monitor import CurveSettings

# The defaults of the run's settings are FinetuneConfig's own (the window starts from them too).
DEFAULTS = SimpleNamespace(**{f.name: f.default for f in fields(FinetuneConfig)
                              if f.default is not MISSING})


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ft = sub.add_parser("finetune", help="fine-tune a model into a run folder")
    ft.add_argument("--task", choices=["lm", "classify"], required=True)
    ft.add_argument("--model", default=None, help="default: SmolLM2 for lm, MiniLM for classify")
    ft.add_argument("--train", required=True, help=".txt/.jsonl (lm) or .csv/.tsv/.jsonl")
    ft.add_argument("--validation", help="a validation file (default: a split of --train, "
                    "--validation-split)")
    add_setting_options(ft, FinetuneConfig, ["validation_split"], DEFAULTS)
    ft.add_argument("--text-column", default=DEFAULTS.text_column)
    ft.add_argument("--label-column", default=DEFAULTS.label_column)
    ft.add_argument("--output", required=True, help="the run folder")
    # None: the run's own limit on --resume, else FinetuneConfig's
    resumed = "the run's own with --resume"
    add_setting_options(ft, FinetuneConfig, ["max_steps", "epochs"],
                        SimpleNamespace(max_steps=None, epochs=None),
                        {"max_steps": f"{DEFAULTS.max_steps} (by epochs), {resumed}",
                         "epochs": f"{DEFAULTS.epochs:g}, {resumed}"})
    add_setting_options(ft, FinetuneConfig, ["learning_rate", "batch_size",
                                              "gradient_accumulation", "max_length",
                                              "weight_decay", "warmup_steps"], DEFAULTS)
    ft.add_argument("--scheduler", default=DEFAULTS.lr_scheduler,
                    help=f"the learning-rate schedule: {', '.join(SCHEDULERS)}; default: "
                    "%(default)s")
    add_setting_options(ft, FinetuneConfig, ["seed", "logging_steps", "eval_steps",
                                              "save_steps"], DEFAULTS)
    ft.add_argument("--probe", action="append", default=[], help="a probe prompt (lm; repeat)")
    add_setting_options(ft, FinetuneConfig, ["probe_every", "lora", "lora_r", "lora_alpha",
                                              "lora_dropout"], DEFAULTS)
    ft.add_argument("--lora-target-modules", default="", metavar="A,B",
                    help="module names to adapt, e.g. q_proj,v_proj (default: peft's choice "
                    "for the architecture)")
    add_setting_options(ft, FinetuneConfig, ["trust_remote_code", "allow_pickle"], DEFAULTS)
    ft.add_argument("--resume", action="store_true",
                    help="continue the run in --output from its last checkpoint")
    ft.add_argument("--json", action="store_true", help="print one JSON document at the end")
    mon = sub.add_parser("monitor", help="progress of a run folder (this app's, any HF "
                         "Trainer output, or TensorBoard events)")
    mon.add_argument("run_dir")
    add_setting_options(mon, CurveSettings, ["smoothing"])
    mon.add_argument("--json", action="store_true", help="print one JSON document")


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The run's configuration from ``finetune``'s options (not yet checked); with
    ``--resume`` and no new limit, the run's own limits from its run folder."""
    from workbench.core.models.catalog import MINILM, SMOLLM2
    from workbench.core.training.config import split_names
    from workbench.core.training.run_folder import saved_config

    model = args.model or (SMOLLM2.name if args.task == "lm" else MINILM.name)
    max_steps, epochs = args.max_steps, args.epochs
    if args.resume and max_steps is None and epochs is None:  # the run's own limits
        saved = saved_config(Path(args.output).expanduser())
        max_steps, epochs = saved.max_steps, saved.epochs
    elif epochs is not None and max_steps is None:
        max_steps = -1  # an epoch limit
    limits = {name: value for name, value in (("max_steps", max_steps), ("epochs", epochs))
              if value is not None}  # a limit not given: FinetuneConfig's default
    return FinetuneConfig(
        task=args.task, model=model, train_file=args.train, output_dir=args.output,
        validation_file=args.validation, validation_split=args.validation_split,
        text_column=args.text_column,
        label_column=args.label_column, learning_rate=args.learning_rate,
        lr_scheduler=args.scheduler, warmup_steps=args.warmup_steps, **limits,
        batch_size=args.batch_size,
        gradient_accumulation=args.gradient_accumulation, max_length=args.max_length,
        weight_decay=args.weight_decay, seed=args.seed, logging_steps=args.logging_steps,
        eval_steps=args.eval_steps, save_steps=args.save_steps, probe_prompts=args.probe,
        probe_every=args.probe_every, lora=args.lora, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        lora_target_modules=split_names(args.lora_target_modules),
        trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)


def cmd_finetune(args: argparse.Namespace) -> int:
    from workbench.core.common.jobs import JobContext, stop_on_signals
    from workbench.core.training.events import format_train_log
    from workbench.core.training.finetune import run_finetune

    config = config_from_args(args)
    config.validate()
    bar = TerminalProgress(quiet=args.json)

    def report(event: Any) -> None:
        bar(event)
        if args.json:
            return
        line = format_train_log(event)
        if line is not None:
            bar.finish()
            print(line, flush=True)
        elif isinstance(event, LogLine) and event.level == "info" and \
                event.message.startswith(("LoRA", "Stopped")):
            print(event.message, flush=True)  # what trains, and where the adapter went

    ctx = JobContext(emit=report)

    def say(message: str) -> None:
        bar.finish()
        print(message, file=sys.stderr, flush=True)

    stop_on_signals(ctx, say)  # Ctrl-C: a checkpoint at the step boundary; twice: at once
    result = run_finetune(config, ctx, resume=args.resume)
    bar.finish()
    if args.json:
        print_json(vars(result))
    else:
        print(f"{'stopped' if result.stopped else 'finished'} at step {result.global_step}; "
              f"final model: {result.final_model or '-'}; checkpoint: {result.checkpoint or '-'}"
              + (f"; LoRA adapter: {result.adapter} (merged into the final model)"
                 if result.adapter else ""))
    return 130 if result.stopped and ctx.cancel.cancelled else 0


def cmd_monitor(args: argparse.Namespace) -> int:
    import math

    from workbench.core.training.curves import summary
    from workbench.core.training.runs import read_run

    check_options(CurveSettings(smoothing=args.smoothing))
    snap = read_run(args.run_dir)
    d = snap.to_dict()
    d.update(summary(snap.rows, args.smoothing))
    for key, value in d.items():  # strict JSON: a NaN or infinite loss is null (and an alarm)
        if isinstance(value, float) and not math.isfinite(value):
            d[key] = None
    if args.json:
        print_json(d)
        return 0
    total = f"/{d['max_steps']}" if d["max_steps"] else ""
    print(f"{d['folder']} ({d['source']}): step {d['global_step']}{total}")
    for key in ("loss", "smoothed_loss", "eval_loss", "learning_rate", "tokens_per_second",
                "steps_per_second"):
        if d[key] is not None:
            print(f"  {key:17} {d[key]:.6g}")
    for alarm in d["alarms"]:
        print(f"  warning: {alarm['message']}")
    return 0


COMMANDS = {
    ("finetune", None): cmd_finetune,
    ("monitor", None): cmd_monitor,
}

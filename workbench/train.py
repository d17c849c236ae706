"""Run a fine-tuning configuration headless: ``python -m workbench.train --config run.json``.

This is how the Fine-tune tab starts every run: as a process of its own, which outlives the
window, writes everything to the run folder and is followed there. The same entry point
works under ``accelerate launch -m workbench.train --config run.json`` to take an identical
run to several processes, GPUs or machines.

Stopping: Ctrl-C or SIGTERM (or a ``stop-request`` file in the run folder, which is how the
window asks) stops at the next step boundary after saving a complete checkpoint; a second
Ctrl-C leaves at once.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext, LogLine, stop_on_signals
from workbench.core.common.threads import finish_process
from workbench.core.training.config import FinetuneConfig
from workbench.core.training.events import format_train_log
from workbench.core.training.finetune import run_finetune

#: Packages that transformers and accelerate import only because they are installed, and
#: that a run never uses: ``datasets`` (with pandas and pyarrow; the Trainer only asks
#: whether its data is a ``datasets.Dataset``, and a run's never is) and ``boto3``
#: (accelerate's SageMaker configuration). Importing them took about 0.9 s of the 5 s a
#: small run's process took to reach its first step.
UNUSED_PACKAGES = ("datasets", "boto3")

#: The garbage collector's first threshold in a run's own process (Python's default: 700
#: new objects). Starting a run makes millions of objects that live as long as the process
#: (the modules of torch and transformers, the model), and with the default the collector
#: went through them again and again: 0.5 s of the 4.5 s a small run's process took.
#: Garbage cycles are still collected, in batches of up to this many new objects.
GC_THRESHOLD = 10_000


def skip_unused_packages() -> None:
    """Make :data:`UNUSED_PACKAGES` look absent to this process (``importlib.util.find_spec``
    finds nothing, an import raises ImportError), unless something imported them already.
    For a run's own process only: never in a process that may need them."""
    for name in UNUSED_PACKAGES:
        sys.modules.setdefault(name, None)


def main(argv: list[str] | None = None, own_process: bool = False) -> int:
    """The command line of a run; ``own_process`` when this process exists for it (``python
    -m workbench.train``), and nothing else needs the packages a run does without."""
    parser = argparse.ArgumentParser(prog="python -m workbench.train")
    parser.add_argument("--config", required=True, help="a run.json written by the app")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the config's output folder")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="with --resume: a new step limit (default: the run's own)")
    parser.add_argument("--epochs", type=float, default=None,
                        help="with --resume: a new epoch limit (default: the run's own)")
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(message, flush=True)

    def report(event) -> None:
        line = format_train_log(event)
        if line is not None:
            say(line)
        elif isinstance(event, LogLine):
            say(("warning: " if event.level == "warning" else "") + event.message)

    ctx = JobContext(emit=report)
    stop_on_signals(ctx, say)
    try:
        with open(args.config, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
        if not isinstance(data, dict):
            raise WorkbenchError(f"{args.config} does not hold a run configuration.")
        config = FinetuneConfig.from_dict(data)
        if own_process and not config.trust_remote_code:  # a model's own code may use them
            skip_unused_packages()
        if args.max_steps is not None:
            config.max_steps = args.max_steps
        if args.epochs is not None:
            config.epochs = args.epochs
            if args.max_steps is None:
                config.max_steps = -1  # an epoch limit replaces the step limit
        result = run_finetune(config, ctx, resume=args.resume)
    except (OSError, ValueError, TypeError, WorkbenchError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted without saving a checkpoint", file=sys.stderr, flush=True)
        return 130
    if result.stopped:
        say(f"stopped at step {result.global_step}; checkpoint: {result.checkpoint or '-'} "
            "(resume with --resume)")
        return 130 if ctx.cancel.cancelled else 0
    say(f"finished at step {result.global_step}: {result.final_model or result.checkpoint}"
        + (f" (LoRA adapter merged in; the adapter alone: {result.adapter})"
           if result.adapter else ""))
    return 0


if __name__ == "__main__":
    gc.set_threshold(GC_THRESHOLD)
    sys.exit(finish_process(main(own_process=True)))

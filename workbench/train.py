"""Run a fine-tuning configuration headless: ``python -m workbench.train --config run.json``.

The same entry point works under ``accelerate launch -m workbench.train --config run.json``
to take an identical run to several GPUs or machines; the Fine-tune tab monitors it by
attaching to its output folder.
"""

from __future__ import annotations

import argparse
import json
import sys

from workbench.core.errors import WorkbenchError
from workbench.core.finetune import FinetuneConfig, run_finetune


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.train")
    parser.add_argument("--config", required=True, help="a run.json written by the app")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    try:
        with open(args.config, encoding="utf-8") as f:
            config = FinetuneConfig.from_dict(json.load(f))
        result = run_finetune(config, resume=args.resume)
    except (OSError, ValueError, TypeError, WorkbenchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"finished at step {result.global_step}: {result.final_model or result.checkpoint}"
          + (f" (LoRA adapter merged in; the adapter alone: {result.adapter})"
             if result.adapter else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

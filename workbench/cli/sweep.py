"""``sweep``: a grid of two decoding settings, n samples per cell, scored per cell."""

from __future__ import annotations

import argparse
import math
import sys

from workbench.cli.common import (
    TerminalProgress,
    add_model_options,
    add_setting_options,
    add_text_options,
    check_model_options,
    check_options,
    check_utf8,
    load_from_args,
    print_json,
    text_argument,
)
from workbench.core.evaluation.sweep import SweepSettings
from workbench.core.generation.settings import SamplingSettings


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sw = sub.add_parser("sweep", help="a grid of two sampling settings, n samples per cell, "
                                      "scored per cell")
    add_model_options(sw)
    add_text_options(sw, "prompt", "the prompt text")
    sw.add_argument("--x", required=True, metavar="NAME=A:B:K|NAME=V1,V2,...",
                    help="the columns: K values from A to B, or the values listed (e.g. "
                         "temperature=0.3:1.5:5)")
    sw.add_argument("--y", required=True, metavar="NAME=A:B:K|NAME=V1,V2,...",
                    help="the rows (e.g. top_p=0.5,0.9,1.0)")
    add_setting_options(sw, SweepSettings, ["n", "max_new_tokens", "seed"])
    sw.add_argument("--no-chat", action="store_true",
                    help="do not wrap the prompt in the model's chat template")
    sw.add_argument("--base", metavar="SETTINGS",
                    help='the other settings of every cell, as compare\'s --strategy writes '
                         'them (e.g. "top_k=40,repetition_penalty=1.1"); default: every '
                         'filter off, temperature 1')
    sw.add_argument("--reference-model", metavar="MODEL",
                    help="score the perplexity under this model (default: the sampling one)")
    sw.add_argument("--json", action="store_true", help="print one JSON document")


def sweep_settings(args: argparse.Namespace) -> SweepSettings:
    """The samples per cell, new tokens and seed as ``sweep`` gives them, checked, each named
    by its option (``--n must be at least 1``)."""
    settings = SweepSettings(n=args.n, max_new_tokens=args.max_new_tokens, seed=args.seed)
    check_options(settings)
    return settings


def cmd_sweep(args: argparse.Namespace) -> int:
    from workbench.core.common.jobs import JobContext
    from workbench.core.evaluation.sweep import (
        METRIC_LABELS,
        METRICS,
        cell_settings,
        parse_axis,
        sweep,
    )
    from workbench.core.generation.settings import parse_strategy
    from workbench.core.models.loader import LoadOptions, load_model

    check_model_options(args, *(("--reference-model",) if args.reference_model is not None
                                else ()))
    for option in ("x", "y", "base"):
        if getattr(args, option) is not None:
            check_utf8(getattr(args, option), f"--{option}")
    chat = not args.no_chat
    base = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, chat=chat)
    if args.base is not None:
        base = parse_strategy(args.base, base).settings
        base.chat = chat
    sweep_settings(args)
    x, y = parse_axis(args.x, base), parse_axis(args.y, base)
    if x.name == y.name:
        from workbench.core.common.errors import WorkbenchError

        raise WorkbenchError(f"--x and --y both vary {x.name}: give two different settings.")
    for i in range(len(y.values)):  # every cell's settings, before loading
        for j in range(len(x.values)):
            cell_settings(base, x, y, i, j, args.n, args.max_new_tokens, args.seed)
    prompt = text_argument(args, "prompt")
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)
    reference = None
    if args.reference_model is not None:
        options = LoadOptions(device=args.device, dtype=args.dtype,
                              trust_remote_code=args.trust_remote_code,
                              allow_pickle=args.allow_pickle)
        reference = load_model(args.reference_model, options, on_event=bar)
        bar.finish()
    result = sweep(loaded, prompt, x, y, args.n, base, args.max_new_tokens, args.seed,
                   JobContext(emit=bar), reference=reference)
    bar.finish()
    if args.json:
        data = result.to_dict()
        data.update(device=loaded.device, dtype=loaded.dtype)
        print_json(data)
        return 0
    for metric in METRICS:
        print(f"{METRIC_LABELS[metric]}" + (f" (under {result.reference})"
                                           if metric == "perplexity" else ""))
        print(_table(result.grid(metric), x.name, x.labels, y.name, y.labels))
        print()
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"[{len(x.values)} × {len(y.values)} cells, {args.n} samples each, "
          f"{result.seconds:.1f} s, {loaded.device}, {loaded.dtype}]", file=sys.stderr)
    return 0


def _table(grid: list[list[float | None]], x_name: str, x_labels: list[str], y_name: str,
           y_labels: list[str]) -> str:
    """Rows y, columns x; a cell without a value shows '-'."""
    def shown(v: float | None) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.3g}" if abs(v) >= 1000 \
            else f"{v:.3f}"

    corner = f"{y_name} \\ {x_name}"
    width = max(9, *(len(s) for s in x_labels))
    first = max(len(corner), *(len(s) for s in y_labels))
    lines = [f"{corner:<{first}} " + " ".join(f"{s:>{width}}" for s in x_labels)]
    for label, row in zip(y_labels, grid, strict=True):
        lines.append(f"{label:<{first}} " + " ".join(f"{shown(v):>{width}}" for v in row))
    return "\n".join(lines)


COMMANDS = {
    ("sweep", None): cmd_sweep,
}

"""``python main.py bench``: every performance figure, each a ratio against a bare baseline
measured in the same run (see the README's Benchmarks). The registry below is the one list
of figures; the models' figures run headless, the window's open the app offscreen.

This package sits above the UI and the command line (it drives both), so neither imports it:
``workbench.app`` hands it the ``bench`` command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from workbench.benchmarks import (
    attribution_figures,
    choice_figures,
    gguf_figures,
    model_figures,
    sweep_figures,
    window_figures,
)

Figure = Callable[[Callable[[Any], None]], dict]

FIGURES: dict[str, Figure] = {
    "startup": model_figures.bench_startup,
    "model_load_cached": model_figures.bench_model_load_cached,
    "generate_overhead": model_figures.bench_generate_overhead,
    "decode_speedup": model_figures.bench_decode_speedup,
    "compiled_decode": model_figures.bench_compiled_decode,
    "reduced_precision_perplexity": model_figures.bench_reduced_precision_perplexity,
    "compare_batched": model_figures.bench_compare_batched,
    "compare_batched_busy": model_figures.bench_compare_batched_busy,
    "generate_score_batched": model_figures.bench_generate_score_batched,
    "busy_decode": model_figures.bench_busy_decode,
    "perplexity_overhead": model_figures.bench_perplexity_overhead,
    "attribution_overhead": attribution_figures.bench_attribution_overhead,
    "choice_throughput": choice_figures.bench_choice_throughput,
    "sweep_batched": sweep_figures.bench_sweep_batched,
    "ui_stall": window_figures.bench_ui_stall,
    "explorer_redraw": window_figures.bench_explorer_redraw,
    "attention_view": window_figures.bench_attention_view,
    "attention_page_smollm": window_figures.bench_attention_page_smollm,
    "finetune_overhead": window_figures.bench_finetune_overhead,
    "monitor_large_run": window_figures.bench_monitor_large_run,
    "logit_lens_first_view": model_figures.bench_logit_lens_first_view,
    "gguf_load_memory": gguf_figures.bench_gguf_load_memory,
    "quantized_decode": gguf_figures.bench_quantized_decode,
    "quantized_perplexity": gguf_figures.bench_quantized_perplexity,
    "first_token": gguf_figures.bench_first_token,
}


def run_bench(only: list[str] | None = None,
              on_event: Callable[[Any], None] | None = None) -> dict[str, dict]:
    """Run the named figures (all by default) and return ``{name: figure}``."""
    emit = on_event or (lambda event: None)
    return {name: measured(FIGURES[name], emit) for name in (only or list(FIGURES))}


def measured(bench: Figure, emit: Callable[[Any], None]) -> dict:
    """Run one figure and add how busy the machine was: ``cpu_per_wall`` (CPU seconds of
    this process and the processes it waited for, per second of wall time: about 1 for one
    busy core) and the load average before it began (``load_before``; a figure measured at a
    load near the core count is one measured under competing load)."""
    import os
    import time

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cpu_start, wall_start = os.times(), time.perf_counter()
    result = bench(emit)
    cpu_end, wall = os.times(), time.perf_counter() - wall_start
    cpu = sum(cpu_end[:4]) - sum(cpu_start[:4])
    result["cpu_per_wall"] = round(cpu / wall, 2) if wall > 0 else None
    result["load_before"] = None if load is None else round(load, 2)
    result["cores"] = os.cpu_count()
    return result


def command(args: argparse.Namespace) -> int:
    """``python main.py bench [--only A,B] [--json]``: exit status 3 when a target is
    missed."""
    from workbench.cli import TerminalProgress, parse_names, print_json
    from workbench.core.common.errors import WorkbenchError

    only = None if args.only is None else parse_names(args.only, "--only", lower=False)
    unknown = [n for n in only or [] if n not in FIGURES]
    if unknown:
        raise WorkbenchError(f"Unknown bench figure(s): {', '.join(unknown)}; "
                             f"known: {', '.join(FIGURES)}.")
    bar = TerminalProgress(quiet=args.json)
    results = run_bench(only, on_event=bar)
    bar.finish()
    if args.json:
        print_json(results)
    else:
        for name, fig in results.items():
            status = "ok" if fig["met"] else "MISSED"
            busy = f"CPU÷wall {fig['cpu_per_wall']}, load {fig['load_before']} on " \
                f"{fig['cores']} cores"
            print(f"{name:22} {fig['value']:8.3f}  target {fig['target_text']:10} {status}  "
                  f"{fig['detail']} [{busy}]")
    return 0 if all(f["met"] for f in results.values()) else 3

"""The sampling sweep's figure for ``python main.py bench``: what a sweep costs beyond its
``generate`` calls (see :func:`workbench.benchmarks.model_figures.figure`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from workbench.benchmarks.model_figures import BENCH_PROMPT, figure
from workbench.core.common.jobs import Progress


def bench_sweep_batched(emit: Callable[[Any], None], repeats: int = 2,
                        tokens: int = 32) -> dict:
    """Wall time of a 3 × 3 sweep (temperature × top-p) with n = 4 on SmolLM2 ÷ the nine
    4-row ``generate`` calls of the same settings, made one after another: what the sweep's
    scoring and bookkeeping add to its generation."""
    from workbench.core.evaluation.sweep import cell_settings, parse_axis, sweep
    from workbench.core.generation.generate import generate
    from workbench.core.generation.settings import SamplingSettings
    from workbench.core.models.loader import load_model

    emit(Progress("sweep_batched: loading SmolLM2", 0.0))
    loaded = load_model("SmolLM2-135M-Instruct")
    x, y = parse_axis("temperature=0.5:1.5:3"), parse_axis("top_p=0.5,0.9,1.0")
    n = 4
    base = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, chat=False)

    def calls(seed: int) -> float:
        start = time.perf_counter()
        for i in range(len(y.values)):
            for j in range(len(x.values)):
                generate(loaded, BENCH_PROMPT,
                         cell_settings(base, x, y, i, j, n, tokens, seed), top_n=0)
        return time.perf_counter() - start

    sweep(loaded, BENCH_PROMPT, parse_axis("temperature=1"), parse_axis("top_p=1"), n,
          base, 4, 0)  # warm-up
    sweep_s, calls_s = [], []
    for r in range(repeats):
        emit(Progress("sweep_batched: timing", r / repeats))
        calls_s.append(calls(r))
        start = time.perf_counter()
        sweep(loaded, BENCH_PROMPT, x, y, n, base, tokens, r)
        sweep_s.append(time.perf_counter() - start)
    ratio = statistics.median(sweep_s) / statistics.median(calls_s)
    return figure(ratio, 1.1, "lower",
                  f"3 × 3 sweep, n = {n}: {statistics.median(sweep_s):.2f} s vs nine 4-row "
                  f"generate calls {statistics.median(calls_s):.2f} s ({tokens} new tokens "
                  "each)", sweep_seconds=[round(s, 3) for s in sweep_s],
                  calls_seconds=[round(s, 3) for s in calls_s], device=loaded.device,
                  dtype=loaded.dtype)

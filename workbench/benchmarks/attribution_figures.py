"""Performance figure of input attribution for ``python main.py bench``: the app's
integrated gradients against captum called directly on the same inputs.

Like every figure, a ratio against a bare baseline measured in the same run, alternating
the two so that a machine that gets busier or quieter meanwhile affects both alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from workbench.benchmarks.model_figures import figure
from workbench.core.common.jobs import Progress

# 32 tokens with SmolLM2's tokenizer (checked when the figure runs), and a one-token target:
# integrated gradients costs one batch of its steps per target token
_PROMPT = ("Once upon a time, in a small village by the sea, there lived an old fisherman who "
           "knew every wave and every wind. One morning he found a bottle")
_TARGET = " on"
_PROMPT_TOKENS = 32


def bench_attribution_overhead(emit: Callable[[Any], None], repeats: int = 2,
                               steps: int | None = None) -> dict:
    """captum's ``LLMGradientAttribution`` with ``LayerIntegratedGradients`` called directly ÷
    the app's integrated gradients (``core.interpret.attribution.attribute``: the same captum call, plus
    its progress hook, its completeness delta and the result it builds), in seconds, on the
    same prompt, target, baseline, steps and steps per batch. Target ≥ 0.9: the app adds
    views, not cost. The scores of both are compared too (``max_difference``)."""
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution, TextTokenInput

    from workbench.core.interpret.attribution import attribute
    from workbench.core.interpret.attribution_options import DEFAULT_STEPS
    from workbench.core.interpret.attribution_runtime import steps_per_batch
    from workbench.core.models.loader import load_model

    steps = steps or DEFAULT_STEPS
    emit(Progress("attribution_overhead: loading SmolLM2", 0.0))
    loaded = load_model("SmolLM2-135M-Instruct")
    model, tokenizer = loaded.model, loaded.tokenizer
    count = len(tokenizer(_PROMPT)["input_ids"])
    if count != _PROMPT_TOKENS:
        raise RuntimeError(f"the benchmark prompt has {count} tokens, not {_PROMPT_TOKENS}")

    def app() -> tuple[float, Any]:
        start = time.perf_counter()
        result = attribute(loaded, _PROMPT, _TARGET, method="ig", steps=steps, baseline="pad")
        return time.perf_counter() - start, result

    def direct(internal: int | None) -> tuple[float, Any]:
        start = time.perf_counter()
        llm = LLMGradientAttribution(LayerIntegratedGradients(model, model.get_input_embeddings()),
                                     tokenizer)
        out = llm.attribute(TextTokenInput(_PROMPT, tokenizer, baselines=tokenizer.pad_token_id),
                            target=_TARGET, n_steps=steps, internal_batch_size=internal)
        return time.perf_counter() - start, out

    emit(Progress("attribution_overhead: warming up", 0.05))
    attribute(loaded, _PROMPT, _TARGET, method="ig", steps=2)
    # captum gets the app's steps per batch (all of them, unless memory is short)
    internal = steps_per_batch(loaded, count + len(tokenizer.encode(_TARGET,
                                                                    add_special_tokens=False)),
                               steps)
    app_runs, direct_runs = [], []
    result = reference = None
    for i in range(repeats):
        emit(Progress("attribution_overhead: timing captum directly",
                      (2 * i + 1) / (2 * repeats + 1)))
        seconds, reference = direct(internal)
        direct_runs.append(seconds)
        emit(Progress("attribution_overhead: timing the app", (2 * i + 2) / (2 * repeats + 1)))
        seconds, result = app()
        app_runs.append(seconds)
    assert result is not None and reference is not None
    difference = max(abs(a - b) for a, b in zip(result.scores, reference.seq_attr.tolist(),
                                                strict=True))
    app_s, direct_s = statistics.median(app_runs), statistics.median(direct_runs)
    return figure(direct_s / app_s, 0.9, "higher",
                  f"captum directly {direct_s:.2f} s vs the app {app_s:.2f} s (integrated "
                  f"gradients, {steps} steps, a {_PROMPT_TOKENS}-token prompt, one target "
                  f"token; scores differ by {difference:.1e} at most)",
                  app_seconds=[round(s, 3) for s in app_runs],
                  direct_seconds=[round(s, 3) for s in direct_runs],
                  max_difference=difference, delta=result.delta, steps=steps,
                  internal_batch_size=result.internal_batch_size,
                  direct_internal_batch_size=internal, dtype=loaded.dtype,
                  device=loaded.device)

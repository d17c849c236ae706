"""How much memory a generation needs, and the refusal of one that would not fit."""

from __future__ import annotations

from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.memory import MEMORY_SHARE, available_memory, format_bytes
from workbench.core.generation.settings import MAX_SEQUENCES

STEP_RECORD_BYTES = 1024  # one StepRecord (floats, text), its TokenEvent and its share of output
CANDIDATE_BYTES = 400  # one recorded top-N candidate
SCORE_COPIES = 8  # rows × vocabulary float32 arrays alive in one step (logits, processed
# scores, raw and processed log-probabilities and probabilities, masks: see StepInspector)
_RECURRENT = ("rwkv", "xlstm", "mamba", "mamba2", "falcon_mamba")


def _positive_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def generation_memory(model: Any, rows: int, prompt_tokens: int, new_tokens: int,
                      top_n: int = 0, beams: bool = False) -> tuple[int, int, dict[str, int]]:
    """Estimated bytes one ``generate`` call of ``rows`` rows needs: (on the model's device,
    in this process's RAM, the parts by name).

    - cache: rows × (prompt + new tokens) × layers × 2 (keys, values) × KV width × dtype size
    - attention: the weights of one layer, rows × heads × prompt² × 4 at the prompt's pass
      (rows × (heads + 1) × (prompt + new)² × 4 at every step for a model that recomputes
      the whole sequence each step instead of caching it, such as XLNet)
    - scores: rows × vocabulary × 4 × SCORE_COPIES for one step's distributions
    - beam scores: 2 × rows × new tokens × vocabulary × 4 (beam search keeps every step's)
    - step records (RAM): rows × new tokens × (STEP_RECORD_BYTES + top-N × CANDIDATE_BYTES)
    """
    import torch

    config = model.config
    try:
        config = config.get_text_config()
    except (AttributeError, TypeError, ValueError):
        pass
    layers = _positive_int(config, "num_hidden_layers", "n_layer", "num_layers") or 1
    hidden = _positive_int(config, "hidden_size", "n_embd", "d_model") or 1
    heads = _positive_int(config, "num_attention_heads", "n_head") or 1
    head_dim = _positive_int(config, "head_dim") or max(hidden // heads, 1)
    kv_width = (_positive_int(config, "num_key_value_heads") or heads) * head_dim
    vocab = _positive_int(config, "vocab_size") or 1
    dtype = getattr(model, "dtype", torch.float32)
    size = torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else 4
    total = prompt_tokens + new_tokens
    supports_cache = getattr(type(model), "_supports_default_dynamic_cache", None)
    recurrent = getattr(config, "model_type", "") in _RECURRENT
    recomputes = not recurrent and callable(supports_cache) and not supports_cache()
    parts = {"cache": 0 if recurrent else rows * total * layers * 2 * kv_width * size,
             "attention": 0 if recurrent else (rows * (heads + 1) * total * total * 4 if recomputes
                                               else rows * heads * prompt_tokens ** 2 * 4),
             "scores": rows * vocab * 4 * SCORE_COPIES}
    if beams:
        parts["beam scores"] = 2 * rows * new_tokens * vocab * 4
    records = rows * new_tokens * (STEP_RECORD_BYTES + min(max(top_n, 0), vocab) * CANDIDATE_BYTES)
    return sum(parts.values()), records, {**parts, "step records": records}


def check_generation_memory(loaded: Any, prompt_tokens: int, new_tokens: int,
                            runs: list[tuple[int, bool]], top_n: int = 0) -> None:
    """Refuse a generation that would not fit in memory (see :func:`generation_memory`).

    ``runs`` lists the ``generate`` calls made one after another, as (rows, beam search);
    device memory is needed by the largest, step records by all of them together.
    """
    if sum(rows for rows, _ in runs) > MAX_SEQUENCES:
        raise WorkbenchError(f"At most {MAX_SEQUENCES:,} sequences at once (each is a row of "
                             f"the batch, with its own cache and scores), not "
                             f"{sum(rows for rows, _ in runs):,}.")
    estimates = [generation_memory(loaded.model, rows, prompt_tokens, new_tokens, top_n, beams)
                 for rows, beams in runs]
    on_device = max(e[0] for e in estimates)
    in_ram = sum(e[1] for e in estimates)
    parts = max(estimates, key=lambda e: e[0])[2]
    parts["step records"] = in_ram
    device = str(getattr(loaded, "device", "cpu"))
    ram = available_memory("cpu")
    checks = ([(on_device, available_memory(device)), (in_ram, ram)] if device.startswith("cuda")
              else [(on_device + in_ram, ram)])
    for need, budget in checks:
        if need > budget * MEMORY_SHARE:
            rows = sum(r for r, _ in runs)
            detail = ", ".join(f"{name} {format_bytes(value)}" for name, value in parts.items()
                               if value >= need / 100)  # the parts that matter
            raise WorkbenchError(
                f"{rows:,} sequence{'s' if rows != 1 else ''} of {prompt_tokens:,} prompt + "
                f"{new_tokens:,} new tokens with {getattr(loaded, 'name', 'this model')} would "
                f"need about {format_bytes(need)} ({detail}), more than {MEMORY_SHARE:.0%} of the "
                f"{format_bytes(budget)} available: ask for fewer sequences or new tokens.")

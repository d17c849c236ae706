"""A LoRA adapter (peft) on the model a run trains, and the line that says what trains."""

from __future__ import annotations

from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.training.config import FinetuneConfig
from workbench.core.training.inputs import check_lora_targets, linear_layer_names


def with_lora(model: Any, config: FinetuneConfig) -> tuple[Any, str]:
    """``model`` wrapped by peft so that only a LoRA adapter trains, and a line saying how
    many parameters that is."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=config.lora_r,
                      lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules or None)
    check_lora_targets(model, config.lora_target_modules)
    kind = getattr(model.config, "model_type", "this")
    layers = ", ".join(linear_layer_names(model)) or "none found"
    try:
        wrapped = get_peft_model(model, lora)
    except ValueError as exc:
        if "target_modules" in str(exc):
            raise WorkbenchError(f"peft has no default LoRA target modules for {kind} models: "
                                 f"name them (its linear layers: {layers}).") from None
        raise WorkbenchError(f"peft cannot add LoRA to this {kind} model: {exc}") from None
    trainable, total = wrapped.get_nb_trainable_parameters()
    targets = wrapped.peft_config["default"].target_modules
    targets = sorted(targets) if isinstance(targets, (set, list, tuple)) else [str(targets)]
    return wrapped, (f"LoRA (r={config.lora_r}, alpha={config.lora_alpha}, dropout="
                     f"{config.lora_dropout}) on {', '.join(targets)}: {trainable:,} trainable "
                     f"parameters of {total:,} ({100 * trainable / max(total, 1):.2f}%); the "
                     "base weights stay frozen.")

"""What a loaded model's config says about it: its context length and its labels."""

from __future__ import annotations

from typing import Any


def context_length(model: Any) -> int | None:
    """The longest input the model's positions allow, when its config names it."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_labels(loaded: Any) -> list[str]:
    """The classifier's labels in class-id order."""
    id2label = getattr(loaded.model.config, "id2label", None) or {}
    return [str(id2label.get(i, i)) for i in range(loaded.model.config.num_labels)]

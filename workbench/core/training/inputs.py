"""Checks of a fine-tuning run's inputs made before its folder is created, so that bad input
writes nothing: the data files (read and checked whole, as the run reads them) and whether
the loaded model can take the run (its kind, its context length, the LoRA target modules).

The window makes them before it launches a run's process; the run checks the same again as
it reads the data (``data.read_data``, before it loads the model) and builds the model
(``model._model_for``, ``lora.with_lora``), with the same messages, so the command
line and a run launched elsewhere say the same.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from workbench.core.common.data_files import LABELLED_SUFFIXES, read_bytes, read_rows, read_texts
from workbench.core.common.errors import WorkbenchError
from workbench.core.models.catalog import CAUSAL_LM

#: A larger data file is only checked to be a readable file here: reading it whole would
#: hold the window for seconds. The run reads and checks it all the same.
FULL_CHECK_BYTES = 32 << 20


def _readable(path: str, labelled: bool) -> bool:
    """Whether ``path`` is small enough to read whole here; a missing, unreadable or
    wrongly named file is refused either way."""
    if labelled and Path(path).suffix.lower() not in LABELLED_SUFFIXES:
        raise WorkbenchError(f"{Path(path).name}: labelled data must be .csv, .tsv or .jsonl.")
    read_bytes(path, limit=0)  # no name, no such file, a folder, no permission
    try:
        return os.path.getsize(path) <= FULL_CHECK_BYTES
    except OSError:
        return True  # read it, and let the reader say what is wrong


def check_data(config: Any) -> None:
    """The training (and validation) file of ``config`` (a ``FinetuneConfig``) as the run
    will read them: readable UTF-8 rows or texts, at least two classes to classify, and no
    validation label that the training data lacks. One WorkbenchError for the first
    problem."""
    if not str(config.train_file).strip():
        raise WorkbenchError("Choose a training file.")
    files = [config.train_file] + ([config.validation_file] if config.validation_file else [])
    if config.task == "lm":
        for path in files:
            if _readable(path, Path(path).suffix.lower() in LABELLED_SUFFIXES):
                read_texts(path, config.text_column)
        return
    whole = [_readable(path, True) for path in files]
    if not whole[0]:
        return
    labels = training_labels(read_rows(config.train_file, config.text_column,
                                       config.label_column))
    if config.validation_file and whole[1]:
        check_validation_labels(read_rows(config.validation_file, config.text_column,
                                          config.label_column), labels)


def training_labels(rows: list[tuple[str, Any]]) -> list[str]:
    """The labels of a classification run's training rows, sorted; at least two."""
    labels = sorted({lab for _, lab in rows if lab is not None})
    if len(labels) < 2:
        raise WorkbenchError(f"The training data has a single class "
                             f"({labels[0] if labels else 'none'}): classification needs at "
                             "least two labels.")
    return labels


def check_validation_labels(rows: list[tuple[str, Any]], labels: list[str]) -> None:
    """No validation row may carry a label the training data lacks."""
    unknown = sorted({lab for _, lab in rows} - set(labels))
    if unknown:
        raise WorkbenchError(f"The validation file has labels that are not in the training "
                             f"data: {', '.join(map(str, unknown))}.")


def linear_layer_names(model: Any) -> list[str]:
    """The distinct names of the linear layers of ``model`` (what LoRA can target)."""
    import torch

    names = set()
    for name, module in model.named_modules():
        # transformers' Conv1D (GPT-2) is a linear layer too
        if name and (isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def check_lora_targets(model: Any, targets: list[str]) -> None:
    """Refuse LoRA target modules that ``model`` does not have (peft only complains when
    none matches: a misspelt one among several would silently adapt fewer layers)."""
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        kind = getattr(model.config, "model_type", "this")
        layers = ", ".join(linear_layer_names(model)) or "none found"
        raise WorkbenchError(f"This {kind} model has no module named {', '.join(missing)} for "
                             f"LoRA; its linear layers: {layers}.")


def check_model(config: Any, loaded: Any) -> None:
    """Whether ``loaded`` (the model the run starts from) can take the run ``config``
    describes: a causal LM for language-model fine-tuning, a maximum length within its
    positions, and LoRA target modules it has. Reads the model's configuration and module
    names only."""
    if config.task == "lm":
        loaded.require(CAUSAL_LM, "language-model fine-tuning")
    positions = getattr(loaded.model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and not isinstance(positions, bool) and \
            0 < positions < config.max_length:
        raise WorkbenchError(f"The maximum length {config.max_length} is beyond what "
                             f"{loaded.name} can take ({positions} positions): use at most "
                             f"{positions}.")
    if config.lora and config.lora_target_modules:
        check_lora_targets(loaded.model, config.lora_target_modules)

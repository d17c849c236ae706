"""The model a run trains: float32, its classification head and pad token, LoRA when asked."""

from __future__ import annotations

from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.training.config import FinetuneConfig
from workbench.core.training.data import PreparedData
from workbench.core.training.lora import with_lora


def model_to_train(config: FinetuneConfig, loaded: Any, data: PreparedData,
                   ctx: JobContext, own: bool = False) -> Any:
    """The model to train, ready: the classification head sized to the labels, a pad token,
    and the LoRA adapter when ``config`` asks for one. A fresh copy of the loaded model,
    unless the run ``own``s it (loaded for it alone) and it is the language model to train:
    then the weights are not read twice (twice the memory for a while)."""
    from workbench.core.models.load_report import load_report_to_log
    from workbench.core.models.loader import set_pad_token

    tokenizer = loaded.tokenizer
    with load_report_to_log(ctx):  # transformers' LOAD REPORT table to the log, one note
        model = _model_for(config, loaded, data.labels, ctx, own)
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and 0 < positions < config.max_length:
        raise WorkbenchError(f"The maximum length {config.max_length} is beyond what "
                             f"{loaded.name} can take ({positions} positions): use at most "
                             f"{positions}.")
    if config.task == "classify":
        note = set_pad_token(tokenizer, model)  # end-of-text as pad, as transformers' examples
        if note:
            ctx.log(note)
    if config.lora:
        import torch

        torch.manual_seed(config.seed)  # the adapter's initial weights follow the run's seed
        model, note = with_lora(model, config)
        ctx.log(note)
    return model


def _model_for(config: FinetuneConfig, loaded: Any, labels: list[str],
               ctx: JobContext | None = None, own: bool = False):
    """The model to train: a fresh copy (the loaded one stays as it is), or for a language
    model the run ``own``s, that one. A classifier is read from the folder with its head
    (one trained on other labels gets a new head for these, and the log says so); a model
    the run ``own``s is released first."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from workbench.core.models.catalog import CAUSAL_LM

    # float32 whatever the checkpoint's dtype (transformers loads a bfloat16 checkpoint in
    # bfloat16 unless told): the weights train in float32, under autocast on a GPU
    if config.task == "lm":
        loaded.require(CAUSAL_LM, "language-model fine-tuning")
        if own:  # float32 already (LoadOptions), as saved (training=True)
            return loaded.model
        return AutoModelForCausalLM.from_pretrained(
            loaded.folder, local_files_only=True, dtype=torch.float32,
            trust_remote_code=config.trust_remote_code)
    earlier = _head_labels(loaded.model.config)
    if earlier is not None and earlier != labels and ctx is not None:
        ctx.log(f"{loaded.name}'s classification head was trained for the labels "
                f"{', '.join(earlier)}; a new head for {', '.join(labels)} is initialised "
                "(the rest of the model is kept).")
    if own:  # loaded for this run alone: its weights go before the classifier's are read
        import gc

        loaded.model = None  # (at most one copy of the weights in memory, not two)
        gc.collect()
    return AutoModelForSequenceClassification.from_pretrained(
        loaded.folder, local_files_only=True, trust_remote_code=config.trust_remote_code,
        dtype=torch.float32, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)},
        # a head of another size is made anew instead of refused
        ignore_mismatched_sizes=earlier is not None and len(earlier) != len(labels))


def _head_labels(model_config: Any) -> list[str] | None:
    """The labels a saved classification head was trained for, by id; None for a model
    without one (an encoder, a language model) or with transformers' placeholder names."""
    architectures = getattr(model_config, "architectures", None) or []
    names = getattr(model_config, "id2label", None) or {}
    if not any(a.endswith("ForSequenceClassification") for a in architectures) or not names:
        return None
    labels = [str(names[i]) for i in sorted(names, key=int)]
    return None if labels == [f"LABEL_{i}" for i in range(len(labels))] else labels

"""What every attribution runs on: captum's token input, the zero baseline, progress, memory."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.interpret.attribution_result import ZERO_EMBEDDING

BATCH_MEMORY_SHARE = 0.5  # of the memory available now, for one batch of IG's steps


def _token_ids_input(ids: Sequence[int], tokenizer: Any, baseline_id: int):
    """captum's ``TextTokenInput`` over token ids the model saw (a chat-templated prompt, a
    prompt followed by generated tokens): ``TextTokenInput`` itself tokenizes a text, and a
    decoded sequence does not always tokenize back to the same ids. Special tokens are
    held fixed through its interpretable mask, as its ``skip_tokens`` does."""
    import torch
    from captum.attr import TextTokenInput

    class TokenIdsInput(TextTokenInput):
        def __init__(self) -> None:  # not the parent's: it tokenizes a text
            special = tokenizer.get_special_tokens_mask(list(ids), already_has_special_tokens=True)
            self.inp_tensor = torch.tensor([list(ids)], dtype=torch.long)
            keep = torch.tensor([[not s for s in special]], dtype=torch.bool)
            self.itp_mask = None if bool(keep.all()) else keep
            self.itp_tensor = (self.inp_tensor if self.itp_mask is None
                               else self.inp_tensor[keep].unsqueeze(0))
            self.skip_tokens = None
            self.values = tokenizer.convert_ids_to_tokens(self.itp_tensor[0].tolist())
            self.tokenizer = tokenizer
            self.n_itp_features = len(self.values)
            self.baselines = baseline_id

    return TokenIdsInput()


def interpretable(ids: Sequence[int], tokenizer: Any) -> list[int]:
    """Positions of ``ids`` that are attributed (all but the tokenizer's special tokens)."""
    special = tokenizer.get_special_tokens_mask(list(ids), already_has_special_tokens=True)
    return [i for i, s in enumerate(special) if not s]


def _zero_baseline_model(model: Any):
    """``model`` run from ``inputs_embeds`` made by an embedding layer that returns a zero
    vector for the id -1 (and the model's own embedding for every other id)."""
    from torch import nn

    class ZeroableEmbedding(nn.Module):
        def __init__(self, embedding: nn.Module) -> None:
            super().__init__()
            self.embedding = embedding

        def forward(self, ids):
            vectors = self.embedding(ids.clamp(min=0))
            return vectors.masked_fill((ids < 0).unsqueeze(-1), 0.0)

    class ZeroBaselineModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.embedding = ZeroableEmbedding(model.get_input_embeddings())

        @property
        def device(self):
            return model.device

        def forward(self, input_ids, attention_mask=None, **kwargs: Any):
            return self.model(inputs_embeds=self.embedding(input_ids),
                              attention_mask=attention_mask, **kwargs)

    return ZeroBaselineModel()


def model_runner(model: Any, baseline_id: int | None) -> tuple[Any, Any]:
    """The model captum runs and the embedding layer it attributes to."""
    if baseline_id == ZERO_EMBEDDING:
        wrapped = _zero_baseline_model(model)
        return wrapped, wrapped.embedding
    return model, model.get_input_embeddings()


def token_input(ids: Sequence[int], tokenizer: Any, baseline_id: int | None):
    # input × gradient and saliency have no baseline: captum never replaces a token for them
    return _token_ids_input(ids, tokenizer, 0 if baseline_id is None else baseline_id)


class Calls:
    """A forward pre-hook: every model call of captum's reports progress and checks the
    cancel token (a cancel raises at the next call)."""

    def __init__(self, ctx: JobContext, label: str, expected: int) -> None:
        self.ctx, self.label, self.expected = ctx, label, max(expected, 1)
        self.calls = 0
        self.row, self.rows = 0, 1
        self.per_row = 0  # when captum loops over the rows itself: its calls per row

    def __call__(self, module: Any, args: Any) -> None:
        self.ctx.cancel.raise_if_cancelled()
        self.calls += 1
        if self.per_row:
            self.row = min((self.calls - 1) // self.per_row, self.rows - 1)
        where = f" (output token {self.row + 1} of {self.rows})" if self.rows > 1 else ""
        self.ctx.progress(f"{self.label}{where}…", min(self.calls / self.expected, 0.99))


def _counted_module(model: Any) -> Any:
    """The module every model call goes through: the base model inside the head model
    (captum's ablation calls ``model.forward`` itself, which skips the head model's hooks;
    saliency starts from the embeddings, which skips the embedding layer's)."""
    base = getattr(model, "base_model", None)
    return base if base is not None else model


@contextmanager
def attribution_mode(loaded: Any, calls: Calls) -> Iterator[None]:
    """Gradients on, eval mode (no dropout), the progress hook; all undone afterwards, however
    the job ends (the worker's model is shared by every tab)."""
    import torch

    model = loaded.model
    training = model.training
    hook = _counted_module(model).register_forward_pre_hook(calls)
    model.eval()
    # captum re-tokenizes the target to display it, and warns when that reads differently;
    # its display tokens are not used here (a filter added once: catch_warnings is not
    # thread-safe, and this runs on the worker thread)
    warnings.filterwarnings("ignore", message=r"(Pretty tokens length|\(i=\d+, idx=\d+\))",
                            module=r"captum\.")
    try:
        with torch.enable_grad():
            yield
    finally:
        hook.remove()
        model.train(training)


def _bytes_per_token(model: Any, length: int) -> int:
    """An estimate of what one token of a forward and backward pass keeps: logits and their
    gradient over the vocabulary, and per layer some two dozen hidden-size activations and
    a row of attention weights per head."""
    from workbench.core.interpret.attention import attention_layers

    config = model.config
    try:
        config = config.get_text_config()
    except (AttributeError, TypeError, ValueError):
        pass
    hidden = next((v for v in (getattr(config, n, None) for n in ("hidden_size", "n_embd", "d_model"))
                   if isinstance(v, int) and v > 0), 768)
    heads = next((v for v in (getattr(config, n, None) for n in ("num_attention_heads", "n_head"))
                  if isinstance(v, int) and v > 0), 12)
    vocab = getattr(config, "vocab_size", None) or 32000
    layers = attention_layers(model) or 12
    size = getattr(getattr(model, "dtype", None), "itemsize", 4)
    return int(size * (2 * vocab + layers * (24 * hidden + heads * length)))


def steps_per_batch(loaded: Any, length: int, steps: int) -> int | None:
    """Steps per model call for integrated gradients: all of them (captum's default, None)
    when they fit in half the memory available now, else as many as fit. Refuses an input
    whose gradient pass alone would not fit."""
    from workbench.core.common.memory import available_memory, format_bytes

    per_sequence = _bytes_per_token(loaded.model, length) * length
    budget = available_memory(loaded.device) * BATCH_MEMORY_SHARE
    fit = int(budget // max(per_sequence, 1))
    if fit < 1:
        raise WorkbenchError(f"Attributing {length:,} tokens needs about {format_bytes(per_sequence)} for "
                             f"one gradient pass, more than {BATCH_MEMORY_SHARE:.0%} of the "
                             f"{format_bytes(budget / BATCH_MEMORY_SHARE)} available: shorten the input.")
    return None if fit >= steps else fit


def gradient_calls(method: str, steps: int | None, internal: int | None) -> int:
    """Model calls of a gradient method for one target token: integrated gradients runs the
    inputs and the baselines once each, then the steps in batches."""
    if method == "ig":
        return 2 + math.ceil((steps or 1) / (internal or steps or 1))
    return 1


def decode_tokens(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]

"""Input attribution with captum: how much each input token contributed to a target.

Three cases, four methods, all computed by captum (nothing here takes a gradient itself):

- a **continuation** of a prompt (a target text): captum's own LLM attribution of the
  target's log-probability to the prompt tokens, ``LLMGradientAttribution`` or
  ``LLMAttribution`` on a ``TextTokenInput`` exactly as captum's documentation calls them.
  ``scores`` is captum's ``seq_attr`` and ``rows`` its ``token_attr`` (one row per target
  token, over the prompt; the target tokens before a row are held as they are).
- a **generated sequence** (given token ids, or ``max_new_tokens`` generated greedily here):
  the tokens × tokens matrix. Row *k* is captum's attribution of output token *k*'s
  log-probability to everything before it, the prompt and the output tokens before *k*
  (one captum call per row, its input being that whole context). ``scores`` is the sum of
  the rows: each token's contribution to the log-probability of the tokens after it.
- a **classifier's** label: the label's log-probability (log-softmax of the logits),
  attributed with captum's layer methods and ``FeatureAblation`` on the same token input.

Methods (captum classes):

- ``ig``: ``LayerIntegratedGradients`` over the input embeddings
  (``model.get_input_embeddings()``), ``steps`` points of captum's default Gauss-Legendre
  rule. Its convergence delta is captum's definition, the completeness error: the sum of the
  attributions minus (F(input) − F(baseline)), F the log-probability of the target (for a
  generated sequence, the sum over the rows of each row's own delta).
- ``ixg``: ``LayerGradientXActivation`` (input × gradient) over the same embeddings.
- ``saliency``: captum's ``Saliency`` (the absolute gradient) with respect to the token
  embeddings. captum's ``LLMGradientAttribution`` only takes layer methods, so saliency is
  captum's ``Saliency`` on a function of the embeddings with the same target; like captum's
  LLM attribution, a token's score is the sum over its embedding dimensions, here of the
  absolute gradient (the gradient's L1 norm), and a sequence's is the sum of its rows.
- ``ablation``: ``FeatureAblation`` through ``LLMAttribution``: each token replaced by the
  baseline token in turn, the score being the drop in the target's log-probability.

The baseline (IG and ablation; input × gradient and saliency have none) is what a token
becomes: ``pad`` or ``eos`` (the tokenizer's pad or end-of-text token), a token id, or
``zero``, a zero embedding vector. A token baseline is captum's own mechanism: the
``TextTokenInput``'s baseline id, whose embedding is IG's starting point. A zero embedding
has no token id, so the model runs through a thin wrapper whose embedding layer returns a
zero vector for the id -1, and that id is the baseline: captum's code path is the same.

Special tokens of the tokenizer (a start token, ``[CLS]``/``[SEP]``, chat-template markers)
are held fixed, as captum's ``skip_tokens`` does: they stay in the input and in the
baseline alike and get no score.

Every model call of captum's goes through the model's forward, where a hook reports
progress and honours the cancel token, so Cancel takes effect at the next model call. The
model is put in eval mode for the job and put back as it was; its attention
implementation is left alone (sdpa has gradients) and no parameter gradient is stored.

captum's token-by-token forward with its KV cache (``LLMAttribution``'s default
``use_cached_outputs=True``) gave wrong ablation numbers with transformers 5 here (a token
ablated from the prompt changed a later target token's log-probability by 0.01 where the
model itself said 4e-6); the one-pass forward (``forward_in_tokens=False``) is exact and
faster, and is what is used.
"""

from __future__ import annotations

import csv
import html
import io
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext

METHODS = {"ig": "integrated gradients", "ixg": "input × gradient", "saliency": "saliency",
           "ablation": "feature ablation"}
BASELINES = ("pad", "eos", "zero")
USES_BASELINE = ("ig", "ablation")
DEFAULT_METHOD = "ig"
DEFAULT_BASELINE = "pad"
DEFAULT_STEPS = 50  # captum's own default n_steps
MAX_STEPS = 1000
MAX_NEW_TOKENS = 256  # each generated token costs one attribution of its own
ZERO_EMBEDDING = -1  # the baseline id that the zero-embedding wrapper maps to a zero vector
BATCH_MEMORY_SHARE = 0.5  # of the memory available now, for one batch of IG's steps

CONTINUATION, GENERATED, CLASSIFICATION = "continuation", "generated", "classification"


@dataclass
class AttributionResult:
    """Scores of the input tokens for one target, and the rows behind them.

    ``tokens`` are the attributed input tokens (the columns; special tokens are left out),
    ``positions`` where each stands in the model's input. ``rows[i][j]`` is output token
    ``i``'s attribution to column ``j``, None where that column is not before it (a
    generated sequence). ``scores`` is each column's attribution to the whole target.
    """

    model: str
    kind: str  # CONTINUATION, GENERATED or CLASSIFICATION
    method: str
    baseline: str | None  # "pad", "eos", "zero" or a token id's digits; None: the method has none
    baseline_id: int | None  # the token id captum was given (-1: the zero embedding)
    steps: int | None  # integrated gradients only
    prompt: str
    target: str
    tokens: list[str]
    token_ids: list[int]
    positions: list[int]
    scores: list[float]
    outputs: list[str]
    output_ids: list[int]
    rows: list[list[float | None]]
    prompt_length: int  # input positions before this are the prompt (then generated tokens)
    target_logprob: float  # log p(target | input), natural log
    baseline_logprob: float | None = None  # integrated gradients: log p(target | baseline)
    delta: float | None = None  # integrated gradients: the completeness error
    row_deltas: list[float] = field(default_factory=list)
    internal_batch_size: int | None = None  # IG: steps per model call (None: all at once)
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)

    @property
    def method_name(self) -> str:
        return METHODS[self.method]

    @property
    def baseline_text(self) -> str | None:
        """The baseline for people: "pad (id 0)", "zero embedding", "token 17"."""
        if self.baseline is None:
            return None
        if self.baseline_id == ZERO_EMBEDDING:
            return "zero embedding"
        if self.baseline in ("pad", "eos"):
            return f"{self.baseline} (id {self.baseline_id})"
        return f"token {self.baseline_id}"

    def describe(self) -> str:
        """One line: the method and what it used."""
        parts = [self.method_name]
        if self.baseline is not None:
            parts.append(f"baseline {self.baseline_text}")
        if self.steps is not None:
            parts.append(f"{self.steps} steps")
        return " · ".join(parts)

    def column_label(self) -> str:
        """A name for this result's column in a table or CSV of several methods."""
        extra = [x for x in (self.baseline_text,
                             None if self.steps is None else f"{self.steps} steps") if x]
        return " · ".join([self.method, *extra])

    def to_dict(self) -> dict:
        data = asdict(self)
        data["method_name"] = self.method_name
        data["baseline_text"] = self.baseline_text
        return data


# --- checks -------------------------------------------------------------------------------------
def check_method(method: Any) -> str:
    if not isinstance(method, str) or method.strip().lower() not in METHODS:
        raise WorkbenchError(f"Unknown attribution method {method!r}: use "
                             f"{', '.join(METHODS)}.")
    return method.strip().lower()


def check_steps(steps: Any) -> int:
    """The number of integrated-gradients steps: None is captum's default (50)."""
    if steps is None:
        return DEFAULT_STEPS
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise WorkbenchError(f"The number of steps must be a whole number from 1 to "
                             f"{MAX_STEPS}, not {steps!r}.")
    return steps


def parse_baseline(baseline: Any) -> str | int:
    """``pad``, ``eos``, ``zero`` or a token id (a whole number, or its digits)."""
    if baseline is None:
        return DEFAULT_BASELINE
    if isinstance(baseline, int) and not isinstance(baseline, bool):
        value: str | int = baseline
    elif isinstance(baseline, str) and baseline.strip().lower() in BASELINES:
        return baseline.strip().lower()
    elif isinstance(baseline, str) and baseline.strip().isdigit():
        value = int(baseline.strip())
    else:
        raise WorkbenchError(f"Unknown baseline {baseline!r}: use pad, eos, zero or a token id "
                             "(a whole number).")
    if isinstance(value, int) and value < 0:
        raise WorkbenchError(f"A baseline token id is 0 or more, not {value}.")
    return value


def check_options(method: Any, steps: Any = None, baseline: Any = None) -> list[str]:
    """Check the options without a model (the command line does it before loading one);
    returns notices about options the method does not use."""
    method = check_method(method)
    check_steps(steps)
    parse_baseline(baseline)
    notices = []
    if steps is not None and method != "ig":
        notices.append(f"{METHODS[method].capitalize()} takes no steps: the number of steps "
                       "is for integrated gradients only.")
    if baseline is not None and method not in USES_BASELINE:
        notices.append(f"{METHODS[method].capitalize()} uses no baseline: the baseline is "
                       "for integrated gradients and feature ablation only.")
    return notices


def resolve_baseline(loaded: Any, baseline: Any) -> tuple[str, int]:
    """The baseline's name ("pad", "eos", "zero" or the id's digits) and the id given to
    captum (-1: the zero embedding)."""
    choice = parse_baseline(baseline)
    tokenizer = loaded.tokenizer
    if choice == "zero":
        return "zero", ZERO_EMBEDDING
    if choice in ("pad", "eos"):
        token_id = tokenizer.pad_token_id if choice == "pad" else tokenizer.eos_token_id
        if token_id is None:
            raise WorkbenchError(f"{loaded.name} has no {'pad' if choice == 'pad' else 'end-of-text'}"
                                 " token: choose another baseline (pad, eos, zero or a token id).")
        return str(choice), int(token_id)
    rows = loaded.model.get_input_embeddings().num_embeddings
    if not 0 <= int(choice) < rows:
        raise WorkbenchError(f"The baseline token id {choice} does not exist: {loaded.name} has "
                             f"{rows:,} token ids (0–{rows - 1:,}).")
    return str(choice), int(choice)


# --- captum's token input over given ids, and the zero-embedding wrapper -----------------------
def _token_input(ids: Sequence[int], tokenizer: Any, baseline_id: int):
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


def _interpretable(ids: Sequence[int], tokenizer: Any) -> list[int]:
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


def _runner(model: Any, baseline_id: int | None) -> tuple[Any, Any]:
    """The model captum runs and the embedding layer it attributes to."""
    if baseline_id == ZERO_EMBEDDING:
        wrapped = _zero_baseline_model(model)
        return wrapped, wrapped.embedding
    return model, model.get_input_embeddings()


# --- running: eval mode, progress and cancel, memory ---------------------------------------------
class _Calls:
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
def _attribution_mode(loaded: Any, calls: _Calls) -> Iterator[None]:
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


def _prepare(loaded: Any, method: Any, steps: Any, baseline: Any
             ) -> tuple[str, int | None, str | None, int | None, list[str]]:
    """The method, steps, baseline label and id actually used, and notices."""
    notices = check_options(method, steps, baseline)
    method = check_method(method)
    used_steps = check_steps(steps) if method == "ig" else None
    label, baseline_id = None, None
    if method in USES_BASELINE:
        label, baseline_id = resolve_baseline(loaded, baseline)
    return method, used_steps, label, baseline_id, notices


def _decode(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def _check_ids(ids: Any, what: str, vocabulary: int) -> list[int]:
    if not isinstance(ids, (list, tuple)) or not ids:
        raise WorkbenchError(f"The {what} holds no tokens.")
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int)
           or not 0 <= i < vocabulary]
    if bad:
        raise WorkbenchError(f"The {what} holds {bad[0]!r}, which is not a token id of this model "
                             f"(0–{vocabulary - 1:,}).")
    return list(ids)


# --- log-probabilities (for completeness and for the report) -------------------------------------
def _logprobs(runner: Any, batch: Any, start: int, targets: Sequence[int]) -> list[float]:
    """For each row of ``batch`` (ids, every row as long), the summed log-probability of
    ``targets`` as the tokens from position ``start`` on (they are in the rows)."""
    import torch

    with torch.no_grad():
        logits = runner(batch).logits
        if logits.dim() == 4:  # as captum: a 4-D output's second axis is one head
            logits = logits[:, 0]
        chosen = logits[:, start - 1:start - 1 + len(targets)]
        logp = torch.log_softmax(chosen, dim=-1)
        index = torch.tensor(list(targets), device=logp.device)
        picked = logp[:, torch.arange(len(targets), device=logp.device), index]
    return picked.sum(-1).tolist()


# --- language models --------------------------------------------------------------------------------
def attribute(loaded: Any, prompt: str, target: str | Sequence[int] | None = None,
              max_new_tokens: int | None = None, method: str = DEFAULT_METHOD,
              steps: int | None = None, baseline: str | int | None = None,
              ctx: JobContext | None = None, *, prompt_ids: Sequence[int] | None = None,
              only_last: bool = False) -> AttributionResult:
    """Attribute a causal LM's target to its input tokens (see the module docstring).

    ``target`` is a continuation text, or the token ids of a generated sequence; or give
    ``max_new_tokens`` to generate one greedily first. ``prompt_ids`` are the exact ids the
    model saw (a chat template's), ``prompt`` then only names it. ``only_last``: of a
    generated sequence, only the last token's row (a click on one token: "why this one?").
    """
    from workbench.core.models.catalog import CAUSAL_LM

    ctx = ctx or JobContext()
    method, used_steps, baseline_label, baseline_id, notices = _prepare(
        loaded, method, steps, baseline)
    loaded.require(CAUSAL_LM, "attribution of a continuation")
    tokenizer, model = loaded.tokenizer, loaded.model
    vocabulary = model.get_input_embeddings().num_embeddings
    if (target is None) == (max_new_tokens is None):
        raise WorkbenchError("Give either a target (a continuation of the prompt) or a number "
                             "of new tokens to generate, not both or neither.")
    if prompt_ids is not None:
        ids = _check_ids(prompt_ids, "prompt", vocabulary)
    else:
        if not isinstance(prompt, str) or not prompt.strip():
            raise WorkbenchError("The prompt is empty.")
        ids = list(tokenizer(prompt)["input_ids"])
    if not _interpretable(ids, tokenizer):
        raise WorkbenchError("The prompt holds only special tokens: there is nothing to "
                             "attribute.")
    if isinstance(target, str):
        if not target:
            raise WorkbenchError("The target is empty: give the continuation to attribute.")
        outputs = list(tokenizer.encode(target, add_special_tokens=False))
        if not outputs:
            raise WorkbenchError(f"The target {target!r} makes no tokens.")
        kind = CONTINUATION
    elif target is not None:
        outputs = _check_ids(target, "generated sequence", vocabulary)
        kind = GENERATED
    else:
        if (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                or not 1 <= max_new_tokens <= MAX_NEW_TOKENS):
            raise WorkbenchError(f"The number of new tokens must be a whole number from 1 to "
                                 f"{MAX_NEW_TOKENS}, not {max_new_tokens!r}.")
        kind = GENERATED
        outputs = []
    from workbench.core.models.info import context_length

    context = context_length(model)
    length = len(ids) + (len(outputs) if outputs else max_new_tokens or 0)
    if context is not None and length > context:
        raise WorkbenchError(f"The prompt and the target make {length:,} tokens, more than "
                             f"{loaded.name}'s context of {context:,}.")
    if method == "ig":
        internal = steps_per_batch(loaded, length, used_steps or DEFAULT_STEPS)
    else:
        internal = None
        if method != "ablation":
            steps_per_batch(loaded, length, 1)  # one gradient pass must fit
    start = time.perf_counter()
    if max_new_tokens is not None:
        outputs, more = _generate(loaded, ids, max_new_tokens, ctx)
        notices += more
    first = len(outputs) - 1 if only_last and kind == GENERATED else 0
    label = METHODS[method].capitalize()
    calls = _Calls(ctx, label, _expected_calls(method, used_steps, internal, ids, outputs, kind,
                                               first, tokenizer))
    runner, layer = _runner(model, baseline_id)
    with _attribution_mode(loaded, calls):
        if kind == CONTINUATION:
            result = _continuation(loaded, runner, layer, method, used_steps, internal,
                                   baseline_id, ids, outputs, calls)
        else:
            result = _generated(loaded, runner, layer, method, used_steps, internal,
                                baseline_id, ids, outputs, first, calls)
    ctx.progress(f"{label}: done", 1.0)
    result.prompt = prompt if prompt else tokenizer.decode(ids)
    result.target = target if isinstance(target, str) else tokenizer.decode(outputs)
    result.baseline, result.baseline_id = baseline_label, baseline_id
    result.internal_batch_size = internal
    result.seconds = time.perf_counter() - start
    result.notices = notices + convergence_notices(result)
    return result


def convergence_notices(result: AttributionResult, share: float = 0.1) -> list[str]:
    """A notice when integrated gradients' scores miss the change in log-probability from
    the baseline by more than ``share`` of it (on real models a long path from the baseline
    can need many steps, and some never add up well)."""
    if result.delta is None or result.baseline_logprob is None:
        return []
    change = result.target_logprob - result.baseline_logprob
    if abs(result.delta) <= share * max(abs(change), 1e-3):
        return []
    ratio = abs(result.delta) / max(abs(change), 1e-3)
    return [f"The convergence delta ({result.delta:+.3g}) is {ratio:.0%} of the change in "
            f"log-probability from the baseline ({change:+.3g}): the scores do not add up to "
            "it. More steps, or another baseline, make them more faithful."]


def _generate(loaded: Any, ids: list[int], max_new_tokens: int, ctx: JobContext
              ) -> tuple[list[int], list[str]]:
    """Greedy new tokens after ``ids`` (the project's own generation, with its cancel)."""
    import torch

    from workbench.core.generation.generate import run_generation

    ctx.progress("Generating the sequence to attribute…", None)
    run = run_generation(loaded, torch.tensor([ids], device=loaded.model.device), 1,
                         {"max_new_tokens": max_new_tokens, "do_sample": False}, 0, ctx, 0,
                         exact=True)  # the tokens of the model that is attributed
    ctx.cancel.raise_if_cancelled()
    outputs = run.sequences[0].token_ids
    if not outputs:
        raise WorkbenchError(f"{loaded.name} generated no token after this prompt.")
    notes = []
    if len(outputs) < max_new_tokens:
        notes.append(f"The model ended the sequence after {len(outputs)} of {max_new_tokens} "
                     "new tokens.")
    return outputs, notes


def _expected_calls(method: str, steps: int | None, internal: int | None, ids: list[int],
                    outputs: list[int], kind: str, first: int, tokenizer: Any) -> int:
    """About how many model calls the job makes (for the progress bar)."""
    features = len(_interpretable(ids, tokenizer))
    if kind == CONTINUATION:
        if method == "ablation":
            return features + 2
        return len(outputs) * _gradient_calls(method, steps, internal) + 1
    total = 0
    for k in range(first, len(outputs)):
        total += (features + k + 1 if method == "ablation"
                  else _gradient_calls(method, steps, internal)) + 1
    return total


def _gradient_calls(method: str, steps: int | None, internal: int | None) -> int:
    """Model calls of a gradient method for one target token: integrated gradients runs the
    inputs and the baselines once each, then the steps in batches."""
    if method == "ig":
        return 2 + math.ceil((steps or 1) / (internal or steps or 1))
    return 1


def _attr_method(method: str, runner: Any, layer: Any):
    from captum.attr import (
        FeatureAblation,
        LayerGradientXActivation,
        LayerIntegratedGradients,
        LLMAttribution,
        LLMGradientAttribution,
    )

    if method == "ig":
        return LLMGradientAttribution, LayerIntegratedGradients(runner, layer)
    if method == "ixg":
        return LLMGradientAttribution, LayerGradientXActivation(runner, layer)
    return LLMAttribution, FeatureAblation(runner)


def _llm_rows(loaded: Any, runner: Any, layer: Any, method: str, steps: int | None,
              internal: int | None, inp: Any, targets: list[int]) -> tuple[list[float], Any]:
    """captum's LLM attribution of ``targets`` (after ``inp``): seq_attr and token_attr."""
    import torch

    wrapper_class, algorithm = _attr_method(method, runner, layer)
    llm = wrapper_class(algorithm, loaded.tokenizer)
    target = torch.tensor(targets)
    if method == "ig":
        out = llm.attribute(inp, target=target, n_steps=steps, internal_batch_size=internal)
    elif method == "ixg":
        out = llm.attribute(inp, target=target)
    else:
        out = llm.attribute(inp, target=target, forward_in_tokens=False)
    return out.seq_attr.float().cpu().tolist(), out.token_attr.float().cpu()


def _saliency_row(model: Any, context: list[int], target: int, keep: list[int]) -> list[float]:
    """captum's Saliency of log p(target | context) with respect to the context's token
    embeddings; per kept position, the sum of the absolute gradient over the embedding."""
    import torch
    from captum.attr import Saliency

    device = model.device
    embeds = model.get_input_embeddings()(torch.tensor([context], device=device)).detach()
    embeds.requires_grad_()

    def log_probs(inputs_embeds):
        logits = model(inputs_embeds=inputs_embeds).logits
        return torch.log_softmax(logits[:, -1], dim=-1)

    grads = Saliency(log_probs).attribute(embeds, target=target, abs=True)
    return grads[0, keep].sum(-1).float().cpu().tolist()


def _input(ids: Sequence[int], tokenizer: Any, baseline_id: int | None):
    # input × gradient and saliency have no baseline: captum never replaces a token for them
    return _token_input(ids, tokenizer, 0 if baseline_id is None else baseline_id)


def _with_baseline(inp: Any) -> list[int]:
    """The input's ids with every attributed token replaced by the baseline (captum's own
    replacement: its input with the indicator all zeros)."""
    import torch

    return inp.to_model_input(torch.zeros_like(inp.to_tensor()))[0].tolist()


def _continuation(loaded: Any, runner: Any, layer: Any, method: str, steps: int | None,
                  internal: int | None, baseline_id: int | None, ids: list[int],
                  outputs: list[int], calls: _Calls) -> AttributionResult:
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    keep = _interpretable(ids, tokenizer)
    inp = _input(ids, tokenizer, baseline_id)
    # ablation perturbs the prompt once for every target token at a time
    calls.rows = 1 if method == "ablation" else len(outputs)
    calls.per_row = _gradient_calls(method, steps, internal) if method in ("ig", "ixg") else 0
    if method == "saliency":
        rows = []
        for k, token in enumerate(outputs):
            calls.row = k
            rows.append(_saliency_row(model, ids + outputs[:k], token, keep))
        scores = [sum(column) for column in zip(*rows, strict=True)]
    else:
        scores, token_attr = _llm_rows(loaded, runner, layer, method, steps, internal, inp,
                                       outputs)
        rows = token_attr.tolist()
    batch = [ids + outputs]
    if method == "ig":  # F(input) and F(baseline) in one call
        batch.append(_with_baseline(inp) + outputs)
    values = _logprobs(runner, torch.tensor(batch, device=model.device), len(ids), outputs)
    result = AttributionResult(
        model=loaded.name, kind=CONTINUATION, method=method, baseline=None, baseline_id=None,
        steps=steps, prompt="", target="", tokens=_decode(tokenizer, [ids[i] for i in keep]),
        token_ids=[ids[i] for i in keep], positions=keep, scores=scores,
        outputs=_decode(tokenizer, outputs), output_ids=list(outputs), rows=rows,
        prompt_length=len(ids), target_logprob=values[0])
    if method == "ig":
        result.baseline_logprob = values[1]
        result.delta = sum(scores) - (values[0] - values[1])
    return result


def _generated(loaded: Any, runner: Any, layer: Any, method: str, steps: int | None,
               internal: int | None, baseline_id: int | None, ids: list[int],
               outputs: list[int], first: int, calls: _Calls) -> AttributionResult:
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    sequence = ids + outputs
    columns = _interpretable(sequence[:-1], tokenizer)  # the last token comes before none
    column_of = {p: j for j, p in enumerate(columns)}
    rows: list[list[float | None]] = []
    row_deltas: list[float] = []
    target_logprob = baseline_logprob = 0.0
    calls.rows = len(outputs) - first
    for k in range(first, len(outputs)):
        calls.row = k - first
        context, token = sequence[:len(ids) + k], outputs[k]
        keep = _interpretable(context, tokenizer)  # the prompt has one at least
        inp = _input(context, tokenizer, baseline_id)
        if method == "saliency":
            values = _saliency_row(model, context, token, keep)
        else:
            _, token_attr = _llm_rows(loaded, runner, layer, method, steps, internal, inp,
                                      [token])
            values = token_attr[0].tolist()
        row: list[float | None] = [None] * len(columns)
        for position, value in zip(keep, values, strict=True):
            row[column_of[position]] = value
        rows.append(row)
        batch = [context + [token]]
        if method == "ig":
            batch.append(_with_baseline(inp) + [token])
        logps = _logprobs(runner, torch.tensor(batch, device=model.device), len(context),
                          [token])
        target_logprob += logps[0]
        if method == "ig":
            baseline_logprob += logps[1]
            row_deltas.append(sum(values) - (logps[0] - logps[1]))
    scores = [sum(v for r in rows if (v := r[j]) is not None) for j in range(len(columns))]
    result = AttributionResult(
        model=loaded.name, kind=GENERATED, method=method, baseline=None, baseline_id=None,
        steps=steps, prompt="", target="",
        tokens=_decode(tokenizer, [sequence[p] for p in columns]),
        token_ids=[sequence[p] for p in columns], positions=columns, scores=scores,
        outputs=_decode(tokenizer, outputs[first:]), output_ids=list(outputs[first:]),
        rows=rows, prompt_length=len(ids), target_logprob=target_logprob)
    if method == "ig":
        result.baseline_logprob = baseline_logprob
        result.row_deltas = row_deltas
        result.delta = sum(row_deltas)
    return result


# --- classifiers -----------------------------------------------------------------------------------
def classifier_label(loaded: Any, label: str | int | None) -> int | None:
    """The class index of ``label`` (a label name or an index); None: the predicted one."""
    from workbench.core.models.info import model_labels

    if label is None:
        return None
    names = model_labels(loaded)
    if isinstance(label, int) and not isinstance(label, bool):
        if 0 <= label < len(names):
            return label
    elif isinstance(label, str):
        text = label.strip()
        if text in names:
            return names.index(text)
        if text.isdigit() and int(text) < len(names):
            return int(text)
    raise WorkbenchError(f"{label!r} is not a label of {loaded.name}: its labels are "
                         f"{', '.join(names[:12])}.")


def attribute_classifier(loaded: Any, text: str, label: str | int | None = None,
                         method: str = DEFAULT_METHOD, steps: int | None = None,
                         baseline: str | int | None = None,
                         ctx: JobContext | None = None) -> AttributionResult:
    """Attribute a sequence classifier's log-probability of ``label`` (a name or an index;
    None: the label it predicts) to the tokens of ``text``."""
    import torch
    from captum.attr import (
        FeatureAblation,
        LayerGradientXActivation,
        LayerIntegratedGradients,
        Saliency,
    )

    from workbench.core.models.catalog import CLASSIFIER
    from workbench.core.models.info import context_length, model_labels

    ctx = ctx or JobContext()
    method, used_steps, baseline_label, baseline_id, notices = _prepare(
        loaded, method, steps, baseline)
    loaded.require(CLASSIFIER, "classifier attribution")
    if not isinstance(text, str) or not text.strip():
        raise WorkbenchError("The text is empty.")
    index = classifier_label(loaded, label)
    tokenizer, model = loaded.tokenizer, loaded.model
    limit = min(context_length(model) or 512,
                getattr(tokenizer, "model_max_length", None) or 512)
    full = tokenizer(text)["input_ids"]
    ids = list(tokenizer(text, truncation=True, max_length=limit)["input_ids"])
    if len(full) > len(ids):
        notices.append(f"The text has {len(full):,} tokens: only the first {len(ids):,} fit "
                       f"{loaded.name} and are attributed.")
    keep = _interpretable(ids, tokenizer)
    if not keep:
        raise WorkbenchError("The text holds only special tokens: there is nothing to "
                             "attribute.")
    internal = (steps_per_batch(loaded, len(ids), used_steps or DEFAULT_STEPS)
                if method == "ig" else None)
    if method in ("ixg", "saliency"):
        steps_per_batch(loaded, len(ids), 1)
    start = time.perf_counter()
    runner, layer = _runner(model, baseline_id)
    inp = _input(ids, tokenizer, baseline_id)
    device = model.device
    # the prediction, then captum's calls (IG: inputs, baselines, batches of steps, and the
    # two ends for its delta; then F(baseline) for the report)
    expected = 1 + {"ig": 3 + _gradient_calls(method, used_steps, internal), "ixg": 1,
                    "saliency": 1, "ablation": len(keep) + 1}[method]
    name = METHODS[method].capitalize()
    calls = _Calls(ctx, name, expected)

    def log_probs(indicator, token_input):
        """captum's input (the indicator of kept tokens) → log-probabilities of the labels."""
        logits = runner(token_input.to_model_input(indicator).to(device)).logits
        return torch.log_softmax(logits, dim=-1)

    with _attribution_mode(loaded, calls):
        indicator = inp.to_tensor().to(device)
        with torch.no_grad():
            probs = log_probs(indicator, inp)[0]
        if index is None:
            index = int(probs.argmax())
        delta = baseline_logprob = None
        if method == "ig":
            attr, deltas = LayerIntegratedGradients(log_probs, layer).attribute(
                indicator, target=index, additional_forward_args=(inp,), n_steps=used_steps,
                internal_batch_size=internal, return_convergence_delta=True)
            values = attr.sum(-1)[0, keep]
            delta = float(deltas.sum())
            with torch.no_grad():
                baseline_logprob = float(log_probs(torch.zeros_like(indicator), inp)[0, index])
        elif method == "ixg":
            attr = LayerGradientXActivation(log_probs, layer).attribute(
                indicator, target=index, additional_forward_args=(inp,))
            values = attr.sum(-1)[0, keep]
        elif method == "ablation":
            values = FeatureAblation(log_probs).attribute(
                indicator, baselines=0, target=index, additional_forward_args=(inp,))[0]
        else:
            embeds = model.get_input_embeddings()(torch.tensor([ids], device=device)).detach()
            embeds.requires_grad_()

            def from_embeddings(inputs_embeds):
                return torch.log_softmax(model(inputs_embeds=inputs_embeds).logits, dim=-1)

            grads = Saliency(from_embeddings).attribute(embeds, target=index, abs=True)
            values = grads.sum(-1)[0, keep]
    ctx.progress(f"{name}: done", 1.0)
    scores = values.float().cpu().tolist()
    names = model_labels(loaded)
    result = AttributionResult(
        model=loaded.name, kind=CLASSIFICATION, method=method, baseline=baseline_label,
        baseline_id=baseline_id, steps=used_steps, prompt=text, target=names[index],
        tokens=_decode(tokenizer, [ids[i] for i in keep]), token_ids=[ids[i] for i in keep],
        positions=keep, scores=scores, outputs=[names[index]], output_ids=[index],
        rows=[list(scores)], prompt_length=len(ids), target_logprob=float(probs[index]),
        baseline_logprob=baseline_logprob, delta=delta,
        row_deltas=[] if delta is None else [delta], internal_batch_size=internal,
        seconds=time.perf_counter() - start, notices=notices)
    result.notices += convergence_notices(result)
    return result


# --- colours and exports ---------------------------------------------------------------------------
POSITIVE = (71, 114, 179)  # captum's colours for positive and negative attributions
NEGATIVE = (208, 54, 91)
MAX_TINT = 0.6  # the strongest tint: dark text stays readable on it


def diverging_colour(value: float | None, scale: float) -> tuple[int, int, int]:
    """A light tint for a signed score: blue for positive, red for negative, white for 0
    (and for no value), the strongest at ``|value| = scale``."""
    if value is None or not math.isfinite(value) or scale <= 0:
        return (255, 255, 255)
    share = min(abs(value) / scale, 1.0) * MAX_TINT
    end = POSITIVE if value > 0 else NEGATIVE
    return tuple(round(255 + share * (c - 255)) for c in end)  # type: ignore[return-value]


def scale_of(values: Sequence[float | None]) -> float:
    """The largest absolute value (the colour scale is symmetric around 0)."""
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    return max(finite, default=0.0)


def _same_input(results: Sequence[AttributionResult]) -> None:
    if not results:
        raise WorkbenchError("There is no attribution to export.")
    first = results[0]
    for other in results[1:]:
        if other.token_ids != first.token_ids or other.positions != first.positions:
            raise WorkbenchError("These attributions are of different inputs: export them "
                                 "one at a time.")


def _write(path: str | Path, text: str) -> Path:
    from workbench.core.common.files import cannot_write, write_atomically

    path = Path(path)
    if not path.parent.is_dir():
        raise WorkbenchError(f"Cannot write {path}: the folder {path.parent} does not exist.")
    try:
        return write_atomically(path, text)
    except OSError as exc:
        raise WorkbenchError(cannot_write(path, exc)) from None


def csv_text(results: Sequence[AttributionResult]) -> str:
    """position, token, then one score column per result (the same input)."""
    _same_input(results)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["position", "token"] + [r.column_label() for r in results])
    first = results[0]
    for j, (position, token) in enumerate(zip(first.positions, first.tokens, strict=True)):
        writer.writerow([position, token] + [repr(float(r.scores[j])) for r in results])
    return out.getvalue()


def export_csv(results: Sequence[AttributionResult], path: str | Path) -> Path:
    """Write :func:`csv_text` to ``path`` atomically."""
    return _write(path, csv_text(results))


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #111; }
.text { white-space: pre-wrap; line-height: 1.9; font-family: monospace; font-size: 14px; }
.text span { padding: 1px 0; border-radius: 2px; }
.text .target { font-weight: bold; text-decoration: underline; }
.text .fixed { color: #888; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
td.tok, th.tok { text-align: left; }
code { white-space: pre; background: #eee; }
.legend { display: inline-block; width: 240px; height: 12px; vertical-align: middle;
  background: linear-gradient(to right, rgb%s, #fff, rgb%s); border: 1px solid #999; }
.matrix td { min-width: 2.2em; }
"""


def _cell_token(token: str) -> str:
    """A token in a table cell: its extent shaded, a newline or tab as an escape."""
    shown = token.replace("\n", "\\n").replace("\t", "\\t")
    return f"<code>{html.escape(shown)}</code>"


def _span(token: str, value: float | None, scale: float, css: str = "") -> str:
    r, g, b = diverging_colour(value, scale)
    title = "" if value is None else f" title='{value:+.6g}'"
    shown = html.escape(token.replace("\n", "⏎\n") if token.strip() else
                        (token.replace("\n", "⏎\n") or "∅"))
    klass = f" class='{css}'" if css else ""
    return f"<span{klass} style='background: rgb({r},{g},{b})'{title}>{shown}</span>"


def _text_html(result: AttributionResult, values: Sequence[float | None]) -> str:
    """The input as text, each attributed token tinted by its value; the target after it."""
    scale = scale_of(values)
    by_position = dict(zip(result.positions, values, strict=True))
    tokens = dict(zip(result.positions, result.tokens, strict=True))
    parts = []
    for position in range(max(result.positions, default=-1) + 1):
        if position in by_position:
            parts.append(_span(tokens[position], by_position[position], scale))
    if result.kind == CONTINUATION:
        parts += [_span(t, None, scale, "target") for t in result.outputs]
    elif result.kind == GENERATED:
        parts.append(_span(result.outputs[-1], None, scale, "target"))
    return "<div class='text'>" + "".join(parts) + "</div>"


def html_text(results: Sequence[AttributionResult], title: str = "Input attribution") -> str:
    """A self-contained page (inline CSS, no script, every token escaped): per result its
    settings, the text tinted by the scores, and the matrix of a generated sequence; then one
    table of every result's scores."""
    _same_input(results)
    first = results[0]
    legend = ("<p>Colour: <span class='legend'></span> from −max (red) through 0 (white) to "
              "+max (blue), per method.</p>")
    sections = []
    for r in results:
        facts = [f"<b>{html.escape(r.describe())}</b>", f"model {html.escape(r.model)}",
                 f"log p(target) = {r.target_logprob:.6g}"]
        if r.baseline_logprob is not None:
            facts.append(f"log p(target | baseline) = {r.baseline_logprob:.6g}")
        if r.delta is not None:
            facts.append(f"convergence delta {r.delta:+.3g}")
        body = [f"<h2>{html.escape(r.method_name.capitalize())}</h2>",
                "<p>" + " · ".join(facts) + "</p>", _text_html(r, r.scores)]
        if r.kind == GENERATED and len(r.rows) > 1:
            body.append(_matrix_html(r))
        sections.append("\n".join(body))
    header = "".join(f"<th>{html.escape(r.column_label())}</th>" for r in results)
    rows = []
    for j, (position, token) in enumerate(zip(first.positions, first.tokens, strict=True)):
        cells = "".join(
            f"<td style='background: rgb{diverging_colour(r.scores[j], scale_of(r.scores))}'>"
            f"{r.scores[j]:+.5g}</td>" for r in results)
        rows.append(f"<tr><td>{position}</td><td class='tok'>{_cell_token(token)}</td>{cells}</tr>")
    table = (f"<table><tr><th>position</th><th class='tok'>token</th>{header}</tr>\n"
             + "\n".join(rows) + "</table>")
    kind = {CONTINUATION: "Target", GENERATED: "Generated", CLASSIFICATION: "Label"}[first.kind]
    return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
            "style-src 'unsafe-inline'\">"
            f"<title>{html.escape(title)}</title><style>{_CSS % (NEGATIVE, POSITIVE)}</style>"
            f"</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
            f"<p>{kind}: {_cell_token(first.target)}</p>\n{legend}\n"
            + "\n".join(sections) + f"\n<h2>Scores</h2>\n{table}\n</body></html>\n")


def _matrix_html(result: AttributionResult) -> str:
    scale = scale_of([v for row in result.rows for v in row])
    head = "".join(f"<th>{_cell_token(t)}</th>" for t in result.tokens)
    lines = []
    for output, row in zip(result.outputs, result.rows, strict=True):
        cells = "".join(
            "<td></td>" if v is None else
            f"<td style='background: rgb{diverging_colour(v, scale)}' title='{v:+.6g}'>"
            f"{v:+.2g}</td>" for v in row)
        lines.append(f"<tr><th class='tok'>{_cell_token(output)}</th>{cells}</tr>")
    return ("<p>Each generated token (row) attributed to the tokens before it (columns):</p>"
            f"<table class='matrix'><tr><th></th>{head}</tr>\n" + "\n".join(lines) + "</table>")


def export_html(results: Sequence[AttributionResult], path: str | Path,
                title: str = "Input attribution") -> Path:
    """Write :func:`html_text` to ``path`` atomically."""
    return _write(path, html_text(results, title))

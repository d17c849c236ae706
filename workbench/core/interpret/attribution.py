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

import time
from collections.abc import Sequence
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.interpret.attribution_options import (
    DEFAULT_METHOD,
    DEFAULT_STEPS,
    check_new_tokens,
    prepare_options,
)
from workbench.core.interpret.attribution_result import (
    CONTINUATION,
    GENERATED,
    METHODS,
    AttributionResult,
    convergence_notices,
)
from workbench.core.interpret.attribution_runtime import (
    Calls,
    attribution_mode,
    decode_tokens,
    gradient_calls,
    interpretable,
    model_runner,
    steps_per_batch,
    token_input,
)


def _check_ids(ids: Any, what: str, vocabulary: int) -> list[int]:
    if not isinstance(ids, (list, tuple)) or not ids:
        raise WorkbenchError(f"The {what} holds no tokens.")
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int)
           or not 0 <= i < vocabulary]
    if bad:
        raise WorkbenchError(f"The {what} holds {bad[0]!r}, which is not a token id of this model "
                             f"(0–{vocabulary - 1:,}).")
    return list(ids)


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


def _prompt_ids(prompt: str, prompt_ids: Sequence[int] | None, tokenizer: Any,
                vocabulary: int) -> list[int]:
    """The prompt's token ids: ``prompt_ids`` checked, or ``prompt`` tokenized; refused when
    it holds nothing to attribute."""
    if prompt_ids is not None:
        ids = _check_ids(prompt_ids, "prompt", vocabulary)
    else:
        if not isinstance(prompt, str) or not prompt.strip():
            raise WorkbenchError("The prompt is empty.")
        ids = list(tokenizer(prompt)["input_ids"])
    if not interpretable(ids, tokenizer):
        raise WorkbenchError("The prompt holds only special tokens: there is nothing to "
                             "attribute.")
    return ids


def _target_ids(target: str | Sequence[int] | None, max_new_tokens: int | None,
                tokenizer: Any, vocabulary: int) -> tuple[list[int], str]:
    """The target's token ids (none yet when they are to be generated) and its kind,
    CONTINUATION or GENERATED."""
    if isinstance(target, str):
        if not target:
            raise WorkbenchError("The target is empty: give the continuation to attribute.")
        outputs = list(tokenizer.encode(target, add_special_tokens=False))
        if not outputs:
            raise WorkbenchError(f"The target {target!r} makes no tokens.")
        return outputs, CONTINUATION
    if target is not None:
        return _check_ids(target, "generated sequence", vocabulary), GENERATED
    check_new_tokens(max_new_tokens)
    return [], GENERATED


def _steps_that_fit(loaded: Any, method: str, used_steps: int | None, length: int
                    ) -> int | None:
    """Integrated gradients' steps per model call for ``length`` tokens (None: all at once);
    refused when the sequence is longer than the model's context, or when one gradient
    pass would not fit in memory."""
    from workbench.core.models.info import context_length

    context = context_length(loaded.model)
    if context is not None and length > context:
        raise WorkbenchError(f"The prompt and the target make {length:,} tokens, more than "
                             f"{loaded.name}'s context of {context:,}.")
    if method == "ig":
        return steps_per_batch(loaded, length, used_steps or DEFAULT_STEPS)
    if method != "ablation":
        steps_per_batch(loaded, length, 1)  # one gradient pass must fit
    return None


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
    method, used_steps, baseline_label, baseline_id, notices = prepare_options(
        loaded, method, steps, baseline)
    loaded.require(CAUSAL_LM, "attribution of a continuation")
    tokenizer, model = loaded.tokenizer, loaded.model
    vocabulary = model.get_input_embeddings().num_embeddings
    if (target is None) == (max_new_tokens is None):
        raise WorkbenchError("Give either a target (a continuation of the prompt) or a number "
                             "of new tokens to generate, not both or neither.")
    ids = _prompt_ids(prompt, prompt_ids, tokenizer, vocabulary)
    outputs, kind = _target_ids(target, max_new_tokens, tokenizer, vocabulary)
    internal = _steps_that_fit(loaded, method, used_steps,
                               len(ids) + (len(outputs) if outputs else max_new_tokens or 0))
    start = time.perf_counter()
    if max_new_tokens is not None:
        outputs, more = _generate(loaded, ids, max_new_tokens, ctx)
        notices += more
    first = len(outputs) - 1 if only_last and kind == GENERATED else 0
    label = METHODS[method].capitalize()
    calls = Calls(ctx, label, _expected_calls(method, used_steps, internal, ids, outputs, kind,
                                              first, tokenizer))
    runner, layer = model_runner(model, baseline_id)
    with attribution_mode(loaded, calls):
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
    features = len(interpretable(ids, tokenizer))
    if kind == CONTINUATION:
        if method == "ablation":
            return features + 2
        return len(outputs) * gradient_calls(method, steps, internal) + 1
    total = 0
    for k in range(first, len(outputs)):
        total += (features + k + 1 if method == "ablation"
                  else gradient_calls(method, steps, internal)) + 1
    return total


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



def _with_baseline(inp: Any) -> list[int]:
    """The input's ids with every attributed token replaced by the baseline (captum's own
    replacement: its input with the indicator all zeros)."""
    import torch

    return inp.to_model_input(torch.zeros_like(inp.to_tensor()))[0].tolist()


def _continuation(loaded: Any, runner: Any, layer: Any, method: str, steps: int | None,
                  internal: int | None, baseline_id: int | None, ids: list[int],
                  outputs: list[int], calls: Calls) -> AttributionResult:
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    keep = interpretable(ids, tokenizer)
    inp = token_input(ids, tokenizer, baseline_id)
    # ablation perturbs the prompt once for every target token at a time
    calls.rows = 1 if method == "ablation" else len(outputs)
    calls.per_row = gradient_calls(method, steps, internal) if method in ("ig", "ixg") else 0
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
        steps=steps, prompt="", target="", tokens=decode_tokens(tokenizer, [ids[i] for i in keep]),
        token_ids=[ids[i] for i in keep], positions=keep, scores=scores,
        outputs=decode_tokens(tokenizer, outputs), output_ids=list(outputs), rows=rows,
        prompt_length=len(ids), target_logprob=values[0])
    if method == "ig":
        result.baseline_logprob = values[1]
        result.delta = sum(scores) - (values[0] - values[1])
    return result


def _generated(loaded: Any, runner: Any, layer: Any, method: str, steps: int | None,
               internal: int | None, baseline_id: int | None, ids: list[int],
               outputs: list[int], first: int, calls: Calls) -> AttributionResult:
    import torch

    tokenizer, model = loaded.tokenizer, loaded.model
    sequence = ids + outputs
    columns = interpretable(sequence[:-1], tokenizer)  # the last token comes before none
    column_of = {p: j for j, p in enumerate(columns)}
    rows: list[list[float | None]] = []
    row_deltas: list[float] = []
    target_logprob = baseline_logprob = 0.0
    calls.rows = len(outputs) - first
    for k in range(first, len(outputs)):
        calls.row = k - first
        context, token = sequence[:len(ids) + k], outputs[k]
        keep = interpretable(context, tokenizer)  # the prompt has one at least
        inp = token_input(context, tokenizer, baseline_id)
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
        tokens=decode_tokens(tokenizer, [sequence[p] for p in columns]),
        token_ids=[sequence[p] for p in columns], positions=columns, scores=scores,
        outputs=decode_tokens(tokenizer, outputs[first:]), output_ids=list(outputs[first:]),
        rows=rows, prompt_length=len(ids), target_logprob=target_logprob)
    if method == "ig":
        result.baseline_logprob = baseline_logprob
        result.row_deltas = row_deltas
        result.delta = sum(row_deltas)
    return result

"""Attribution of a sequence classifier's label to the tokens of its text (captum)."""

from __future__ import annotations

import time
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.interpret.attribution_options import (
    DEFAULT_METHOD,
    DEFAULT_STEPS,
    prepare_options,
)
from workbench.core.interpret.attribution_result import (
    CLASSIFICATION,
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
    from workbench.core.models.catalog import CLASSIFIER
    from workbench.core.models.info import model_labels

    ctx = ctx or JobContext()
    method, used_steps, baseline_label, baseline_id, notices = prepare_options(
        loaded, method, steps, baseline)
    loaded.require(CLASSIFIER, "classifier attribution")
    if not isinstance(text, str) or not text.strip():
        raise WorkbenchError("The text is empty.")
    index = classifier_label(loaded, label)
    tokenizer, model = loaded.tokenizer, loaded.model
    ids = _text_ids(loaded, text, notices)
    keep = interpretable(ids, tokenizer)
    if not keep:
        raise WorkbenchError("The text holds only special tokens: there is nothing to "
                             "attribute.")
    internal = (steps_per_batch(loaded, len(ids), used_steps or DEFAULT_STEPS)
                if method == "ig" else None)
    if method in ("ixg", "saliency"):
        steps_per_batch(loaded, len(ids), 1)
    start = time.perf_counter()
    runner, layer = model_runner(model, baseline_id)
    inp = token_input(ids, tokenizer, baseline_id)
    # the prediction, then captum's calls (IG: inputs, baselines, batches of steps, and the
    # two ends for its delta; then F(baseline) for the report)
    expected = 1 + {"ig": 3 + gradient_calls(method, used_steps, internal), "ixg": 1,
                    "saliency": 1, "ablation": len(keep) + 1}[method]
    name = METHODS[method].capitalize()
    calls = Calls(ctx, name, expected)
    with attribution_mode(loaded, calls):
        index, probs, values, delta, baseline_logprob = _label_attribution(
            model, runner, layer, inp, ids, keep, index, method, used_steps, internal)
    ctx.progress(f"{name}: done", 1.0)
    scores = values.float().cpu().tolist()
    names = model_labels(loaded)
    result = AttributionResult(
        model=loaded.name, kind=CLASSIFICATION, method=method, baseline=baseline_label,
        baseline_id=baseline_id, steps=used_steps, prompt=text, target=names[index],
        tokens=decode_tokens(tokenizer, [ids[i] for i in keep]), token_ids=[ids[i] for i in keep],
        positions=keep, scores=scores, outputs=[names[index]], output_ids=[index],
        rows=[list(scores)], prompt_length=len(ids), target_logprob=float(probs[index]),
        baseline_logprob=baseline_logprob, delta=delta,
        row_deltas=[] if delta is None else [delta], internal_batch_size=internal,
        seconds=time.perf_counter() - start, notices=notices)
    result.notices += convergence_notices(result)
    return result


def _text_ids(loaded: Any, text: str, notices: list[str]) -> list[int]:
    """The token ids of ``text``, cut to what the model takes (with a notice when cut)."""
    from workbench.core.models.info import context_length

    tokenizer = loaded.tokenizer
    limit = min(context_length(loaded.model) or 512,
                getattr(tokenizer, "model_max_length", None) or 512)
    full = tokenizer(text)["input_ids"]
    ids = list(tokenizer(text, truncation=True, max_length=limit)["input_ids"])
    if len(full) > len(ids):
        notices.append(f"The text has {len(full):,} tokens: only the first {len(ids):,} fit "
                       f"{loaded.name} and are attributed.")
    return ids


def _label_attribution(model: Any, runner: Any, layer: Any, inp: Any, ids: list[int],
                       keep: list[int], index: int | None, method: str,
                       used_steps: int | None, internal: int | None
                       ) -> tuple[int, Any, Any, float | None, float | None]:
    """captum's attribution of the label ``index`` (None: the predicted one) to the kept
    tokens: the label's index, the log-probabilities of the labels, the kept tokens'
    scores, and for integrated gradients its delta and log p(label | baseline)."""
    import torch
    from captum.attr import (
        FeatureAblation,
        LayerGradientXActivation,
        LayerIntegratedGradients,
        Saliency,
    )

    device = model.device

    def log_probs(indicator, token_input):
        """captum's input (the indicator of kept tokens) → log-probabilities of the labels."""
        logits = runner(token_input.to_model_input(indicator).to(device)).logits
        return torch.log_softmax(logits, dim=-1)

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
    return index, probs, values, delta, baseline_logprob

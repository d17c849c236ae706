"""Exploring a generation's steps: the next-token logits, a reshaped distribution, branches."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.common.units import LN2, entropy
from workbench.core.generation.generate import chain_processors, eos_ids, run_generation
from workbench.core.generation.records import GeneratedSequence, GenerationResult
from workbench.core.generation.settings import SamplingSettings, row_chain


def next_token_logits(loaded: Any, token_ids: list[int]) -> Any:
    """The model's raw logits for the token after ``token_ids`` (a 1-D float tensor), on
    the decoding path generation uses, so they are the logits its steps recorded."""
    import torch

    model = loaded.decoding().model if hasattr(loaded, "decoding") else loaded.model
    ids = torch.tensor([token_ids], device=loaded.model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    return logits[0, -1].float().cpu()


@dataclass(frozen=True)
class Distribution:
    """A next-token distribution before and after a chain of processors."""

    token_ids: list[int]  # the top candidates by raw probability
    raw: list[float]
    processed: list[float]
    kept: list[bool]
    kept_count: int
    kept_mass: float
    entropy: float  # bits, processed


def explore_distribution(logits: Any, settings: SamplingSettings, top_n: int = 20,
                         prefix_ids: list[int] | None = None, tokenizer: Any = None,
                         breaker_ids: frozenset[int] | None = None) -> Distribution:
    """Reshape stored ``logits`` with ``settings``' processors, without running the model.

    Uses the same chain as generation (``sampling.row_chain``, in the settings' sampler
    order; greedy keeps the most likely token). DRY needs the ``tokenizer`` or the
    ``breaker_ids`` of its sequence breakers (``samplers.breaker_token_ids``); Mirostat
    shows its first step (``mu = 2 · tau``).
    """
    import torch

    scores = logits.reshape(1, -1).float()
    ids = torch.tensor([prefix_ids or [0]], dtype=torch.long)
    processed = row_chain(settings, tokenizer, breaker_ids=breaker_ids)(ids, scores.clone())[0]
    raw_p = torch.softmax(scores[0], -1)
    proc_logp = torch.log_softmax(processed, -1)
    proc_p = proc_logp.exp()
    kept = proc_p > 0
    top = torch.topk(raw_p, min(top_n, raw_p.shape[-1])).indices
    return Distribution(token_ids=top.tolist(), raw=raw_p[top].tolist(),
                        processed=proc_p[top].tolist(), kept=kept[top].tolist(),
                        kept_count=int(kept.sum()), kept_mass=float(raw_p[kept].sum()),
                        entropy=float(entropy(proc_p, proc_logp)) / LN2)


@dataclass
class Branch:
    """A sequence that takes another candidate at one step and continues from there."""

    parent: int  # the sequence it branches from
    step: int
    sequence: GeneratedSequence

    @property
    def cumulative_logprob(self) -> float:
        """Sum of the natural-log probabilities of all its tokens under the model."""
        return sum(math.log(max(s.raw_probability, 1e-45)) for s in self.sequence.steps)

    @property
    def label(self) -> str:
        token = self.sequence.steps[self.step].text if self.step < len(self.sequence.steps) else ""
        return f"branch at step {self.step} ({token!r}), log-prob {self.cumulative_logprob:.2f}"


def branch(loaded: Any, result: GenerationResult, parent: int, step: int, token_id: int,
           settings: SamplingSettings, ctx: JobContext | None = None, top_n: int = 10) -> Branch:
    """Take ``token_id`` instead of the chosen token at ``step`` of sequence ``parent``,
    then let the model continue with ``settings`` (one sampled or greedy sequence)."""
    import torch

    ctx = ctx or JobContext()
    base = result.sequences[parent]
    if not 0 <= step < len(base.steps):
        raise WorkbenchError(f"Step {step} is not part of sequence {parent + 1}.")
    settings, _ = replace(settings, num_beams=1, num_return_sequences=1).effective()
    settings.validate()
    prefix = result.prompt_token_ids + base.token_ids[:step]
    forced = next((c for c in base.steps[step].candidates if c.token_id == token_id), None)
    if forced is None:  # not among the recorded candidates: ask the model
        logp = torch.log_softmax(next_token_logits(loaded, prefix), -1)
        raw = float(logp[token_id].exp())
        forced_step = replace(base.steps[step], token_id=token_id, raw_probability=raw,
                              probability=float("nan"), surprisal=-float(logp[token_id]) / LN2)
    else:
        forced_step = replace(base.steps[step], token_id=token_id,
                              raw_probability=forced.raw_probability,
                              probability=forced.probability,
                              surprisal=-math.log(max(forced.raw_probability, 1e-45)) / LN2)
    tokenizer = loaded.tokenizer
    head_ids = base.token_ids[:step] + [token_id]
    head_text = tokenizer.decode(head_ids, skip_special_tokens=True)
    forced_step = replace(forced_step, text=head_text[len(tokenizer.decode(
        base.token_ids[:step], skip_special_tokens=True)):])
    remaining = max(settings.max_new_tokens - step - 1, 0)
    steps = list(base.steps[:step]) + [forced_step]
    ids = list(head_ids)
    if remaining and token_id not in eos_ids(loaded.model, tokenizer):
        input_ids = torch.tensor([prefix + [token_id]], device=loaded.model.device)
        tail_settings = replace(settings, max_new_tokens=remaining)
        run = run_generation(loaded, input_ids, 1, tail_settings.generate_kwargs(own_chain=True),
                             settings.seed, ctx, top_n,
                             extra_processors=chain_processors(loaded, tail_settings))
        tail = run.sequences[0]
        ids += tail.token_ids
        # each step's text is what it adds to the whole branch's decoded text
        shown = head_text
        for s in tail.steps:
            full = tokenizer.decode(ids[:step + 2 + s.index], skip_special_tokens=True)
            steps.append(replace(s, index=step + 1 + s.index, text=full[len(shown):]))
            shown = full
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return Branch(parent, step, GeneratedSequence(text, ids, steps))

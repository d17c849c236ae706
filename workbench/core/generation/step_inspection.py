"""What the Generate tab shows of one step, computed on the worker thread (the model, the
tokenizer, torch): the distribution after each sampler stage (the stage inspector), and
the texts of the top candidates (the distribution explorer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.generation.settings import SamplingSettings, Stage

TOP_N = 10  # candidates shown of a step


@dataclass(frozen=True)
class StageInspection:
    """What the inspector shows for one step: each stage's numbers, and the probability
    after each stage of the same candidates (the most likely by raw probability, and the
    chosen token)."""

    step: int
    chosen_id: int
    chosen_text: str
    stages: list[Stage]
    token_ids: list[int]  # the candidates, most likely (raw) first; the chosen one included
    texts: list[str]
    probabilities: list[list[float]]  # per stage, of each candidate
    settings: SamplingSettings
    source: str  # whose settings these are, in words
    notes: list[str] = field(default_factory=list)


def inspect_step(loaded: Any, prefix: list[int], chosen: int, step: int,
                 settings: SamplingSettings, source: str, row: int = 0,
                 notes: list[str] | None = None, top_n: int = TOP_N) -> StageInspection:
    """The stages of ``settings``' chain at the step after ``prefix`` (which chose
    ``chosen``), for sequence ``row``: one forward pass for the logits, then
    :func:`~workbench.core.generation.settings.sampler_stages`. Runs on the worker thread (the model
    and the tokenizer)."""
    import torch

    from workbench.core.generation.explore import next_token_logits
    from workbench.core.generation.samplers import breaker_token_ids
    from workbench.core.generation.settings import (
        parse_sequence_breakers,
        sampler_chain,
        sampler_stages,
    )

    logits = next_token_logits(loaded, prefix)
    breakers = None
    if settings.dry_multiplier > 0:
        breakers = breaker_token_ids(loaded.tokenizer,
                                     parse_sequence_breakers(settings.dry_sequence_breakers))
    stages = sampler_stages(settings, prefix, logits, chosen, row=row, breaker_ids=breakers)
    # the same chain again, to keep each stage's probabilities of the candidates shown
    ids = torch.tensor([prefix], dtype=torch.long)
    scores = logits.reshape(1, -1).float()
    top = torch.topk(scores[0], min(top_n, scores.shape[-1])).indices.tolist()
    candidates = top if chosen in top else [*top, chosen]
    probabilities = [torch.softmax(scores[0], -1)[candidates].tolist()]
    effective, _ = settings.effective()
    for _, processor in sampler_chain(effective, greedy_argmax=False, breaker_ids=breakers,
                                      row=row):
        scores = processor(ids, scores.clone())
        probabilities.append(torch.softmax(scores[0], -1)[candidates].tolist())
    notes = list(notes or [])
    active = effective.active_stages()
    if "mirostat" in active:
        notes.append("Mirostat is shown from its first step's mu (2 · tau): at later steps "
                     "its mu depends on the tokens before.")
    if not effective.do_sample:
        notes.append("beam search picks tokens by the beams' total scores, not from these "
                     "distributions." if effective.num_beams > 1 else
                     "greedy decoding takes the most likely token of the last stage.")
    texts = [loaded.tokenizer.decode([i]) for i in candidates]
    return StageInspection(step, chosen, loaded.tokenizer.decode([chosen]), stages, candidates,
                           texts, probabilities, settings, source, notes)


def with_texts(loaded, logits, breakers: str = "", top_n: int = TOP_N) -> tuple:
    """``logits`` and the text of the ``top_n`` tokens the explorer can show (the top
    candidates by raw probability do not depend on the settings), decoded here on the
    worker thread, and DRY's sequence ``breakers`` as token ids ({text: ids}, empty when
    the text does not read)."""
    import torch

    from workbench.core.generation.samplers import breaker_token_ids
    from workbench.core.generation.settings import parse_sequence_breakers

    top = torch.topk(logits.reshape(-1).float(), min(top_n, logits.numel())).indices.tolist()
    try:
        ids = {breakers: breaker_token_ids(loaded.tokenizer, parse_sequence_breakers(breakers))}
    except WorkbenchError:
        ids = {}
    return logits, {i: loaded.tokenizer.decode([i]) for i in top}, ids

"""Several decoding strategies on one prompt and seed, side by side.

Sampled and greedy strategies run together in one batched ``generate`` call: the batch
holds one row per returned sequence, and each row is shaped by its own strategy's chain
(``sampling.row_chain``: transformers' own processors and warpers and the samplers of
``core.generation.samplers``, in the strategy's sampler order; by default the order ``generate`` uses:
repetition penalty, no-repeat n-gram, temperature, top-k, top-p, min-p, typical-p, ...).
Beam search cannot share a sampling batch and runs on its own, through its own chain too.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.generation.generate import chain_processors, prepare_prompt, run_generation
from workbench.core.generation.memory import check_generation_memory
from workbench.core.generation.records import GeneratedSequence, TokenEvent
from workbench.core.generation.settings import (
    MAX_SEQUENCES,
    SamplingSettings,
    Strategy,
    row_chain,
)

BEAM_EVENTS = 10 * MAX_SEQUENCES  # TokenEvent numbers of beam strategies start here
SELF_BLEU_MAX = 100  # self-BLEU compares every pair: its cost grows with sequences²


@dataclass
class StrategyResult:
    name: str
    settings: dict
    sequences: list[GeneratedSequence]
    seconds: float
    batched: bool
    mean_logprob: float = float("nan")
    perplexity: float = float("nan")
    distinct_1: float = float("nan")
    distinct_2: float = float("nan")
    self_bleu: float | None = None
    tokens_per_second: float = 0.0
    diverges_at: int | None = None  # first token index where it leaves the first strategy

    def summary(self) -> dict:
        data = asdict(self)
        data.pop("sequences")
        data["texts"] = [s.text for s in self.sequences]
        return data


@dataclass
class CompareResult:
    prompt: str
    seed: int
    strategies: list[StrategyResult]
    seconds: float
    stopped: bool = False
    notes: list[str] = field(default_factory=list)
    decoding: str = "exact"  # the decoding path (workbench.core.models.decoding)

    def to_dict(self) -> dict:
        return {"prompt": self.prompt, "seed": self.seed, "seconds": round(self.seconds, 4),
                "stopped": self.stopped, "notes": self.notes, "decoding": self.decoding,
                "strategies": [s.summary() for s in self.strategies]}


def per_row_processor(chains: list, row_owner: list[int]):
    """One processor that applies ``chains[row_owner[row]]`` to each row of the batch."""
    import torch
    from transformers import LogitsProcessor

    groups = [torch.tensor([r for r, o in enumerate(row_owner) if o == c]) for c in range(len(chains))]

    class PerRow(LogitsProcessor):
        def __call__(self, ids: torch.LongTensor, scores: torch.FloatTensor):
            out = torch.empty_like(scores)
            for chain, rows in zip(chains, groups, strict=True):
                if len(rows):
                    out[rows] = chain(ids[rows], scores[rows])
            return out

    return PerRow()


def distinct_n(sequences: list[list[int]], n: int) -> float:
    """Unique n-grams ÷ all n-grams over the sequences (token ids)."""
    grams = [tuple(seq[i:i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def self_bleu(texts: list[str]) -> float | None:
    """Mean sacrebleu sentence BLEU of each text against all the others (None below 2)."""
    if len(texts) < 2:
        return None
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)
    scores = [bleu.sentence_score(t, texts[:i] + texts[i + 1:]).score for i, t in enumerate(texts)]
    return sum(scores) / len(scores)


def strategy_runs(strategies: list[Strategy], batched: bool = True) -> list[tuple[int, bool]]:
    """The ``generate`` calls :func:`compare` makes, as (rows, beam search): one batch for
    the sampled and greedy strategies, one call per beam-search strategy. Refuses more than
    ``MAX_SEQUENCES`` rows in all (the model is not needed to tell)."""
    together = sum(s.settings.num_return_sequences for s in strategies
                   if batched and s.settings.num_beams == 1)
    runs = [(together, False)] if together else []
    runs += [(s.settings.rows, s.settings.num_beams > 1) for s in strategies
             if not batched or s.settings.num_beams > 1]
    total = sum(rows for rows, _ in runs)
    if total > MAX_SEQUENCES:
        raise WorkbenchError(f"The strategies ask for {total:,} sequences (or beams) in all: at "
                             f"most {MAX_SEQUENCES:,} at once (each is a row of the batch, with "
                             "its own cache and scores).")
    return runs


def batch_owners(strategies: list[Strategy]) -> list[int]:
    """For each row of the shared batch, the index of the strategy it belongs to.

    Strategies with beams run on their own; their TokenEvents carry ``sequence`` =
    ``BEAM_EVENTS + MAX_SEQUENCES * strategy index + sequence`` (see ``owner_of``): no
    batch row or sequence number reaches those (``MAX_SEQUENCES`` caps both).
    """
    return [i for i, s in enumerate(strategies) if s.settings.num_beams == 1
            for _ in range(s.settings.num_return_sequences)]


def owner_of(sequence: int, owners: list[int]) -> tuple[int, int]:
    """(strategy index, sequence within that strategy) of a TokenEvent's ``sequence``."""
    if sequence >= BEAM_EVENTS:
        return divmod(sequence - BEAM_EVENTS, MAX_SEQUENCES)
    strategy = owners[sequence]
    return strategy, owners[:sequence].count(strategy)


def compare(loaded: Any, prompt: str, strategies: list[Strategy], seed: int = 0,
            max_new_tokens: int = 64, chat: bool = True, ctx: JobContext | None = None,
            top_n: int = 10, batched: bool = True) -> CompareResult:
    """Run 2–6 strategies on one prompt and seed; events are TokenEvents whose ``sequence``
    is the row in the batch (see ``owner_of``)."""
    ctx = ctx or JobContext()
    if not 1 <= len(strategies) <= 6:
        raise WorkbenchError(f"Compare takes 1 to 6 strategies, not {len(strategies)}.")
    notes: list[str] = []
    for s in strategies:
        s.settings.max_new_tokens, s.settings.seed, s.settings.chat = max_new_tokens, seed, chat
        s.settings.validate()
        s.settings, changed = s.settings.effective()
        notes += [f"{s.name}: {n}" for n in changed]
    runs = strategy_runs(strategies, batched)
    input_ids, more = prepare_prompt(loaded, prompt, chat, max_new_tokens)
    check_generation_memory(loaded, input_ids.shape[1], max_new_tokens, runs, top_n)
    notes += more
    start = time.perf_counter()
    together = [i for i, s in enumerate(strategies) if s.settings.num_beams == 1]
    if not batched:
        together = []
    results: dict[int, StrategyResult] = {}
    run = None
    if together:
        owner = batch_owners(strategies)
        chains = [row_chain(strategies[i].settings, loaded.tokenizer,
                            device=loaded.model.device) for i in together]
        processor = per_row_processor(chains, [together.index(o) for o in owner])
        kwargs = SamplingSettings(max_new_tokens=max_new_tokens, do_sample=True,
                                  num_beams=1).generate_kwargs(own_chain=True)
        batch = input_ids.repeat(len(owner), 1)
        run = run_generation(loaded, batch, len(owner), kwargs, seed, ctx, top_n,
                             extra_processors=(processor,))
        for i in together:
            seqs = [seq for seq, o in zip(run.sequences, owner, strict=True) if o == i]
            results[i] = StrategyResult(strategies[i].name, asdict(strategies[i].settings),
                                        seqs, run.seconds, batched=True)
    for i, s in enumerate(strategies):
        if i in results or ctx.cancel.cancelled:
            continue
        run = run_generation(loaded, input_ids, s.settings.num_return_sequences,
                             s.settings.generate_kwargs(own_chain=True), seed, _offset(ctx, i),
                             top_n, beams=s.settings.num_beams > 1,
                             extra_processors=chain_processors(loaded, s.settings))
        results[i] = StrategyResult(s.name, asdict(s.settings), run.sequences, run.seconds,
                                    batched=False)
    ordered = [results[i] for i in range(len(strategies)) if i in results]
    summarise(ordered)
    notes += [f"{r.name}: self-BLEU of the first {SELF_BLEU_MAX} of its {len(r.sequences)} "
              "sequences (it compares every pair)." for r in ordered
              if len(r.sequences) > SELF_BLEU_MAX]
    if together and len(together) > 1:
        notes.append("Sampled and greedy strategies ran in one batch: with the same seed, a "
                     "sampled strategy's text can differ from a run of it alone.")
    if run is not None and run.note:
        notes.append(run.note)
    return CompareResult(prompt, seed, ordered, time.perf_counter() - start,
                         stopped=ctx.cancel.cancelled, notes=notes,
                         decoding="exact" if run is None else run.decoding)


def _offset(ctx: JobContext, index: int) -> JobContext:
    """Events of a strategy run on its own, tagged with its index as ``sequence``."""

    def emit(event: Any) -> None:
        if isinstance(event, TokenEvent):
            event = replace(event, sequence=BEAM_EVENTS + index * MAX_SEQUENCES + event.sequence)
        ctx.emit(event)

    return JobContext(cancel=ctx.cancel, emit=emit)


def summarise(results: list[StrategyResult]) -> None:
    """Fill in each result's summary (mean log-probability, perplexity, distinct-1/2,
    self-BLEU, the first divergence from the first result): what compare reports a
    strategy, and the sweep a cell."""
    reference = results[0].sequences[0].token_ids if results and results[0].sequences else []
    for r in results:
        steps = [st for seq in r.sequences for st in seq.steps]
        logps = [math.log(max(st.raw_probability, 1e-45)) for st in steps
                 if not math.isnan(st.raw_probability)]
        if logps:
            r.mean_logprob = sum(logps) / len(logps)
            r.perplexity = math.exp(-r.mean_logprob)
        ids = [seq.token_ids for seq in r.sequences]
        r.distinct_1, r.distinct_2 = distinct_n(ids, 1), distinct_n(ids, 2)
        r.self_bleu = self_bleu([seq.text for seq in r.sequences[:SELF_BLEU_MAX]])
        tokens = sum(len(t) for t in ids)
        r.tokens_per_second = tokens / r.seconds if r.seconds > 0 else 0.0
        first = ids[0] if ids else []
        r.diverges_at = next((k for k, (a, b) in enumerate(zip(first, reference, strict=False)) if a != b),
                             None if len(first) == len(reference) else min(len(first), len(reference)))

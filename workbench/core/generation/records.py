"""What generation records of each step and returns, and the recorders in its processor chain."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.settings import check_fields, setting
from workbench.core.common.units import LN2, entropy


@dataclass
class CandidateSettings:
    """How many candidates of each step a result lists, described once (``generate
    --top-n`` and ``generate compare --top-n`` are made from it; the Generate tab shows a
    fixed number, ``step_inspection.TOP_N``)."""

    top_n: int = setting(
        0, "The number of candidates per step", low=0, high=1_000_000, off="none",
        high_note="more than any vocabulary",
        help="with --json: each step's top-N candidates, raw and processed")

    def validate(self) -> None:
        """Raise WorkbenchError unless the number lies in its range."""
        check_fields(self)


@dataclass(frozen=True)
class Candidate:
    """One candidate for the next token at a step."""

    token_id: int
    text: str
    raw_probability: float  # softmax of the model's logits
    probability: float  # after the processor chain: what the sampler drew from
    kept: bool  # still possible after top-k / top-p / min-p ...


@dataclass(frozen=True)
class StepRecord:
    """What the sampler saw and did at one step of one sequence."""

    index: int
    token_id: int
    text: str
    raw_probability: float
    probability: float
    entropy: float  # bits, of the processed distribution
    raw_entropy: float  # bits, of the model's distribution
    surprisal: float  # bits, -log2 of the chosen token's raw probability
    kept_count: int
    kept_mass: float  # raw probability mass of the kept set
    candidates: tuple[Candidate, ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of sequence ``sequence``, as it streams in."""

    sequence: int
    index: int
    token_id: int
    text: str  # the text this token adds
    probability: float
    step: StepRecord | None = None


@dataclass
class GeneratedSequence:
    text: str
    token_ids: list[int]
    steps: list[StepRecord]

    @property
    def probabilities(self) -> list[float]:
        return [s.probability for s in self.steps]

    @property
    def mean_logprob(self) -> float:
        """Mean natural-log probability of the tokens under the model (raw distribution)."""
        if not self.steps:
            return float("nan")
        return sum(math.log(max(s.raw_probability, 1e-45)) for s in self.steps) / len(self.steps)

    @property
    def perplexity(self) -> float:
        return math.exp(-self.mean_logprob) if self.steps else float("nan")


@dataclass
class GenerationResult:
    prompt: str
    sequences: list[GeneratedSequence]
    seconds: float
    stopped: bool
    settings: dict = field(default_factory=dict)
    prompt_token_ids: list[int] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    decoding: str = "exact"  # the decoding path it ran on (workbench.core.models.decoding)

    @property
    def text(self) -> str:
        return self.sequences[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.sequences[0].token_ids

    @property
    def probabilities(self) -> list[float]:
        return self.sequences[0].probabilities

    @property
    def new_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.sequences)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self, top_n: int = 0) -> dict:
        def step_dict(step: StepRecord) -> dict:
            data = {k: v for k, v in asdict(step).items() if k != "candidates"}
            if top_n:
                data["candidates"] = [asdict(c) for c in step.candidates[:top_n]]
            return data

        return {
            "prompt": self.prompt, "settings": self.settings, "seconds": round(self.seconds, 4),
            "stopped": self.stopped, "tokens_per_second": round(self.tokens_per_second, 2),
            "notices": self.notices, "decoding": self.decoding,
            "text": self.text, "token_ids": self.token_ids,
            "sequences": [{"text": s.text, "token_ids": s.token_ids,
                           "mean_logprob": s.mean_logprob, "perplexity": s.perplexity,
                           "steps": [step_dict(st) for st in s.steps]} for s in self.sequences],
        }


@contextmanager
def recording_chain(model: Any, first: Any = None, last: Any = None,
                    extra: tuple[Any, ...] = ()) -> Iterator[None]:
    """Put ``first`` at the start and ``last`` at the end of generate()'s processor chain.

    A ``logits_processor`` passed to generate() runs before the sampling warpers
    (temperature, top-k, top-p), so it would not see the distribution actually sampled
    from. generate() assembles its chain in ``_get_logits_processor``; the recorders are
    added to that chain for this call only.
    """
    original = model._get_logits_processor

    def with_recorders(*args: Any, **kwargs: Any):
        chain = original(*args, **kwargs)
        if first is not None:
            chain.insert(0, first)
        chain.extend(extra)
        if last is not None:
            chain.append(last)
        return chain

    model._get_logits_processor = with_recorders
    try:
        yield
    finally:
        del model._get_logits_processor  # back to the class's own method


class StepInspector:
    """Records the raw and processed distributions of each step; builds StepRecords.

    The recorders compute each step's statistics for the whole batch at once (a few
    vectorised operations); :meth:`record` then only picks a row's numbers.
    """

    def __init__(self, tokenizer: Any, top_n: int) -> None:
        import torch
        from transformers import LogitsProcessor

        self.tokenizer = tokenizer
        self.top_n = top_n
        self.raw_logp: Any = None
        self.proc_logp: Any = None
        self.stats: dict[str, list] = {}
        self.start = 0  # prompt length, to number steps in messages
        inspector = self

        class Raw(LogitsProcessor):
            def __call__(self, ids: torch.LongTensor, scores: torch.FloatTensor):
                if torch.isnan(scores).any():
                    raise WorkbenchError(
                        f"The model returned NaN logits at step {ids.shape[1] - inspector.start}"
                        " (its weights or this dtype may be broken: try float32).")
                inspector.raw_logp = torch.log_softmax(scores.detach().float(), dim=-1)
                return scores

        class Processed(LogitsProcessor):
            def __call__(self, ids: torch.LongTensor, scores: torch.FloatTensor):
                inspector.summarise(torch.log_softmax(scores.detach().float(), dim=-1))
                return scores

        self.first, self.last = Raw(), Processed()

    def summarise(self, proc_logp: Any) -> None:
        import torch

        raw_logp = self.raw_logp
        raw_p, proc_p = raw_logp.exp(), proc_logp.exp()
        kept = proc_p > 0
        zero = torch.zeros_like(proc_p)
        self.proc_logp = proc_logp
        self.stats = {
            "kept_count": kept.sum(-1).tolist(),
            "kept_mass": torch.where(kept, raw_p, zero).sum(-1).tolist(),
            "entropy": (entropy(proc_p, proc_logp) / LN2).tolist(),
            "raw_entropy": (entropy(raw_p, raw_logp) / LN2).tolist(),
        }
        if self.top_n:
            top = torch.topk(raw_logp, min(self.top_n, raw_logp.shape[-1]), dim=-1).indices
            self.stats.update(top_ids=top.tolist(), top_raw=raw_p.gather(-1, top).tolist(),
                              top_proc=proc_p.gather(-1, top).tolist(),
                              top_kept=kept.gather(-1, top).tolist())

    def record(self, row: int, index: int, token: int, text: str) -> StepRecord:
        st = self.stats
        raw_logp = float(self.raw_logp[row, token])
        candidates: tuple[Candidate, ...] = ()
        if self.top_n:
            candidates = tuple(
                Candidate(i, self.tokenizer.decode([i]), r, p, k) for i, r, p, k in zip(
                    st["top_ids"][row], st["top_raw"][row], st["top_proc"][row],
                    st["top_kept"][row], strict=True))
        return StepRecord(
            index=index, token_id=token, text=text, raw_probability=math.exp(raw_logp),
            probability=math.exp(float(self.proc_logp[row, token])),
            entropy=st["entropy"][row], raw_entropy=st["raw_entropy"][row],
            surprisal=-raw_logp / LN2, kept_count=int(st["kept_count"][row]),
            kept_mass=st["kept_mass"][row], candidates=candidates)

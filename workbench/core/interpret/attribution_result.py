"""An attribution's result: the input tokens' scores for one target, and the rows behind them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

METHODS = {"ig": "integrated gradients", "ixg": "input × gradient", "saliency": "saliency",
           "ablation": "feature ablation"}
ZERO_EMBEDDING = -1  # the baseline id that the zero-embedding wrapper maps to a zero vector

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

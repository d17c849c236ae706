"""The sampling sweep: a grid of two decoding settings (temperature × top-p, temperature ×
min-p, ...), ``n`` samples per cell on one prompt and seed, each cell one batched
``generate`` call through the app's own generation path (:func:`generation.generate`), each
cell scored as compare scores a strategy (:mod:`workbench.core.generation.compare`: mean log-probability,
distinct-1/2, self-BLEU) plus the perplexity of its samples under a reference model and
their mean length.

Axes are written ``name=a:b:k`` (``k`` evenly spaced values from ``a`` to ``b``, both
included) or ``name=v1,v2,...``. Every cell uses the same seed, so cells differ by their
settings only.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.common.settings import KEY, check_fields, description, setting
from workbench.core.generation.compare import StrategyResult, summarise
from workbench.core.generation.generate import generate, prepare_prompt
from workbench.core.generation.records import GeneratedSequence
from workbench.core.generation.settings import (
    MAX_SEQUENCES,
    SAMPLING_ONLY,
    SETTING_ALIASES,
    SamplingSettings,
)

MAX_AXIS_VALUES = 12
# the settings that shape sampling and take a number (the switches are not axes)
SWEEPABLE = tuple(name for name in SAMPLING_ONLY if name != "dynamic_temperature") + (
    "repetition_penalty", "no_repeat_ngram_size", "dry_multiplier", "dry_base",
    "dry_allowed_length")
METRICS = ("mean_logprob", "perplexity", "distinct_1", "distinct_2", "self_bleu", "mean_length")
METRIC_LABELS = {"mean_logprob": "mean log-prob", "perplexity": "perplexity",
                 "distinct_1": "distinct-1", "distinct_2": "distinct-2",
                 "self_bleu": "self-BLEU", "mean_length": "mean length (tokens)"}
_TYPES = {f.name: f.type for f in fields(SamplingSettings)}


def sampling_setting(default: Any, name: str, **changes: Any) -> Any:
    """A dataclass field described as :class:`SamplingSettings`' setting ``name`` is (its
    label and range), with its own ``default`` and ``changes`` (a help of its own)."""
    return field(default=default,
                 metadata={KEY: replace(description(SamplingSettings, name), **changes)})


@dataclass
class SweepSettings:
    """The sweep's own numbers, described once (the checks of :func:`sweep`, the ``sweep``
    options and the Sampling sweep page's boxes are made from it); the number of new tokens
    and the seed are the decoding settings' own, with their range."""

    n: int = setting(4, "The number of samples per cell", low=1, high=MAX_SEQUENCES,
                     unit="samples", help="samples per cell, drawn in one batch")
    max_new_tokens: int = sampling_setting(32, "max_new_tokens")
    seed: int = sampling_setting(
        0, "seed", help="the same seed for every cell: cells differ by their settings only")

    def validate(self) -> None:
        """Raise WorkbenchError unless each setting lies in its range."""
        check_fields(self)


@dataclass(frozen=True)
class Axis:
    name: str  # a SamplingSettings field (see SWEEPABLE)
    values: tuple[float | int, ...]

    @property
    def labels(self) -> list[str]:
        return [f"{v:g}" for v in self.values]


def _shown(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(text: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise WorkbenchError(f"The axis {_shown(spec)!r} has {_shown(text, 20)!r}, which is "
                             "not a number.") from None
    if not math.isfinite(value):
        raise WorkbenchError(f"The axis {_shown(spec)!r} has {text!r}: values must be finite.")
    return value


def parse_axis(spec: str, base: SamplingSettings | None = None) -> Axis:
    """``"temperature=0.3:1.5:5"`` (5 values from 0.3 to 1.5) or ``"top_p=0.5,0.9,1.0"``.

    The name is a SamplingSettings field that shapes sampling (:data:`SWEEPABLE`; ``-`` or
    ``_``, and the short names of strategies: ``t``, ``p``, ``k``); each value must be valid
    for it in ``base`` (by default SamplingSettings' defaults)."""
    text = spec.strip()
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise WorkbenchError(f"An axis is written name=a:b:k or name=v1,v2,... (such as "
                             f"temperature=0.3:1.5:5), not {_shown(spec)!r}.")
    key = name.strip().lower().replace("-", "_")
    key = SETTING_ALIASES.get(key, key)
    if key not in SWEEPABLE:
        raise WorkbenchError(f"{_shown(name.strip(), 30)!r} is not a setting a sweep can vary "
                             f"(those that shape sampling: {', '.join(SWEEPABLE)}).")
    rest = rest.strip()
    if ":" in rest:
        parts = rest.split(":")
        if len(parts) != 3:
            raise WorkbenchError(f"The range {_shown(rest, 30)!r} of {key} must be a:b:k "
                                 "(k values from a to b).")
        low, high, count = (_number(p.strip(), spec) for p in parts)
        if count != int(count) or not 1 <= count <= MAX_AXIS_VALUES:
            raise WorkbenchError(f"The range of {key} asks for {parts[2].strip()} values: give "
                                 f"a whole number from 1 to {MAX_AXIS_VALUES}.")
        k = int(count)
        if k == 1 and low != high:
            raise WorkbenchError(f"The range of {key} has one value but two ends ({low:g} and "
                                 f"{high:g}): give k of 2 or more, or a == b.")
        raw = [low + (high - low) * i / (k - 1) if k > 1 else low for i in range(k)]
        if k > 1:
            raw[-1] = high  # exactly the end asked for
    else:
        raw = [_number(p.strip(), spec) for p in rest.split(",")]
        if len(raw) > MAX_AXIS_VALUES:
            raise WorkbenchError(f"The axis {key} has {len(raw)} values: at most "
                                 f"{MAX_AXIS_VALUES}.")
    values: list[float | int] = []
    for value in raw:
        if _TYPES[key] in ("int", int):
            if abs(value - round(value)) > 1e-9:
                raise WorkbenchError(f"{key} takes whole numbers, and its axis has {value:g}.")
            value = int(round(value))
        if value in values:
            raise WorkbenchError(f"The axis {key} has {value:g} twice.")
        values.append(value)
    base = base or SamplingSettings()
    for value in values:  # each on its own; the pair of a cell is checked by cell_settings
        pair = {"dynatemp_low": dict(dynatemp_high=max(base.dynatemp_high, value)),
                "dynatemp_high": dict(dynatemp_low=min(base.dynatemp_low, value))}
        _valid(replace(base, do_sample=True, **{key: value}, **pair.get(key, {})))
    return Axis(key, tuple(values))


def _valid(settings: SamplingSettings, where: str = "") -> None:
    if settings.do_sample and settings.temperature == 0 and not settings.dynamic_temperature:
        raise WorkbenchError(f"{where}A sweep samples: temperature must be above 0 (0 is "
                             "greedy decoding, a single sequence).")
    try:
        settings.validate()
    except WorkbenchError as exc:
        raise WorkbenchError(f"{where}{exc}") from None


def cell_settings(base: SamplingSettings, x: Axis, y: Axis, i: int, j: int, n: int,
                  max_new_tokens: int, seed: int) -> SamplingSettings:
    """The settings of the cell at ``y.values[i]``, ``x.values[j]``: ``base`` with the two
    values, sampling ``n`` sequences in one batch (validated)."""
    settings = replace(base, do_sample=True, num_beams=1, num_return_sequences=n,
                       max_new_tokens=max_new_tokens, seed=seed,
                       **{x.name: x.values[j], y.name: y.values[i]})
    _valid(settings, f"The cell {x.name}={x.values[j]:g}, {y.name}={y.values[i]:g}: ")
    return settings


@dataclass
class SweepCell:
    x: float | int
    y: float | int
    settings: dict
    samples: list[GeneratedSequence]
    sample_perplexities: list[float]  # each sample's, under the reference model
    metrics: dict[str, float | None]
    seconds: float  # of its generate call

    def to_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "settings": self.settings,
                "metrics": {k: _json_number(v) for k, v in self.metrics.items()},
                "seconds": round(self.seconds, 4),
                "samples": [{"text": s.text, "token_ids": s.token_ids, "tokens": len(s.token_ids),
                             "mean_logprob": _json_number(s.mean_logprob),
                             "perplexity": _json_number(p)}
                            for s, p in zip(self.samples, self.sample_perplexities, strict=True)]}


@dataclass
class SweepResult:
    prompt: str
    seed: int
    n: int
    max_new_tokens: int
    x: Axis
    y: Axis
    cells: list[list[SweepCell]]  # cells[i][j]: y.values[i], x.values[j]
    model: str
    reference: str  # the model the perplexity is under
    seconds: float
    notes: list[str] = field(default_factory=list)

    def grid(self, metric: str) -> list[list[float | None]]:
        """``metric`` of every cell, rows y, columns x."""
        if metric not in METRICS:
            raise WorkbenchError(f"Unknown metric {metric!r} (the metrics: {', '.join(METRICS)}).")
        return [[cell.metrics[metric] for cell in row] for row in self.cells]

    def summary(self) -> str:
        """One line for the results history: the grid, and the cells of the lowest and
        the highest perplexity."""
        where = {(cell.metrics["perplexity"], i, j): f"{self.x.name} {cell.x:g}, "
                 f"{self.y.name} {cell.y:g}"
                 for i, row in enumerate(self.cells) for j, cell in enumerate(row)
                 if _json_number(cell.metrics["perplexity"]) is not None}
        head = (f"{self.x.name} × {self.y.name}, {len(self.x.values)}×{len(self.y.values)} "
                f"cells, n={self.n}")
        if not where:
            return f"{head}: no perplexity ({self.model})"
        low, high = min(where), max(where)
        return (f"{head}: perplexity {low[0]:.4g} ({where[low]}) to {high[0]:.4g} "
                f"({where[high]}) ({self.model})")

    def to_dict(self, with_cells: bool = True) -> dict:
        """Everything, as JSON-ready data; without ``with_cells``, the grids of the metrics
        but not each cell's settings and samples (the results history keeps that)."""
        data = {"prompt": self.prompt, "seed": self.seed, "n": self.n,
                "max_new_tokens": self.max_new_tokens, "model": self.model,
                "reference": self.reference, "seconds": round(self.seconds, 4),
                "notes": self.notes,
                "x": {"name": self.x.name, "values": list(self.x.values)},
                "y": {"name": self.y.name, "values": list(self.y.values)},
                "metrics": {m: [[_json_number(v) for v in row] for row in self.grid(m)]
                            for m in METRICS}}
        if with_cells:
            data["cells"] = [[cell.to_dict() for cell in row] for row in self.cells]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)


def _json_number(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) \
        else value


def sweep(loaded: Any, prompt: str, x_axis: Axis, y_axis: Axis, n: int = 4,
          base_settings: SamplingSettings | None = None, max_new_tokens: int = 32,
          seed: int = 0, ctx: JobContext | None = None, reference: Any = None) -> SweepResult:
    """Sample ``n`` sequences in each cell of the grid ``y_axis`` × ``x_axis`` and score them.

    Each cell is one ``generate`` call of ``n`` rows with ``base_settings`` (by default
    every filter off, temperature 1), the cell's two values, ``max_new_tokens`` and
    ``seed``. The perplexity is under ``reference`` (another LoadedModel) when given, its
    own forward pass over the prompt and each sample's text; else under ``loaded``, from the
    probabilities generation recorded (the same numbers, without a second pass).
    Cancelling stops between cells (and ends the running cell's generation early): raises
    :class:`Cancelled`. Progress: one event per cell.
    """
    ctx = ctx or JobContext()
    if x_axis.name == y_axis.name:
        raise WorkbenchError(f"The two axes both vary {x_axis.name}: give two different "
                             "settings.")
    SweepSettings(n, max_new_tokens, seed).validate()
    base = base_settings or SamplingSettings(temperature=1.0, top_k=0, top_p=1.0)
    grid = [[cell_settings(base, x_axis, y_axis, i, j, n, max_new_tokens, seed)
             for j in range(len(x_axis.values))] for i in range(len(y_axis.values))]
    total = len(x_axis.values) * len(y_axis.values)
    quiet = JobContext(cancel=ctx.cancel)  # the cells' token events are not streamed
    start = time.perf_counter()
    cells: list[list[SweepCell]] = []
    notes: list[str] = []
    ref_prompt = None
    for i, row in enumerate(grid):
        cells.append([])
        for j, settings in enumerate(row):
            ctx.cancel.raise_if_cancelled()
            done = i * len(row) + j
            ctx.progress(f"Sweep: cell {done + 1} of {total} ({x_axis.name} "
                         f"{x_axis.values[j]:g}, {y_axis.name} {y_axis.values[i]:g})",
                         done / total)
            result = generate(loaded, prompt, settings, quiet, top_n=0)
            ctx.cancel.raise_if_cancelled()  # a cell cut short is not scored
            if not notes:
                notes += result.notices
            if reference is None:
                perplexities = [s.perplexity for s in result.sequences]
                counts = [len(s.steps) for s in result.sequences]
            else:
                if ref_prompt is None:
                    ref_prompt, more = prepare_prompt(reference, prompt, settings.chat,
                                                      max_new_tokens)
                    notes += [f"Reference {reference.name}: {m}" for m in more]
                perplexities, counts = reference_perplexities(
                    reference, ref_prompt[0].tolist(), [s.text for s in result.sequences])
            cells[-1].append(_cell(x_axis.values[j], y_axis.values[i], settings, result,
                                   perplexities, counts, reference is not None))
    ctx.progress("Sweep: done", 1.0)
    return SweepResult(prompt, seed, n, max_new_tokens, x_axis, y_axis, cells,
                       model=getattr(loaded, "name", ""),
                       reference=getattr(reference or loaded, "name", ""),
                       seconds=time.perf_counter() - start, notes=notes)


def _cell(x: float | int, y: float | int, settings: SamplingSettings, result: Any,
          perplexities: list[float], counts: list[int], other_reference: bool) -> SweepCell:
    """The cell's metrics, as compare scores a strategy (``compare.summarise``)."""
    scored = StrategyResult(settings.describe(), asdict(settings), result.sequences,
                            result.seconds, batched=True)
    summarise([scored])
    lengths = [len(s.token_ids) for s in result.sequences]
    perplexity = scored.perplexity  # exp of minus the mean log-prob over all tokens
    if other_reference:  # the same pooling, over the reference's tokens
        total = sum(counts)
        perplexity = math.exp(sum(math.log(p) * c for p, c in zip(perplexities, counts,
                                                                  strict=True) if c) / total) \
            if total else float("nan")
    metrics = {"mean_logprob": scored.mean_logprob, "perplexity": perplexity,
               "distinct_1": scored.distinct_1, "distinct_2": scored.distinct_2,
               "self_bleu": scored.self_bleu,
               "mean_length": sum(lengths) / len(lengths) if lengths else float("nan")}
    return SweepCell(x, y, asdict(settings), result.sequences, perplexities, metrics,
                     result.seconds)


def reference_perplexities(reference: Any, prompt_ids: list[int], texts: list[str]
                           ) -> tuple[list[float], list[int]]:
    """Each text's perplexity under ``reference`` as a continuation of ``prompt_ids``: the
    exp of the mean NLL of its tokens (the reference's tokenizer, no special tokens added),
    each predicted from the prompt and the tokens before it, in one padded forward pass.
    NaN for a text with no tokens. Also returns each text's number of tokens."""
    import torch

    tokenizer, model = reference.tokenizer, reference.model
    conts = [tokenizer(t, add_special_tokens=False)["input_ids"] if t else [] for t in texts]
    rows = [prompt_ids + c for c in conts]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=model.device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows],
                        device=model.device)
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    out, counts = [], []
    start = len(prompt_ids)
    for r, cont in enumerate(conts):
        if not cont:
            out.append(float("nan"))
            counts.append(0)
            continue
        targets = torch.tensor(cont, device=logp.device)
        nll = -logp[r, start - 1:start - 1 + len(cont)].gather(-1, targets[:, None])[:, 0]
        out.append(math.exp(float(nll.mean())))
        counts.append(len(cont))
    return out, counts

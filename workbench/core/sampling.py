"""The decoding settings and the processors they stand for, shared by generation,
comparison and the explorer: ``SamplingSettings`` (named as in transformers'
``GenerationConfig``), the presets, ``parse_strategy`` for strategy specs such as
``"top_k=40,temperature=0.8"``, and ``row_chain``: the ``LogitsProcessor`` chain that
``generate`` applies for one set of settings, in its order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from numbers import Integral, Real
from typing import Any

from workbench.core.errors import WorkbenchError

SEED_LIMIT = 2**32  # numpy's and torch's seeds: 0 to 2**32 - 1
MAX_SEQUENCES = 10_000  # rows of one generate() batch, whatever the memory says
MAX_NEW_TOKENS = 1_000_000  # longer than any context this app runs; memory caps it sooner
_LABELS = {"max_new_tokens": "Max new tokens", "do_sample": "Sampling", "temperature":
           "Temperature", "top_k": "Top-k", "top_p": "Top-p", "min_p": "Min-p",
           "typical_p": "Typical-p", "repetition_penalty": "Repetition penalty",
           "no_repeat_ngram_size": "No-repeat n-gram size", "num_beams": "The number of beams",
           "num_return_sequences": "The number of sequences", "seed": "The seed",
           "chat": "Chat"}


@dataclass
class SamplingSettings:
    """The decoding controls, named as in transformers' ``GenerationConfig``.

    ``do_sample=False`` is greedy decoding (or beam search with ``num_beams > 1``).
    ``top_k=0``, ``top_p=1``, ``min_p=0`` and ``typical_p=1`` turn those filters off.
    """

    max_new_tokens: int = 64
    do_sample: bool = True
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    num_beams: int = 1
    num_return_sequences: int = 1
    seed: int = 0
    chat: bool = True  # wrap the prompt in the tokenizer's chat template, if it has one

    def validate(self) -> None:
        """Refuse settings that cannot run or would give a silently wrong result: each
        number must have its type, be finite and lie in its range (the GUI and the command
        line share these checks)."""
        for f in fields(self):
            value, label = getattr(self, f.name), _LABELS.get(f.name, f.name)
            if f.type in ("bool", bool):
                ok, kind = isinstance(value, bool), "true or false"
            elif f.type in ("int", int):
                ok, kind = isinstance(value, Integral) and not isinstance(value, bool), \
                    "a whole number"
            else:
                ok = isinstance(value, Real) and not isinstance(value, bool) and \
                    math.isfinite(value)
                kind = "a finite number"
            if not ok:
                raise WorkbenchError(f"{label} must be {kind}, not {value!r}.")
        checks = [
            (self.max_new_tokens >= 1, f"Max new tokens must be at least 1, not "
             f"{self.max_new_tokens}."),
            (self.max_new_tokens <= MAX_NEW_TOKENS, f"Max new tokens can be at most "
             f"{MAX_NEW_TOKENS:,} (every step is recorded and streamed), not "
             f"{self.max_new_tokens:,}."),
            (self.temperature >= 0, f"Temperature must be 0 (greedy) or above, not "
             f"{self.temperature:g}."),
            (0 < self.top_p <= 1, f"Top-p must be in (0, 1], not {self.top_p:g}."),
            (self.top_k >= 0, f"Top-k must be 0 (off) or more, not {self.top_k}."),
            (0 <= self.min_p < 1, f"Min-p must be in [0, 1), not {self.min_p:g}."),
            (0 < self.typical_p <= 1, f"Typical-p must be in (0, 1], not {self.typical_p:g}."),
            (self.repetition_penalty > 0, f"Repetition penalty must be above 0 (1 is off), "
             f"not {self.repetition_penalty:g}."),
            (self.no_repeat_ngram_size >= 0, f"No-repeat n-gram size must be 0 (off) or more, "
             f"not {self.no_repeat_ngram_size}."),
            (self.num_beams >= 1, f"The number of beams must be at least 1, not "
             f"{self.num_beams}."),
            (self.num_return_sequences >= 1, f"The number of sequences must be at least 1, not "
             f"{self.num_return_sequences}."),
            (self.num_beams <= MAX_SEQUENCES, f"At most {MAX_SEQUENCES:,} beams (each is a row "
             f"of the batch, with its own cache and scores), not {self.num_beams:,}."),
            (self.num_return_sequences <= MAX_SEQUENCES, f"At most {MAX_SEQUENCES:,} sequences "
             f"at once (each is a row of the batch, with its own cache and scores), not "
             f"{self.num_return_sequences:,}."),
            (0 <= self.seed < SEED_LIMIT, f"The seed must be between 0 and {SEED_LIMIT - 1} "
             f"(2**32 - 1), not {self.seed}."),
            (self.num_beams == 1 or self.num_return_sequences <= self.num_beams,
             "Beam search returns at most as many sequences as it has beams."),
            (self.do_sample or self.num_beams > 1 or self.num_return_sequences == 1,
             "Greedy decoding gives one sequence: sample, or use beams, for more."),
        ]
        for ok, message in checks:
            if not ok:
                raise WorkbenchError(message)

    @property
    def rows(self) -> int:
        """Rows of the generate() batch: one per beam, else one per returned sequence."""
        return self.num_beams if self.num_beams > 1 else self.num_return_sequences

    def effective(self) -> tuple[SamplingSettings, list[str]]:
        """The settings actually used, with a notice for each reinterpretation."""
        if self.do_sample and self.temperature == 0:
            return (replace(self, do_sample=False),
                    ["Temperature 0 means always taking the most likely token: greedy decoding."])
        return self, []

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (filters that are off are passed as off)."""
        kwargs: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
            num_beams=self.num_beams, num_return_sequences=self.num_return_sequences,
            repetition_penalty=self.repetition_penalty,
            no_repeat_ngram_size=self.no_repeat_ngram_size or None)
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                          min_p=self.min_p or None, typical_p=self.typical_p)
        else:  # override sampling defaults a model's generation_config may carry
            kwargs.update(temperature=None, top_k=None, top_p=None, min_p=None, typical_p=None)
        return kwargs

    def describe(self) -> str:
        if not self.do_sample:
            return "greedy" if self.num_beams == 1 else f"beam search ({self.num_beams} beams)"
        parts = [f"temperature {self.temperature:g}"]
        if self.top_k:
            parts.append(f"top-k {self.top_k}")
        if self.top_p < 1:
            parts.append(f"top-p {self.top_p:g}")
        if self.min_p:
            parts.append(f"min-p {self.min_p:g}")
        if self.typical_p < 1:
            parts.append(f"typical-p {self.typical_p:g}")
        return ", ".join(parts)

    def to_generation_config(self) -> dict[str, Any]:
        """The settings as a transformers ``GenerationConfig`` dictionary."""
        from transformers import GenerationConfig

        config = GenerationConfig(**{k: v for k, v in self.generate_kwargs().items()
                                     if v is not None})
        return config.to_diff_dict()

    @classmethod
    def from_generation_config(cls, data: dict[str, Any], base: SamplingSettings | None = None
                               ) -> SamplingSettings:
        """Settings from a ``GenerationConfig`` dictionary; unknown keys are ignored."""
        settings = asdict(base or cls())
        names = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key in names and value is not None:
                settings[key] = value
        if data.get("no_repeat_ngram_size") is None and "no_repeat_ngram_size" in data:
            settings["no_repeat_ngram_size"] = 0
        return cls(**settings)



PRESETS: dict[str, dict[str, Any]] = {
    "greedy": dict(do_sample=False),
    "top-k 40": dict(do_sample=True, temperature=1.0, top_k=40, top_p=1.0),
    "nucleus 0.9": dict(do_sample=True, temperature=1.0, top_k=0, top_p=0.9),
    "creative": dict(do_sample=True, temperature=1.3, top_k=0, top_p=0.95),
    "min-p 0.1": dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_p=0.1),
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_SAMPLING_ONLY = ("temperature", "top_k", "top_p", "min_p", "typical_p")
_ALIASES = {"beams": "num_beams", "beam": "num_beams", "n": "num_return_sequences",
            "sequences": "num_return_sequences", "k": "top_k", "p": "top_p", "t": "temperature"}


def _shortened(text: str, limit: int = 60) -> str:
    """``text`` quoted in a message: a long one is cut, so the message stays one short line."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Strategy:
    name: str
    settings: SamplingSettings


def parse_strategy(spec: str, base: SamplingSettings | None = None) -> Strategy:
    """``"greedy"``, a preset name, or ``"top_k=40,temperature=0.8"`` (keys as in
    SamplingSettings, ``-`` or ``_``). Keys other than ``do_sample`` switch sampling on
    unless the spec says ``greedy`` or sets beams."""
    base = base or SamplingSettings()
    text, shown = spec.strip(), _shortened(spec)
    if not text:
        raise WorkbenchError("An empty strategy was given.")
    if text.lower() in PRESETS:
        settings = replace(base, **PRESETS[text.lower()])
        settings.validate()
        return Strategy(text.lower(), settings)
    types = {f.name: f.type for f in fields(SamplingSettings)}
    values: dict[str, Any] = {}
    greedy = False
    for part in text.split(","):
        part = part.strip()
        if part.lower() == "greedy":
            greedy = True
            continue
        key, sep, raw = part.partition("=")
        key = key.strip().lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        if not sep or key not in types or key in ("seed", "chat", "max_new_tokens"):
            raise WorkbenchError(f"Cannot read strategy '{shown}': '{_shortened(part)}' is not "
                                 "key=value with a decoding setting (e.g. top_k=40).")
        if key in values:
            raise WorkbenchError(f"Cannot read strategy '{shown}': it sets {key} twice.")
        word = raw.strip().lower()
        try:
            if types[key] in ("bool", bool):
                if word not in _TRUE + _FALSE:
                    raise WorkbenchError(f"Cannot read strategy '{shown}': {key} takes true or "
                                         f"false, not '{_shortened(raw.strip())}'.")
                values[key] = word in _TRUE
            elif types[key] in ("int", int):
                values[key] = int(raw)
            else:
                values[key] = float(raw)
        except ValueError:
            raise WorkbenchError(f"Cannot read strategy '{shown}': '{_shortened(raw)}' is not a number.") from None
    if greedy:
        if values.get("do_sample"):
            raise WorkbenchError(f"Cannot read strategy '{shown}': greedy does not sample.")
        values.setdefault("do_sample", False)
    elif values.get("num_beams", 1) > 1:
        values.setdefault("do_sample", False)
    else:
        values.setdefault("do_sample", True)
    if not values["do_sample"]:  # a filter named here would be silently ignored
        ignored = [k for k in _SAMPLING_ONLY if k in values]
        if ignored:
            raise WorkbenchError(f"Cannot read strategy '{shown}': {', '.join(ignored)} only "
                                 "shapes sampling, and this strategy does not sample (add "
                                 "do_sample=true, or leave it out).")
    if values["do_sample"]:  # filters not named in the spec are off
        for key, off in (("top_k", 0), ("top_p", 1.0), ("temperature", 1.0)):
            values.setdefault(key, off)
    settings = replace(base, **values)
    settings.validate()
    return Strategy(text, settings)



def row_chain(settings: SamplingSettings):
    """The processors ``generate`` would apply for ``settings``, as one list."""
    import torch
    from transformers import (
        LogitsProcessor,
        LogitsProcessorList,
        MinPLogitsWarper,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
        TypicalLogitsWarper,
    )

    chain = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.no_repeat_ngram_size > 0:
        chain.append(NoRepeatNGramLogitsProcessor(settings.no_repeat_ngram_size))
    if not settings.do_sample:
        class ArgmaxOnly(LogitsProcessor):
            """Greedy inside a sampling batch: only the most likely token stays possible."""

            def __call__(self, ids: torch.LongTensor, scores: torch.FloatTensor):
                keep = scores.argmax(dim=-1, keepdim=True)
                out = torch.full_like(scores, -float("inf"))
                return out.scatter(-1, keep, scores.gather(-1, keep))

        chain.append(ArgmaxOnly())
        return chain
    if settings.temperature != 1.0:
        chain.append(TemperatureLogitsWarper(settings.temperature))
    if settings.top_k:
        chain.append(TopKLogitsWarper(top_k=settings.top_k))
    if settings.top_p < 1.0:
        chain.append(TopPLogitsWarper(top_p=settings.top_p))
    if settings.min_p:
        chain.append(MinPLogitsWarper(min_p=settings.min_p))
    if settings.typical_p < 1.0:
        chain.append(TypicalLogitsWarper(mass=settings.typical_p))
    return chain



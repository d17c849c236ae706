"""The decoding settings and the processors they stand for, shared by generation,
comparison, the explorer and the sampler-stage inspector: ``SamplingSettings`` (named as in
transformers' ``GenerationConfig``, plus the samplers of :mod:`workbench.core.generation.samplers` named
as text-generation-webui names them), the presets, ``parse_strategy`` for strategy specs such
as ``"top_k=40,temperature=0.8"``, ``row_chain``: the ``LogitsProcessor`` chain one set of
settings stands for, in the sampler order it names, and ``sampler_stages``: the distribution
after each stage of that chain.

Generation passes that chain to ``generate`` itself, with transformers' own copies of
the same processors switched off, so what is sampled from is exactly the chain shown here.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.settings import check_fields, setting
from workbench.core.common.units import LN2, entropy

SEED_LIMIT = 2**32  # numpy's and torch's seeds: 0 to 2**32 - 1
MAX_SEQUENCES = 10_000  # rows of one generate() batch, whatever the memory says
MAX_NEW_TOKENS = 1_000_000  # longer than any context this app runs; memory caps it sooner
_ROW_NOTE = "each is a row of the batch, with its own cache and scores"

# The stages of the chain, in the order generate() applies transformers' own (repetition
# penalty, no-repeat n-gram, temperature, top-h, top-k, top-p, min-p, typical-p, epsilon,
# eta), with the others where text-generation-webui puts them by default.
STAGES = ("repetition_penalty", "no_repeat_ngram", "dry", "temperature", "dynamic_temperature",
          "quadratic_smoothing", "top_n_sigma", "top_h", "top_k", "top_p", "min_p", "typical_p",
          "epsilon_cutoff", "eta_cutoff", "mirostat", "xtc")
_STAGE_ALIASES = {"repetition": "repetition_penalty", "no_repeat_ngram_size": "no_repeat_ngram",
                  "dynatemp": "dynamic_temperature", "quadratic_sampling": "quadratic_smoothing",
                  "smoothing": "quadratic_smoothing", "top_nsigma": "top_n_sigma",
                  "nsigma": "top_n_sigma", "eps_cutoff": "epsilon_cutoff", "epsilon": "epsilon_cutoff",
                  "eta": "eta_cutoff", "typical": "typical_p"}
_PENALTIES = ("repetition_penalty", "no_repeat_ngram", "dry")  # applied without sampling too


def parse_sequence_breakers(text: str) -> list[str]:
    """DRY's sequence breakers as text-generation-webui writes them: JSON strings separated
    by commas, e.g. ``"\\n", ":", "\\"", "*"`` (an empty text: none)."""
    if not text.strip():
        return []
    try:
        value = json.loads(f"[{text}]")
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
        shown = text if len(text) <= 40 else text[:39] + "…"
        raise WorkbenchError("DRY's sequence breakers must be quoted texts separated by "
                             f"commas, such as \"\\n\", \":\" (not {shown!r}).")
    return value


def sampler_order(text: str) -> tuple[str, ...]:
    """The order of all stages that ``text`` asks for: stage names separated by commas,
    ``>`` or spaces (``-`` or ``_``). The stages it names come in that order, in the places
    those stages have in the default order (:data:`STAGES`); the others keep their places.
    ``"min_p,temperature"`` puts min-p before temperature; an empty text is the default."""
    names = []
    for word in re.split(r"[,>\s]+", text.strip()):
        if not word:
            continue
        name = word.lower().replace("-", "_")
        name = _STAGE_ALIASES.get(name, name)
        if name not in STAGES:
            shown = word if len(word) <= 30 else word[:29] + "…"
            raise WorkbenchError(f"The sampler order names '{shown}', which is not a stage "
                                 f"(the stages: {', '.join(STAGES)}).")
        if name in names:
            raise WorkbenchError(f"The sampler order names {name} twice.")
        names.append(name)
    order = list(STAGES)
    for place, name in zip(sorted(STAGES.index(n) for n in names), names, strict=True):
        order[place] = name
    return tuple(order)


@dataclass
class SamplingSettings:
    """The decoding controls, named as in transformers' ``GenerationConfig``.

    ``do_sample=False`` is greedy decoding (or beam search with ``num_beams > 1``).
    ``top_k=0``, ``top_p=1``, ``min_p=0`` and ``typical_p=1`` turn those filters off.

    The samplers after ``chat`` are off by default: ``top_h``, ``epsilon_cutoff`` and
    ``eta_cutoff`` are transformers' (0 is off); the others are those of
    :mod:`workbench.core.generation.samplers`, named as in text-generation-webui (off: a multiplier,
    factor, probability or n of 0, ``mirostat_mode`` 0, ``dynamic_temperature`` false).
    Dynamic temperature replaces ``temperature`` while it is on. DRY, like the repetition
    penalty, also shapes greedy decoding and beam search; the others only shape sampling.
    ``sampler_order`` is the order of the stages (see :func:`sampler_order`; empty: the
    default, transformers' order for its own).
    """

    max_new_tokens: int = setting(
        64, "Max new tokens", low=1, high=MAX_NEW_TOKENS, unit="tokens",
        high_note="every step is recorded and streamed", help="how many tokens to generate at most")
    do_sample: bool = setting(True, "Sampling", help="sample (off: greedy or beam search)")
    temperature: float = setting(
        0.7, "Temperature", low=0, high=100, off="greedy", typical=(0, 5),
        help="divides the logits: below 1 sharper, above 1 flatter")
    top_k: int = setting(50, "Top-k", low=0, high=1_000_000, off="off", typical=(0, 1000),
                         help="keep the k most likely tokens")
    top_p: float = setting(0.9, "Top-p", low=0, high=1, low_open=True, style="interval",
                           help="keep the most likely tokens up to this probability mass")
    min_p: float = setting(0.0, "Min-p", low=0, high=1, high_open=True, style="interval",
                           help="drop tokens below min-p times the top probability")
    typical_p: float = setting(1.0, "Typical-p", low=0, high=1, low_open=True,
                               style="interval", help="locally typical sampling")
    repetition_penalty: float = setting(
        1.0, "Repetition penalty", low=0, high=100, low_open=True, note="1 is off",
        typical=(0.5, 3), help="divides the logits of tokens already seen")
    no_repeat_ngram_size: int = setting(0, "No-repeat n-gram size", low=0, high=1_000_000,
                                        off="off", help="no n-gram of this size twice")
    num_beams: int = setting(1, "The number of beams", low=1, high=MAX_SEQUENCES,
                             high_note=_ROW_NOTE, help="beam search with this many beams")
    num_return_sequences: int = setting(1, "The number of sequences", low=1,
                                        high=MAX_SEQUENCES, high_note=_ROW_NOTE,
                                        help="sequences to return")
    seed: int = setting(0, "The seed", low=0, high=SEED_LIMIT - 1, style="between",
                        note="2**32 - 1", help="the random seed")
    chat: bool = setting(True, "Chat", help="wrap the prompt in the model's chat template")
    top_h: float = setting(0.0, "Top-h", low=0, high=1, style="interval", note="0 is off",
                           help="transformers' top-h")
    epsilon_cutoff: float = setting(0.0, "Epsilon cutoff", low=0, high=1, high_open=True,
                                    style="interval", note="0 is off", decimals=5,
                                    step=0.0001, help="drop tokens below this probability")
    eta_cutoff: float = setting(0.0, "Eta cutoff", low=0, high=1, high_open=True,
                                style="interval", note="0 is off", decimals=5, step=0.0001,
                                help="eta sampling")
    top_n_sigma: float = setting(0.0, "Top-nσ", low=0, high=100, off="off", step=0.1,
                                 help="keep logits within n standard deviations of the top")
    dynamic_temperature: bool = setting(False, "Dynamic temperature",
                                        help="entropy-scaled temperature between low and "
                                             "high (replaces the temperature)")
    dynatemp_low: float = setting(0.5, "The lowest dynamic temperature", low=0, high=100,
                                  low_open=True)
    dynatemp_high: float = setting(1.5, "The highest dynamic temperature", low=0, high=100,
                                   low_open=True)
    dynatemp_exponent: float = setting(1.0, "The dynamic temperature exponent", low=0,
                                       high=100, low_open=True, step=0.1)
    smoothing_factor: float = setting(0.0, "The smoothing factor", low=0, high=100,
                                      off="off", help="quadratic smoothing")
    smoothing_curve: float = setting(1.0, "The smoothing curve", low=1, high=3,
                                     style="interval", note="1 is quadratic", step=0.1,
                                     help="1 (quadratic) to 3 (cubic)")
    xtc_threshold: float = setting(0.1, "The XTC threshold", low=0, high=0.5, low_open=True,
                                   style="interval", step=0.01,
                                   note="above 0.5 no two tokens reach it")
    xtc_probability: float = setting(0.0, "The XTC probability", low=0, high=1,
                                     style="interval", note="0 is off",
                                     help="how often XTC excludes the top choices")
    mirostat_mode: int = setting(0, "The Mirostat mode", choices=((0, "off"), (2, "Mirostat 2.0")))
    mirostat_tau: float = setting(5.0, "Mirostat's tau", low=0, high=100, unit="bits",
                                  step=0.5, help="the target surprise")
    mirostat_eta: float = setting(0.1, "Mirostat's eta", low=0, high=1, low_open=True,
                                  style="interval", step=0.01, help="Mirostat's learning rate")
    dry_multiplier: float = setting(0.0, "The DRY multiplier", low=0, high=100, off="off",
                                    help="DRY repetition penalty")
    dry_base: float = setting(1.75, "The DRY base", low=1, high=100)
    dry_allowed_length: int = setting(2, "DRY's allowed length", low=1, high=1_000_000,
                                      unit="tokens")
    dry_sequence_breakers: str = setting('"\\n", ":", "\\"", "*"', "DRY's sequence breakers",
                                         help="quoted texts separated by commas")
    sampler_order: str = setting("", "The sampler order",
                                 help="stages separated by commas, e.g. min_p,temperature: "
                                      "the stages named take that order, the others keep "
                                      "theirs")

    def validate(self) -> None:
        """Refuse settings that cannot run or would give a silently wrong result: each
        value must have its type and lie in its range (one description of each, which the
        GUI and the command line share), and the settings must agree with each other."""
        check_fields(self)
        checks = [
            (self.num_beams == 1 or self.num_return_sequences <= self.num_beams,
             "Beam search returns at most as many sequences as it has beams."),
            (self.do_sample or self.num_beams > 1 or self.num_return_sequences == 1,
             "Greedy decoding gives one sequence: sample, or use beams, for more."),
            (self.dynatemp_high >= self.dynatemp_low, f"The highest dynamic temperature "
             f"({self.dynatemp_high:g}) must be at least the lowest ({self.dynatemp_low:g})."),
        ]
        for ok, message in checks:
            if not ok:
                raise WorkbenchError(message)
        parse_sequence_breakers(self.dry_sequence_breakers)
        sampler_order(self.sampler_order)

    @property
    def rows(self) -> int:
        """Rows of the generate() batch: one per beam, else one per returned sequence."""
        return self.num_beams if self.num_beams > 1 else self.num_return_sequences

    def effective(self) -> tuple[SamplingSettings, list[str]]:
        """The settings actually used, with a notice for each reinterpretation."""
        if self.do_sample and self.temperature == 0 and not self.dynamic_temperature:
            return (replace(self, do_sample=False),
                    ["Temperature 0 means always taking the most likely token: greedy decoding."])
        return self, []

    def generate_kwargs(self, own_chain: bool = False) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (filters that are off are passed as off).

        ``own_chain``: every processor of the chain off, for a caller that passes
        :func:`row_chain` to ``generate`` itself (as generation and compare do); without
        it, the settings as transformers' own processors (the samplers it does not have
        are left out)."""
        kwargs: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
            num_beams=self.num_beams, num_return_sequences=self.num_return_sequences)
        if own_chain:
            kwargs.update(repetition_penalty=1.0, no_repeat_ngram_size=None)
        else:
            kwargs.update(repetition_penalty=self.repetition_penalty,
                          no_repeat_ngram_size=self.no_repeat_ngram_size or None)
        if self.do_sample and own_chain:
            kwargs.update(temperature=1.0, top_k=0, top_p=1.0, min_p=None, typical_p=1.0,
                          top_h=None, epsilon_cutoff=0.0, eta_cutoff=0.0)
        elif self.do_sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                          min_p=self.min_p or None, typical_p=self.typical_p,
                          top_h=self.top_h or None, epsilon_cutoff=self.epsilon_cutoff or None,
                          eta_cutoff=self.eta_cutoff or None)
        else:  # override sampling defaults a model's generation_config may carry
            kwargs.update(temperature=None, top_k=None, top_p=None, min_p=None, typical_p=None,
                          top_h=None, epsilon_cutoff=None, eta_cutoff=None)
        return kwargs

    def active_stages(self) -> list[str]:
        """The stages of the chain that are on, in the sampler order."""
        on = {"repetition_penalty": self.repetition_penalty != 1.0,
              "no_repeat_ngram": self.no_repeat_ngram_size > 0,
              "dry": self.dry_multiplier > 0}
        if self.do_sample:
            on.update(temperature=self.temperature != 1.0 and not self.dynamic_temperature,
                      dynamic_temperature=self.dynamic_temperature,
                      quadratic_smoothing=self.smoothing_factor > 0,
                      top_n_sigma=self.top_n_sigma > 0, top_h=self.top_h > 0,
                      top_k=self.top_k > 0, top_p=self.top_p < 1.0, min_p=self.min_p > 0,
                      typical_p=self.typical_p < 1.0, epsilon_cutoff=self.epsilon_cutoff > 0,
                      eta_cutoff=self.eta_cutoff > 0, mirostat=self.mirostat_mode == 2,
                      xtc=self.xtc_probability > 0)
        return [name for name in sampler_order(self.sampler_order) if on.get(name)]

    def describe(self) -> str:
        dry = (f"DRY {self.dry_multiplier:g} (base {self.dry_base:g}, allowed length "
               f"{self.dry_allowed_length})") if self.dry_multiplier else ""
        if not self.do_sample:
            text = "greedy" if self.num_beams == 1 else f"beam search ({self.num_beams} beams)"
            return f"{text}, {dry}" if dry else text
        labels = {
            "dry": dry,
            "temperature": f"temperature {self.temperature:g}",
            "dynamic_temperature": f"dynamic temperature {self.dynatemp_low:g}–"
                                   f"{self.dynatemp_high:g} (exponent {self.dynatemp_exponent:g})",
            "quadratic_smoothing": f"quadratic smoothing {self.smoothing_factor:g}"
                                   + (f" (curve {self.smoothing_curve:g})"
                                      if self.smoothing_curve != 1 else ""),
            "top_n_sigma": f"top-nσ {self.top_n_sigma:g}", "top_h": f"top-h {self.top_h:g}",
            "top_k": f"top-k {self.top_k}", "top_p": f"top-p {self.top_p:g}",
            "min_p": f"min-p {self.min_p:g}", "typical_p": f"typical-p {self.typical_p:g}",
            "epsilon_cutoff": f"epsilon {self.epsilon_cutoff:g}",
            "eta_cutoff": f"eta {self.eta_cutoff:g}",
            "mirostat": f"Mirostat 2 (tau {self.mirostat_tau:g}, eta {self.mirostat_eta:g})",
            "xtc": f"XTC {self.xtc_threshold:g} at {self.xtc_probability:g}"}
        shown = set(self.active_stages())
        if not self.dynamic_temperature:
            shown.add("temperature")  # said even when it is 1 and changes nothing
        text = ", ".join(labels[name] for name in sampler_order(self.sampler_order)
                         if name in shown and name in labels)
        return text + " (in this order)" if self.order_matters() else text

    def order_matters(self) -> bool:
        """Whether the sampler order puts the stages that are on in another order than the
        default one."""
        stages = self.active_stages()
        return stages != sorted(stages, key=STAGES.index)

    def not_in_generation_config(self) -> list[str]:
        """The samplers that are on (and the sampler order, when it matters) that a
        transformers ``GenerationConfig`` has no field for: what an export leaves out."""
        names = {"dry": "DRY", "dynamic_temperature": "dynamic temperature",
                 "quadratic_smoothing": "quadratic smoothing", "top_n_sigma": "top-nσ",
                 "mirostat": "Mirostat", "xtc": "XTC"}
        left = [names[stage] for stage in self.active_stages() if stage in names]
        return left + (["the sampler order"] if self.order_matters() else [])

    def to_generation_config(self) -> dict[str, Any]:
        """The settings as a transformers ``GenerationConfig`` dictionary: what it can hold
        (see :meth:`not_in_generation_config` for what it cannot)."""
        from transformers import GenerationConfig

        config = GenerationConfig(**{k: v for k, v in self.generate_kwargs().items()
                                     if v is not None})
        return config.to_diff_dict()

    @classmethod
    def from_generation_config(cls, data: dict[str, Any], base: SamplingSettings | None = None
                               ) -> SamplingSettings:
        """Settings from a ``GenerationConfig`` dictionary; unknown keys are ignored, and
        the settings it does not name keep ``base``'s values."""
        settings = asdict(base or cls())
        names = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key in names and value is not None:
                settings[key] = value
        for key, off in (("no_repeat_ngram_size", 0), ("top_h", 0.0), ("min_p", 0.0),
                         ("epsilon_cutoff", 0.0), ("eta_cutoff", 0.0)):
            if key in data and data[key] is None:  # transformers' "off"
                settings[key] = off
        return cls(**settings)



PRESETS: dict[str, dict[str, Any]] = {
    "greedy": dict(do_sample=False),
    "top-k 40": dict(do_sample=True, temperature=1.0, top_k=40, top_p=1.0),
    "nucleus 0.9": dict(do_sample=True, temperature=1.0, top_k=0, top_p=0.9),
    "creative": dict(do_sample=True, temperature=1.3, top_k=0, top_p=0.95),
    "min-p 0.1": dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_p=0.1),
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# samplers that only shape sampling: the filters, off in a strategy unless it names them
_FILTERS_OFF = dict(top_k=0, top_p=1.0, temperature=1.0, top_h=0.0, epsilon_cutoff=0.0,
                    eta_cutoff=0.0, top_n_sigma=0.0, dynamic_temperature=False,
                    smoothing_factor=0.0, xtc_probability=0.0, mirostat_mode=0)
SAMPLING_ONLY = ("temperature", "top_k", "top_p", "min_p", "typical_p", "top_h",
                  "epsilon_cutoff", "eta_cutoff", "top_n_sigma", "dynamic_temperature",
                  "dynatemp_low", "dynatemp_high", "dynatemp_exponent", "smoothing_factor",
                  "smoothing_curve", "xtc_threshold", "xtc_probability", "mirostat_mode",
                  "mirostat_tau", "mirostat_eta")
SETTING_ALIASES = {"beams": "num_beams", "beam": "num_beams", "n": "num_return_sequences",
            "sequences": "num_return_sequences", "k": "top_k", "p": "top_p", "t": "temperature",
            "order": "sampler_order", "mirostat": "mirostat_mode", "eps_cutoff": "epsilon_cutoff",
            "nsigma": "top_n_sigma", "top_nsigma": "top_n_sigma",
            "dry_length": "dry_allowed_length", "smoothing": "smoothing_factor",
            "dynatemp": "dynamic_temperature"}


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
    unless the spec says ``greedy`` or sets beams. A sampled strategy's filters that the
    spec does not name are off; the penalties (repetition, no-repeat n-gram, DRY) and the
    sampler order come from ``base``. The sampler order separates its stages with ``>``
    (``sampler_order=min_p>temperature``), since commas separate the settings."""
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
        key = SETTING_ALIASES.get(key, key)
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
            elif types[key] in ("str", str):
                values[key] = raw.strip()
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
        ignored = [k for k in SAMPLING_ONLY if k in values]
        if ignored:
            raise WorkbenchError(f"Cannot read strategy '{shown}': {', '.join(ignored)} only "
                                 "shapes sampling, and this strategy does not sample (add "
                                 "do_sample=true, or leave it out).")
    if values["do_sample"]:  # filters not named in the spec are off
        for key, off in _FILTERS_OFF.items():
            values.setdefault(key, off)
    settings = replace(base, **values)
    settings.validate()
    return Strategy(text, settings)



def sampler_chain(settings: SamplingSettings, tokenizer: Any = None, *,
                  greedy_argmax: bool = True, min_tokens_to_keep: int = 1, device: Any = "cpu",
                  breaker_ids: frozenset[int] | None = None, row: int = 0,
                  mirostat_mu: float | None = None) -> list[tuple[str, Any]]:
    """The processors ``settings`` stand for, as (stage name, ``LogitsProcessor``) in the
    sampler order: transformers' own processors and warpers (as ``generate`` builds them,
    with ``min_tokens_to_keep``) and those of :mod:`workbench.core.generation.samplers`.

    ``greedy_argmax``: without sampling, end the chain with a filter that keeps only the
    most likely token (greedy rows inside a sampling batch, and the explorer's view of
    greedy decoding); ``generate`` itself takes the argmax otherwise. DRY needs the
    ``tokenizer`` (or ``breaker_ids``) for its sequence breakers. ``row`` is the first
    row's number for XTC's draws; ``mirostat_mu`` starts Mirostat's ``mu`` elsewhere than
    at ``2 · tau``."""
    from transformers import (
        EpsilonLogitsWarper,
        EtaLogitsWarper,
        MinPLogitsWarper,
        NoRepeatNGramLogitsProcessor,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopHLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
        TypicalLogitsWarper,
    )

    from workbench.core.generation import samplers

    keep = max(int(min_tokens_to_keep), 1)
    s = settings
    makers = {
        "repetition_penalty": lambda: RepetitionPenaltyLogitsProcessor(
            float(s.repetition_penalty)),
        "no_repeat_ngram": lambda: NoRepeatNGramLogitsProcessor(s.no_repeat_ngram_size),
        "dry": lambda: _dry(s, tokenizer, breaker_ids),
        "temperature": lambda: TemperatureLogitsWarper(float(s.temperature)),
        "dynamic_temperature": lambda: samplers.DynamicTemperatureLogitsWarper(
            s.dynatemp_low, s.dynatemp_high, s.dynatemp_exponent),
        "quadratic_smoothing": lambda: samplers.QuadraticSmoothingLogitsWarper(
            s.smoothing_factor, s.smoothing_curve),
        "top_n_sigma": lambda: samplers.TopNSigmaLogitsWarper(s.top_n_sigma),
        "top_h": lambda: TopHLogitsWarper(top_h=float(s.top_h)),
        "top_k": lambda: TopKLogitsWarper(top_k=s.top_k, min_tokens_to_keep=keep),
        "top_p": lambda: TopPLogitsWarper(top_p=float(s.top_p), min_tokens_to_keep=keep),
        "min_p": lambda: MinPLogitsWarper(min_p=float(s.min_p), min_tokens_to_keep=keep),
        "typical_p": lambda: TypicalLogitsWarper(mass=float(s.typical_p),
                                                 min_tokens_to_keep=keep),
        "epsilon_cutoff": lambda: EpsilonLogitsWarper(epsilon=float(s.epsilon_cutoff),
                                                      min_tokens_to_keep=keep),
        "eta_cutoff": lambda: EtaLogitsWarper(epsilon=float(s.eta_cutoff),
                                              min_tokens_to_keep=keep, device=str(device)),
        "mirostat": lambda: samplers.MirostatV2LogitsWarper(s.mirostat_tau, s.mirostat_eta,
                                                            mirostat_mu),
        "xtc": lambda: samplers.XtcLogitsWarper(s.xtc_threshold, s.xtc_probability, s.seed,
                                                row),
    }
    chain = [(name, makers[name]()) for name in s.active_stages()]
    if not s.do_sample and greedy_argmax:
        chain.append(("greedy", samplers.ArgmaxOnly()))
    return chain


def _dry(s: SamplingSettings, tokenizer: Any, breaker_ids: frozenset[int] | None) -> Any:
    """DRY's processor; its sequence breakers are token ids found with the tokenizer."""
    from workbench.core.generation import samplers

    ids = breaker_ids
    if ids is None:
        if tokenizer is None:
            raise WorkbenchError("DRY needs the model's tokenizer to find its sequence "
                                 "breakers.")
        ids = samplers.breaker_token_ids(tokenizer,
                                         parse_sequence_breakers(s.dry_sequence_breakers))
    return samplers.DryLogitsProcessor(s.dry_multiplier, s.dry_base, s.dry_allowed_length, ids)


def row_chain(settings: SamplingSettings, tokenizer: Any = None, **options: Any):
    """The processors ``settings`` stand for, in their order, as one ``LogitsProcessorList``
    (see :func:`sampler_chain` for the options)."""
    from transformers import LogitsProcessorList

    return LogitsProcessorList(p for _, p in sampler_chain(settings, tokenizer, **options))


@dataclass(frozen=True)
class Stage:
    """The next-token distribution after one stage of the chain."""

    name: str  # "raw", then the stage names of the chain (see STAGES)
    kept_count: int  # tokens still possible
    kept_mass: float  # the raw probability of those tokens
    entropy: float  # bits
    chosen_rank: int | None  # 1 for the most likely; None once the chosen token is removed
    chosen_probability: float


def sampler_stages(settings: SamplingSettings, input_ids: Any, raw_scores: Any,
                   chosen_token: int, tokenizer: Any = None, *, row: int = 0,
                   breaker_ids: frozenset[int] | None = None,
                   mirostat_mu: float | None = None) -> list[Stage]:
    """The distribution after each stage of ``settings``' chain, in its order, starting with
    the model's raw one, for one step: ``input_ids`` (the prompt and the tokens before the
    step) and the model's ``raw_scores`` for the next token, recorded, without running
    the model. For each: the tokens kept and their raw mass, the entropy, and the rank and
    probability of ``chosen_token``.

    The processors of the model's own generation config, if it has any, are not part of the
    chain. A run's sequence ``row`` gives XTC's draw at that step; Mirostat starts from
    ``mirostat_mu`` (its first step's ``2 · tau`` unless given). Greedy decoding takes the
    most likely token of the last distribution.
    """
    import torch

    settings, _ = settings.effective()
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1)
    scores = torch.as_tensor(raw_scores).reshape(1, -1).float()
    raw_p = torch.softmax(scores[0], -1)
    chain = sampler_chain(settings, tokenizer, greedy_argmax=False, breaker_ids=breaker_ids,
                          row=row, mirostat_mu=mirostat_mu)
    stages = [_stage("raw", scores[0], raw_p, chosen_token)]
    for name, processor in chain:
        scores = processor(ids, scores.clone())
        stages.append(_stage(name, scores[0], raw_p, chosen_token))
    return stages


def _stage(name: str, scores: Any, raw_p: Any, chosen: int) -> Stage:
    import torch

    logp = torch.log_softmax(scores.float(), -1)
    p = logp.exp()
    kept = p > 0
    bits = float(entropy(p, logp)) / LN2
    chosen_p = float(p[chosen])
    rank = int((p > p[chosen]).sum()) + 1 if chosen_p > 0 else None
    return Stage(name, int(kept.sum()), float(raw_p[kept].sum()), bits, rank, chosen_p)

"""An attribution's options checked: the method, integrated gradients' steps, the baseline
(named, or a token id) and the number of tokens to generate. The number settings are
described once, in :class:`AttributionOptions`' fields (:mod:`workbench.core.common.settings`):
the checks here, the ``attribute`` command's options and the attribution view's boxes are
made from it. A baseline token id's upper end is the model's own number of token ids, known
once it is loaded (:func:`resolve_baseline`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.settings import check_fields, check_value, described, setting
from workbench.core.interpret.attribution_result import METHODS, ZERO_EMBEDDING

BASELINES = ("pad", "eos", "zero")
USES_BASELINE = ("ig", "ablation")
DEFAULT_METHOD = "ig"
DEFAULT_BASELINE = "pad"
DEFAULT_STEPS = 50  # captum's own default n_steps
MAX_STEPS = 1000
MAX_NEW_TOKENS = 256  # each generated token costs one attribution of its own
# The highest baseline token id any model is asked for: the model's own number of token ids
# is known only once it is loaded, and checked then (resolve_baseline).
MAX_TOKEN_ID = 10_000_000


def check_method(method: Any) -> str:
    if not isinstance(method, str) or method.strip().lower() not in METHODS:
        raise WorkbenchError(f"Unknown attribution method {method!r}: use "
                             f"{', '.join(METHODS)}.")
    return method.strip().lower()


@dataclass
class AttributionOptions:
    """What an attribution is asked for, before a model is loaded: its ``validate()`` checks
    each number setting against its description, then the options across each other."""

    method: str = DEFAULT_METHOD
    steps: int | None = setting(
        None, "The number of steps", low=1, high=MAX_STEPS, style="between",
        auto=f"{DEFAULT_STEPS} (captum's default)",
        help="integrated-gradients steps: points on the path from the baseline (the "
             "convergence delta says whether they are enough)")
    baseline: str | int | None = None  # pad, eos or zero (or a token id's digits, as given)
    baseline_id: int | None = setting(
        None, "The baseline token id", low=0, high=MAX_TOKEN_ID,
        high_note="the model's own number of token ids is checked once it is loaded",
        auto="none (pad, eos or zero)",
        help="a token whose embedding is the baseline (integrated gradients, ablation); it "
             "must also be below the model's number of token ids, checked once it is loaded")
    max_new_tokens: int | None = setting(
        None, "Max new tokens", low=1, high=MAX_NEW_TOKENS,
        high_note="each generated token is attributed on its own",
        auto="none (attribute the target given)",
        help="generate N tokens greedily and attribute each to the prompt and the tokens "
             "before it (the tokens × tokens matrix)")

    def validate(self) -> list[str]:
        """Raise WorkbenchError on a wrong option; returns notices about options the method
        does not use."""
        method = check_method(self.method)
        check_fields(self)
        if self.baseline is not None and self.baseline_id is not None:
            raise WorkbenchError(f"Give a baseline ({self.baseline!r}) or a baseline token id "
                                 f"({self.baseline_id}), not both.")
        parse_baseline(self.chosen_baseline())
        notices = []
        if self.steps is not None and method != "ig":
            notices.append(f"{METHODS[method].capitalize()} takes no steps: the number of "
                           "steps is for integrated gradients only.")
        if self.chosen_baseline() is not None and method not in USES_BASELINE:
            notices.append(f"{METHODS[method].capitalize()} uses no baseline: the baseline is "
                           "for integrated gradients and feature ablation only.")
        return notices

    def chosen_baseline(self) -> str | int | None:
        """The baseline as the core's functions take it: the token id, else the named one
        (None: the default, pad)."""
        return self.baseline if self.baseline_id is None else self.baseline_id


def _check(name: str, value: Any) -> None:
    f, meta = next((f, meta) for f, meta in described(AttributionOptions) if f.name == name)
    check_value(f, meta, value)


def check_steps(steps: Any) -> int:
    """The number of integrated-gradients steps: None is captum's default (50)."""
    _check("steps", steps)
    return DEFAULT_STEPS if steps is None else steps


def check_new_tokens(max_new_tokens: Any) -> int:
    """The number of tokens to generate and attribute (1 to 256)."""
    if max_new_tokens is None:
        raise WorkbenchError("Max new tokens must be a whole number, not None.")
    _check("max_new_tokens", max_new_tokens)
    return max_new_tokens


def parse_baseline(baseline: Any) -> str | int:
    """``pad``, ``eos``, ``zero`` or a token id (a whole number, or its digits) in the range
    of :class:`AttributionOptions`' ``baseline_id``."""
    if baseline is None:
        return DEFAULT_BASELINE
    if isinstance(baseline, int) and not isinstance(baseline, bool):
        value: int = baseline
    elif isinstance(baseline, str) and baseline.strip().lower() in BASELINES:
        return baseline.strip().lower()
    elif isinstance(baseline, str) and baseline.strip().isdigit():
        value = int(baseline.strip())
    else:
        raise WorkbenchError(f"Unknown baseline {baseline!r}: use pad, eos, zero or a token id "
                             "(a whole number).")
    _check("baseline_id", value)
    return value


def check_options(method: Any, steps: Any = None, baseline: Any = None) -> list[str]:
    """Check the options without a model (the command line does it before loading one);
    returns notices about options the method does not use."""
    return AttributionOptions(method, steps, baseline).validate()


def resolve_baseline(loaded: Any, baseline: Any) -> tuple[str, int]:
    """The baseline's name ("pad", "eos", "zero" or the id's digits) and the id given to
    captum (-1: the zero embedding)."""
    choice = parse_baseline(baseline)
    tokenizer = loaded.tokenizer
    if choice == "zero":
        return "zero", ZERO_EMBEDDING
    if choice in ("pad", "eos"):
        token_id = tokenizer.pad_token_id if choice == "pad" else tokenizer.eos_token_id
        if token_id is None:
            raise WorkbenchError(f"{loaded.name} has no {'pad' if choice == 'pad' else 'end-of-text'}"
                                 " token: choose another baseline (pad, eos, zero or a token id).")
        return str(choice), int(token_id)
    rows = loaded.model.get_input_embeddings().num_embeddings
    if not 0 <= int(choice) < rows:
        raise WorkbenchError(f"The baseline token id {choice} does not exist: {loaded.name} has "
                             f"{rows:,} token ids (0–{rows - 1:,}).")
    return str(choice), int(choice)


def prepare_options(loaded: Any, method: Any, steps: Any, baseline: Any
                    ) -> tuple[str, int | None, str | None, int | None, list[str]]:
    """The method, steps, baseline label and id actually used, and notices."""
    notices = check_options(method, steps, baseline)
    method = check_method(method)
    used_steps = check_steps(steps) if method == "ig" else None
    label, baseline_id = None, None
    if method in USES_BASELINE:
        label, baseline_id = resolve_baseline(loaded, baseline)
    return method, used_steps, label, baseline_id, notices

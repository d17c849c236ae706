"""Multiple-choice tasks and sentence pairs, scored by log-likelihood exactly as
lm-evaluation-harness scores them for a causal model (its ``hf`` model, zero-shot, no chat
template, default settings).

What the harness does, and this module with it:

- A multiple-choice item asks for the log-likelihood of ``target_delimiter + choice``
  (``" "`` by default) after the item's context. The pair is tokenized as
  ``LM._encode_pair`` does: trailing whitespace of the context moves to the start of the
  continuation, ``context + continuation`` is encoded whole and the continuation is what
  follows the context's own encoding. Special tokens are the tokenizer's default (no start
  token is added unless the tokenizer adds one), except that a text which already starts
  with the start token's text gets none added. An empty context is the model's start
  token (its end-of-text token when it has none), as in ``LM.loglikelihood``.
- Context and continuation are joined and cut from the left to the model's context
  (``max_length + 1`` tokens, the last dropped); the continuation's tokens are scored by the
  logits at their positions, with ``log_softmax`` in the logits' own dtype, summed.
- ``acc``: the choice with the highest log-likelihood is the answer (the first on a tie).
  ``acc_norm``: the highest log-likelihood divided by the choice's length in characters
  (``len(choice)``, without the delimiter; the harness's ``acc_bytes`` is the one that
  divides by bytes). Each is a mean over items, with the standard error of the mean
  (sample standard deviation ÷ √n; none for a single item, "N/A" in the harness).
- A sentence pair is the harness's ``crows_pairs`` task: each sentence scored alone after
  the start token (empty context, delimiter ``""``); ``likelihood_diff`` is
  ``|ll(more) − ll(less)|`` and ``pct_stereotype`` is 1 when ``ll(more) > ll(less)``, both
  averaged with their standard errors, overall and per category.

The choices of one item (the two sentences of a pair) are scored together in one batch
(the choices of ``batch_size`` items: :class:`ChoiceSettings`), right-padded: with causal
attention no real token sees the padding, so each score equals the unbatched one (the
tests check it within 1e-5). Only the positions that score a
continuation go through the output layer (``logits_to_keep``).

Files: ``.jsonl`` (one object a line), ``.csv`` or ``.tsv`` with a header, read with the
rules of :mod:`workbench.core.common.data_files` (UTF-8, byte-order mark dropped, universal
newlines). In a CSV/TSV file the choices cell holds a JSON list of strings, such as
``["in the fridge", "on the stove"]`` (quote the cell in CSV, as its commas require).
Answers count from 0: a whole number, or in CSV/TSV its digits.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench.core.common.data_files import json_kind, read_records
from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.common.settings import check_fields, setting
from workbench.core.evaluation.metrics import MAX_WINDOW

TARGET_DELIMITER = " "  # the harness's default target_delimiter for multiple choice
# lm_eval.models.utils: the harness's context when neither config nor tokenizer gives one
HARNESS_DEFAULT_MAX_LENGTH = 2048
TOKENIZER_INFINITY = 1000000000000000019884624838656  # transformers' "no limit"
PROGRESS_EVERY = 0.1  # seconds between progress events: a long file floods no one
MAX_ITEMS = 65_536  # items a forward pass, as a fine-tuning run's batch


@dataclass
class ChoiceSettings:
    """How :func:`score_choices` runs the model, described once (its check, the ``evaluate
    choice`` options and the Multiple choice page's boxes are made from it); None leaves
    the context to the harness's rule (the model's)."""

    batch_size: int = setting(1, "The batch size", low=1, high=MAX_ITEMS, unit="items",
                              help="items whose choices are scored together in one forward "
                                   "pass")
    max_length: int | None = setting(
        None, "The context", low=2, high=MAX_WINDOW, unit="tokens", auto="model context",
        help="tokens a choice is scored in, with its context; longer ones lose tokens "
             "from the start, as in the harness")

    def validate(self) -> None:
        """Raise WorkbenchError unless each setting lies in its range."""
        check_fields(self)


# --- statistics, as lm_eval.api.metrics defines them ----------------------------------------------
def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def mean_stderr(values: list[float]) -> float | None:
    """Standard error of the mean: sample standard deviation (n − 1) ÷ √n; None for fewer
    than two values (the harness reports "N/A")."""
    n = len(values)
    if n < 2:
        return None
    mu = mean(values)
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def _argmax(values: list[float]) -> int:
    """The index of the largest value, the first on a tie (as ``numpy.argmax``)."""
    return max(range(len(values)), key=values.__getitem__)


# --- reading the files ------------------------------------------------------------------------
@dataclass
class ChoiceItem:
    """One multiple-choice item: the answer is an index into ``choices``."""

    line: int
    context: str
    choices: list[str]
    answer: int


@dataclass
class SentencePair:
    """Two sentences that differ in the group they name; ``more`` is the one the probe
    counts as stereotypical."""

    line: int
    more: str
    less: str
    category: str = ""


def _text(value: Any, where: str, field_name: str) -> str:
    if not isinstance(value, str):
        raise WorkbenchError(f"{where}: '{field_name}' is {json_kind(value)}, not text.")
    return value


def _choices(value: Any, where: str, field_name: str) -> list[str]:
    """A list of at least two non-empty strings (in CSV/TSV, a JSON list in the cell)."""
    example = '["in the fridge", "on the stove"]'
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise WorkbenchError(f"{where}: '{field_name}' must be a JSON list of choices, such "
                                 f"as {example}.") from None
    if not isinstance(value, list):
        raise WorkbenchError(f"{where}: '{field_name}' is {json_kind(value)}, not a list of choices "
                             f"such as {example}.")
    if len(value) < 2:
        raise WorkbenchError(f"{where} has {len(value)} choice(s): an item needs at least 2.")
    for number, choice in enumerate(value, start=1):
        if not isinstance(choice, str):
            raise WorkbenchError(f"{where}: choice {number} is {json_kind(choice)}, not text.")
        if not choice.strip():
            raise WorkbenchError(f"{where}: choice {number} is empty.")
    return value


def _answer(value: Any, where: str, field_name: str, count: int) -> int:
    """The index of the right choice, from 0: a whole number or the text of one."""
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        shown = repr(value) if isinstance(value, str) else json_kind(value)
        raise WorkbenchError(f"{where}: '{field_name}' is {shown}, not the index of the right "
                             "choice (0 for the first).")
    if not 0 <= value < count:
        raise WorkbenchError(f"{where}: '{field_name}' is {value} but the item has {count} "
                             f"choices (answers count from 0, so 0 to {count - 1}).")
    return value


def read_choice_items(path: str | Path, context_column: str = "context",
                      choices_column: str = "choices", answer_column: str = "answer"
                      ) -> list[ChoiceItem]:
    """The items of a multiple-choice file (see the module docstring), every problem one
    :class:`WorkbenchError` naming the file and line."""
    columns = _column_names({"context": context_column, "choices": choices_column,
                             "answer": answer_column})
    name = Path(path).name
    items = []
    for line, record in read_records(path, columns):
        where = f"{name} line {line}"
        context = _text(record[context_column], where, context_column)
        choices = _choices(record[choices_column], where, choices_column)
        answer = _answer(record[answer_column], where, answer_column, len(choices))
        items.append(ChoiceItem(line, context, choices, answer))
    return items


def read_sentence_pairs(path: str | Path, more_column: str = "more", less_column: str = "less",
                        category_column: str | None = None) -> list[SentencePair]:
    """The pairs of a sentence-pair file. The category column is optional: ``None`` reads
    ``category`` when the file has it; a name given is required."""
    wanted = {"more": more_column, "less": less_column}
    if category_column is not None:
        wanted["category"] = category_column
    columns = _column_names(wanted)
    category = category_column or "category"
    name = Path(path).name
    pairs = []
    for line, record in read_records(path, columns, optional=(category,)):
        where = f"{name} line {line}"
        more = _text(record[more_column], where, more_column)
        less = _text(record[less_column], where, less_column)
        for text, column in ((more, more_column), (less, less_column)):
            if not text.strip():
                raise WorkbenchError(f"{where}: '{column}' is empty.")
        group = record.get(category, "")
        group = _text(group, where, category) if group is not None else ""
        pairs.append(SentencePair(line, more, less, group.strip()))
    return pairs


def _column_names(named: dict[str, str]) -> list[str]:
    """The column names chosen for each role: not empty, and no name for two roles."""
    for role, column in named.items():
        if not column.strip():
            raise WorkbenchError(f"The {role} column has no name: give the name of a column.")
    names = list(named.values())
    for role, column in named.items():
        if names.count(column) > 1:
            raise WorkbenchError(f"The column '{column}' is chosen for two roles: give the "
                                 f"{role} column its own.")
    return names


# --- tokenizing and scoring as the harness does --------------------------------------------------
def harness_max_length(model: Any, tokenizer: Any) -> int:
    """The context length the harness gives a model (``resolve_max_length``): the text
    config's (else the config's) ``n_positions``, ``max_position_embeddings`` or ``n_ctx``,
    else the tokenizer's ``model_max_length`` when it is set, else 2048."""
    config = model.config
    config = getattr(config, "text_config", None) or config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit != TOKENIZER_INFINITY:
        return int(limit)
    return HARNESS_DEFAULT_MAX_LENGTH


class HarnessEncoder:
    """Token ids of (context, continuation) requests, as ``HFLM.tok_encode`` and
    ``LM.loglikelihood`` / ``LM._encode_pair`` make them for a causal model."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.prefix_token_id: int | None = bos if bos is not None else eos
        self.prefix_text = None if self.prefix_token_id is None else \
            tokenizer.decode(self.prefix_token_id)
        self._contexts: dict[str, list[int]] = {}  # the choices of an item share one

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """``tok_encode``: the tokenizer's default special tokens, none when the text
        already starts with the start token's text."""
        kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None and self.prefix_text is not None and \
                text.startswith(self.prefix_text):
            kwargs["add_special_tokens"] = False
        return list(self.tokenizer.encode(text, verbose=False, **kwargs))

    def pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) of one request."""
        if context == "":
            ids = self.encode(continuation, add_special_tokens=False)
            if not ids:
                raise WorkbenchError(f"{continuation!r} gives no tokens to score.")
            if self.prefix_token_id is None:
                raise WorkbenchError("The model's tokenizer has neither a start nor an "
                                     "end-of-text token to score a text without context.")
            if ids[0] != self.prefix_token_id:
                return [self.prefix_token_id], ids
            return ids[:1], ids[1:]
        spaces = len(context) - len(context.rstrip())
        if spaces:
            continuation = context[-spaces:] + continuation
            context = context[:-spaces]
        if not context:  # the harness stops on an assertion here
            raise WorkbenchError("the context is only white space: leave it empty or give "
                                 "it text.")
        if context not in self._contexts:
            self._contexts = {context: self.encode(context)}  # only the current item's
        context_ids = self._contexts[context]
        whole = self.encode(context + continuation)
        return context_ids, whole[len(context_ids):]


class BatchScorer:
    """Log-likelihoods of several requests in one forward pass of the model."""

    def __init__(self, model: Any, max_length: int) -> None:
        import inspect

        self.model = model
        self.max_length = max_length
        self.truncated = 0  # requests cut from the left to fit the context
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def check(self, context_ids: list[int], continuation_ids: list[int]) -> None:
        """Raise WorkbenchError unless the request can be scored in the context."""
        if not context_ids or not continuation_ids:
            raise WorkbenchError("A choice gives no tokens to score after its context.")
        if len(continuation_ids) > self.max_length:
            raise WorkbenchError(f"A choice of {len(continuation_ids)} tokens is longer "
                                 f"than the model's context ({self.max_length} tokens).")

    def score(self, requests: list[tuple[list[int], list[int]]]) -> list[float]:
        import torch

        rows, spans = [], []
        for context_ids, continuation_ids in requests:
            self.check(context_ids, continuation_ids)
            whole = context_ids + continuation_ids
            if len(whole) > self.max_length + 1:
                self.truncated += 1
            row = whole[-(self.max_length + 1):][:-1]  # the last token is only predicted
            rows.append(row)
            spans.append((len(row) - len(continuation_ids), len(row)))
        width = max(len(row) for row in rows)
        first = min(start for start, _ in spans)  # the first position that scores a token
        device = self.model.device
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, :len(row)] = 1
        kwargs: dict[str, Any] = {"attention_mask": mask.to(device)}
        if self.keeps_logits:
            kwargs["logits_to_keep"] = width - first
        with torch.inference_mode():
            logits = self.model(ids.to(device), **kwargs).logits
        if logits.shape[1] != width:  # logits_to_keep: position `first` is index 0
            offset = first
        else:
            offset = 0
        scores = []
        for r, ((_, continuation_ids), (start, end)) in enumerate(zip(requests, spans,
                                                                       strict=True)):
            # log_softmax in the logits' dtype, summed in it: as the harness does
            logp = torch.log_softmax(logits[r, start - offset:end - offset], dim=-1)
            targets = torch.tensor(continuation_ids, dtype=torch.long, device=logp.device)
            scores.append(float(logp.gather(-1, targets[:, None]).sum()))
        return scores


class _Throttle:
    """Progress events at most every :data:`PROGRESS_EVERY` seconds, and the last one."""

    def __init__(self, ctx: JobContext, what: str, total: int) -> None:
        self.ctx, self.what, self.total, self.last = ctx, what, total, 0.0

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if done == self.total or now - self.last >= PROGRESS_EVERY:
            self.last = now
            self.ctx.progress(f"{self.what}: {done} of {self.total}", done / self.total)


def _notices(scorer: BatchScorer, what: str) -> list[str]:
    if not scorer.truncated:
        return []
    return [f"{scorer.truncated} {what} did not fit the model's context "
            f"({scorer.max_length} tokens) and lost tokens from the start, as in the harness."]


# --- multiple choice ------------------------------------------------------------------------------
@dataclass
class ScoredItem:
    line: int
    context: str
    choices: list[str]
    answer: int
    loglikelihoods: list[float]
    pick: int  # the choice with the highest log-likelihood
    pick_norm: int  # ... per character of the choice

    @property
    def correct(self) -> bool:
        return self.pick == self.answer

    @property
    def correct_norm(self) -> bool:
        return self.pick_norm == self.answer

    def to_dict(self) -> dict:
        return {**asdict(self), "correct": self.correct, "correct_norm": self.correct_norm}


@dataclass
class ChoiceResult:
    acc: float
    acc_stderr: float | None
    acc_norm: float
    acc_norm_stderr: float | None
    items: list[ScoredItem]
    model: str = ""
    seconds: float = 0.0
    target_delimiter: str = TARGET_DELIMITER
    notices: list[str] = field(default_factory=list)

    @property
    def items_per_second(self) -> float:
        return len(self.items) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"acc {self.acc:.4f} ± {_stderr_text(self.acc_stderr)}, acc_norm "
                f"{self.acc_norm:.4f} ± {_stderr_text(self.acc_norm_stderr)} "
                f"({len(self.items)} items, {self.model})")

    def to_dict(self, with_items: bool = True) -> dict:
        data = {"model": self.model, "count": len(self.items), "acc": self.acc,
                "acc_stderr": self.acc_stderr, "acc_norm": self.acc_norm,
                "acc_norm_stderr": self.acc_norm_stderr,
                "target_delimiter": self.target_delimiter, "seconds": round(self.seconds, 3),
                "items_per_second": round(self.items_per_second, 2), "notices": self.notices}
        if with_items:
            data["items"] = [item.to_dict() for item in self.items]
        return data


def _stderr_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def score_choices(loaded: Any, items: list[ChoiceItem], target_delimiter: str = TARGET_DELIMITER,
                  ctx: JobContext | None = None, settings: ChoiceSettings | None = None
                  ) -> ChoiceResult:
    """acc and acc_norm of ``loaded`` (a causal LM) on ``items``, with each choice's
    log-likelihood (see the module docstring); one forward pass per ``settings.batch_size``
    items (by default one), in a context of ``settings.max_length`` tokens (by default the
    harness's: the model's)."""
    from workbench.core.models.catalog import CAUSAL_LM

    ctx = ctx or JobContext()
    settings = settings or ChoiceSettings()
    settings.validate()
    loaded.require(CAUSAL_LM, "multiple-choice scoring")
    if not items:
        raise WorkbenchError("There are no items to score.")
    encoder = HarnessEncoder(loaded.tokenizer)
    scorer = BatchScorer(loaded.model, settings.max_length
                         or harness_max_length(loaded.model, loaded.tokenizer))
    progress = _Throttle(ctx, "Multiple choice", len(items))
    progress(0)
    scored = []
    start = time.perf_counter()
    for begin in range(0, len(items), settings.batch_size):
        ctx.cancel.raise_if_cancelled()  # at most one forward pass after a cancel
        group = items[begin:begin + settings.batch_size]
        requests = []
        for item in group:
            try:
                pairs = [encoder.pair(item.context, f"{target_delimiter}{choice}")
                         for choice in item.choices]
                for pair in pairs:
                    scorer.check(*pair)
            except WorkbenchError as exc:
                raise WorkbenchError(f"Item on line {item.line}: {exc}") from None
            requests += pairs
        scores = scorer.score(requests)
        for item in group:
            lls, scores = scores[:len(item.choices)], scores[len(item.choices):]
            normalised = [ll / len(choice) for ll, choice in zip(lls, item.choices,
                                                                 strict=True)]
            scored.append(ScoredItem(item.line, item.context, item.choices, item.answer, lls,
                                     _argmax(lls), _argmax(normalised)))
        progress(begin + len(group))
    seconds = time.perf_counter() - start
    acc = [1.0 if s.correct else 0.0 for s in scored]
    acc_norm = [1.0 if s.correct_norm else 0.0 for s in scored]
    return ChoiceResult(mean(acc), mean_stderr(acc), mean(acc_norm), mean_stderr(acc_norm),
                        scored, loaded.name, seconds, target_delimiter,
                        _notices(scorer, "choices"))


# --- sentence pairs -------------------------------------------------------------------------------
@dataclass
class ScoredPair:
    line: int
    more: str
    less: str
    category: str
    loglikelihood_more: float
    loglikelihood_less: float

    @property
    def likelihood_diff(self) -> float:
        return abs(self.loglikelihood_more - self.loglikelihood_less)

    @property
    def stereotype(self) -> bool:
        """Whether the model finds the ``more`` sentence likelier (strictly)."""
        return self.loglikelihood_more > self.loglikelihood_less

    def to_dict(self) -> dict:
        return {**asdict(self), "likelihood_diff": self.likelihood_diff,
                "stereotype": self.stereotype}


@dataclass
class PairGroup:
    """The harness's two numbers over a set of pairs (all of them, or one category)."""

    name: str
    count: int
    likelihood_diff: float
    likelihood_diff_stderr: float | None
    pct_stereotype: float  # a share in [0, 1], as the harness reports it
    pct_stereotype_stderr: float | None

    @classmethod
    def of(cls, name: str, pairs: list[ScoredPair]) -> PairGroup:
        diffs = [p.likelihood_diff for p in pairs]
        stereo = [1.0 if p.stereotype else 0.0 for p in pairs]
        return cls(name, len(pairs), mean(diffs), mean_stderr(diffs), mean(stereo),
                   mean_stderr(stereo))


@dataclass
class PairsResult:
    overall: PairGroup
    categories: list[PairGroup]  # in the order they first appear in the file
    pairs: list[ScoredPair]
    model: str = ""
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)

    @property
    def pairs_per_second(self) -> float:
        return len(self.pairs) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        o = self.overall
        return (f"pct_stereotype {o.pct_stereotype:.4f} ± {_stderr_text(o.pct_stereotype_stderr)}"
                f", likelihood_diff {o.likelihood_diff:.4f} ({o.count} pairs, {self.model})")

    def to_dict(self, with_pairs: bool = True) -> dict:
        o = asdict(self.overall)
        del o["name"]
        data = {"model": self.model, **o,
                "categories": {g.name: {k: v for k, v in asdict(g).items() if k != "name"}
                               for g in self.categories},
                "seconds": round(self.seconds, 3),
                "pairs_per_second": round(self.pairs_per_second, 2), "notices": self.notices}
        if with_pairs:
            data["pairs"] = [p.to_dict() for p in self.pairs]
        return data


def score_pairs(loaded: Any, pairs: list[SentencePair], ctx: JobContext | None = None
                ) -> PairsResult:
    """The harness's ``crows_pairs`` numbers of ``loaded`` on ``pairs``, overall and per
    category (pairs without one count only overall); one forward pass per pair."""
    from workbench.core.models.catalog import CAUSAL_LM

    ctx = ctx or JobContext()
    loaded.require(CAUSAL_LM, "scoring sentence pairs")
    if not pairs:
        raise WorkbenchError("There are no sentence pairs to score.")
    encoder = HarnessEncoder(loaded.tokenizer)
    scorer = BatchScorer(loaded.model, harness_max_length(loaded.model, loaded.tokenizer))
    progress = _Throttle(ctx, "Sentence pairs", len(pairs))
    progress(0)
    scored = []
    start = time.perf_counter()
    for number, pair in enumerate(pairs, start=1):
        ctx.cancel.raise_if_cancelled()
        try:  # crows_pairs: no context, no delimiter
            more, less = scorer.score([encoder.pair("", pair.more), encoder.pair("", pair.less)])
        except WorkbenchError as exc:
            raise WorkbenchError(f"Pair on line {pair.line}: {exc}") from None
        scored.append(ScoredPair(pair.line, pair.more, pair.less, pair.category, more, less))
        progress(number)
    seconds = time.perf_counter() - start
    names = list(dict.fromkeys(p.category for p in scored if p.category))
    categories = [PairGroup.of(name, [p for p in scored if p.category == name])
                  for name in names]
    return PairsResult(PairGroup.of("all", scored), categories, scored, loaded.name, seconds,
                       _notices(scorer, "sentences"))

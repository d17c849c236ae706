"""Evaluation: perplexity by the sliding-window method, and BLEU / chrF / TER with
sacrebleu, including its paired significance tests.

Perplexity follows the fixed-length sliding-window recipe that the transformers
documentation gives: windows of ``max_length`` tokens moved by ``stride``; in each window
only the tokens not scored by an earlier window are scored, each predicted from its left
context inside the window; every token after the first is scored exactly once. No start
token is added beyond what the tokenizer adds by default.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

# the file readers live in data_files; these two names stay importable from here
from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.common.settings import check_fields, setting
from workbench.core.common.units import LN2

MAX_SAMPLES = 100_000  # paired-test resamples: sacrebleu holds samples × lines indices at once
MAX_WINDOW = 131072  # tokens: the longest window offered (a model's context limits it too)


@dataclass
class PerplexitySettings:
    """The sliding window of :func:`perplexity`, described once (its checks, the
    ``evaluate perplexity`` options and the Evaluate tab's boxes are made from it); None
    leaves a setting to the app."""

    max_length: int | None = setting(
        None, "The window", low=2, high=MAX_WINDOW, unit="tokens", auto="model context",
        help="tokens a window holds")
    stride: int | None = setting(
        None, "The stride", low=1, high=MAX_WINDOW, unit="tokens", auto="half the window",
        help="tokens each window moves on from the one before")

    def validate(self) -> None:
        """Raise WorkbenchError unless each setting lies in its range and the stride fits
        in the window."""
        check_fields(self)
        check_stride(self.max_length, self.stride)


@dataclass
class SignificanceSettings:
    """The paired significance tests of :func:`score_translation`, described once (the
    ``evaluate bleu --samples`` option is made from it)."""

    samples: int = setting(
        0, "The number of resamples", low=0, high=MAX_SAMPLES, off="sacrebleu's default",
        high_note="sacrebleu holds every resample's line indices at once",
        help="resamples / trials of the paired test (0: sacrebleu's default, 1000 for bs and "
        "10000 for ar)")

    def validate(self) -> None:
        """Raise WorkbenchError unless the number of resamples lies in its range."""
        check_fields(self)


def check_stride(max_length: int | None, stride: int | None) -> None:
    """A stride longer than the window would leave tokens between windows unscored."""
    if max_length is not None and stride is not None and stride > max_length:
        raise WorkbenchError(f"The stride ({stride}) is larger than the window ({max_length}):"
                             " tokens between windows would never be scored.")


@dataclass
class PerplexityResult:
    perplexity: float
    nll_per_token: float  # mean negative log-likelihood, nats
    bits_per_byte: float
    tokens: int  # how many tokens were scored (all but the first, unless stride = window)
    bytes: int
    max_length: int
    stride: int
    seconds: float
    token_ids: list[int] = field(default_factory=list)
    token_texts: list[str] = field(default_factory=list)
    # nats, by position: index i is token i+1's NLL, NaN where no window scored that token
    # (with stride = window, the first token of each later window, as in the recipe)
    token_nll: list[float] = field(default_factory=list)
    char_ends: list[int] = field(default_factory=list)  # where each token ends in the text
    model: str = ""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def scored(self) -> list[tuple[int, float]]:
        """(position, NLL in nats) of every scored token, in text order."""
        return [(i + 1, nll) for i, nll in enumerate(self.token_nll) if not math.isnan(nll)]

    def worst(self, n: int = 10) -> list[tuple[int, str, float]]:
        """The ``n`` most surprising tokens: (position, text, surprisal in bits)."""
        ranked = sorted(self.scored(), key=lambda item: -item[1])[:n]
        return [(pos, self.token_texts[pos], nll / LN2) for pos, nll in ranked]

    def same_tokens(self, other: PerplexityResult) -> bool:
        """Whether both results scored the same tokens (models sharing a tokenizer), so
        their per-token numbers can be compared position by position."""
        return self.token_ids == other.token_ids

    def to_dict(self, per_token: bool = False) -> dict:
        data = {k: v for k, v in asdict(self).items()
                if k not in ("token_ids", "token_texts", "token_nll", "char_ends")}
        data["tokens_per_second"] = round(self.tokens_per_second, 2)
        if per_token:
            data["per_token"] = [{"position": pos, "token": self.token_texts[pos], "nll": nll}
                                 for pos, nll in self.scored()]
        return data


def perplexity(loaded: Any, text: str, max_length: int | None = None, stride: int | None = None,
               ctx: JobContext | None = None) -> PerplexityResult:
    """Perplexity of ``loaded`` (a causal LM) on ``text`` (see the module docstring), with
    the window and stride of :class:`PerplexitySettings` (None: the model's context, half
    the window)."""
    import torch

    from workbench.core.models.catalog import CAUSAL_LM
    from workbench.core.models.info import context_length

    ctx = ctx or JobContext()
    loaded.require(CAUSAL_LM, "perplexity")
    PerplexitySettings(max_length, stride).validate()
    context = context_length(loaded.model) or 1024
    max_length = context if max_length is None else max_length
    if max_length > context:
        raise WorkbenchError(f"The window ({max_length}) is longer than the model's context "
                             f"({context} tokens).")
    stride = max(1, max_length // 2) if stride is None else stride
    check_stride(max_length, stride)
    tokenizer, model = loaded.tokenizer, loaded.model
    ctx.progress("Perplexity: tokenizing…", 0.0)
    # verbose=False: a long text is longer than the model's context on purpose (windows)
    encoded = tokenizer(text, return_tensors="pt", verbose=False,
                        return_offsets_mapping=bool(getattr(tokenizer, "is_fast", False)))
    ids = encoded["input_ids"]
    n = ids.shape[1]
    if n < 2:
        raise WorkbenchError(f"The text has {n} token(s); perplexity needs at least 2.")
    device = model.device
    token_nll = [math.nan] * (n - 1)  # by position: index i holds token i+1
    count = 0
    nll_sum = 0.0
    prev_end = 0
    # the windows start every `stride` tokens until one reaches the end of the text
    windows = next(w for w, begin in enumerate(range(0, n, stride))
                   if begin + max_length >= n) + 1
    start_time = time.perf_counter()
    for w in range(windows):
        ctx.cancel.raise_if_cancelled()  # at most one model call after a cancel
        begin = w * stride
        end = min(begin + max_length, n)
        window = ids[:, begin:end].to(device)
        with torch.inference_mode():
            logits = model(window).logits[0, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, window[0, 1:, None])[:, 0]  # nll[j] scores token begin+j+1
        # the tokens no earlier window scored; a window's first token has no context in it
        first = max(prev_end, begin + 1)
        scored = nll[first - begin - 1:]
        token_nll[first - 1:end - 1] = scored.tolist()
        count += end - first
        nll_sum += float(scored.sum())
        prev_end = end
        ctx.progress(f"Perplexity: window {w + 1} of {windows}", end / n)
    seconds = time.perf_counter() - start_time
    n_bytes = len(text.encode("utf-8"))
    mean = nll_sum / count
    ctx.cancel.raise_if_cancelled()
    texts = [tokenizer.decode([t]) for t in ids[0].tolist()]
    if "offset_mapping" in encoded:
        # a special token maps to (0, 0): it keeps the position of the token before it
        ends = list(itertools.accumulate((int(e) for _, e in
                                          encoded["offset_mapping"][0].tolist()), max))
    else:
        ends = list(itertools.accumulate(len(t) for t in texts))
    return PerplexityResult(
        perplexity=math.exp(mean), nll_per_token=mean,
        bits_per_byte=nll_sum / LN2 / n_bytes, tokens=count, bytes=n_bytes,
        max_length=max_length, stride=stride, seconds=seconds, token_ids=ids[0].tolist(),
        token_texts=texts, token_nll=token_nll, char_ends=ends, model=loaded.name)


# --- BLEU, chrF, TER -------------------------------------------------------------------------
METRIC_NAMES = ("bleu", "chrf", "chrf++", "ter")


def make_metric(name: str, tokenize: str | None = None, lowercase: bool = False):
    from sacrebleu.metrics import BLEU, CHRF, TER

    if name == "bleu":
        _fetch_tokenizer_model(tokenize)
        try:
            return BLEU(tokenize=tokenize, lowercase=lowercase)
        except (ImportError, RuntimeError, OSError) as exc:  # a tokenizer's extra package
            extra = {"ja-mecab": "ja", "ko-mecab": "ko"}.get(tokenize or "")
            if extra:
                raise WorkbenchError(f"The BLEU tokenizer {tokenize} needs packages that are "
                                     f"not installed: pip install 'sacrebleu[{extra}]'.") from None
            raise WorkbenchError(f"The BLEU tokenizer {tokenize} cannot be used: "
                                 f"{str(exc).strip().splitlines()[0]}") from None
    if name == "chrf":
        return CHRF(lowercase=lowercase)
    if name == "chrf++":
        return CHRF(word_order=2, lowercase=lowercase)
    if name == "ter":
        return TER()  # sacrebleu's default: case-insensitive, as its signature says
    raise WorkbenchError(f"Unknown metric '{name}': use {', '.join(METRIC_NAMES)}.")


def _fetch_tokenizer_model(tokenize: str | None, timeout: float = 20.0) -> None:
    """The SentencePiece model a flores / spm tokenizer needs, downloaded where sacrebleu
    looks for it when it is not there yet, with a timeout (sacrebleu's own download has
    none, so a stalled connection would hold the worker) and never when offline is forced.
    Raises WorkbenchError."""
    import os
    import urllib.request

    from sacrebleu.tokenizers.tokenizer_spm import SPM_MODELS
    from sacrebleu.utils import SACREBLEU_DIR

    if tokenize not in SPM_MODELS:
        return
    url = SPM_MODELS[tokenize]["url"]
    path = os.path.join(SACREBLEU_DIR, "models", os.path.basename(url))
    if os.path.exists(path):
        return
    from workbench.core.common.offline import offline_forced

    advice = "use it once online, or choose another tokenizer"
    if offline_forced():
        raise WorkbenchError(f"The BLEU tokenizer {tokenize} needs its SentencePiece model, "
                             f"which is not in {os.path.dirname(path)} and cannot be "
                             f"downloaded offline: {advice}.")
    from workbench.core.common.files import write_atomically

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (https)
            data = response.read()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomically(path, data)
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise WorkbenchError(f"The BLEU tokenizer {tokenize} needs its SentencePiece model, "
                             f"which sacrebleu downloads on first use; the download failed "
                             f"({reason}): {advice}.") from None


@dataclass
class MetricScore:
    metric: str
    score: float
    signature: str
    text: str  # sacrebleu's own formatting of the score


@dataclass
class SignificanceResult:
    test: str  # "bs" (paired bootstrap) or "ar" (approximate randomization)
    metric: str
    baseline: float
    system: float
    p_value: float | None
    baseline_mean: float | None
    baseline_ci: float | None
    system_mean: float | None
    system_ci: float | None
    signature: str


@dataclass
class TranslationScores:
    metrics: list[MetricScore]
    sentences: list[dict]
    significance: list[SignificanceResult] = field(default_factory=list)
    segments: int = 0
    references: int = 0

    def to_dict(self) -> dict:
        return {"segments": self.segments, "references": self.references,
                **{m.metric: {"score": m.score, "signature": m.signature, "text": m.text}
                   for m in self.metrics},
                "significance": [asdict(s) for s in self.significance],
                "sentences": self.sentences}


def _number(value: Any) -> float | None:
    """sacrebleu's numpy scalars as plain floats (JSON, tables)."""
    return None if value is None else float(value)


def check_parallel(hyps: list[str], refs: list[list[str]], name: str = "hypothesis") -> None:
    for i, ref in enumerate(refs, start=1):
        if len(ref) != len(hyps):
            raise WorkbenchError(f"The {name} has {len(hyps)} lines but reference {i} has "
                                 f"{len(ref)}: they must be line-parallel.")


def score_translation(hyps: list[str], refs: list[list[str]],
                      metrics: tuple[str, ...] = ("bleu", "chrf", "ter"),
                      tokenize: str | None = None, lowercase: bool = False,
                      compare_hyps: list[str] | None = None, tests: tuple[str, ...] = ("bs",),
                      n_samples: int = 0, ctx: JobContext | None = None) -> TranslationScores:
    """Corpus and sentence scores of ``hyps`` against ``refs`` (one list per reference),
    and, with ``compare_hyps``, sacrebleu's paired tests of the second system against the
    first (the baseline)."""
    ctx = ctx or JobContext()
    SignificanceSettings(samples=n_samples).validate()
    if not refs:
        raise WorkbenchError("Give at least one reference file.")
    check_parallel(hyps, refs)
    if compare_hyps is not None:
        check_parallel(compare_hyps, refs, "second system")
    for name in metrics:
        make_metric(name)  # unknown names fail before any work
    scores = []
    for name in metrics:
        metric = make_metric(name, tokenize, lowercase)
        result = metric.corpus_score(hyps, refs)
        scores.append(MetricScore(name, float(result.score), str(metric.get_signature()),
                                  str(result)))
    ctx.progress("Sentence scores…", 0.3)
    sentences = []
    sentence_metrics = {name: make_metric(name, tokenize, lowercase) for name in metrics}
    if "bleu" in sentence_metrics:
        from sacrebleu.metrics import BLEU

        sentence_metrics["bleu"] = BLEU(tokenize=tokenize, lowercase=lowercase,
                                        effective_order=True)
    for i, hyp in enumerate(hyps):
        row: dict[str, Any] = {"line": i + 1, "hypothesis": hyp,
                               "references": [ref[i] for ref in refs]}
        for name, metric in sentence_metrics.items():
            row[name] = float(metric.sentence_score(hyp, [ref[i] for ref in refs]).score)
        sentences.append(row)
    significance = []
    if compare_hyps is not None:
        from sacrebleu.significance import PairedTest

        for t, test in enumerate(tests):
            if test not in ("bs", "ar"):
                raise WorkbenchError(f"Unknown test '{test}': use bs or ar.")
            ctx.progress("Paired bootstrap resampling…" if test == "bs"
                         else "Approximate randomization…", 0.5 + 0.5 * t / len(tests))
            named = [("baseline", hyps), ("system", compare_hyps)]
            test_metrics = {name: make_metric(name, tokenize, lowercase) for name in metrics}
            sigs, table = PairedTest(named, test_metrics, refs, test_type=test,
                                     n_samples=n_samples,
                                     n_ar_confidence=0 if test == "ar" else -1)()
            for key, results in table.items():
                if key == "System":
                    continue
                base, system = results[0], results[1]
                significance.append(SignificanceResult(
                    test=test, metric=key, baseline=float(base.score),
                    system=float(system.score), p_value=_number(system.p_value),
                    baseline_mean=_number(base.mean), baseline_ci=_number(base.ci),
                    system_mean=_number(system.mean), system_ci=_number(system.ci),
                    signature=str(sigs[key])))
    return TranslationScores(scores, sentences, significance, len(hyps), len(refs))

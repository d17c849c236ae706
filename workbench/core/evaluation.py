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
from pathlib import Path
from typing import Any

from workbench.core.errors import WorkbenchError
from workbench.core.jobs import JobContext

LN2 = math.log(2.0)


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's content; one clear message for missing, binary or empty files."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise WorkbenchError(f"File not found: {path}") from None
    except OSError as exc:
        raise WorkbenchError(f"Cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WorkbenchError(f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                             f"position {exc.start}).") from None
    if not text.strip():
        raise WorkbenchError(f"{path} is empty.")
    return text


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (one segment a line, as sacrebleu expects)."""
    return read_text(path).rstrip("\n").split("\n")


@dataclass
class PerplexityResult:
    perplexity: float
    nll_per_token: float  # mean negative log-likelihood, nats
    bits_per_byte: float
    tokens: int  # how many tokens were scored (all but the first)
    bytes: int
    max_length: int
    stride: int
    seconds: float
    token_ids: list[int] = field(default_factory=list)
    token_texts: list[str] = field(default_factory=list)
    token_nll: list[float] = field(default_factory=list)  # nats; index i scores token i+1
    char_ends: list[int] = field(default_factory=list)  # where each token ends in the text
    model: str = ""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def worst(self, n: int = 10) -> list[tuple[int, str, float]]:
        """The ``n`` most surprising tokens: (position, text, surprisal in bits)."""
        ranked = sorted(range(len(self.token_nll)), key=lambda i: -self.token_nll[i])[:n]
        return [(i + 1, self.token_texts[i + 1], self.token_nll[i] / LN2) for i in ranked]

    def same_tokens(self, other: PerplexityResult) -> bool:
        """Whether both results scored the same tokens (models sharing a tokenizer), so
        their per-token numbers can be compared position by position."""
        return self.token_ids == other.token_ids

    def to_dict(self, per_token: bool = False) -> dict:
        data = {k: v for k, v in asdict(self).items()
                if k not in ("token_ids", "token_texts", "token_nll", "char_ends")}
        data["tokens_per_second"] = round(self.tokens_per_second, 2)
        if per_token:
            data["per_token"] = [{"position": i + 1, "token": self.token_texts[i + 1],
                                  "nll": nll} for i, nll in enumerate(self.token_nll)]
        return data


def perplexity(loaded: Any, text: str, max_length: int | None = None, stride: int | None = None,
               ctx: JobContext | None = None) -> PerplexityResult:
    """Perplexity of ``loaded`` (a causal LM) on ``text`` (see the module docstring)."""
    import torch

    from workbench.core.catalog import CAUSAL_LM
    from workbench.core.generation import context_length

    ctx = ctx or JobContext()
    if loaded.task != CAUSAL_LM:
        raise WorkbenchError(f"{loaded.name} is a {loaded.task} model without a language-"
                             "modelling head: perplexity needs a causal language model.")
    context = context_length(loaded.model) or 1024
    max_length = max_length or context
    if max_length < 2:
        raise WorkbenchError("The window must hold at least 2 tokens.")
    if max_length > context:
        raise WorkbenchError(f"The window ({max_length}) is longer than the model's context "
                             f"({context} tokens).")
    stride = stride or max(1, max_length // 2)
    if stride <= 0:
        raise WorkbenchError("The stride must be at least 1.")
    if stride > max_length:
        raise WorkbenchError(f"The stride ({stride}) is larger than the window ({max_length}):"
                             " tokens between windows would never be scored.")
    tokenizer, model = loaded.tokenizer, loaded.model
    encoded = tokenizer(text, return_tensors="pt",
                        return_offsets_mapping=bool(getattr(tokenizer, "is_fast", False)))
    ids = encoded["input_ids"]
    n = ids.shape[1]
    if n < 2:
        raise WorkbenchError(f"The text has {n} token(s); perplexity needs at least 2.")
    device = model.device
    token_nll: list[float] = []
    nll_sum = 0.0
    prev_end = 0
    starts = list(range(0, n, stride))
    start_time = time.perf_counter()
    for w, begin in enumerate(starts):
        ctx.cancel.raise_if_cancelled()
        end = min(begin + max_length, n)
        target_len = end - prev_end  # tokens not scored by an earlier window
        window = ids[:, begin:end].to(device)
        with torch.inference_mode():
            logits = model(window).logits[0, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, window[0, 1:, None])[:, 0]
        scored = nll[-target_len:] if target_len < window.shape[1] else nll
        token_nll += scored.tolist()
        nll_sum += float(scored.sum())
        prev_end = end
        ctx.progress(f"Perplexity: window {w + 1}", end / n)
        if end == n:
            break
    seconds = time.perf_counter() - start_time
    count = len(token_nll)
    n_bytes = len(text.encode("utf-8"))
    mean = nll_sum / count
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
        return BLEU(tokenize=tokenize, lowercase=lowercase)
    if name == "chrf":
        return CHRF(lowercase=lowercase)
    if name == "chrf++":
        return CHRF(word_order=2, lowercase=lowercase)
    if name == "ter":
        return TER()  # sacrebleu's default: case-insensitive, as its signature says
    raise WorkbenchError(f"Unknown metric '{name}': use {', '.join(METRIC_NAMES)}.")


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

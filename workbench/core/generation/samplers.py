"""Samplers transformers does not ship, each a ``LogitsProcessor`` written from its published
definition, for the chain :func:`workbench.core.generation.settings.row_chain` builds:

- DRY, "Don't Repeat Yourself" (p-e-w, text-generation-webui #5677; llama.cpp): a token
  that would extend a repeat of the last ``n`` tokens (``n`` ≥ the allowed length) loses
  ``multiplier · base^(n − allowed length)`` of its logit; sequence breakers end a match.
- XTC, "Exclude Top Choices" (p-e-w, text-generation-webui #6335; llama.cpp): with
  probability ``p``, every token whose probability is at least the threshold is removed
  except the least likely of them.
- Mirostat 2.0 (Basu et al. 2021, "Mirostat: a neural text decoding algorithm that directly
  controls perplexity"; llama.cpp's ``mirostat_v2``): tokens whose surprise ``-log2 p`` is
  above ``mu`` are removed; after each step ``mu -= eta · (surprise of the chosen token −
  tau)``, starting from ``mu = 2 · tau``.
- Dynamic temperature, entropy-scaled (text-generation-webui's ``dynatemp``, llama.cpp's
  ``temp_ext``): ``T = low + (high − low) · (H / log N)^exponent``, with ``H`` the entropy of
  the distribution and ``N`` the number of tokens still possible.
- Top-nσ (Tang et al. 2024, "Top-nσ: Not All Logits Are You Need"): keep the tokens whose
  logit is at least ``max − n · σ``, ``σ`` the standard deviation of the logits.
- Quadratic smoothing (kalomaze; text-generation-webui's ``smoothing_factor`` and
  ``smoothing_curve``): ``l' = max − k·f·d² + s·f·d³`` with ``d = l − max``,
  ``k = (3 − curve) / 2`` and ``s = (curve − 1) / 2`` (curve 1: ``max − f·d²``).

Removed tokens get ``-inf``, as transformers' warpers do. The random draw of XTC comes from
a torch ``Generator`` seeded from the run's seed, the position in the sequence and the row,
so a run is reproducible and the inspector can replay any step's draw exactly.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from transformers import LogitsProcessor

from workbench.core.common.units import LN2

DRY_MAX_MATCH = 50  # text-generation-webui's cap on a match, so base^(n − allowed) stays finite


def breaker_token_ids(tokenizer: Any, breakers: list[str]) -> frozenset[int]:
    """The token ids of DRY's sequence ``breakers`` (texts): the tokens each becomes after other
    text (the tokens of ``"a" + breaker`` beyond those of ``"a"``, so a tokenizer that marks
    the start of a text does not make that mark a breaker); a breaker that merges with the
    ``a`` gives its last token, as text-generation-webui takes it."""
    ids: set[int] = set()
    base = tokenizer.encode("a", add_special_tokens=False)
    for breaker in breakers:
        both = tokenizer.encode("a" + breaker, add_special_tokens=False)
        if both[:len(base)] == base:
            ids.update(both[len(base):])  # none: the tokenizer drops this text
        elif both:
            ids.add(both[-1])
    return frozenset(ids)


def dry_match_lengths(ids: list[int], breakers: frozenset[int] | set[int],
                      longest: int = DRY_MAX_MATCH) -> dict[int, int]:
    """For each token that would extend a repeat, the length of the longest repeat it
    extends: the most tokens at the end of ``ids`` that also stand earlier, just before that
    token. A match stops at a sequence breaker; a breaker is never penalised."""
    lengths: dict[int, int] = {}
    end = len(ids) - 1
    if end < 1 or ids[end] in breakers:
        return lengths
    for i in range(end):  # earlier places of the last token
        if ids[i] != ids[end] or ids[i + 1] in breakers:
            continue
        n = 1
        while n < longest and i - n >= 0 and ids[i - n] == ids[end - n] \
                and ids[i - n] not in breakers:
            n += 1
        follower = ids[i + 1]
        if n > lengths.get(follower, 0):
            lengths[follower] = n
    return lengths


class DryLogitsProcessor(LogitsProcessor):
    """DRY: subtract ``multiplier · base^(n − allowed_length)`` from the logit of each token
    that would extend a repeat of ``n ≥ allowed_length`` tokens (see :func:`dry_match_lengths`)."""

    def __init__(self, multiplier: float, base: float, allowed_length: int,
                 sequence_breakers: frozenset[int] | set[int] = frozenset()) -> None:
        self.multiplier, self.base = float(multiplier), float(base)
        self.allowed_length = int(allowed_length)
        self.sequence_breakers = frozenset(sequence_breakers)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = scores
        for row, ids in enumerate(input_ids.tolist()):
            for token, n in dry_match_lengths(ids, self.sequence_breakers).items():
                if n >= self.allowed_length and token < scores.shape[-1]:
                    if out is scores:
                        out = scores.clone()
                    out[row, token] -= self.multiplier * self.base ** (n - self.allowed_length)
        return out


def draw(seed: int, position: int, row: int) -> float:
    """A uniform number in [0, 1) for one row at one position of a run with ``seed``: a torch
    Generator seeded from the three, so a step's draw can be made again on its own."""
    digest = hashlib.blake2b(f"{seed}:{position}:{row}".encode(), digest_size=8).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
    return float(torch.rand((), generator=generator))


class XtcLogitsWarper(LogitsProcessor):
    """XTC: with probability ``probability`` (drawn per row and step, see :func:`draw`),
    remove every token whose probability is at least ``threshold`` except the least likely
    of them; with fewer than two such tokens nothing changes."""

    def __init__(self, threshold: float, probability: float, seed: int = 0,
                 first_row: int = 0) -> None:
        self.threshold, self.probability = float(threshold), float(probability)
        self.seed, self.first_row = int(seed), int(first_row)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, position = scores.shape[0], input_ids.shape[1]
        fire = torch.tensor([draw(self.seed, position, self.first_row + r) < self.probability
                             for r in range(rows)], device=scores.device)
        if not bool(fire.any()):
            return scores
        probs = torch.softmax(scores.float(), dim=-1)
        above = probs >= self.threshold
        # the least likely token above the threshold stays (one, should several tie)
        least = torch.where(above, probs, torch.full_like(probs, 2.0)).argmin(-1, keepdim=True)
        remove = above.scatter(-1, least, False) & fire[:, None]
        return scores.masked_fill(remove, -float("inf"))


class MirostatV2LogitsWarper(LogitsProcessor):
    """Mirostat 2.0: keep the tokens whose surprise ``-log2 p`` is at most ``mu`` (always the
    most likely one), ``mu`` per row, starting at ``2 · tau``. The token chosen at a step
    is the last of the next call's ``input_ids``: its surprise under this processor's
    output (truncated and renormalised) updates ``mu -= eta · (surprise − tau)`` then."""

    def __init__(self, tau: float, eta: float, mu: float | None = None) -> None:
        self.tau, self.eta = float(tau), float(eta)
        self.start_mu = 2 * self.tau if mu is None else float(mu)
        self.mu: torch.Tensor | None = None
        self.last_logp: torch.Tensor | None = None  # this processor's output at the last call

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows = scores.shape[0]
        if self.mu is None or self.mu.shape[0] != rows:
            self.mu = torch.full((rows,), self.start_mu, dtype=torch.float64)
        elif self.last_logp is not None:
            chosen = input_ids[:, -1:].to(self.last_logp.device)
            surprise = -self.last_logp.gather(-1, chosen)[:, 0].double().cpu() / LN2
            self.mu = self.mu - self.eta * (surprise - self.tau)
        logp = torch.log_softmax(scores.float(), dim=-1)
        mu = self.mu.to(device=scores.device, dtype=torch.float32)
        remove = -logp / LN2 > mu[:, None]
        remove.scatter_(-1, logp.argmax(dim=-1, keepdim=True), False)
        out = scores.masked_fill(remove, -float("inf"))
        self.last_logp = torch.log_softmax(out.float(), dim=-1)
        return out


class DynamicTemperatureLogitsWarper(LogitsProcessor):
    """Entropy-scaled temperature: divide the logits by ``low + (high − low) · (H / log N)^
    exponent``, ``H`` the entropy of the distribution and ``N`` the tokens still possible
    (one possible token: the temperature is ``low``)."""

    def __init__(self, low: float, high: float, exponent: float) -> None:
        self.low, self.high, self.exponent = float(low), float(high), float(exponent)

    def temperatures(self, scores: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(scores.float(), dim=-1)
        p = logp.exp()
        entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
        possible = torch.isfinite(scores).sum(-1)
        normalised = torch.where(possible > 1, entropy / possible.clamp(min=2).float().log(),
                                 torch.zeros_like(entropy)).clamp(0.0, 1.0)
        return self.low + (self.high - self.low) * normalised ** self.exponent

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores / self.temperatures(scores)[:, None].to(scores.dtype)


class TopNSigmaLogitsWarper(LogitsProcessor):
    """Top-nσ: keep the tokens whose logit is at least ``max − n · σ``, ``σ`` the (population)
    standard deviation of the logits of the tokens still possible."""

    def __init__(self, n: float) -> None:
        self.n = float(n)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        x = scores.float()
        finite = torch.isfinite(x)
        count = finite.sum(-1, keepdim=True).clamp(min=1)
        values = torch.where(finite, x, torch.zeros_like(x))
        mean = values.sum(-1, keepdim=True) / count
        var = torch.where(finite, (x - mean) ** 2, torch.zeros_like(x)).sum(-1, keepdim=True) / count
        top = torch.where(finite, x, torch.full_like(x, -float("inf"))).max(-1, keepdim=True).values
        return scores.masked_fill(x < top - self.n * var.sqrt(), -float("inf"))


class QuadraticSmoothingLogitsWarper(LogitsProcessor):
    """Quadratic (and cubic) smoothing: ``l' = max − k·f·d² + s·f·d³``, ``d = l − max``,
    ``k = (3 − curve) / 2``, ``s = (curve − 1) / 2``; removed tokens stay removed."""

    def __init__(self, factor: float, curve: float = 1.0) -> None:
        self.factor, self.curve = float(factor), float(curve)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        finite = torch.isfinite(scores)
        top = torch.where(finite, scores, torch.full_like(scores, -float("inf"))) \
            .max(-1, keepdim=True).values
        d = torch.where(finite, scores - top, torch.zeros_like(scores))
        k, s = (3 - self.curve) / 2, (self.curve - 1) / 2
        smoothed = top - k * self.factor * d ** 2 + s * self.factor * d ** 3
        return torch.where(finite, smoothed, scores)


class ArgmaxOnly(LogitsProcessor):
    """Greedy inside a sampling batch: only the most likely token stays possible."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor
                 ) -> torch.FloatTensor:
        keep = scores.argmax(dim=-1, keepdim=True)
        out = torch.full_like(scores, -float("inf"))
        return out.scatter(-1, keep, scores.gather(-1, keep))

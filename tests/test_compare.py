"""Strategies side by side: parsing, one batch, per-row chains equal transformers' own."""

import math

import pytest
import torch
from sacrebleu.metrics import BLEU

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.generation.compare import compare, distinct_n, self_bleu
from workbench.core.generation.generate import generate
from workbench.core.generation.records import TokenEvent
from workbench.core.generation.settings import SamplingSettings, parse_strategy
from workbench.core.models.loader import load_model


@pytest.fixture(scope="module")
def llama(tiny):
    return load_model(str(tiny("llama")))


@pytest.mark.parametrize("spec, expected", [
    ("greedy", dict(do_sample=False, num_beams=1)),
    ("top_k=40,temperature=0.8", dict(do_sample=True, top_k=40, temperature=0.8, top_p=1.0)),
    ("nucleus 0.9", dict(do_sample=True, top_k=0, top_p=0.9)),
    ("top-p=0.5, n=3", dict(do_sample=True, top_p=0.5, num_return_sequences=3, top_k=0)),
    ("beams=4", dict(do_sample=False, num_beams=4)),
    ("greedy,repetition_penalty=1.3", dict(do_sample=False, repetition_penalty=1.3)),
])
def test_parse_strategy(spec, expected):
    settings = parse_strategy(spec).settings
    for key, value in expected.items():
        assert getattr(settings, key) == value, key


@pytest.mark.parametrize("spec", ["", "top_k", "top_k=lots", "warp=9", "seed=3"])
def test_bad_strategies_are_refused(spec):
    with pytest.raises(WorkbenchError):
        parse_strategy(spec)


@pytest.mark.parametrize("spec", ["top_k=5,temperature=0.7", "top_p=0.8", "min_p=0.2",
                                  "typical_p=0.9,temperature=1.2", "repetition_penalty=1.5,top_k=8",
                                  "no_repeat_ngram_size=2,temperature=2.0"])
def test_a_strategy_in_the_batch_samples_as_generate_does_alone(llama, spec):
    """The per-row chain reproduces transformers' chain: same seed, same tokens."""
    strategy = parse_strategy(spec)
    batched = compare(llama, "the cat", [strategy], seed=4, max_new_tokens=12, chat=False)
    alone = generate(llama, "the cat", strategy.settings)
    assert batched.strategies[0].sequences[0].token_ids == alone.token_ids
    for a, b in zip(batched.strategies[0].sequences[0].steps, alone.sequences[0].steps, strict=True):
        assert a.probability == pytest.approx(b.probability, abs=1e-5)
        assert a.kept_count == b.kept_count


def test_greedy_in_a_sampling_batch_is_still_greedy(llama):
    result = compare(llama, "the sea", [parse_strategy("greedy"), parse_strategy("temperature=2")],
                     seed=0, max_new_tokens=10, chat=False)
    greedy = generate(llama, "the sea", SamplingSettings(max_new_tokens=10, do_sample=False,
                                                         chat=False))
    assert result.strategies[0].sequences[0].token_ids == greedy.token_ids
    assert result.strategies[0].batched and result.strategies[1].batched
    assert result.strategies[0].diverges_at is None
    assert result.notes


def test_summary_numbers(llama):
    events = []
    result = compare(llama, "the", [parse_strategy("greedy"), parse_strategy("temperature=1.5,n=3"),
                                    parse_strategy("beams=2")],
                     seed=2, max_new_tokens=8, chat=False, ctx=JobContext(emit=events.append))
    greedy, sampled, beams = result.strategies
    assert not beams.batched and len(sampled.sequences) == 3
    ids = [s.token_ids for s in sampled.sequences]
    every = [token for seq in ids for token in seq]
    assert sampled.distinct_1 == pytest.approx(len(set(every)) / len(every))
    texts = [s.text for s in sampled.sequences]
    expected = sum(BLEU(effective_order=True).sentence_score(t, texts[:i] + texts[i + 1:]).score
                   for i, t in enumerate(texts)) / 3
    assert sampled.self_bleu == pytest.approx(expected)
    assert greedy.self_bleu is None
    # the mean log-probability of the sampled tokens under the model's own (raw)
    # distribution: a forward pass over the prompt and each sequence
    prompt = llama.tokenizer("the")["input_ids"]
    logprobs = []
    with torch.inference_mode():
        for seq in ids:
            logits = llama.model(torch.tensor([prompt + seq])).logits[0].float()
            table = torch.log_softmax(logits, -1)
            logprobs += [float(table[len(prompt) + j - 1, token]) for j, token in enumerate(seq)]
    mean = sum(logprobs) / len(logprobs)
    assert sampled.mean_logprob == pytest.approx(mean, abs=1e-4)
    assert sampled.perplexity == pytest.approx(math.exp(-mean), rel=1e-4)
    assert len([e for e in events if isinstance(e, TokenEvent)]) >= 8


def test_distinct_n_counts():
    assert distinct_n([[1, 2, 1, 2]], 1) == 0.5
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)
    assert self_bleu(["only one"]) is None


def test_strategy_count_is_limited(llama):
    with pytest.raises(WorkbenchError, match="1 to 6"):
        compare(llama, "the", [parse_strategy("greedy")] * 7)

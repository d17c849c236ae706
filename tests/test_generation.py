"""Generation runs transformers' own decoding; the app only watches it."""

import pytest
import torch

from workbench.core.errors import WorkbenchError
from workbench.core.generation import SamplingSettings, TokenEvent, generate
from workbench.core.jobs import CancelToken, JobContext
from workbench.core.loader import load_model


@pytest.fixture(scope="module")
def llama(tiny):
    return load_model(str(tiny("llama")))


def test_greedy_matches_bare_generate(llama):
    settings = SamplingSettings(max_new_tokens=12, do_sample=False, chat=False)
    events = []
    result = generate(llama, "the cat sat on", settings, JobContext(emit=events.append))
    ids = llama.tokenizer("the cat sat on", return_tensors="pt")["input_ids"]
    bare = llama.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                do_sample=False, pad_token_id=llama.tokenizer.pad_token_id)
    assert result.token_ids == bare[0, ids.shape[1]:].tolist()
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert [t.token_id for t in tokens] == result.token_ids
    assert "".join(t.text for t in tokens) == result.text
    # greedy picks the most likely token: its probability is the largest of the step
    with torch.no_grad():
        logits = llama.model(ids).logits[0, -1]
    assert tokens[0].probability == pytest.approx(float(torch.softmax(logits, -1).max()), rel=1e-4)


def test_same_seed_same_text_and_seed_matters(llama):
    s = SamplingSettings(max_new_tokens=16, temperature=1.5, top_k=0, top_p=1.0, seed=7, chat=False)
    a, b = generate(llama, "the sea is", s), generate(llama, "the sea is", s)
    assert a.token_ids == b.token_ids
    s.seed = 8
    assert generate(llama, "the sea is", s).token_ids != a.token_ids


def test_top_k_one_is_greedy(llama):
    greedy = generate(llama, "hello", SamplingSettings(max_new_tokens=8, do_sample=False, chat=False))
    topk1 = generate(llama, "hello", SamplingSettings(max_new_tokens=8, top_k=1, chat=False, seed=3))
    assert topk1.token_ids == greedy.token_ids
    assert all(p == pytest.approx(1.0) for p in topk1.probabilities)


def test_stop_ends_within_one_step(llama):
    token = CancelToken()
    events = []

    def on_event(event):
        events.append(event)
        token.cancel()

    result = generate(llama, "the", SamplingSettings(max_new_tokens=50, do_sample=False,
                                                     chat=False), JobContext(token, on_event))
    assert result.stopped
    assert 1 <= len(result.token_ids) <= 2


@pytest.mark.parametrize("change, message", [
    (dict(temperature=0.0), "Temperature"),
    (dict(top_p=0.0), "Top-p"),
    (dict(max_new_tokens=0), "Max new tokens"),
])
def test_bad_settings_are_refused(llama, change, message):
    with pytest.raises(WorkbenchError, match=message):
        generate(llama, "the", SamplingSettings(**change))


def test_generation_needs_a_causal_lm(tiny):
    with pytest.raises(WorkbenchError, match="causal language model"):
        generate(load_model(str(tiny("bert"))), "hello", SamplingSettings())


def test_empty_prompt_is_refused(llama):
    with pytest.raises(WorkbenchError, match="prompt is empty"):
        generate(llama, "   ", SamplingSettings())

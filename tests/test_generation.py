"""Generation runs transformers' own decoding; the app only records what it did."""

import math

import pytest
import torch

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import CancelToken, JobContext
from workbench.core.generation.generate import generate
from workbench.core.generation.records import TokenEvent
from workbench.core.generation.settings import SamplingSettings
from workbench.core.models.loader import load_model

VOCAB = 80  # the tiny models' vocabulary: top_n=VOCAB records every candidate


@pytest.fixture(scope="module")
def llama(tiny):
    return load_model(str(tiny("llama")))


def bare_ids(llama, prompt):
    return llama.tokenizer(prompt, return_tensors="pt")["input_ids"]


def test_greedy_matches_bare_generate(llama):
    settings = SamplingSettings(max_new_tokens=12, do_sample=False, chat=False)
    events = []
    result = generate(llama, "the cat sat on", settings, JobContext(emit=events.append))
    ids = bare_ids(llama, "the cat sat on")
    bare = llama.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                do_sample=False, pad_token_id=llama.tokenizer.pad_token_id)
    assert result.token_ids == bare[0, ids.shape[1]:].tolist()
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert [t.token_id for t in tokens] == result.token_ids
    assert "".join(t.text for t in tokens) == result.text
    with torch.no_grad():
        probs = torch.softmax(llama.model(ids).logits[0, -1], -1)
    first = result.sequences[0].steps[0]
    assert first.raw_probability == pytest.approx(float(probs.max()), rel=1e-4)
    assert first.probability == pytest.approx(float(probs.max()), rel=1e-4)  # greedy: no warping
    assert first.surprisal == pytest.approx(-math.log2(float(probs.max())), rel=1e-4)
    expected_entropy = float(-(probs * probs.log()).sum()) / math.log(2)
    assert first.raw_entropy == pytest.approx(expected_entropy, rel=1e-4)
    assert first.kept_count == VOCAB and first.kept_mass == pytest.approx(1.0, abs=1e-5)


def test_processed_distribution_is_what_the_warpers_make(llama):
    t = 0.5
    result = generate(llama, "the sea is", SamplingSettings(
        max_new_tokens=3, temperature=t, top_k=0, top_p=1.0, chat=False), top_n=VOCAB)
    for step in result.sequences[0].steps:
        raw = torch.tensor([c.raw_probability for c in step.candidates], dtype=torch.float64)
        tempered = raw ** (1 / t) / (raw ** (1 / t)).sum()
        got = torch.tensor([c.probability for c in step.candidates], dtype=torch.float64)
        assert torch.allclose(got, tempered, atol=1e-5)


def test_top_k_one_keeps_only_the_argmax(llama):
    greedy = generate(llama, "hello", SamplingSettings(max_new_tokens=8, do_sample=False, chat=False))
    topk1 = generate(llama, "hello", SamplingSettings(max_new_tokens=8, top_k=1, chat=False, seed=3))
    assert topk1.token_ids == greedy.token_ids
    for step in topk1.sequences[0].steps:
        assert step.probability == pytest.approx(1.0)
        assert step.kept_count == 1 and step.raw_probability < 1
        assert step.kept_mass == pytest.approx(step.raw_probability)


def test_top_p_keeps_the_smallest_set_reaching_p(llama):
    p = 0.5
    result = generate(llama, "the dog", SamplingSettings(
        max_new_tokens=6, temperature=1.0, top_k=0, top_p=p, chat=False), top_n=VOCAB)
    for step in result.sequences[0].steps:
        kept = [c.raw_probability for c in step.candidates if c.kept]
        assert len(kept) == step.kept_count
        assert sum(kept) == pytest.approx(step.kept_mass, abs=1e-5)
        assert step.kept_mass >= p - 1e-6
        assert step.kept_mass - min(kept) < p  # dropping any kept token falls below p
        dropped = [c.raw_probability for c in step.candidates if not c.kept]
        assert not dropped or max(dropped) <= min(kept) + 1e-7


def test_same_seed_same_text_and_seed_matters(llama):
    s = SamplingSettings(max_new_tokens=16, temperature=1.5, top_k=0, top_p=1.0, seed=7, chat=False)
    a, b = generate(llama, "the sea is", s), generate(llama, "the sea is", s)
    assert a.token_ids == b.token_ids
    s.seed = 8
    assert generate(llama, "the sea is", s).token_ids != a.token_ids


def test_several_sequences_in_one_batch(llama):
    s = SamplingSettings(max_new_tokens=10, temperature=2.0, top_k=0, top_p=1.0,
                         num_return_sequences=3, seed=1, chat=False)
    events = []
    result = generate(llama, "the", s, JobContext(emit=events.append))
    assert len(result.sequences) == 3
    assert len({tuple(seq.token_ids) for seq in result.sequences}) > 1
    for row, seq in enumerate(result.sequences):
        streamed = [e.token_id for e in events if isinstance(e, TokenEvent) and e.sequence == row]
        assert streamed == seq.token_ids
        assert seq.perplexity == pytest.approx(math.exp(-seq.mean_logprob))


def test_several_sequences_read_the_prompt_once_and_sample_as_generate_does(llama):
    """n sequences of one prompt: the prompt goes through the model once (one row), yet
    every row's tokens are those of transformers' own generate with the same seed."""
    from transformers import set_seed

    prompt, seed, n = "the cat sat on the mat because", 5, 3
    s = SamplingSettings(max_new_tokens=8, temperature=1.5, top_k=0, top_p=1.0,
                         num_return_sequences=n, seed=seed, chat=False)
    shapes = []
    embeddings = llama.model.get_input_embeddings()
    hook = embeddings.register_forward_hook(lambda m, args, out: shapes.append(args[0].shape))
    try:
        result = generate(llama, prompt, s)
    finally:
        hook.remove()
    ids = bare_ids(llama, prompt)
    length = ids.shape[1]
    assert shapes[0] == (1, length - 1)  # the prompt, once
    assert all(shape == (n, 1) for shape in shapes[1:])  # then one token a row a step
    set_seed(seed)
    with torch.inference_mode():
        bare = llama.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                    temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=8,
                                    num_return_sequences=n,
                                    pad_token_id=llama.tokenizer.pad_token_id)
    assert len(result.sequences) == n
    for row, seq in enumerate(result.sequences):
        assert seq.token_ids == bare[row, length:length + len(seq.token_ids)].tolist()


def test_several_sequences_of_a_model_whose_cache_cannot_be_repeated(tiny):
    """LFM2's convolution states cannot be repeated per row: the prompt is then read once a
    row, as transformers does, with the same tokens as its own generate."""
    from transformers import set_seed

    loaded = load_model(str(tiny("lfm2")))
    s = SamplingSettings(max_new_tokens=6, temperature=1.3, top_k=0, top_p=1.0,
                         num_return_sequences=2, seed=3, chat=False)
    result = generate(loaded, "the cat sat on the", s)
    ids = bare_ids(loaded, "the cat sat on the")
    set_seed(3)
    with torch.inference_mode():
        bare = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                     temperature=1.3, top_k=0, top_p=1.0, max_new_tokens=6,
                                     num_return_sequences=2,
                                     pad_token_id=loaded.tokenizer.pad_token_id)
    length = ids.shape[1]
    for row, seq in enumerate(result.sequences):
        assert seq.token_ids == bare[row, length:length + len(seq.token_ids)].tolist()


def test_beam_search_matches_bare_generate(llama):
    s = SamplingSettings(max_new_tokens=8, do_sample=False, num_beams=3, num_return_sequences=2,
                         chat=False)
    result = generate(llama, "the cat", s)
    ids = bare_ids(llama, "the cat")
    bare = llama.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                do_sample=False, num_beams=3, num_return_sequences=2,
                                pad_token_id=llama.tokenizer.pad_token_id)
    eos = llama.tokenizer.eos_token_id
    for row in range(2):
        expected = bare[row, ids.shape[1]:].tolist()
        if eos in expected:  # a beam that ended early is padded after its end of text
            expected = expected[:expected.index(eos) + 1]
        assert result.sequences[row].token_ids == expected  # the pad token included (#13)
    assert all(0 < p <= 1 for p in result.sequences[0].probabilities)


def test_stop_ends_within_one_step(llama):
    token = CancelToken()

    def on_event(event):
        token.cancel()

    result = generate(llama, "the", SamplingSettings(max_new_tokens=50, do_sample=False,
                                                     chat=False), JobContext(token, on_event))
    assert result.stopped
    assert 1 <= len(result.token_ids) <= 2


def test_generation_config_round_trip():
    s = SamplingSettings(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, typical_p=0.9,
                         repetition_penalty=1.2, no_repeat_ngram_size=2, num_return_sequences=5,
                         max_new_tokens=30)
    config = s.to_generation_config()
    assert config["top_k"] == 40 and config["no_repeat_ngram_size"] == 2
    assert SamplingSettings.from_generation_config(config) == s


@pytest.mark.parametrize("change, message", [
    (dict(temperature=-1.0), "Temperature"),
    (dict(top_p=0.0), "Top-p"),
    (dict(max_new_tokens=0), "Max new tokens"),
    (dict(min_p=1.5), "Min-p"),
    (dict(do_sample=False, num_return_sequences=3), "Greedy decoding gives one sequence"),
    (dict(do_sample=False, num_beams=2, num_return_sequences=3), "at most as many sequences"),
])
def test_bad_settings_are_refused(llama, change, message):
    with pytest.raises(WorkbenchError, match=message):
        generate(llama, "the", SamplingSettings(**change))


def test_generation_needs_a_causal_lm(tiny):
    with pytest.raises(WorkbenchError, match="causal language model"):
        generate(load_model(str(tiny("bert"))), "hello", SamplingSettings())


def test_temperature_zero_is_greedy_and_says_so(llama):
    zero = generate(llama, "the cat", SamplingSettings(max_new_tokens=6, temperature=0.0, chat=False))
    greedy = generate(llama, "the cat", SamplingSettings(max_new_tokens=6, do_sample=False, chat=False))
    assert zero.token_ids == greedy.token_ids
    assert any("greedy" in n for n in zero.notices)


def test_empty_prompt_starts_from_the_start_token(llama):
    result = generate(llama, "", SamplingSettings(max_new_tokens=4, do_sample=False, chat=False))
    assert result.prompt_token_ids == [llama.tokenizer.bos_token_id]
    assert "start token" in result.notices[0]


def test_empty_prompt_without_a_start_token_is_refused(tiny):
    bert_like_gpt2 = load_model(str(tiny("gpt2")))
    bert_like_gpt2.tokenizer.bos_token = None
    with pytest.raises(WorkbenchError, match="no start token"):
        generate(bert_like_gpt2, "  ", SamplingSettings(chat=False))


def test_too_long_prompt_keeps_its_end_with_a_notice(llama):
    context = llama.model.config.max_position_embeddings  # 128 for the tiny model
    prompt = " ".join(["the cat sat on the mat"] * 40)  # 240 tokens
    result = generate(llama, prompt, SamplingSettings(max_new_tokens=8, do_sample=False, chat=False))
    assert len(result.prompt_token_ids) == context - 8
    assert "only its last 120 fit" in result.notices[0]
    with pytest.raises(WorkbenchError, match="do not fit"):
        generate(llama, "the", SamplingSettings(max_new_tokens=context, chat=False))


def test_nan_logits_give_a_clear_message(tiny):
    broken = load_model(str(tiny("llama")))
    with torch.no_grad():
        broken.model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(WorkbenchError, match="NaN logits at step 0"):
        generate(broken, "the cat", SamplingSettings(max_new_tokens=4, chat=False))

"""Attention weights, head statistics, logit lens and the offline, script-safe bertviz page."""

import json
import re

import numpy as np
import pytest
import torch

from workbench.core.common.errors import Cancelled, WorkbenchError
from workbench.core.common.jobs import CancelToken, run_job
from workbench.core.interpret.attention import (
    AttentionResult,
    LensColumns,
    LensStarted,
    LogitLensJob,
    bertviz_html,
    compute_attention,
    head_statistics,
    logit_lens,
    next_chunk,
    script_safe_json,
)
from workbench.core.models.loader import LoadOptions, load_model

HOSTILE = ["</script><script>window.__pwned=1</script>", "<!--", "a&b", "\u2028", "<img src=x>"]


@pytest.fixture(scope="module")
def bert(tiny):
    return load_model(str(tiny("bert")))


@pytest.fixture(scope="module")
def llama(tiny):
    return load_model(str(tiny("llama")))


def test_weights_equal_the_models_own_attentions(bert, tiny):
    tiny_bert = tiny("bert")
    result = compute_attention(bert, "the cat sat on the mat", "it was tired")
    ids = bert.tokenizer("the cat sat on the mat", "it was tired", return_tensors="pt")
    eager = load_model(str(tiny_bert), LoadOptions(attentions=True))  # its own weights
    with torch.no_grad():
        expected = eager.model(**ids, output_attentions=True).attentions
    assert result.weights.shape == (2, 2, ids["input_ids"].shape[1], ids["input_ids"].shape[1])
    assert np.allclose(result.weights[1, 0], expected[1][0, 0].numpy(), atol=1e-6)
    assert result.tokens[0] == "[CLS]" and result.sentence_b_start == 8
    assert np.allclose(result.weights.sum(-1), 1.0, atol=1e-5)


def test_head_statistics_by_hand():
    w = np.zeros((1, 2, 3, 3), dtype=np.float32)
    w[0, 0] = [[1, 0, 0], [1, 0, 0], [0, 1, 0]]  # head 0: previous/first token
    w[0, 1] = np.full((3, 3), 1 / 3)  # head 1: uniform
    stats = head_statistics(AttentionResult("m", ["a", "b", "c"], w))
    assert stats["entropy"][0, 0] == pytest.approx(0.0)
    assert stats["entropy"][0, 1] == pytest.approx(np.log2(3))
    assert stats["previous token"][0, 0] == pytest.approx(1.0)
    assert stats["first token"][0, 0] == pytest.approx(2 / 3)
    assert stats["mean distance"][0, 0] == pytest.approx((0 + 1 + 1) / 3)
    assert stats["mean distance"][0, 1] == pytest.approx((1 + 2 / 3 + 1) / 3)


def test_truncation_and_bad_input(bert, llama):
    long = compute_attention(bert, "the cat " * 100, max_tokens=16)
    assert len(long.tokens) == 16 and "only the first 16" in long.notices[0]
    with pytest.raises(WorkbenchError, match="empty"):
        compute_attention(bert, "  ")
    with pytest.raises(WorkbenchError, match="Sentence pairs are for encoders"):
        compute_attention(llama, "the cat", "the dog")
    decoder = compute_attention(llama, "the cat")
    assert decoder.is_decoder and decoder.weights.shape[0] == llama.layers
    # eager (sdpa returns no weights) only while the job ran: generation keeps sdpa
    assert llama.model.config._attn_implementation == "sdpa"


def test_logit_lens_last_layer_is_the_models_prediction(llama):
    lens = logit_lens(llama, "the cat sat on the")
    ids = llama.tokenizer("the cat sat on the", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        top = llama.model(ids).logits[0].argmax(-1).tolist()
    assert lens.top_tokens[-1] == [llama.tokenizer.decode([t]) for t in top]
    assert len(lens.top_tokens) == 2 and all(0 < p <= 1 for p in lens.top_probs[0])


LONG = " ".join(["the cat sat on the mat because it was tired and the dog"] * 4)  # 52 tokens


def reference_lens(loaded, text: str, norm) -> tuple[list[list[str]], list[list[float]]]:
    """The logit lens in one pass, with transformers alone: every layer's hidden state
    (the last one normed by the model), the final ``norm``, the output embedding, argmax."""
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = loaded.model(ids, output_hidden_states=True)
        states = out.hidden_states[1:]
        tokens, probs = [], []
        for i, h in enumerate(states):
            logits = loaded.model.lm_head(h if i == len(states) - 1 else norm(h))[0]
            p = torch.softmax(logits.float(), -1)
            top = p.argmax(-1)
            tokens.append([loaded.tokenizer.decode([t]) for t in top.tolist()])
            probs.append(p.gather(-1, top[:, None])[:, 0].tolist())
    # the last layer is the model's own prediction
    assert tokens[-1] == [loaded.tokenizer.decode([t]) for t in out.logits[0].argmax(-1)]
    return tokens, probs


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_chunked_lens_equals_the_one_pass_reference(tiny, family):
    loaded = load_model(str(tiny(family)))
    norm = loaded.model.model.norm if family == "llama" else loaded.model.transformer.ln_f
    tokens, probs = reference_lens(loaded, LONG, norm)
    events = []
    job = LogitLensJob(LONG, 64, first=(30, 40), chunk=8)
    lens = run_job(lambda ctx: job.run(loaded), events.append)
    started = [e for e in events if isinstance(e, LensStarted)]
    chunks = [e for e in events if isinstance(e, LensColumns)]
    assert events.index(started[0]) < events.index(chunks[0])
    assert started[0].tokens == lens.tokens and len(lens.tokens) == 52
    assert started[0].layers == len(tokens) == 2
    # the preferred positions come first, whole; then the rest, each position once
    assert (chunks[0].start, chunks[0].stop) == (30, 40)
    assert sorted(p for c in chunks for p in range(c.start, c.stop)) == list(range(52))
    assert all(c.stop - c.start <= 8 for c in chunks[1:])
    assert lens.top_tokens == tokens
    assert np.allclose(lens.top_probs, probs, atol=1e-6)
    for c in chunks:  # what the events said is what the lens holds
        assert [row[c.start:c.stop] for row in tokens] == c.top_tokens
        assert np.allclose([row[c.start:c.stop] for row in probs], c.top_probs, atol=1e-6)
    # the one-call function (the CLI's) gives the same numbers
    whole = logit_lens(loaded, LONG, 64)
    assert whole.top_tokens == tokens and np.allclose(whole.top_probs, probs, atol=1e-6)


def test_the_lens_follows_a_new_preference_and_cancels_between_chunks(llama):
    job = LogitLensJob(LONG, 64, first=(40, 48), chunk=8)
    seen: list[tuple[int, int]] = []

    def on_event(event):
        if isinstance(event, LensColumns):
            seen.append((event.start, event.stop))
            if len(seen) == 1:
                job.prefer(0, 4)  # the table was scrolled to the start meanwhile

    lens = run_job(lambda ctx: job.run(llama), on_event)
    assert seen[:3] == [(40, 48), (0, 4), (4, 12)]
    assert lens.top_tokens == logit_lens(llama, LONG, 64).top_tokens
    cancel, seen = CancelToken(), []

    def cancel_after_one(event):
        if isinstance(event, LensColumns):
            seen.append((event.start, event.stop))
            cancel.cancel()

    with pytest.raises(Cancelled):
        run_job(lambda ctx: LogitLensJob(LONG, 64, chunk=8).run(llama), cancel_after_one, cancel)
    assert seen == [(0, 8)]


def test_next_chunk_orders_the_rest_nearest_first():
    def order(n, preferred, size):
        done, out = [False] * n, []
        while (span := next_chunk(done, preferred, size)) is not None:
            out.append(span)
            done[span[0]:span[1]] = [True] * (span[1] - span[0])
        return out

    assert order(40, (20, 28), 8) == [(20, 28), (28, 36), (12, 20), (36, 40), (4, 12), (0, 4)]
    assert order(40, (0, 0), 16) == [(0, 16), (16, 32), (32, 40)]
    assert order(10, (8, 20), 3) == [(8, 10), (5, 8), (2, 5), (0, 2)]  # clipped to the text
    assert order(100, (0, 100), 8)[0] == (0, 32)  # a wide view: at most 4 chunks at once
    assert order(0, (0, 16), 8) == []


def test_lens_bad_input(llama, bert):
    with pytest.raises(WorkbenchError, match="empty"):
        logit_lens(llama, "  ")
    with pytest.raises(WorkbenchError):
        logit_lens(bert, "the cat")
    with pytest.raises(WorkbenchError, match="The number of tokens analysed must be at least 1, not 0"):
        LogitLensJob("the cat", max_tokens=0)


def test_script_safe_json_round_trips():
    text = script_safe_json({"tokens": HOSTILE})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"tokens": HOSTILE}


def test_bertviz_page_is_offline_and_script_safe():
    rng = np.random.default_rng(0)
    w = rng.random((2, 3, len(HOSTILE), len(HOSTILE))).astype(np.float32)
    w /= w.sum(-1, keepdims=True)
    page, notices = bertviz_html(AttentionResult("m", HOSTILE, w), "head")
    assert "cdnjs" not in page and not re.search(r"src=[\"']?https?:", page)
    assert "require.config({" not in page
    assert "__pwned" in page  # the token is there, but only in escaped form:
    assert HOSTILE[0] not in page and "<img src=x>" not in page
    assert "<!--" not in page.split("<body", 1)[1]
    start = page.index("const params = ") + len("const params = ")
    params = json.JSONDecoder().raw_decode(page, start)[0]
    assert params["attention"][0]["left_text"] == HOSTILE
    assert params["attention"][0]["attn"][0][0][0][0] == round(float(w[0, 0, 0, 0]), 3)


def test_deep_models_get_a_layer_subset_with_a_notice():
    w = np.full((30, 1, 2, 2), 0.5, dtype=np.float32)
    page, notices = bertviz_html(AttentionResult("m", ["a", "b"], w), "model")
    assert "Showing layers 0, 5, 10, 15, 20, 25 of 30" in notices[0]
    with pytest.raises(WorkbenchError, match="do not exist"):
        bertviz_html(AttentionResult("m", ["a", "b"], w), "head", layers=[31])


def test_the_page_draws_the_first_tokens_only_with_a_notice():
    rng = np.random.default_rng(2)
    w = rng.random((2, 2, 10, 10)).astype(np.float32)
    tokens = [f"t{i}" for i in range(10)]
    page, notices = bertviz_html(AttentionResult("m", tokens, w), "head", max_tokens=4)
    params = json.JSONDecoder().raw_decode(page, page.index("const params = ") + 15)[0]
    assert params["attention"][0]["left_text"] == tokens[:4]
    assert params["attention"][0]["attn"][1][1][3] == [round(float(x), 3) for x in w[1, 1, 3, :4]]
    assert "first 4 of 10 tokens" in notices[0]
    page, notices = bertviz_html(AttentionResult("m", tokens, w, sentence_b_start=6), "head",
                                 max_tokens=4)
    assert "sentence A only" in notices[1]
    assert bertviz_html(AttentionResult("m", tokens, w), "head", max_tokens=10)[1] == []


def test_position_embeddings_learned_and_rotary(tiny):
    from workbench.core.interpret.attention import position_embeddings, sinusoidal_encoding

    gpt2 = load_model(str(tiny("gpt2")))
    learned = position_embeddings(gpt2, positions=16)
    table = gpt2.model.transformer.wpe.weight.detach().numpy()[:16]
    unit = table / np.linalg.norm(table, axis=1, keepdims=True)
    assert learned.kind == "learned"
    assert np.allclose(learned.learned_similarity, unit @ unit.T, atol=1e-5)
    assert learned.sinusoidal_similarity.shape == (16, 16)
    rotary = position_embeddings(load_model(str(tiny("llama"))))
    assert rotary.kind == "rotary" and rotary.learned_similarity is None
    assert "rotary position embeddings" in rotary.description
    pe = sinusoidal_encoding(4, 6)
    assert pe[1, 0] == pytest.approx(np.sin(1.0)) and pe[1, 1] == pytest.approx(np.cos(1.0))
    assert pe[2, 2] == pytest.approx(np.sin(2 / 10000 ** (2 / 6)))


def test_attention_is_eager_only_for_its_own_job(tiny):
    from workbench.core.common.jobs import JobContext
    from workbench.core.interpret.attention import compute_attention
    from workbench.core.models.loader import load_model

    loaded = load_model(str(tiny("llama")))
    before = loaded.model.config._attn_implementation
    assert before != "eager"  # sdpa: faster for generation and perplexity
    result = compute_attention(loaded, "the cat sat on the mat", None, 16, JobContext())
    assert result.weights.shape[0] == loaded.layers and result.weights.shape[1] == loaded.heads
    assert loaded.model.config._attn_implementation == before  # restored after the job

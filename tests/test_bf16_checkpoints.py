"""A checkpoint stored in bfloat16 loads in bfloat16 on the CPU (no float32 detour), its
memory check counts bfloat16, and the int8 decoding copy of it shares its other tensors."""

from __future__ import annotations

import pytest
import tiny_models
import torch
import transformers

from workbench.core.models import decoding
from workbench.core.models.loader import LoadOptions, load_model
from workbench.core.models.memory import estimate_path


@pytest.fixture(scope="module")
def bf16_folder(tmp_path_factory):
    folder = tiny_models.build_model("llama", tmp_path_factory.mktemp("bf16") / "llama")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    model.save_pretrained(folder)  # the same weights, stored in bfloat16
    return folder


def test_auto_loads_a_bfloat16_checkpoint_in_bfloat16_on_the_cpu(bf16_folder):
    loaded = load_model(str(bf16_folder), LoadOptions(device="cpu"))
    assert loaded.dtype == "bfloat16"
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    reference = transformers.AutoModelForCausalLM.from_pretrained(bf16_folder,
                                                                  dtype=torch.bfloat16)
    for (name, ours), (_, theirs) in zip(loaded.model.state_dict().items(),
                                         reference.state_dict().items(), strict=True):
        assert torch.equal(ours, theirs), name
    assert load_model(str(bf16_folder), LoadOptions(device="cpu", dtype="float32")).dtype \
        == "float32"  # asked for: still given
    assert estimate_path(bf16_folder).stored_dtype == "bfloat16"


def test_the_int8_copy_of_a_bfloat16_model_shares_what_it_does_not_quantise(
        bf16_folder, monkeypatch):
    monkeypatch.setattr(decoding, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(decoding, "AUTO_MIN_BYTES", 0)
    loaded = load_model(str(bf16_folder), LoadOptions(device="cpu"))
    model = loaded.model
    assert decoding.unavailable("int8", model) is None
    assert decoding.unavailable("bf16", model) == "the model is loaded in bfloat16 already"
    linears = sum(m.weight.numel() for _, m in decoding._quantised(model))
    assert decoding.copy_bytes("int8", model) == linears  # one byte each, nothing else
    copy = decoding.build("int8", model)
    ids = loaded.tokenizer("hello world, this is a test", return_tensors="pt").input_ids
    with torch.no_grad():
        ours, theirs = copy(ids).logits.float(), model(ids).logits.float()
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() >= 0.8
    shared = model.get_input_embeddings().weight.data_ptr()
    assert copy.get_input_embeddings().weight.data_ptr() == shared


def test_the_model_bar_counts_a_bfloat16_checkpoint_in_bfloat16(bf16_folder):
    from workbench.core.models.memory import effective_dtype

    stored = estimate_path(bf16_folder).stored_dtype
    assert effective_dtype("auto", "cpu", stored) == "bfloat16"
    assert effective_dtype("auto", "cpu", "") == "float32"
    assert effective_dtype("float32", "cpu", stored) == "float32"

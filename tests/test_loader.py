"""Loading every model family, safely; bad input gives one clear message."""

import json
import shutil

import pytest
import torch
from tiny_models import build_model

from workbench.core.errors import NeedsPickle, NeedsRemoteCode, WorkbenchError
from workbench.core.jobs import Progress
from workbench.core.loader import LoadOptions, load_model

EXPECTED = {
    "gpt2": ("causal-lm", "GPT2LMHeadModel"),
    "llama": ("causal-lm", "LlamaForCausalLM"),
    "xlnet": ("causal-lm", "XLNetLMHeadModel"),
    "bert": ("encoder", "BertModel"),
    "roberta": ("masked-lm", "RobertaForMaskedLM"),
    "albert": ("masked-lm", "AlbertForMaskedLM"),
    "bert-classifier": ("classifier", "BertForSequenceClassification"),
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_each_family_loads_and_runs(tiny, family):
    events = []
    loaded = load_model(str(tiny(family)), on_event=events.append)
    task, cls = EXPECTED[family]
    assert loaded.task == task
    assert type(loaded.model).__name__ == cls
    assert loaded.device == "cpu" and loaded.dtype == "float32"
    assert loaded.layers == 2
    assert not loaded.model.training
    fractions = [e.fraction for e in events if isinstance(e, Progress)]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    ids = loaded.tokenizer("the cat sat on the mat", return_tensors="pt")
    with torch.no_grad():
        out = loaded.model(**ids)
    assert out[0].shape[1] == ids["input_ids"].shape[1] or task == "classifier"


def test_attentions_need_eager_and_are_returned(tiny):
    loaded = load_model(str(tiny("llama")), LoadOptions(attentions=True))
    assert loaded.model.config._attn_implementation == "eager"
    ids = loaded.tokenizer("the cat sat", return_tensors="pt")
    out = loaded.model(**ids, output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape[1] == 4
    plain = load_model(str(tiny("llama")))
    plain.ensure_attentions()
    assert plain.model(**ids, output_attentions=True).attentions[0] is not None


def test_dtype_option(tiny):
    loaded = load_model(str(tiny("gpt2")), LoadOptions(dtype="bfloat16"))
    assert loaded.dtype == "bfloat16"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a CPU-only machine")
def test_cuda_override_without_gpu_is_a_clear_error(tiny):
    with pytest.raises(WorkbenchError, match="no CUDA GPU"):
        load_model(str(tiny("gpt2")), LoadOptions(device="cuda"))


def test_pickle_checkpoints_refused_unless_allowed(tmp_path):
    folder = build_model("gpt2", tmp_path / "old", safe=False)
    with pytest.raises(NeedsPickle, match="pytorch_model.bin"):
        load_model(str(folder))
    loaded = load_model(str(folder), LoadOptions(allow_pickle=True))
    assert loaded.task == "causal-lm"


def _remote_code_folder(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "totally-custom", "architectures": ["CustomForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                     "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}}))
    (folder / "modeling_custom.py").write_text("raise SystemExit('remote code ran')\n")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def test_remote_code_is_refused_by_default(tmp_path):
    with pytest.raises(NeedsRemoteCode, match="needs remote code"):
        load_model(str(_remote_code_folder(tmp_path)))


@pytest.mark.parametrize("damage, message", [
    ("corrupt-weights", "Cannot load the weights"),
    ("no-weights", "no model weights"),
    ("bad-config", "not valid JSON"),
    ("unknown-architecture", "Unsupported architecture 'warp-drive'"),
])
def test_broken_folders_give_one_clear_message(tiny, tmp_path, damage, message):
    folder = tmp_path / "broken"
    shutil.copytree(tiny("gpt2"), folder)
    if damage == "corrupt-weights":
        (folder / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    elif damage == "no-weights":
        (folder / "model.safetensors").unlink()
    elif damage == "bad-config":
        (folder / "config.json").write_text("{not json")
    else:
        config = json.loads((folder / "config.json").read_text())
        config["model_type"] = "warp-drive"
        (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(WorkbenchError, match=message) as info:
        load_model(str(folder))
    assert "\n" not in str(info.value)


def test_corrupt_gguf_gives_one_clear_message(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(WorkbenchError, match="Cannot read GGUF file broken.gguf"):
        load_model(str(bad))
    from workbench.core.gguf_convert import cached_conversion

    assert cached_conversion(bad) is None  # nothing half-written counts as converted


def test_require_says_what_the_model_is_and_what_the_job_needs(tiny):
    from workbench.core.catalog import CAUSAL_LM, CLASSIFIER

    bert, gpt2 = load_model(str(tiny("bert"))), load_model(str(tiny("gpt2")))
    gpt2.require(CAUSAL_LM, "generation")  # the right kind: nothing to say
    with pytest.raises(WorkbenchError) as error:
        bert.require(CAUSAL_LM, "perplexity")
    assert str(error.value) == (f"{bert.name} is an encoder model without a causal language-"
                                "modelling head: perplexity needs a causal language model (a "
                                "decoder such as SmolLM2-135M-Instruct).")
    with pytest.raises(WorkbenchError) as error:
        gpt2.require(CLASSIFIER, "classifier evaluation")
    assert str(error.value).startswith(f"{gpt2.name} is a causal-lm model, not a classifier: "
                                       "classifier evaluation needs a model fine-tuned for "
                                       "classification")

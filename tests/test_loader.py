"""Loading every model family, safely; bad input gives one clear message."""

import json
import shutil

import pytest
import torch
from tiny_models import build_model

from workbench.core.common.errors import NeedsPickle, NeedsRemoteCode, WorkbenchError
from workbench.core.common.jobs import Progress
from workbench.core.models.loader import LoadOptions, load_model

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
    from workbench.core.models.gguf_convert import cached_conversion

    assert cached_conversion(bad) is None  # nothing half-written counts as converted


def test_require_says_what_the_model_is_and_what_the_job_needs(tiny):
    from workbench.core.models.catalog import CAUSAL_LM, CLASSIFIER

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


def _log_lines(events):
    from workbench.core.common.jobs import LogLine

    return [(e.message, e.level) for e in events if isinstance(e, LogLine)]


def test_a_new_classification_head_is_one_readable_line_not_a_table(tiny, tmp_path, capfd):
    folder = tmp_path / "headless"
    shutil.copytree(tiny("bert"), folder)  # an encoder asked to be a classifier
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(config))
    events = []
    loaded = load_model(str(folder), on_event=events.append)
    assert loaded.task == "classifier"
    lines = _log_lines(events)
    assert lines == [("a new classification head (classifier.weight, classifier.bias) was "
                      "initialised: fine-tune it before use.", "note")]
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "| MISSING" not in err


def test_a_head_of_another_size_is_still_an_error_and_the_log_says_why(tiny, tmp_path):
    folder = tmp_path / "three-labels"
    shutil.copytree(tiny("bert-classifier"), folder)  # trained for 2 labels
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): f"L{i}" for i in range(3)}
    config["label2id"] = {f"L{i}": i for i in range(3)}
    (folder / "config.json").write_text(json.dumps(config))
    events = []
    with pytest.raises(WorkbenchError, match="Cannot load the weights of three-labels"):
        load_model(str(folder), on_event=events.append)
    assert ("2 weights of the checkpoint have another shape in BertForSequenceClassification "
            "(classifier.weight [2, 32] → [3, 32], classifier.bias [2] → [3]).", "note") in \
        _log_lines(events)
    assert not any("LOAD REPORT" in line or " | " in line for line, _ in _log_lines(events))


def test_load_report_lines_for_each_kind_of_row():
    from transformers.utils.loading_report import LoadStateDictInfo

    from workbench.core.models.load_report import summarise_load_report

    info = LoadStateDictInfo(missing_keys={"score.weight"},
                             unexpected_keys={"lm_head.weight", "model.norm.extra"},
                             mismatched_keys=set(), error_msgs=[],
                             conversion_errors={"model.layers.0.mlp": "cannot concatenate"},
                             skipped_pp_keys=set())
    report = ("\x1b[1mLlamaForSequenceClassification LOAD REPORT\x1b[0m from: x\n"
              + info.create_loading_report())
    assert summarise_load_report(report) == [
        ("a new classification head (score.weight) was initialised: fine-tune it before use.",
         "note"),
        ("2 weights of the checkpoint are not used by LlamaForSequenceClassification "
         "(lm_head.weight, model.norm.extra): expected when a model is loaded for another "
         "task.", "info"),
        ("Converting model.layers.0.mlp failed: cannot concatenate", "warning")]

"""Sessions reopen exactly; branching continues from another candidate."""

import json
import math

import pytest

from workbench.core.errors import WorkbenchError
from workbench.core.generation import SamplingSettings, branch, generate
from workbench.core.loader import load_model
from workbench.core.session import file_sha256, load_session, model_fingerprint, save_session


@pytest.fixture(scope="module")
def llama(tiny):
    return load_model(str(tiny("llama")))


def test_session_round_trip(llama, tmp_path, tiny):
    settings = SamplingSettings(max_new_tokens=6, temperature=1.3, seed=4, chat=False,
                                num_return_sequences=2)
    result = generate(llama, "the sea", settings)
    path = save_session(tmp_path / "s.json", "the sea", settings, result, model_fingerprint(llama))
    session = load_session(path)
    assert session.prompt == "the sea" and session.settings == settings
    assert session.result.sequences[1].token_ids == result.sequences[1].token_ids
    assert session.result.sequences[0].steps == result.sequences[0].steps
    weights = tiny("llama") / "model.safetensors"
    assert session.model["files"] == [{"name": "model.safetensors", "size": weights.stat().st_size,
                                       "sha256": file_sha256(weights)}]
    assert "transformers" in session.libraries
    assert not list(tmp_path.glob(".s.json.*"))  # no temporary file left behind


@pytest.mark.parametrize("content, message", [
    ("{not json", "Cannot read session"),
    (json.dumps({"format": "something else"}), "not an LM Workbench session"),
    (json.dumps({"format": "lm-workbench-session", "version": 99}), "version 99"),
    (json.dumps({"format": "lm-workbench-session", "version": 1, "settings": {"warp": 1}}), "damaged"),
])
def test_bad_session_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(WorkbenchError, match=message):
        load_session(path)


def test_branch_takes_another_candidate_and_continues(llama):
    settings = SamplingSettings(max_new_tokens=8, do_sample=False, chat=False)
    result = generate(llama, "the cat", settings)
    step = result.sequences[0].steps[3]
    alternative = step.candidates[1]
    b = branch(llama, result, 0, 3, alternative.token_id, settings)
    assert b.sequence.token_ids[:3] == result.token_ids[:3]
    assert b.sequence.token_ids[3] == alternative.token_id
    assert len(b.sequence.token_ids) == 8
    # the continuation is what greedy decoding gives from that prefix
    prefix_prompt_ids = result.prompt_token_ids + b.sequence.token_ids[:4]
    import torch

    ids = torch.tensor([prefix_prompt_ids])
    bare = llama.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                                do_sample=False, pad_token_id=llama.tokenizer.pad_token_id)
    assert b.sequence.token_ids[4:] == bare[0, ids.shape[1]:].tolist()
    expected = sum(math.log(s.raw_probability) for s in b.sequence.steps)
    assert b.cumulative_logprob == pytest.approx(expected)
    assert b.sequence.steps[3].raw_probability == pytest.approx(alternative.raw_probability)
    assert [s.index for s in b.sequence.steps] == list(range(8))

"""Sessions reopen exactly; branching continues from another candidate."""

import json
import math

import pytest

from workbench.core.common.errors import WorkbenchError
from workbench.core.generation.explore import branch
from workbench.core.generation.generate import generate
from workbench.core.generation.session import (
    file_sha256,
    load_session,
    model_fingerprint,
    save_session,
)
from workbench.core.generation.settings import SamplingSettings
from workbench.core.models.loader import load_model


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


def test_branches_round_trip_as_data(llama, tmp_path):
    settings = SamplingSettings(max_new_tokens=6, do_sample=False, chat=False)
    result = generate(llama, "the cat", settings)
    steps = result.sequences[0].steps
    first = branch(llama, result, 0, 2, steps[2].candidates[1].token_id, settings)
    # a token that is not among the recorded candidates has no sampler probability (NaN)
    outside = next(t for t in range(50) if t not in {c.token_id for c in steps[1].candidates})
    second = branch(llama, result, 0, 1, outside, settings)
    assert math.isnan(second.sequence.steps[1].probability)
    path = save_session(tmp_path / "s.json", "the cat", settings, result,
                        model_fingerprint(llama), [first, second])
    data = json.loads(path.read_text())
    assert [b["step"] for b in data["branches"]] == [2, 1]  # plain JSON, no pickle
    session = load_session(path)
    assert session.notes == []
    assert [(b.parent, b.step) for b in session.branches] == [(0, 2), (0, 1)]
    assert session.branches[0].sequence.token_ids == first.sequence.token_ids
    assert session.branches[0].sequence.steps == first.sequence.steps
    assert session.branches[0].label == first.label
    assert session.branches[1].sequence.text == second.sequence.text


def _session_with_branches(llama, tmp_path, settings):
    result = generate(llama, "the cat", settings)
    alternative = result.sequences[0].steps[2].candidates[1].token_id
    b = branch(llama, result, 0, 2, alternative, settings)
    path = save_session(tmp_path / "s.json", "the cat", settings, result,
                        model_fingerprint(llama), [b, b])
    return path, json.loads(path.read_text()), b


@pytest.mark.parametrize("damage, note", [
    (lambda d: d["branches"][0].update(step="two"),
     "reset branches[0] (branches[0].step is the text 'two', not a whole number)"),
    (lambda d: d["branches"][0].update(parent=7), "branches[0].parent is 7, out of range 0–0"),
    (lambda d: d["branches"][0]["sequence"]["steps"][0].update(probability=3.0),
     "branches[0].sequence.steps[0].probability is 3"),
    (lambda d: d["branches"].__setitem__(0, {"py/object": "os.system"}),
     "branches[0].parent is null, not a whole number"),
])
def test_a_damaged_branch_is_left_out_and_named(llama, tmp_path, damage, note):
    settings = SamplingSettings(max_new_tokens=5, do_sample=False, chat=False)
    path, data, b = _session_with_branches(llama, tmp_path, settings)
    damage(data)
    path.write_text(json.dumps(data, allow_nan=True))
    session = load_session(path)
    assert session.result is not None and session.prompt == "the cat"  # the rest opens
    assert len(session.branches) == 1 and session.branches[0].sequence.token_ids == \
        b.sequence.token_ids  # the sound branch is kept
    assert len(session.notes) == 1 and note in session.notes[0]
    assert "\n" not in session.notes[0]


def test_branches_that_are_not_a_list_or_have_no_generation_are_reset(llama, tmp_path):
    settings = SamplingSettings(max_new_tokens=5, do_sample=False, chat=False)
    path, data, _ = _session_with_branches(llama, tmp_path, settings)
    data["branches"] = {"0": "x"}
    path.write_text(json.dumps(data))
    session = load_session(path)
    assert session.branches == [] and session.notes == [
        "Session: reset branches (an object, not a list)"]
    data["branches"] = [data["branches"]]
    data["result"] = None
    path.write_text(json.dumps(data))
    session = load_session(path)
    assert session.branches == [] and "without the generation they branch from" in \
        session.notes[0]
    del data["branches"]  # a session saved before branches were saved
    path.write_text(json.dumps(data))
    assert load_session(path).notes == []

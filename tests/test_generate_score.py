"""Generate-then-score: the outputs are the model's own, the scores are sacrebleu's."""

import json
import math

import pytest
import sacrebleu
import torch
from cli_runner import run_in_process

from workbench.core.common.data_files import read_pairs
from workbench.core.common.errors import Cancelled, WorkbenchError
from workbench.core.common.jobs import CancelToken, JobContext, Progress
from workbench.core.evaluation.generate_score import (
    RowDone,
    clean_output,
    generate_and_score,
    save_result,
)
from workbench.core.generation.generate import generate
from workbench.core.generation.settings import SamplingSettings
from workbench.core.models.loader import load_model

PAIRS = ("prompt\treference\n"
         "the cat sat on\tthe cat sat on the mat\n"
         "paris is the capital of\tparis is the capital of france\n"
         "the sea is\tthe sea is blue\n")


@pytest.fixture(scope="module")
def gpt2(tiny):
    return load_model(str(tiny("gpt2")))


def test_read_pairs(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text(PAIRS, encoding="utf-8")
    prompts, refs = read_pairs(path)
    assert prompts == ["the cat sat on", "paris is the capital of", "the sea is"]
    assert refs == [["the cat sat on the mat", "paris is the capital of france", "the sea is blue"]]
    path.write_text("a\tb\tc\nd\te\tf\n", encoding="utf-8")  # no header, two references
    assert read_pairs(path) == (["a", "d"], [["b", "e"], ["c", "f"]])
    for bad, message in (("a b\n", "has no tab"), ("a\tb\tc\nd\te\n", "has 2 fields"),
                         ("prompt\treference\n", "no rows")):
        path.write_text(bad, encoding="utf-8")
        with pytest.raises(WorkbenchError, match=message):
            read_pairs(path)


def test_clean_output():
    assert clean_output("\n  first line \nsecond", True) == "first line"
    assert clean_output("a\n b  c\n", False) == "a b c"


# sampled one prompt at a time: a batch's draws are not those of a prompt alone
@pytest.mark.parametrize(("settings", "batch_size"), [
    (SamplingSettings(do_sample=False, max_new_tokens=6), 8),
    (SamplingSettings(temperature=1.0, top_k=0, top_p=0.9, max_new_tokens=6, seed=3), 1)])
def test_outputs_are_generate_outputs_and_scores_are_sacrebleu(gpt2, tmp_path, settings,
                                                               batch_size):
    path = tmp_path / "pairs.tsv"
    path.write_text(PAIRS, encoding="utf-8")
    prompts, refs = read_pairs(path)
    result = generate_and_score(gpt2, prompts, refs, settings, "test", ("bleu", "chrf"),
                                first_line=False, batch_size=batch_size)
    expected = [" ".join(generate(gpt2, p, settings).text.split()) for p in prompts]
    assert result.hypotheses == expected
    assert result.scores.metrics[0].score == pytest.approx(
        sacrebleu.corpus_bleu(expected, refs).score)
    assert result.scores.metrics[1].score == pytest.approx(
        sacrebleu.corpus_chrf(expected, refs).score)
    assert not result.stopped and result.rows_done == 3

    folder = save_result(result, tmp_path / "out")
    rows = (folder / "outputs.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0].split("\t") == ["prompt", "hypothesis", "bleu", "chrf", "reference 1"]
    assert rows[1].split("\t")[1] == expected[0]
    saved = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    assert saved["hypotheses"] == expected and saved["scores"]["bleu"]["score"] == pytest.approx(
        result.scores.metrics[0].score)


def test_cancel_keeps_the_rows_done(gpt2):
    token = CancelToken()

    def on_event(event):
        if isinstance(event, Progress) and event.message.startswith("Generating 3"):
            token.cancel()

    prompts, refs = ["the cat", "the dog", "the sea"], [["a cat", "a dog", "a sea"]]
    settings = SamplingSettings(do_sample=False, max_new_tokens=4)
    result = generate_and_score(gpt2, prompts, refs, settings,
                                ctx=JobContext(cancel=token, emit=on_event), batch_size=1)
    assert result.stopped and result.rows_done == 2 and result.references == [["a cat", "a dog"]]
    assert "2 of 3 rows" in result.summary()
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        generate_and_score(gpt2, prompts, refs, settings, ctx=JobContext(cancel=token))


# of different lengths in tokens, so that the batch is left-padded
BATCH_PROMPTS = ["the cat", "paris is the capital of france and the", "a",
                 "the sea is blue and the sky is", "hello world"]


def one_at_a_time(loaded, prompts, max_new_tokens, repetition_penalty=1.0):
    """Reference: transformers' own greedy generate, one unpadded prompt a call: the
    outputs, and how many tokens they have together."""
    outputs, tokens = [], 0
    for prompt in prompts:
        ids = loaded.tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=max_new_tokens,
                                    repetition_penalty=repetition_penalty,
                                    pad_token_id=loaded.tokenizer.pad_token_id)
        outputs.append(" ".join(loaded.tokenizer.decode(out[0, ids.shape[1]:],
                                                        skip_special_tokens=True).split()))
        tokens += out.shape[1] - ids.shape[1]
    return outputs, tokens


def counting_generate(loaded, monkeypatch):
    """Count the generate() calls of the model generation decodes with."""
    model = loaded.decoding().model
    calls = []
    original = model.generate

    def counted(*args, **kwargs):
        calls.append(args[0].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "generate", counted, raising=False)
    return calls


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_batched_greedy_outputs_are_one_prompt_at_a_time_outputs(tiny, monkeypatch, family):
    loaded = load_model(str(tiny(family)))
    lengths = {len(loaded.tokenizer(p)["input_ids"]) for p in BATCH_PROMPTS}
    assert len(lengths) > 2  # the batches are padded
    refs = [["x"] * len(BATCH_PROMPTS)]
    # a repetition penalty reads the ids: each row's own, not its padding
    for penalty in (1.0, 1.3):
        settings = SamplingSettings(do_sample=False, max_new_tokens=8, chat=False,
                                    repetition_penalty=penalty)
        expected, tokens = one_at_a_time(loaded, BATCH_PROMPTS, 8, penalty)
        calls = counting_generate(loaded, monkeypatch)
        events = []
        result = generate_and_score(loaded, BATCH_PROMPTS, refs, settings, first_line=False,
                                    ctx=JobContext(emit=events.append), batch_size=2)
        assert result.hypotheses == expected
        assert calls == [2, 2, 1] and len(calls) == math.ceil(len(BATCH_PROMPTS) / 2)
        rows = [e for e in events if isinstance(e, RowDone)]
        assert [(e.row, e.total, e.hypothesis) for e in rows] == [
            (i + 1, 5, h) for i, h in enumerate(expected)]
        assert [e.message for e in events if isinstance(e, Progress)][:3] == [
            "Generating 1–2 of 5", "Generating 3–4 of 5", "Generating 5 of 5"]
        assert result.new_tokens == tokens  # a row ends at its end-of-text token
        assert not result.stopped and not any("batch" in n for n in result.notices)


def test_beam_search_goes_one_prompt_at_a_time(gpt2, monkeypatch):
    calls = counting_generate(gpt2, monkeypatch)
    settings = SamplingSettings(do_sample=False, num_beams=2, max_new_tokens=3)
    result = generate_and_score(gpt2, BATCH_PROMPTS[:3], [["x"] * 3], settings, batch_size=8)
    assert len(calls) == 3 and result.rows_done == 3


def test_sampling_in_batches_says_so(gpt2):
    settings = SamplingSettings(temperature=1.0, top_k=0, max_new_tokens=3, seed=1)
    result = generate_and_score(gpt2, BATCH_PROMPTS[:3], [["x"] * 3], settings, batch_size=2)
    again = generate_and_score(gpt2, BATCH_PROMPTS[:3], [["x"] * 3], settings, batch_size=2)
    assert result.hypotheses == again.hypotheses  # same seed and batch size: same outputs
    assert any("batch" in n for n in result.notices)


@pytest.mark.parametrize("inside", [False, True])
def test_cancel_between_and_inside_batches_keeps_the_rows_done(gpt2, inside):
    settings = SamplingSettings(do_sample=False, max_new_tokens=4)
    refs = [["x"] * 5]
    full = generate_and_score(gpt2, BATCH_PROMPTS, refs, settings, batch_size=2)
    token, armed = CancelToken(), []

    def on_event(event):
        if isinstance(event, RowDone) and event.row == 2:
            armed.append(True)  # the first batch is done
            if not inside:
                token.cancel()

    def on_forward(module, args, output):
        if armed:  # the second batch's first step: its rows have one token of four
            token.cancel()

    hook = gpt2.model.register_forward_hook(on_forward)
    try:
        result = generate_and_score(gpt2, BATCH_PROMPTS, refs, settings, batch_size=2,
                                    ctx=JobContext(cancel=token, emit=on_event))
    finally:
        hook.remove()
    assert result.stopped and result.rows_done == 2
    assert result.hypotheses == full.hypotheses[:2] and result.references == [["x", "x"]]


def test_batch_size_is_checked(gpt2, tiny, tmp_path):
    with pytest.raises(WorkbenchError, match="at least 1"):
        generate_and_score(gpt2, ["a"], [["a"]], SamplingSettings(), batch_size=0)
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(PAIRS, encoding="utf-8")
    # checked before the model loads: a missing model is not what it reports
    bad = run_in_process("evaluate", "generate", "--model", str(tmp_path / "missing"),
                         "--file", str(pairs), "--batch-size", "0")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().splitlines() == ["error: --batch-size must be at least 1, not 0."]
    good = run_in_process("evaluate", "generate", "--model", str(tiny("gpt2")), "--file",
                          str(pairs), "--strategy", "greedy", "--max-new-tokens", "3",
                          "--batch-size", "2", "--output", str(tmp_path / "out"), "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["rows_done"] == 3


def test_a_row_that_ends_early_ends_alone(gpt2, monkeypatch):
    """A row at its end-of-text token stops there while the batch goes on."""
    ids = gpt2.tokenizer(BATCH_PROMPTS[1], return_tensors="pt")["input_ids"]
    out = gpt2.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=8, pad_token_id=gpt2.tokenizer.pad_token_id)
    monkeypatch.setattr(gpt2.model.generation_config, "eos_token_id",
                        int(out[0, ids.shape[1] + 2]))  # its third token ends it now
    expected, tokens = one_at_a_time(gpt2, BATCH_PROMPTS, 8)
    assert tokens < 5 * 8
    settings = SamplingSettings(do_sample=False, max_new_tokens=8, chat=False)
    result = generate_and_score(gpt2, BATCH_PROMPTS, [["x"] * 5], settings, first_line=False,
                                batch_size=5)
    assert result.hypotheses == expected and result.new_tokens == tokens

"""The sampling sweep: axes, one batched generate call per cell, the metrics against
references computed here, cancel between cells, the command and its JSON."""

import json
import math

import pytest
import torch
from sacrebleu.metrics import BLEU

from workbench.core.common.errors import Cancelled, WorkbenchError
from workbench.core.common.jobs import CancelToken, JobContext
from workbench.core.evaluation.sweep import METRICS, cell_settings, parse_axis, sweep
from workbench.core.generation.settings import SamplingSettings
from workbench.core.models.loader import load_model

PROMPT = "the cat"
BASE = SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, chat=False)


@pytest.fixture(scope="module")
def llama(tiny):
    return load_model(str(tiny("llama")))


@pytest.fixture(scope="module")
def gpt2(tiny):
    return load_model(str(tiny("gpt2")))


@pytest.mark.parametrize("spec, name, values", [
    ("temperature=0.3:1.5:5", "temperature", (0.3, 0.6, 0.9, 1.2, 1.5)),
    ("top_p=0.5,0.9,1.0", "top_p", (0.5, 0.9, 1.0)),
    (" Top-K = 0:40:3 ", "top_k", (0, 20, 40)),
    ("t=1", "temperature", (1.0,)),
    ("min_p=0.1:0.1:1", "min_p", (0.1,)),
    ("xtc_probability=0,0.5", "xtc_probability", (0.0, 0.5)),
    ("repetition_penalty=1:1.4:3", "repetition_penalty", (1.0, 1.2, 1.4)),
])
def test_axes_are_parsed(spec, name, values):
    axis = parse_axis(spec)
    assert axis.name == name
    assert axis.values == pytest.approx(values)
    if name == "top_k":
        assert all(type(v) is int for v in axis.values)


@pytest.mark.parametrize("spec", [
    "temperature", "=1,2", "temperature=", "warp=1,2", "do_sample=1", "seed=1,2",
    "num_beams=1,2", "max_new_tokens=4,8", "chat=0,1", "top_p=0.5,x", "top_p=0.5,nan",
    "top_p=0:1:3", "top_k=0:10:4", "temperature=0:1:3", "temperature=1:2:13",
    "temperature=1:2", "temperature=1:2:1", "temperature=1:2:2.5", "temperature=1,1",
    "top_p=" + ",".join(f"0.{i}" for i in range(1, 10)) + ",0.91,0.92,0.93,0.94",
    "top_k=-1,5", "min_p=1",
])
def test_bad_axes_are_refused_in_one_sentence(spec):
    with pytest.raises(WorkbenchError) as info:
        parse_axis(spec)
    message = str(info.value)
    assert "\n" not in message and message.endswith(".") and "Traceback" not in message


def _count_generate(monkeypatch, loaded, after_call=None):
    calls = []
    original = loaded.model.generate

    def counted(input_ids, **kwargs):
        calls.append(input_ids.shape[0] * kwargs.get("num_return_sequences", 1))
        out = original(input_ids, **kwargs)
        if after_call:
            after_call(len(calls))
        return out

    monkeypatch.setattr(loaded.model, "generate", counted)
    return calls


def test_each_cell_is_one_batched_generate_call_with_its_settings(llama, monkeypatch):
    calls = _count_generate(monkeypatch, llama)
    x, y = parse_axis("temperature=0.5:1.5:3"), parse_axis("top_p=0.5,1")
    result = sweep(llama, PROMPT, x, y, n=3, base_settings=BASE, max_new_tokens=6, seed=7)
    assert calls == [3] * 6  # one call of n rows per cell, nothing else
    assert len(result.cells) == 2 and all(len(row) == 3 for row in result.cells)
    for i, row in enumerate(result.cells):
        for j, cell in enumerate(row):
            s = cell.settings
            assert (s["temperature"], s["top_p"]) == (x.values[j], y.values[i])
            assert (cell.x, cell.y) == (x.values[j], y.values[i])
            assert s["do_sample"] and s["num_return_sequences"] == 3 and s["seed"] == 7
            assert s["max_new_tokens"] == 6 and s["top_k"] == 0 and not s["chat"]
            assert len(cell.samples) == 3
            assert all(1 <= len(seq.token_ids) <= 6 for seq in cell.samples)
    assert len(result.grid("self_bleu")) == 2 and len(result.grid("self_bleu")[0]) == 3


def test_cell_settings_are_validated_together():
    x, y = parse_axis("dynatemp_low=0.5,2"), parse_axis("dynatemp_high=1,3")
    base = SamplingSettings(dynamic_temperature=True)
    assert cell_settings(base, x, y, 1, 1, 2, 8, 0).dynatemp_low == 2
    with pytest.raises(WorkbenchError, match="The cell dynatemp_low=2, dynatemp_high=1"):
        cell_settings(base, x, y, 0, 1, 2, 8, 0)


def _logprobs(loaded, prompt_ids, continuation):
    """Each continuation token's log-probability under ``loaded``, one full forward."""
    ids = torch.tensor([prompt_ids + continuation])
    with torch.inference_mode():
        logp = torch.log_softmax(loaded.model(ids).logits[0].float(), -1)
    start = len(prompt_ids)
    return [float(logp[start - 1 + k, t]) for k, t in enumerate(continuation)]


def _distinct(samples, n):
    grams = [tuple(s[i:i + n]) for s in samples for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams)


def test_metrics_match_references_computed_here(llama):
    result = sweep(llama, PROMPT, parse_axis("temperature=0.8,1.6"), parse_axis("min_p=0,0.05"),
                   n=4, base_settings=BASE, max_new_tokens=8, seed=3)
    prompt_ids = llama.tokenizer(PROMPT)["input_ids"]
    bleu = BLEU(effective_order=True)
    for row in result.cells:
        for cell in row:
            ids = [s.token_ids for s in cell.samples]
            texts = [s.text for s in cell.samples]
            m = cell.metrics
            assert m["distinct_1"] == pytest.approx(_distinct(ids, 1))
            assert m["distinct_2"] == pytest.approx(_distinct(ids, 2))
            expected_bleu = sum(bleu.sentence_score(t, texts[:k] + texts[k + 1:]).score
                                for k, t in enumerate(texts)) / len(texts)
            assert m["self_bleu"] == pytest.approx(expected_bleu)
            assert m["mean_length"] == pytest.approx(sum(map(len, ids)) / len(ids))
            logps = [_logprobs(llama, prompt_ids, seq) for seq in ids]
            flat = [lp for seq in logps for lp in seq]
            assert m["mean_logprob"] == pytest.approx(sum(flat) / len(flat), abs=1e-4)
            assert m["perplexity"] == pytest.approx(math.exp(-sum(flat) / len(flat)), rel=1e-4)
            for p, seq in zip(cell.sample_perplexities, logps, strict=True):
                assert p == pytest.approx(math.exp(-sum(seq) / len(seq)), rel=1e-4)
    assert result.reference == result.model == llama.name


def test_perplexity_under_another_reference_model(llama, gpt2):
    result = sweep(llama, PROMPT, parse_axis("temperature=1.2"), parse_axis("top_p=0.9,1"),
                   n=3, base_settings=BASE, max_new_tokens=8, seed=1, reference=gpt2)
    assert result.reference == gpt2.name
    prompt_ids = gpt2.tokenizer(PROMPT)["input_ids"]
    for cell in (c for row in result.cells for c in row):
        nll_sum, count = 0.0, 0
        for sample, p in zip(cell.samples, cell.sample_perplexities, strict=True):
            cont = gpt2.tokenizer(sample.text, add_special_tokens=False)["input_ids"]
            if not cont:
                assert math.isnan(p)
                continue
            logps = _logprobs(gpt2, prompt_ids, cont)  # alone: no padding
            assert p == pytest.approx(math.exp(-sum(logps) / len(logps)), rel=1e-4)
            nll_sum, count = nll_sum - sum(logps), count + len(logps)
        assert cell.metrics["perplexity"] == pytest.approx(math.exp(nll_sum / count), rel=1e-4)


def test_cancel_stops_between_cells(llama, monkeypatch):
    cancel = CancelToken()
    calls = _count_generate(monkeypatch, llama,
                            after_call=lambda k: cancel.cancel() if k == 2 else None)
    events = []
    with pytest.raises(Cancelled):
        sweep(llama, PROMPT, parse_axis("temperature=0.5,1,1.5"), parse_axis("top_p=0.5,1"),
              n=2, base_settings=BASE, max_new_tokens=4,
              ctx=JobContext(cancel=cancel, emit=events.append))
    assert len(calls) == 2  # the third cell never started
    progress = [e for e in events if type(e).__name__ == "Progress"]
    assert [round(e.fraction, 3) for e in progress] == [0.0, round(1 / 6, 3)]
    assert "cell 2 of 6" in progress[1].message


def test_the_axes_must_differ(llama):
    with pytest.raises(WorkbenchError, match="both vary temperature"):
        sweep(llama, PROMPT, parse_axis("t=1,2"), parse_axis("temperature=0.5"), n=2)


def test_json_shape(llama):
    result = sweep(llama, PROMPT, parse_axis("temperature=0.7,1.3"), parse_axis("top_k=0,5,20"),
                   n=1, base_settings=BASE, max_new_tokens=4, seed=2)
    data = json.loads(result.to_json())  # strict JSON: no NaN (self-BLEU of 1 sample: null)
    assert data["x"] == {"name": "temperature", "values": [0.7, 1.3]}
    assert data["y"] == {"name": "top_k", "values": [0, 5, 20]}
    assert set(data["metrics"]) == set(METRICS)
    for grid in data["metrics"].values():
        assert len(grid) == 3 and all(len(row) == 2 for row in grid)
    assert data["metrics"]["self_bleu"] == [[None, None]] * 3
    cell = data["cells"][2][1]
    assert (cell["x"], cell["y"]) == (1.3, 20) and cell["settings"]["top_k"] == 20
    assert len(cell["samples"]) == 1
    assert set(cell["samples"][0]) >= {"text", "token_ids", "mean_logprob", "perplexity"}


# --- the command, with a parser built from its own add_parsers (it is not registered yet) ---
def _run(capsys, *argv):
    from workbench.cli import dispatch
    from workbench.cli.common import OneLineParser
    from workbench.cli.sweep import COMMANDS, add_parsers

    parser = OneLineParser(prog="main.py")
    add_parsers(parser.add_subparsers(dest="command", parser_class=OneLineParser))
    try:
        args = parser.parse_args([str(a) for a in argv])
        code = dispatch(args, COMMANDS[("sweep", None)])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_command_json_and_tables(tiny, capsys):
    model = str(tiny("llama"))
    common = ["sweep", "--model", model, "--device", "cpu", "--prompt", PROMPT, "--no-chat",
              "--x", "temperature=0.5:1.5:3", "--y", "top_p=0.5,1.0", "--n", 2,
              "--max-new-tokens", 5, "--seed", 4]
    code, out, err = _run(capsys, *common, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["x"]["values"] == [0.5, 1.0, 1.5] and data["n"] == 2
    assert len(data["cells"]) == 2 and all(len(row) == 3 for row in data["cells"])
    assert all(len(c["samples"]) == 2 for row in data["cells"] for c in row)
    assert data["cells"][1][2]["settings"]["chat"] is False
    code, out, err = _run(capsys, *common)
    assert code == 0, err
    for label in ("mean log-prob", "perplexity", "distinct-1", "distinct-2", "self-BLEU",
                  "mean length"):
        assert label in out
    assert "top_p \\ temperature" in out
    table = out.split("distinct-1")[1].strip().splitlines()[:3]
    assert table[0].split()[-3:] == ["0.5", "1", "1.5"]
    assert [line.split()[0] for line in table[1:]] == ["0.5", "1"]
    assert all(0 < float(v) <= 1 for line in table[1:] for v in line.split()[1:])


@pytest.mark.parametrize("extra, words", [
    (["--x", "warp=1,2", "--y", "top_p=1"], "warp"),
    (["--x", "temperature=1", "--y", "t=2"], "both vary temperature"),
    (["--x", "temperature=1", "--y", "top_p=0:1:2"], "Top-p"),
    (["--x", "temperature=1", "--y", "top_p=1", "--n", 0], "--n"),
    (["--x", "temperature=1", "--y", "top_p=1", "--max-new-tokens", 0], "--max-new-tokens"),
    (["--x", "temperature=1", "--y", "top_p=1", "--base", "warp=3"], "warp"),
    (["--x", "dynatemp_low=2", "--y", "top_p=1", "--base", "dynamic_temperature=1"],
     "dynamic temperature"),
    (["--x", "temperature=1", "--y", "top_p=1", "--reference-model", " "], "--reference-model"),
])
def test_bad_arguments_give_one_line_before_any_model_loads(capsys, monkeypatch, extra, words):
    import workbench.core.models.loader as loader

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loader, "load_model", no_load)
    code, out, err = _run(capsys, "sweep", "--prompt", "hi", *extra)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0]

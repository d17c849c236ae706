"""Generate-then-score: the outputs are the model's own, the scores are sacrebleu's."""

import json

import pytest
import sacrebleu

from workbench.core.errors import Cancelled, WorkbenchError
from workbench.core.generate_score import clean_output, generate_and_score, read_pairs, save_result
from workbench.core.generation import SamplingSettings, generate
from workbench.core.jobs import CancelToken, JobContext, Progress
from workbench.core.loader import load_model

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


@pytest.mark.parametrize("settings", [SamplingSettings(do_sample=False, max_new_tokens=6),
                                      SamplingSettings(temperature=1.0, top_k=0, top_p=0.9,
                                                       max_new_tokens=6, seed=3)])
def test_outputs_are_generate_outputs_and_scores_are_sacrebleu(gpt2, tmp_path, settings):
    path = tmp_path / "pairs.tsv"
    path.write_text(PAIRS, encoding="utf-8")
    prompts, refs = read_pairs(path)
    result = generate_and_score(gpt2, prompts, refs, settings, "test", ("bleu", "chrf"),
                                first_line=False)
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
                                ctx=JobContext(cancel=token, emit=on_event))
    assert result.stopped and result.rows_done == 2 and result.references == [["a cat", "a dog"]]
    assert "2 of 3 rows" in result.summary()
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        generate_and_score(gpt2, prompts, refs, settings, ctx=JobContext(cancel=token))

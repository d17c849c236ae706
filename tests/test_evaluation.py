"""Evaluation numbers equal their reference implementations on the same inputs."""

import math

import pytest
import sacrebleu
import torch

from workbench.core.common.data_files import read_lines, read_text
from workbench.core.common.errors import WorkbenchError
from workbench.core.evaluation.metrics import perplexity, score_translation
from workbench.core.models.loader import load_model

TEXT = ("the cat sat on the mat because it was tired and the dog sat on the mat too . " * 12)


@pytest.fixture(scope="module")
def gpt2(tiny):
    return load_model(str(tiny("gpt2")))


def reference_perplexity(model, ids, max_length, stride):
    """The transformers documentation's loop, with each window's loss weighted by the
    number of tokens it really scores (labels after the shift that are not -100)."""
    nll_sum, count, prev_end = 0.0, 0, 0
    n = ids.size(1)
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target_ids).loss
        scored = int((target_ids[:, 1:] != -100).sum())
        nll_sum += float(loss) * scored
        count += scored
        prev_end = end
        if end == n:
            break
    return math.exp(nll_sum / count), count


@pytest.mark.parametrize("max_length, stride", [(64, 32), (64, 64), (50, 17), (128, 1000 // 8)])
def test_perplexity_matches_the_transformers_recipe(gpt2, max_length, stride):
    ids = gpt2.tokenizer(TEXT, return_tensors="pt")["input_ids"]
    expected, count = reference_perplexity(gpt2.model, ids, max_length, stride)
    result = perplexity(gpt2, TEXT, max_length=max_length, stride=stride)
    assert result.perplexity == pytest.approx(expected, rel=1e-5)
    assert result.tokens == count == len(result.scored())
    assert result.nll_per_token == pytest.approx(math.log(expected), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(
        result.nll_per_token * result.tokens / math.log(2) / len(TEXT.encode()), rel=1e-9)
    assert (result.max_length, result.stride) == (max_length, stride)


def test_overlapping_windows_score_every_token_after_the_first(gpt2):
    result = perplexity(gpt2, TEXT, max_length=64, stride=16)
    assert result.tokens == len(result.token_ids) - 1
    worst = result.worst(3)
    assert worst[0][2] == pytest.approx(max(result.token_nll) / math.log(2))


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_length=64, stride=65), "larger than the window"),
    (dict(max_length=64, stride=-1), "at least 1"),
    (dict(max_length=1), "The window must be at least 2, not 1"),
    (dict(max_length=4096), "longer than the model's context"),
])
def test_bad_windows(gpt2, kwargs, message):
    with pytest.raises(WorkbenchError, match=message):
        perplexity(gpt2, TEXT, **kwargs)


def test_short_text_and_encoder_are_refused(gpt2, tiny):
    with pytest.raises(WorkbenchError, match="at least 2"):
        perplexity(gpt2, "the")
    with pytest.raises(WorkbenchError, match="language-modelling head"):
        perplexity(load_model(str(tiny("bert"))), TEXT)


HYPS = ["The cat sat on the mat.", "A dog barked loudly at night.", "It rains today in Paris.",
        "He reads a good book.", "They went to the market together."]
REFS = ["The cat is sitting on the mat.", "A dog barked loud in the night.",
        "Today it is raining in Paris.", "He is reading a nice book.",
        "They walked to the market together."]
REFS2 = ["A cat sat on a mat.", "The dog was barking at night.", "It is raining in Paris today.",
         "He reads a book.", "Together they went to the market."]
OTHER = ["Cat mat sat.", "Dog night loud.", "Rain Paris today it.", "Book good reads he.",
         "Market they together went."]


def test_corpus_scores_and_signatures_equal_sacrebleu():
    result = score_translation(HYPS, [REFS, REFS2], metrics=("bleu", "chrf", "chrf++", "ter"))
    by = {m.metric: m for m in result.metrics}
    assert by["bleu"].score == sacrebleu.corpus_bleu(HYPS, [REFS, REFS2]).score
    assert by["chrf"].score == sacrebleu.corpus_chrf(HYPS, [REFS, REFS2]).score
    assert by["chrf++"].score == sacrebleu.corpus_chrf(HYPS, [REFS, REFS2], word_order=2).score
    assert by["ter"].score == sacrebleu.corpus_ter(HYPS, [REFS, REFS2]).score
    assert by["bleu"].signature.startswith("nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert by["chrf++"].signature.startswith("nrefs:2|case:mixed|eff:yes|nc:6|nw:2|space:no")
    line = result.sentences[2]
    assert line["bleu"] == sacrebleu.sentence_bleu(HYPS[2], [REFS[2], REFS2[2]]).score
    assert line["chrf"] == sacrebleu.sentence_chrf(HYPS[2], [REFS[2], REFS2[2]]).score


def test_tokenizer_and_lowercase_options():
    lower = score_translation([h.upper() for h in HYPS], [REFS], metrics=("bleu",),
                              tokenize="char", lowercase=True)
    expected = sacrebleu.corpus_bleu([h.upper() for h in HYPS], [REFS], tokenize="char",
                                     lowercase=True)
    assert lower.metrics[0].score == expected.score
    assert "case:lc" in lower.metrics[0].signature and "tok:char" in lower.metrics[0].signature


def test_significance_equals_sacrebleu_paired_tests():
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    result = score_translation(HYPS * 4, [REFS * 4], metrics=("bleu", "chrf"),
                               compare_hyps=OTHER * 4, tests=("bs", "ar"), n_samples=200)
    for test in ("bs", "ar"):
        _, table = PairedTest([("baseline", HYPS * 4), ("system", OTHER * 4)],
                              {"bleu": BLEU(), "chrf": CHRF()}, [REFS * 4], test_type=test,
                              n_samples=200, n_ar_confidence=0 if test == "ar" else -1)()
        ours = [s for s in result.significance if s.test == test]
        assert [s.metric for s in ours] == [k for k in table if k != "System"]
        for s in ours:
            assert s.p_value == table[s.metric][1].p_value
            assert s.system_ci == table[s.metric][1].ci
            assert s.baseline == table[s.metric][0].score
    assert all(s.p_value < 0.05 for s in result.significance)


def test_line_counts_must_match(tmp_path):
    with pytest.raises(WorkbenchError, match="hypothesis has 5 lines but reference 1 has 4"):
        score_translation(HYPS, [REFS[:4]])
    with pytest.raises(WorkbenchError, match="second system has 2 lines"):
        score_translation(HYPS, [REFS], compare_hyps=OTHER[:2])


def test_reading_files(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("one\ntwo\n", encoding="utf-8")
    assert read_lines(good) == ["one", "two"]
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"ok\n\xff\xfe bad")
    with pytest.raises(WorkbenchError, match="not UTF-8 text \\(the byte 0xff on line 2 cannot "
                                             "be decoded\\)"):
        read_text(binary)
    empty = tmp_path / "c.txt"
    empty.write_text("  \n")
    with pytest.raises(WorkbenchError, match="is empty"):
        read_text(empty)
    with pytest.raises(WorkbenchError, match="missing.txt: no such file"):
        read_text(tmp_path / "missing.txt")

"""Classifier evaluation: numbers equal scikit-learn's on the same predictions."""

import csv

import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from workbench.core.common.errors import WorkbenchError
from workbench.core.evaluation.classification import evaluate_classifier, scores
from workbench.core.models.loader import load_model

SENTENCES = ("the cat sat on the mat", "the dog was tired", "hello world", "the sea is blue",
             "the sky is green and blue", "paris is the capital of france", "a dog sat",
             "the sun", "it was the river", "a cat and a dog")


@pytest.mark.parametrize("true,pred", [
    (["a", "b", "a", "c", "b", "a"], ["a", "b", "b", "c", "a", "a"]),
    (["pos", "neg", "pos", "pos"], ["pos", "pos", "pos", "pos"]),  # a label never predicted
    (["x", "y", "x"], ["x", "z", "z"]),  # a prediction that is no true label
])
def test_scores_equal_scikit_learn(true, pred):
    labels, matrix, accuracy, macro_f1, per_label = scores(true, pred)
    assert accuracy == pytest.approx(accuracy_score(true, pred))
    assert macro_f1 == pytest.approx(f1_score(true, pred, average="macro", zero_division=0))
    assert matrix == confusion_matrix(true, pred, labels=labels).tolist()
    p, r, f, s = precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    assert [x.precision for x in per_label] == pytest.approx(list(p))
    assert [x.recall for x in per_label] == pytest.approx(list(r))
    assert [x.f1 for x in per_label] == pytest.approx(list(f))
    assert [x.support for x in per_label] == list(s)


@pytest.fixture(scope="module")
def classifier(tiny, tmp_path_factory):
    """The tiny BERT classifier with three named labels."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path_factory.mktemp("classifier")
    source = tiny("bert-classifier")
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=3, id2label={0: "neg", 1: "pos", 2: "neutral"},
        label2id={"neg": 0, "pos": 1, "neutral": 2}, ignore_mismatched_sizes=True)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return load_model(str(folder))


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "sentiment"])
        writer.writerows(rows)
    return path


def test_classifier_on_a_file_equals_its_own_predictions(classifier, tmp_path):
    labels = ["neg", "pos", "neutral", "pos", "neg", "pos", "neutral", "neg", "pos", "pos"]
    path = write_csv(tmp_path / "data.csv", list(zip(SENTENCES, labels, strict=True)))
    result = evaluate_classifier(classifier, path, "sentence", "sentiment", batch_size=3)
    tok, model = classifier.tokenizer, classifier.model
    expected = []
    for text in SENTENCES:  # one at a time, no padding: the batched run must agree
        with torch.no_grad():
            expected.append(model.config.id2label[int(model(**tok(text, return_tensors="pt"))
                                                        .logits.argmax())])
    assert [r["predicted"] for r in result.rows] == expected
    assert result.accuracy == pytest.approx(accuracy_score(labels, expected))
    assert result.macro_f1 == pytest.approx(f1_score(labels, expected, average="macro",
                                                     zero_division=0))
    assert result.labels[:3] == ["neg", "pos", "neutral"]
    assert sum(map(sum, result.confusion)) == len(SENTENCES) == result.examples
    assert all(r["label"] != r["predicted"] for r in result.errors())


def test_unknown_labels_are_errors_with_a_notice(classifier, tmp_path):
    path = write_csv(tmp_path / "data.csv", [(SENTENCES[0], "neg"), (SENTENCES[1], "angry")])
    result = evaluate_classifier(classifier, path, "sentence", "sentiment")
    assert "angry" in result.notices[0] and "1 row" in result.notices[0]
    assert "angry" in result.labels and result.rows[1]["predicted"] != "angry"


def test_bad_input(classifier, tiny, tmp_path):
    path = write_csv(tmp_path / "data.csv", [(SENTENCES[0], "spam"), (SENTENCES[1], "ham")])
    with pytest.raises(WorkbenchError, match="None of the file's labels"):
        evaluate_classifier(classifier, path, "sentence", "sentiment")
    with pytest.raises(WorkbenchError, match="no column 'label'"):
        evaluate_classifier(classifier, path, "sentence", "label")
    with pytest.raises(WorkbenchError, match="not a classifier"):
        evaluate_classifier(load_model(str(tiny("gpt2"))), path, "sentence", "sentiment")

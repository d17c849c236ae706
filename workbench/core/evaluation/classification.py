"""Evaluation of a sequence classifier on a labelled file: accuracy, macro-F1, per-label
precision / recall / F1 and the confusion matrix.

The definitions are scikit-learn's (``accuracy_score``, ``f1_score(average="macro")``,
``confusion_matrix``): macro-F1 is the unweighted mean over every label that occurs as a
true or a predicted label, and a label that is never predicted has precision 0. Labels in
the file that the model does not know count as errors, with a notice.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.common.settings import check_fields, setting
from workbench.core.models.info import model_labels

BATCH_SIZE = 32  # texts a forward pass
MAX_LENGTH = 512  # tokens of a text; longer texts are cut (the model's own limit cuts sooner)
MAX_BATCH = 65_536  # as a fine-tuning run's batch
MAX_TOKENS = 1_000_000  # as a fine-tuning run's length: far past any model's


@dataclass
class ClassifierSettings:
    """How :func:`evaluate_classifier` runs the classifier, described once (its check, the
    ``evaluate classify`` options and the Classification page's boxes are made from it)."""

    batch_size: int = setting(BATCH_SIZE, "The batch size", low=1, high=MAX_BATCH,
                              unit="texts", help="texts classified together in one batch")
    max_length: int = setting(MAX_LENGTH, "The maximum length in tokens", low=8,
                              high=MAX_TOKENS, unit="tokens",
                              help="longer texts are cut to this many tokens (or the "
                                   "model's own limit, when lower)")

    def validate(self) -> None:
        """Raise WorkbenchError unless each setting lies in its range."""
        check_fields(self)


@dataclass
class LabelScores:
    label: str
    precision: float
    recall: float
    f1: float
    support: int  # how many rows have this true label


@dataclass
class ClassificationResult:
    labels: list[str]  # the order of the confusion matrix's rows and columns
    confusion: list[list[int]]  # confusion[true][predicted]
    accuracy: float
    macro_f1: float
    per_label: list[LabelScores]
    examples: int
    model: str = ""
    file: str = ""
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)  # text, label, predicted, confidence

    def to_dict(self, with_rows: bool = False) -> dict:
        data = asdict(self)
        if not with_rows:
            data.pop("rows")
        return data

    def errors(self) -> list[dict]:
        """The misclassified rows, the most confident mistakes first."""
        return sorted((r for r in self.rows if r["label"] != r["predicted"]),
                      key=lambda r: -r["confidence"])


def scores(true: list[str], predicted: list[str], model_labels: list[str] | None = None
           ) -> tuple[list[str], list[list[int]], float, float, list[LabelScores]]:
    """Labels, confusion matrix, accuracy, macro-F1 and per-label scores of two label lists."""
    if len(true) != len(predicted):
        raise WorkbenchError(f"{len(true)} true labels but {len(predicted)} predictions.")
    if not true:
        raise WorkbenchError("There are no rows to score.")
    order = list(model_labels or [])
    for label in sorted(set(true) | set(predicted)):
        if label not in order:
            order.append(label)
    index = {label: i for i, label in enumerate(order)}
    matrix = [[0] * len(order) for _ in order]
    for t, p in zip(true, predicted, strict=True):
        matrix[index[t]][index[p]] += 1
    accuracy = sum(matrix[i][i] for i in range(len(order))) / len(true)
    per_label = []
    present = set(true) | set(predicted)
    for i, label in enumerate(order):
        hits = matrix[i][i]
        support = sum(matrix[i])
        predicted_count = sum(row[i] for row in matrix)
        precision = hits / predicted_count if predicted_count else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label.append(LabelScores(label, precision, recall, f1, support))
    counted = [s.f1 for s in per_label if s.label in present]
    macro_f1 = sum(counted) / len(counted)
    return order, matrix, accuracy, macro_f1, per_label


def evaluate_classifier(loaded: Any, path: str | Path, text_column: str = "text",
                        label_column: str = "label", batch_size: int = BATCH_SIZE,
                        max_length: int = MAX_LENGTH, ctx: JobContext | None = None
                        ) -> ClassificationResult:
    """Run ``loaded`` (a sequence classifier) over a labelled file, ``batch_size`` texts a
    forward pass, each cut to ``max_length`` tokens (see :class:`ClassifierSettings`), and
    score it."""
    import torch

    from workbench.core.common.data_files import read_rows
    from workbench.core.models.catalog import CLASSIFIER

    ctx = ctx or JobContext()
    ClassifierSettings(batch_size, max_length).validate()
    loaded.require(CLASSIFIER, "classifier evaluation")
    rows = read_rows(path, text_column, label_column)
    known = model_labels(loaded)
    true = [str(label).strip() for _, label in rows]
    unknown = sorted(set(true) - set(known))
    if len(unknown) == len(set(true)):
        raise WorkbenchError(
            f"None of the file's labels ({', '.join(sorted(set(true))[:8])}) is a label of "
            f"{loaded.name} ({', '.join(known[:8])}): is it the classifier trained on this data?")
    notices = []
    if unknown:
        count = sum(t in unknown for t in true)
        notices.append(f"{count} row(s) carry labels the model does not know "
                       f"({', '.join(unknown[:8])}); they count as errors.")
    tokenizer, model = loaded.tokenizer, loaded.model
    limit = min(max_length, getattr(tokenizer, "model_max_length", max_length) or max_length)
    predicted: list[str] = []
    confidence: list[float] = []
    start = time.perf_counter()
    for begin in range(0, len(rows), batch_size):
        ctx.cancel.raise_if_cancelled()
        texts = [text for text, _ in rows[begin:begin + batch_size]]
        batch = tokenizer(texts, padding=True, truncation=True, max_length=limit,
                          return_tensors="pt").to(model.device)
        with torch.inference_mode():
            probs = torch.softmax(model(**batch).logits.float(), dim=-1)
        best, ids = probs.max(dim=-1)
        predicted += [known[i] for i in ids.tolist()]
        confidence += best.tolist()
        done = min(begin + batch_size, len(rows))
        ctx.progress(f"Classifying: {done} of {len(rows)} rows", done / len(rows))
    order, matrix, accuracy, macro_f1, per_label = scores(true, predicted, known)
    return ClassificationResult(
        labels=order, confusion=matrix, accuracy=accuracy, macro_f1=macro_f1,
        per_label=per_label, examples=len(rows), model=loaded.name, file=str(path),
        seconds=time.perf_counter() - start, notices=notices,
        rows=[{"row": i + 1, "text": text, "label": t, "predicted": p, "confidence": c}
              for i, ((text, _), t, p, c) in enumerate(zip(rows, true, predicted, confidence,
                                                            strict=True))])

"""A run's data: its files read and checked, then tokenised into training and validation sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workbench.core.common.data_files import read_rows, read_texts
from workbench.core.common.errors import WorkbenchError
from workbench.core.training.config import FinetuneConfig
from workbench.core.training.inputs import check_validation_labels, training_labels


class _Encoded:
    """A list of feature dicts as a torch-style dataset."""

    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def lm_blocks(tokenizer: Any, texts: list[str], max_length: int) -> list[dict]:
    """The texts tokenised, joined with EOS and cut into blocks of ``max_length`` tokens."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if eos is not None:
            ids.append(eos)
    blocks = [ids[i:i + max_length] for i in range(0, len(ids), max_length)]
    blocks = [b for b in blocks if len(b) >= 2]
    return [{"input_ids": b, "attention_mask": [1] * len(b)} for b in blocks]


@dataclass
class PreparedData:
    train: Any
    validation: Any | None
    labels: list[str] = field(default_factory=list)
    summary: str = ""


@dataclass
class DataRead:
    """A run's data as read from its files and checked, not yet tokenised: the texts of a
    causal-LM run, or the labelled rows and the labels of a classification run."""

    texts: list[str] = field(default_factory=list)
    validation_texts: list[str] = field(default_factory=list)
    rows: list[tuple[str, str | None]] = field(default_factory=list)
    validation_rows: list[tuple[str, str | None]] | None = None  # None: no validation file
    labels: list[str] = field(default_factory=list)


def read_data(config: FinetuneConfig) -> DataRead:
    """Read and check the training (and validation) files of ``config``: what needs no
    tokenizer, so that a run refuses bad data before it loads the model."""
    if config.task == "lm":
        return DataRead(texts=read_texts(config.train_file, config.text_column),
                        validation_texts=read_texts(config.validation_file, config.text_column)
                        if config.validation_file else [])
    rows = read_rows(config.train_file, config.text_column, config.label_column)
    labels = training_labels(rows)
    val_rows = None
    if config.validation_file:
        val_rows = read_rows(config.validation_file, config.text_column, config.label_column)
        check_validation_labels(val_rows, labels)
    return DataRead(rows=rows, validation_rows=val_rows, labels=labels)


def prepare_data(config: FinetuneConfig, tokenizer: Any, read: DataRead | None = None
                 ) -> PreparedData:
    """Read (unless ``read`` holds what :func:`read_data` read), check and tokenise the
    training (and validation) data.

    For classification the rows of a batch are padded: a model without a pad token (GPT-2,
    Llama) pads with its end-of-text token, as transformers' examples do, and the summary
    says so (the model's ``config.pad_token_id`` must then be that token too, see
    :func:`workbench.core.models.loader.set_pad_token`)."""
    import random

    read = read_data(config) if read is None else read
    rng = random.Random(config.seed)
    if config.task == "lm":
        train = lm_blocks(tokenizer, read.texts, config.max_length)
        if not train:
            raise WorkbenchError("The training text is too short to make one block of tokens.")
        if read.validation_texts:
            validation = lm_blocks(tokenizer, read.validation_texts, config.max_length)
        elif config.validation_split > 0 and len(train) >= 4:
            rng.shuffle(train)
            cut = max(1, int(len(train) * config.validation_split))
            validation, train = train[:cut], train[cut:]
        else:
            validation = []
        summary = f"{len(train)} training blocks of up to {config.max_length} tokens" + \
            (f", {len(validation)} validation blocks" if validation else "")
        return PreparedData(_Encoded(train), _Encoded(validation) if validation else None,
                            summary=summary)
    rows, labels, val_rows = list(read.rows), read.labels, read.validation_rows
    if val_rows is None:
        rng.shuffle(rows)
        cut = int(len(rows) * config.validation_split)
        val_rows, rows = rows[:cut], rows[cut:]
    index = {lab: i for i, lab in enumerate(labels)}

    def encode(items: list[tuple[str, str | None]]) -> list[dict]:
        out = []
        for text, lab in items:
            features = tokenizer(text, truncation=True, max_length=config.max_length)
            out.append({**features, "labels": index[lab]})
        return out

    padding = ""
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        from workbench.core.models.loader import set_pad_token

        if tokenizer.pad_token is None and tokenizer.eos_token is None:
            raise WorkbenchError("The model has neither a pad token nor an end-of-text token: "
                                 "rows of different lengths cannot be batched for "
                                 "classification.")
        set_pad_token(tokenizer)
        padding = (f"; rows are padded with the end-of-text token {tokenizer.eos_token!r} "
                   "(the model has no pad token of its own)")
    train, validation = encode(rows), encode(val_rows)
    summary = f"{len(train)} training and {len(validation)} validation examples, labels " + \
        ", ".join(labels) + padding
    return PreparedData(_Encoded(train), _Encoded(validation) if validation else None, labels,
                        summary)

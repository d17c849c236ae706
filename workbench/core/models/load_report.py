"""transformers' LOAD REPORT tables summarised: a few readable lines in a job's log or on stderr."""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from workbench.core.common.jobs import JobContext

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_HEADS = {"ForSequenceClassification": "classification head",
          "ForTokenClassification": "token-classification head",
          "ForQuestionAnswering": "question-answering head",
          "ForMultipleChoice": "multiple-choice head",
          "ForCausalLM": "language-modelling head", "LMHeadModel": "language-modelling head",
          "ForMaskedLM": "masked-language-modelling head"}
_HEAD_MODULES = {"classifier", "score", "qa_outputs", "pre_classifier", "lm_head", "cls",
                 "pooler", "head", "heads", "output_layer", "logits_proj", "sequence_summary"}
_SHAPE = re.compile(r"torch\.Size\((\[[^\]]*\])\)")
_REPORT_SINKS = threading.local()


def _ordered(keys: list[str]) -> list[str]:
    """Weight names in a stable order (the table comes from a set), each module's weight
    before its bias."""
    return sorted(keys, key=lambda key: (key.rpartition(".")[0], {"weight": 0, "bias": 1}.get(
        key.rpartition(".")[2], 2), key))


def _names(keys: list[str], shown: int = 4) -> str:
    return ", ".join(keys[:shown]) + (f", … ({len(keys)} in all)" if len(keys) > shown else "")


def _weights(n: int) -> str:
    return f"{n} weight{'s' if n != 1 else ''}"


def summarise_load_report(report: str) -> list[tuple[str, str]]:
    """transformers' LOAD REPORT (a table of missing, unexpected, mismatched and
    unconverted weights) as a few readable lines, each with its log level: a note for
    weights initialised at random (a new head: the model needs fine-tuning) and for weights
    of another shape, a line for checkpoint weights the model does not use, a warning for
    each failed conversion (whose detail transformers' error then refers to)."""
    plain = _ANSI.sub("", report).strip()
    first = plain.splitlines()[0] if plain else ""
    cls = first.split(" LOAD REPORT")[0].strip().removeprefix("[transformers]").strip()
    rows: dict[str, list[list[str]]] = {}
    text_lines = plain.splitlines()
    for i, line in enumerate(text_lines):
        cells = [cell.strip() for cell in line.split(" | ")]
        if len(cells) >= 2 and cells[1] in ("MISSING", "UNEXPECTED", "MISMATCH", "CONVERSION"):
            if cells[1] == "CONVERSION":  # its detail follows on lines of their own
                detail = next((d.strip(" |") for d in text_lines[i + 1:]
                               if d.strip(" |") and " | " not in d), "")
                cells = [cells[0], cells[1], detail]
            rows.setdefault(cells[1], []).append(cells)
    lines: list[tuple[str, str]] = []
    fresh = _ordered([cells[0] for cells in rows.get("MISSING", [])])
    if fresh:
        head = next((name for suffix, name in _HEADS.items() if cls.endswith(suffix)), "head")
        if all(key.split(".")[0] in _HEAD_MODULES for key in fresh):
            lines.append((f"a new {head} ({_names(fresh, 6)}) was initialised: fine-tune it "
                          "before use.", "note"))
        else:
            lines.append((f"{len(fresh)} weight group(s) of {cls or 'the model'} were not in "
                          f"the checkpoint and were initialised at random ({_names(fresh, 6)}): "
                          "fine-tune the model before use.", "note"))
    mismatched = rows.get("MISMATCH", [])
    if mismatched:
        shapes = {}
        for cells in mismatched:  # "... ckpt: torch.Size([3, 32]) vs model:torch.Size([4, 32])"
            found = re.search(r"ckpt:\s*(.+?)\s+vs model:\s*(.+)", cells[2] if len(cells) > 2
                              else "")
            shapes[cells[0]] = [_SHAPE.sub(r"\1", part).strip() for part in found.groups()] \
                if found else []
        keys = _ordered(list(shapes))
        shown = [f"{k} {shapes[k][0]} → {shapes[k][1]}" if shapes[k] else k for k in keys[:2]]
        # a fact either way: with ignore_mismatched_sizes they are made anew (the caller
        # says so), without it transformers raises next, and its error refers to this line
        lines.append((f"{_weights(len(keys))} of the checkpoint "
                      f"{'has' if len(keys) == 1 else 'have'} another shape in "
                      f"{cls or 'the model'} ({_names(shown + keys[2:], 2)}).", "note"))
    unused = _ordered([cells[0] for cells in rows.get("UNEXPECTED", [])])
    if unused:
        lines.append((f"{_weights(len(unused))} of the checkpoint "
                      f"{'is' if len(unused) == 1 else 'are'} not used by {cls or 'the model'} "
                      f"({_names(unused)}): expected when a model is loaded for another task.",
                      "info"))
    for key, _status, detail in rows.get("CONVERSION", []):  # transformers raises next
        lines.append((f"Converting {key} failed" + (f": {detail}" if detail else "."),
                      "warning"))
    if not lines:  # a status this version does not know: the report itself, not nothing
        lines.append((plain, "info"))
    return lines


class _LoadReportFilter(logging.Filter):
    """Takes transformers' LOAD REPORT tables off stderr and the log: inside
    :func:`load_report_to_log` a few readable lines go to the job's log in their place
    (see :func:`summarise_load_report`); elsewhere the notes and warnings among them reach
    stderr, one line each. transformers' errors (a size mismatch, a failed conversion)
    are raised after the report and are left alone."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # not ours to judge
            return True
        if "LOAD REPORT" not in message:
            return True
        lines = summarise_load_report(message)
        sinks = getattr(_REPORT_SINKS, "stack", None)
        if sinks:
            ctx = sinks[-1]
            for line, level in lines:
                ctx.log(line, level)
            return False
        for line, level in lines:
            if level != "info":
                print(f"{level}: {line}", file=sys.stderr, flush=True)
        return False


_FILTER = _LoadReportFilter()


def _install_load_report_filter() -> None:
    logger = logging.getLogger("transformers.modeling_utils")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


@contextmanager
def load_report_to_log(ctx: JobContext) -> Iterator[None]:
    """While this is open on this thread, a LOAD REPORT that ``from_pretrained`` logs goes
    to ``ctx``'s log as a few readable lines instead of its table: a note
    (``ctx.log(..., "note")``, which the command line prints on stderr) for weights
    initialised at random, a line for unused checkpoint weights, a warning for a failed
    conversion (see :func:`summarise_load_report`)."""
    _install_load_report_filter()
    stack = getattr(_REPORT_SINKS, "stack", None)
    if stack is None:
        stack = _REPORT_SINKS.stack = []
    stack.append(ctx)
    try:
        yield
    finally:
        stack.pop()


_install_load_report_filter()  # even a from_pretrained outside load_report_to_log prints one line

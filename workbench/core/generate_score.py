"""Generate-then-score: a model writes an output for every prompt of a TSV file with chosen
decoding settings, and the outputs are scored against the file's references with
sacrebleu, so the effect of a decoding strategy on BLEU / chrF shows as numbers.

The TSV holds one prompt (or source sentence) and one or more references a line,
separated by tabs; a first line whose first field is ``prompt``, ``source`` or ``input``
is a header (:func:`workbench.core.data_files.read_pairs` reads it). Each prompt is generated with the same seed, so a run is reproducible.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from workbench.core.data_files import read_pairs as read_pairs  # the TSV reader, still here
from workbench.core.errors import Cancelled, WorkbenchError
from workbench.core.evaluation import TranslationScores, make_metric, score_translation
from workbench.core.generation import SamplingSettings, generate
from workbench.core.jobs import JobContext

OUTPUT_FILES = ("outputs.tsv", "result.json")


@dataclass(frozen=True)
class RowDone:
    """One prompt generated: its row (from 1), how many rows there are, the output kept."""

    row: int
    total: int
    hypothesis: str
    seconds: float  # this row's generation time


def output_folder(folder: str | Path | None = None) -> Path:
    """Where :func:`save_result` will write, checked before any generation: a new folder in
    the app's data folder by default; else a folder that does not exist yet (it is created
    in an existing, writable folder) or an existing writable folder without earlier outputs,
    so nothing is overwritten and nothing generated is lost for want of a place to save it."""
    from workbench.core import paths

    if folder is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        folder = paths.data_dir() / "generate-score" / stamp
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise WorkbenchError(f"The output {folder} is a file: give a folder (outputs.tsv and "
                             "result.json are written into it).")
    if folder.is_dir():
        taken = [name for name in OUTPUT_FILES if (folder / name).exists()]
        if taken:
            raise WorkbenchError(f"The output folder {folder} already holds {taken[0]} from an "
                                 "earlier run: give a new or empty folder.")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise WorkbenchError(f"Cannot create the output folder {folder}: {existing} is a file.")
    try:  # access() says yes to root on a read-only folder: try it, leaving nothing behind
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise WorkbenchError(f"Cannot write the outputs into {existing}: "
                             f"{exc.strerror or exc}.") from None
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WorkbenchError(f"Cannot write the outputs into {existing}: permission denied.")
    return folder


def clean_output(text: str, first_line: bool) -> str:
    """The generated text as one segment: its first non-empty line, or all of it on one line."""
    text = text.strip()
    if first_line:
        return next((part.strip() for part in text.split("\n") if part.strip()), "")
    return " ".join(text.split())


@dataclass
class GenerateScoreResult:
    model: str
    strategy: str
    settings: dict
    prompts: list[str]
    references: list[list[str]]
    hypotheses: list[str]
    scores: TranslationScores
    rows_total: int
    seconds: float
    new_tokens: int
    stopped: bool = False  # cancelled: the scores cover the rows generated before the stop
    notices: list[str] = field(default_factory=list)
    saved_to: str = ""

    @property
    def rows_done(self) -> int:
        return len(self.hypotheses)

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "scores"}
        data["scores"] = self.scores.to_dict()
        data["rows_done"] = self.rows_done
        return data

    def summary(self) -> str:
        numbers = ", ".join(f"{m.metric} {m.score:.2f}" for m in self.scores.metrics)
        partial = f" ({self.rows_done} of {self.rows_total} rows)" if self.stopped else ""
        return f"{numbers} · {self.strategy} · {self.model}{partial}"


def generate_and_score(loaded: Any, prompts: list[str], references: list[list[str]],
                       settings: SamplingSettings, strategy: str = "",
                       metrics: tuple[str, ...] = ("bleu", "chrf"), first_line: bool = True,
                       tokenize: str | None = None, ctx: JobContext | None = None
                       ) -> GenerateScoreResult:
    """Generate one output per prompt with ``settings`` and score them (see module doc).

    Cancelling keeps what is done: the rows generated so far are scored and the result
    says it stopped; a cancel before the first row ends raises :class:`Cancelled`. Each row
    reports progress before it starts and a :class:`RowDone` event when it is done.
    """
    ctx = ctx or JobContext()
    settings = SamplingSettings(**{**asdict(settings), "num_return_sequences": 1})
    settings.validate()
    for name in metrics:
        make_metric(name)
    hypotheses: list[str] = []
    notices: list[str] = []
    tokens = 0
    quiet = JobContext(cancel=ctx.cancel)  # tokens are not streamed to the window
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        if ctx.cancel.cancelled:
            break
        ctx.progress(f"Generating {i + 1} of {len(prompts)}", i / len(prompts))
        row_start = time.perf_counter()
        result = generate(loaded, prompt, settings, quiet, top_n=0)
        if result.stopped:
            break
        for notice in result.notices:
            if notice not in notices:
                notices.append(notice)
        hypotheses.append(clean_output(result.text, first_line))
        tokens += result.new_tokens
        ctx.emit(RowDone(i + 1, len(prompts), hypotheses[-1], time.perf_counter() - row_start))
    seconds = time.perf_counter() - start
    if not hypotheses:
        raise Cancelled()
    done = len(hypotheses)
    refs = [column[:done] for column in references]
    ctx.progress("Scoring…", None)
    scores = score_translation(hypotheses, refs, metrics, tokenize)
    return GenerateScoreResult(
        model=loaded.name, strategy=strategy or settings.describe(), settings=asdict(settings),
        prompts=prompts[:done], references=refs, hypotheses=hypotheses,
        scores=scores, rows_total=len(prompts), seconds=seconds, new_tokens=tokens,
        stopped=done < len(prompts), notices=notices)


def save_result(result: GenerateScoreResult, folder: str | Path | None = None) -> Path:
    """Write the outputs (``outputs.tsv``: prompt, hypothesis, sentence scores, references)
    and the whole result (``result.json``) into a new folder; returns it."""
    folder = output_folder() if folder is None else Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    result.saved_to = str(folder)
    metric_names = [m.metric for m in result.scores.metrics]
    header = ["prompt", "hypothesis", *metric_names,
              *(f"reference {i + 1}" for i in range(len(result.references)))]
    lines = ["\t".join(header)]
    for row, prompt, hyp in zip(result.scores.sentences, result.prompts, result.hypotheses,
                                strict=True):
        values = [prompt, hyp, *(f"{row[m]:.4f}" for m in metric_names), *row["references"]]
        lines.append("\t".join(v.replace("\t", " ").replace("\n", " ") for v in values))
    for name, content in (("outputs.tsv", "\n".join(lines) + "\n"),
                          ("result.json", json.dumps(result.to_dict(), indent=2))):
        partial = folder / (name + ".partial")
        partial.write_text(content, encoding="utf-8")
        partial.replace(folder / name)
    return folder

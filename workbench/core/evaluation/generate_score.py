"""Generate-then-score: a model writes an output for every prompt of a TSV file with chosen
decoding settings, and the outputs are scored against the file's references with
sacrebleu, so the effect of a decoding strategy on BLEU / chrF shows as numbers.

The TSV holds one prompt (or source sentence) and one or more references a line,
separated by tabs; a first line whose first field is ``prompt``, ``source`` or ``input``
is a header (:func:`workbench.core.common.data_files.read_pairs` reads it). Each prompt is generated with the same seed, so a run is reproducible.

The prompts are generated several at a time: each batch of consecutive prompts is one
``generate`` call, left-padded to its longest prompt with an attention mask that hides the
padding: greedy outputs are those of one prompt at a time (on a reduced-precision decoding
path, up to rounding: a batch's sums run in another order). Beam search goes one prompt
at a time.
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

from workbench.core.common.errors import Cancelled, WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.common.settings import check_fields, check_value, described, setting
from workbench.core.evaluation.metrics import TranslationScores, make_metric, score_translation
from workbench.core.evaluation.sweep import sampling_setting
from workbench.core.generation.generate import (
    chain_processors,
    eos_ids,
    generate,
    prepare_prompt,
    run_generation,
)
from workbench.core.generation.memory import check_generation_memory
from workbench.core.generation.records import GeneratedSequence
from workbench.core.generation.settings import MAX_SEQUENCES, SamplingSettings

OUTPUT_FILES = ("outputs.tsv", "result.json")
BATCH_SIZE = 8  # prompts a generate() call: more rows a step for little more time a step
MAX_NEW_TOKENS = 48  # a short answer to score


@dataclass
class GenerateScoreSettings:
    """Generate-then-score's own numbers, described once (the check of
    :func:`generate_and_score`, the ``evaluate generate`` options and its page's boxes are
    made from it); the number of new tokens and the seed are the decoding settings' own,
    with their range, and go into the :class:`SamplingSettings` of the run."""

    max_new_tokens: int = sampling_setting(MAX_NEW_TOKENS, "max_new_tokens",
                                           help="how many tokens each output has at most")
    batch_size: int = setting(
        BATCH_SIZE, "The batch size", low=1, high=MAX_SEQUENCES, unit="prompts",
        high_note="each is a row of the batch", help="prompts generated together in one "
                                                     "batch (beam search goes one at a time)")
    seed: int = sampling_setting(0, "seed", help="the random seed, the same for every prompt")

    def validate(self) -> None:
        """Raise WorkbenchError unless each setting lies in its range."""
        check_fields(self)


@dataclass(frozen=True)
class RowDone:
    """One prompt generated: its row (from 1), how many rows there are, the output kept."""

    row: int
    total: int
    hypothesis: str
    seconds: float  # this row's generation time (its share of its batch's)


def output_folder(folder: str | Path | None = None) -> Path:
    """Where :func:`save_result` will write, checked before any generation: a new folder in
    the app's data folder by default; else a folder that does not exist yet (it is created
    in an existing, writable folder) or an existing writable folder without earlier outputs,
    so nothing is overwritten and nothing generated is lost for want of a place to save it."""
    from workbench.core.common import paths

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
                       tokenize: str | None = None, ctx: JobContext | None = None,
                       batch_size: int = BATCH_SIZE) -> GenerateScoreResult:
    """Generate one output per prompt with ``settings`` and score them (see module doc).

    ``batch_size`` prompts go through one ``generate`` call (beam search: one). Cancelling
    keeps what is done: the rows generated so far (in a cancelled batch, those that had
    ended, up to the first that had not) are scored and the result says it stopped; a
    cancel before the first row ends raises :class:`Cancelled`. Each batch reports
    progress before it starts, and a :class:`RowDone` event per row, in prompt order,
    when it ends.
    """
    ctx = ctx or JobContext()
    f, meta = next((f, m) for f, m in described(GenerateScoreSettings) if f.name == "batch_size")
    check_value(f, meta, batch_size)
    settings = SamplingSettings(**{**asdict(settings), "num_return_sequences": 1})
    settings.validate()
    for name in metrics:
        make_metric(name)
    beams = settings.num_beams > 1
    size = 1 if beams else min(batch_size, max(len(prompts), 1))
    hypotheses: list[str] = []
    notices: list[str] = []
    if settings.effective()[0].do_sample and size > 1:
        notices.append(f"Sampled {size} prompts a batch: a prompt's draws depend on the rows "
                       "of its batch, so with the same seed its output can differ from a run "
                       "of it alone (batch size 1); the same batch size gives the same outputs.")
    tokens = 0
    quiet = JobContext(cancel=ctx.cancel)  # tokens are not streamed to the window
    start = time.perf_counter()
    for first in range(0, len(prompts), size):
        if ctx.cancel.cancelled:
            break
        rows = range(first, min(first + size, len(prompts)))
        shown = f"{first + 1}" if len(rows) == 1 else f"{first + 1}–{rows[-1] + 1}"
        ctx.progress(f"Generating {shown} of {len(prompts)}", first / len(prompts))
        if ctx.cancel.cancelled:
            break
        batch_start = time.perf_counter()
        if beams:
            result = generate(loaded, prompts[first], settings, quiet, top_n=0)
            sequences = [] if result.stopped else result.sequences[:1]
            more = result.notices
        else:
            sequences, more = generate_batch(loaded, [prompts[i] for i in rows], settings,
                                             quiet)
        for notice in more:
            if notice not in notices:
                notices.append(notice)
        seconds = (time.perf_counter() - batch_start) / len(rows)
        for i, sequence in zip(rows, sequences, strict=False):
            hypotheses.append(clean_output(sequence.text, first_line))
            tokens += len(sequence.token_ids)
            ctx.emit(RowDone(i + 1, len(prompts), hypotheses[-1], seconds))
        if len(sequences) < len(rows):  # cancelled
            break
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


def generate_batch(loaded: Any, prompts: list[str], settings: SamplingSettings,
                   ctx: JobContext | None = None) -> tuple[list[GeneratedSequence], list[str]]:
    """One output each for ``prompts`` from one ``generate`` call (not beam search): the
    prompts as :func:`~workbench.core.generation.generate.generate` prepares them, left-padded to
    the longest, with an attention mask over the padding; the chain's processors that read
    the ids see each row's own. Returns the sequences in prompt order and the notices; when
    cancelled, only the rows that had ended, up to the first that had not.
    """
    import torch

    ctx = ctx or JobContext()
    settings, notices = settings.effective()
    prepared = [prepare_prompt(loaded, p, settings.chat, settings.max_new_tokens)
                for p in prompts]
    for _, more in prepared:
        notices += [n for n in more if n not in notices]
    ids = [p[0][0].tolist() for p in prepared]
    width = max(len(row) for row in ids)
    pads = [width - len(row) for row in ids]
    pad_id = loaded.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else pad_id  # masked: any id will do
    device = prepared[0][0].device
    input_ids = torch.tensor([[pad_id] * pad + row for pad, row in zip(pads, ids, strict=True)],
                             device=device)
    mask = torch.tensor([[0] * pad + [1] * (width - pad) for pad in pads], device=device)
    check_generation_memory(loaded, width, settings.max_new_tokens, [(len(prompts), False)])
    chain = tuple(unpadded(p, pads) for p in chain_processors(loaded, settings))
    run = run_generation(loaded, input_ids, len(prompts), settings.generate_kwargs(own_chain=True),
                         settings.seed, ctx, 0, extra_processors=chain, attention_mask=mask)
    if run.note:
        notices.append(run.note)
    sequences = run.sequences
    if ctx.cancel.cancelled:  # a row that had neither ended nor reached its length is cut
        eos = eos_ids(loaded.model, loaded.tokenizer)
        ended = [len(s.token_ids) >= settings.max_new_tokens
                 or bool(s.token_ids and s.token_ids[-1] in eos) for s in sequences]
        sequences = sequences[:ended.index(False) if False in ended else len(ended)]
    return sequences, notices


def unpadded(processor: Any, pads: list[int]) -> Any:
    """``processor`` applied to each row's ids without its left padding (``pads[row]``
    tokens), for a processor that reads them (repetition penalty, no-repeat n-grams, DRY,
    XTC's position); any other processor as it is."""
    from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    from workbench.core.generation.samplers import DryLogitsProcessor, XtcLogitsWarper

    reads_ids = (RepetitionPenaltyLogitsProcessor, NoRepeatNGramLogitsProcessor,
                 DryLogitsProcessor, XtcLogitsWarper)
    if not isinstance(processor, reads_ids):
        return processor
    return _RowByRow(processor, pads)


class _RowByRow:
    """A logits processor called row by row, each row's ids without its padding."""

    def __init__(self, processor: Any, pads: list[int]) -> None:
        self.processor, self.pads = processor, pads

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        return torch.cat([self.processor(input_ids[row:row + 1, pad:], scores[row:row + 1])
                          for row, pad in enumerate(self.pads)])


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

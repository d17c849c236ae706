"""Performance against efficiency: a trade-off table of the loaded model's decoding paths and
storages.

The rows: each decoding path of :mod:`workbench.core.models.decoding` (exact, int8, bf16;
compiled only when asked, since it compiles for 10-60 s) on the loaded model, a path that
cannot run here kept with the reason (:func:`decoding.unavailable`); and for a model from a
``.gguf`` file also its other storage (the float32 conversion beside the weights kept
quantized, see :func:`workbench.core.models.loader.gguf_choice`), loaded after the loaded
model's rows and freed after its own. One row at a time: a row's decoding copy is freed
before the next is built. Each row measures

- decode tokens/s: greedy decoding of ``new_tokens`` tokens through the app's own generation
  (:func:`workbench.core.generation.generate.generate`, its per-step records included) after
  a warm-up, timed from the first new token to the last (the prompt's forward pass left out);
- prompt tokens/s: one forward pass of the first ``prompt_tokens`` tokens of the sample
  corpus (``workbench/data/corpus.txt``, repeated as needed), after a warm-up pass;
- CPU ÷ wall beside both: the process's CPU seconds over the wall seconds (threads at work);
- weights: the bytes of the parameters and buffers of the model the row runs on, counting a
  copy's own tensors only (what it shares with the loaded model is not counted again);
- peak: the process's peak resident memory above its resident memory at the row's start
  (Linux's ``VmHWM``, reset at the row's start; elsewhere sampled every 10 ms; on a GPU,
  torch's peak allocation);
- the perplexity of the first ``text_tokens`` tokens of the sample corpus (one window where
  the context allows, :func:`workbench.core.evaluation.metrics.perplexity`) and its ratio
  to the reference row's;
- agreement: the share of the greedy tokens equal, position by position, to the reference
  row's, and how many lead before the first difference.

The reference is the exact path on float32 weights where there is such a row; else the
first row measured, and the result says so.
"""

from __future__ import annotations

import dataclasses
import gc
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from workbench.core.common.errors import Cancelled, WorkbenchError
from workbench.core.common.jobs import JobContext, Progress, drive
from workbench.core.common.paths import sample_data
from workbench.core.common.settings import check_fields, setting
from workbench.core.evaluation.metrics import perplexity
from workbench.core.generation.records import TokenEvent
from workbench.core.generation.settings import SamplingSettings

PATHS = ("exact", "int8", "bf16", "compiled")  # the decoding paths a row can run
DECODE_PROMPT_TOKENS = 32  # the prompt greedy decoding starts from: the corpus's first tokens
WARM_UP_TOKENS = 4


@dataclass
class TradeoffSettings:
    """The table's numbers, described once (the checks, the ``tradeoffs`` options and the
    Trade-offs page's boxes are made from it)."""

    new_tokens: int = setting(32, "The new tokens", low=2, high=1024, unit="tokens",
                              help="greedy tokens each row decodes (timed, and compared with "
                                   "the reference row's)")
    prompt_tokens: int = setting(256, "The prompt tokens", low=1, high=8192, unit="tokens",
                                 help="tokens of the sample corpus one timed forward pass reads")
    text_tokens: int = setting(1024, "The text tokens", low=16, high=16384, unit="tokens",
                               help="tokens of the sample corpus the perplexity is computed on")

    def validate(self) -> None:
        """Raise WorkbenchError unless each setting lies in its range."""
        check_fields(self)


@dataclass
class TradeoffRow:
    """One decoding path on one storage of the model; ``skipped`` says why it was not
    measured (its numbers are then None)."""

    path: str  # exact, int8, bf16, compiled or quantized (decoding.LABELS)
    weights: str  # the storage it runs from: float32, bfloat16, quantized, ...
    label: str = ""  # what the path is, in words
    storage: str = ""  # the storage, in words (a quantized GGUF's kernels)
    skipped: str = ""
    decode_tokens_per_second: float | None = None
    decode_cpu_per_wall: float | None = None
    prompt_tokens_per_second: float | None = None
    prompt_cpu_per_wall: float | None = None
    weight_bytes: int | None = None
    peak_increase_bytes: int | None = None
    perplexity: float | None = None
    perplexity_ratio: float | None = None
    agreement: float | None = None  # share of greedy tokens equal to the reference's
    same_lead: int | None = None  # greedy tokens equal before the first difference
    token_ids: list[int] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.path} · {self.weights}"

    @property
    def measured(self) -> bool:
        return not self.skipped


@dataclass
class TradeoffResult:
    model: str
    device: str
    settings: dict
    rows: list[TradeoffRow]
    prompt_tokens: int  # as measured (the settings' number, or the context's)
    text_tokens: int
    window: int  # the perplexity's window (tokens)
    decode_prompt: str
    reference: str = ""  # the key of the reference row ("" when no row was measured)
    reference_note: str = ""
    peak_kind: str = "RSS"  # what the peak column measures: RSS or GPU (allocated)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def row(self, key: str) -> TradeoffRow | None:
        return next((r for r in self.rows if r.key == key), None)

    def summary(self) -> str:
        measured = [r for r in self.rows if r.measured]
        fastest = max(measured, key=lambda r: r.decode_tokens_per_second or 0, default=None)
        if fastest is None:
            return f"no row measured ({self.model})"
        rows = f"{len(measured)} row" + ("" if len(measured) == 1 else "s")
        return (f"{rows}; fastest decoding {fastest.key} "
                f"{fastest.decode_tokens_per_second:.1f} tokens/s ({self.model})")

    def to_dict(self) -> dict:
        data = asdict(self)
        for row, obj in zip(data["rows"], self.rows, strict=True):
            row["key"] = obj.key
        return data


# --- the sample corpus ------------------------------------------------------------------------
def corpus_tokens(tokenizer: Any, tokens: int) -> tuple[str, list[int]]:
    """The first ``tokens`` tokens of the sample corpus (repeated as needed): their text and
    their ids (fewer when the tokenizer makes fewer of 64 repeats)."""
    corpus = sample_data("corpus.txt").read_text(encoding="utf-8").strip()
    once = max(len(tokenizer(corpus, add_special_tokens=False)["input_ids"]), 1)
    text = "\n\n".join([corpus] * min(tokens // once + 2, 64))
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"][:tokens]
        return text[:encoded["offset_mapping"][len(ids) - 1][1]], list(ids)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    return tokenizer.decode(ids), list(ids)


# --- memory -----------------------------------------------------------------------------------
def storages(model: Any) -> dict[int, int]:
    """The bytes of each storage behind the parameters and buffers of ``model``, by address
    (a tensor tied to another, or a view, counts once)."""
    import itertools

    found: dict[int, int] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        store = tensor.untyped_storage()
        found[store.data_ptr()] = store.nbytes()
    return found


def own_bytes(model: Any, base: Any | None = None) -> int:
    """The bytes ``model``'s tensors hold beyond those it shares with ``base``."""
    shared = set() if base is None or base is model else set(storages(base))
    return sum(n for ptr, n in storages(model).items() if ptr not in shared)


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(field_name)


def _give_back_freed_memory() -> None:
    """Free what is garbage and hand the C heap's free pages back to the system (glibc's
    ``malloc_trim``), so that a row's peak does not depend on what the rows before it left
    in the heap."""
    import ctypes

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # another C library (musl)
            pass


class PeakMemory:
    """The peak of the process's memory while the ``with`` block ran, above its start
    (:attr:`increase`, bytes): resident memory on the CPU, torch's allocation on a GPU."""

    def __init__(self, device: str) -> None:
        self.device, self.increase = device, 0
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self.kind = "GPU" if device.startswith("cuda") else "RSS"

    def __enter__(self) -> PeakMemory:
        if self.kind == "GPU":
            import torch

            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        _give_back_freed_memory()
        self.start = self._rss()
        try:  # Linux: reset the high-water mark of the resident memory
            with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
                refs.write("5")
            self._linux = True
        except OSError:
            self._linux, self._peak = False, self.start
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _rss(self) -> int:
        if sys.platform.startswith("linux"):
            return _status_kb("VmRSS")
        import psutil

        return int(psutil.Process().memory_info().rss)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        if self.kind == "GPU":
            import torch

            self.increase = max(torch.cuda.max_memory_allocated() - self.start, 0)
            return
        if self._linux:
            peak = _status_kb("VmHWM")
        else:
            self._stop.set()
            assert self._sampler is not None
            self._sampler.join()
            peak = max(self._peak, self._rss())
        self.increase = max(peak - self.start, 0)


# --- one row ----------------------------------------------------------------------------------
@dataclass
class _Inputs:
    """What every row reads: the timed prompt's ids, the decoding prompt, the text."""

    prompt_ids: list[int]
    decode_prompt: str
    text: str
    window: int
    text_tokens: int
    settings: TradeoffSettings


def _timed(run: Any) -> tuple[Any, float, float]:
    """(what ``run()`` returns, wall seconds, CPU seconds of this process)."""
    cpu, start = time.process_time(), time.perf_counter()
    value = run()
    return value, time.perf_counter() - start, time.process_time() - cpu


def _prompt_speed(model: Any, ids: list[int]) -> tuple[float, float]:
    """Tokens/s and CPU ÷ wall of one forward pass of ``ids``, after a warm-up pass."""
    import torch

    batch = torch.tensor([ids], device=next(model.parameters()).device)

    def forward() -> None:
        with torch.inference_mode():
            model(batch, use_cache=False)

    forward()
    _, wall, cpu = _timed(forward)
    return len(ids) / wall, cpu / wall


def _decode_speed(view: Any, inputs: _Inputs, ctx: JobContext, compiled: bool
                  ) -> tuple[list[int], float | None, float, float]:
    """Greedy decoding of ``new_tokens`` tokens on ``view``'s path after a warm-up (as long
    as the run for the compiled path: its shape compiles there): the token ids, tokens/s from
    the first new token to the last, CPU ÷ wall of the run, and the warm-up's seconds."""
    from workbench.core.generation.generate import generate

    times: list[float] = []

    def emit(event: Any) -> None:
        if isinstance(event, TokenEvent):
            times.append(time.perf_counter())
        elif isinstance(event, Progress):
            ctx.emit(event)

    inner = JobContext(cancel=ctx.cancel, emit=emit)
    sampling = SamplingSettings(max_new_tokens=inputs.settings.new_tokens, do_sample=False,
                                chat=False)
    warm = sampling if compiled else dataclasses.replace(
        sampling, max_new_tokens=min(WARM_UP_TOKENS, sampling.max_new_tokens))
    _, warm_seconds, _ = _timed(lambda: generate(view, inputs.decode_prompt, warm, inner))
    ctx.cancel.raise_if_cancelled()
    times.clear()
    result, wall, cpu = _timed(lambda: generate(view, inputs.decode_prompt, sampling, inner))
    ctx.cancel.raise_if_cancelled()
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) >= 2 \
        and times[-1] > times[0] else None
    return list(result.token_ids), rate, cpu / wall, warm_seconds


def _measure(row: TradeoffRow, loaded: Any, inputs: _Inputs, ctx: JobContext,
             step: tuple[int, int]) -> None:
    """Measure ``row`` (its path on ``loaded``) in place: a view of ``loaded`` that decodes
    on the row's path builds its own copy, freed at the end."""
    def say(what: str) -> None:
        ctx.progress(f"{row.key}: {what}…", step[0] / step[1])

    view = dataclasses.replace(loaded, decode=row.path if row.path in PATHS else "exact",
                               _decoder=None, compiled_shapes=set())
    start = time.perf_counter()
    try:
        with PeakMemory(loaded.device) as peak:
            say("preparing")
            path = view.decoding(ctx)
            if path.name != row.path and not (row.path == "exact" and path.name == "quantized"):
                raise WorkbenchError(path.note or f"the path ran is {path.name}")
            row.label = path.label
            row.weight_bytes = own_bytes(path.model, loaded.model)
            say("a forward pass of the prompt")
            row.prompt_tokens_per_second, row.prompt_cpu_per_wall = _prompt_speed(
                path.model, inputs.prompt_ids)
            say("greedy decoding")
            ids, rate, share, warm = _decode_speed(view, inputs, ctx, path.name == "compiled")
            row.token_ids, row.decode_tokens_per_second, row.decode_cpu_per_wall = ids, rate, share
            if path.name == "compiled":
                row.note = f"its warm-up (the compile) took {warm:.1f} s"
            say("perplexity")
            scored = dataclasses.replace(view, model=path.model, _decoder=None)
            row.perplexity = perplexity(scored, inputs.text, inputs.window, ctx=ctx).perplexity
        row.peak_increase_bytes = peak.increase
    finally:
        view._decoder = None  # the copy goes before the next row builds its own
        del view
        gc.collect()
    row.seconds = time.perf_counter() - start


def _failure(exc: BaseException) -> str | None:
    """Why a row failed, for the table; None for what must stop the whole job (cancel, out
    of memory, a bug)."""
    if isinstance(exc, Cancelled):
        return None
    if isinstance(exc, WorkbenchError):
        return f"failed: {exc}"
    if isinstance(exc, RuntimeError) and type(exc).__name__ != "OutOfMemoryError":
        text = str(exc).strip().splitlines()
        return f"failed: {text[0] if text else type(exc).__name__}"
    return None


def agreement(ids: list[int], reference: list[int]) -> tuple[float, int]:
    """The share of positions where ``ids`` and ``reference`` hold the same token (over the
    longer of the two; 1 for two empty lists), and how many lead before the first
    difference."""
    longest = max(len(ids), len(reference))
    pairs = list(zip(ids, reference, strict=False))
    lead = next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))
    if longest == 0:
        return 1.0, 0
    return sum(a == b for a, b in pairs) / longest, lead


# --- the rows ---------------------------------------------------------------------------------
def weights_of(loaded: Any) -> tuple[str, str]:
    """The storage ``loaded`` runs from: a short name (float32, bfloat16, quantized) and in
    words (a quantized GGUF's kernels, a conversion)."""
    if loaded.storage:
        return "quantized", loaded.storage
    converted = " (converted from the GGUF)" if loaded.source.is_gguf else ""
    return loaded.dtype, f"{loaded.dtype}{converted}"


def plan_rows(loaded: Any, compiled: bool = False) -> list[TradeoffRow]:
    """The rows of ``loaded``: each decoding path, skipped with the reason where it cannot
    run here (:func:`decoding.unavailable`), compiled only when ``compiled`` is asked; a
    model on a GGUF's quantized weights decodes on them only (one row)."""
    from workbench.core.models import decoding

    weights, words = weights_of(loaded)
    if loaded.storage:
        return [TradeoffRow("quantized", weights, decoding.LABELS["quantized"], words)]
    rows = []
    for name in PATHS:
        row = TradeoffRow(name, weights, decoding.LABELS[name], words)
        if name != "compiled":
            row.skipped = decoding.unavailable(name, loaded.model) or ""
        elif not compiled:
            row.skipped = "not asked for (it compiles for 10-60 s)"
        else:
            path, _, note = decoding.plan("compiled", loaded.model, probe=True)
            row.skipped = "" if path == "compiled" else note
        rows.append(row)
    return rows


def other_weights(loaded: Any) -> tuple[str, str]:
    """The other storage of a model from a .gguf file ("float32" beside weights kept
    quantized, "quantized" beside the float32 conversion), or "" and why not ("" for a model
    of another source)."""
    if not loaded.source.is_gguf:
        return "", ""
    if loaded.storage:
        return "float32", ""
    from workbench.core.models.loader import gguf_choice

    quantized, why = gguf_choice(loaded.source.path,
                                 dataclasses.replace(loaded.options, weights="quantized"))
    if quantized:
        return "quantized", ""
    return "", why.rstrip(".") or "its weights cannot be kept quantized here"


def _measure_rows(rows: list[TradeoffRow], loaded: Any, inputs: _Inputs, ctx: JobContext,
                  done: list[int], total: int) -> None:
    """Measure each row of ``rows`` that is not skipped, one after another; a row that fails
    says why and the next one runs."""
    for row in rows:
        if not row.measured:
            continue
        ctx.cancel.raise_if_cancelled()
        try:
            _measure(row, loaded, inputs, ctx, (done[0], total))
        except Exception as exc:
            why = _failure(exc)
            if why is None:
                raise
            row.skipped = why
        done[0] += 1


def _other_storage_rows(loaded: Any, weights: str, inputs: _Inputs, ctx: JobContext,
                        compiled: bool, done: list[int], total: int) -> list[TradeoffRow]:
    """The rows of the model loaded again with its other storage, loaded here and freed
    before returning."""
    from workbench.core.common.memory import format_bytes
    from workbench.core.models.loader import load_model_job

    path = "quantized" if weights == "quantized" else "exact"
    options = dataclasses.replace(loaded.options, weights=weights)
    ctx.progress(f"Loading {loaded.name} on {weights} weights…", done[0] / total)
    try:
        with PeakMemory(loaded.device) as peak:
            other, wall, _ = _timed(lambda: drive(load_model_job(loaded.reference, options),
                                                  ctx))
    except WorkbenchError as exc:
        return [TradeoffRow(path, weights, skipped=f"cannot load it: {exc}")]
    try:
        rows = plan_rows(other, compiled)
        rows[0].note = (f"loaded for this table in {wall:.1f} s (peak "
                        f"+{format_bytes(peak.increase)})")
        _measure_rows(rows, other, inputs, ctx, done, total)
        return rows
    finally:
        del other
        gc.collect()


def _inputs(loaded: Any, settings: TradeoffSettings) -> tuple[_Inputs, list[str]]:
    """What the rows read, fitted to the model's context, and notes on what was fitted."""
    from workbench.core.models.info import context_length

    context = context_length(loaded.model) or 1024
    notes = []
    if settings.new_tokens >= context:
        raise WorkbenchError(f"{settings.new_tokens} new tokens do not fit the model's context "
                             f"of {context} tokens.")
    prompt_tokens = min(settings.prompt_tokens, context)
    if prompt_tokens < settings.prompt_tokens:
        notes.append(f"The timed prompt has {prompt_tokens} tokens: the model's context.")
    tokenizer = loaded.tokenizer
    _, prompt_ids = corpus_tokens(tokenizer, prompt_tokens)
    decode_prompt, _ = corpus_tokens(tokenizer, min(DECODE_PROMPT_TOKENS,
                                                    context - settings.new_tokens))
    text, text_ids = corpus_tokens(tokenizer, settings.text_tokens)
    window = max(min(context, len(text_ids)), 2)
    if window < len(text_ids):
        notes.append(f"The perplexity's text ({len(text_ids)} tokens) is longer than the "
                     f"model's context: windows of {window} tokens, moved by {window // 2}.")
    return _Inputs(prompt_ids, decode_prompt, text, window, len(text_ids), settings), notes


def _warm_up(loaded: Any, inputs: _Inputs, ctx: JobContext) -> None:
    """Two greedy tokens and a short perplexity on the loaded model, before any row: the
    first row's peak and speeds leave out what the process does once (lazy imports, first
    allocations)."""
    from workbench.core.generation.generate import generate

    ctx.progress("Warming up…", 0.0)
    quiet = JobContext(cancel=ctx.cancel)
    exact = dataclasses.replace(loaded, decode="exact", _decoder=None, compiled_shapes=set())
    generate(exact, inputs.decode_prompt, SamplingSettings(max_new_tokens=2, do_sample=False,
                                                            chat=False), quiet, top_n=10)
    perplexity(loaded, inputs.text[:200], min(inputs.window, 64), ctx=quiet)
    ctx.cancel.raise_if_cancelled()


def _compare(rows: list[TradeoffRow]) -> tuple[str, str]:
    """Fill each measured row's perplexity ratio and agreement against the reference row;
    the reference's key and, where it is not exact float32, why it is the one."""
    measured = [r for r in rows if r.measured]
    reference = next((r for r in measured if r.path == "exact" and r.weights == "float32"),
                     None)
    note = ""
    if reference is None and measured:
        reference = measured[0]
        note = f"no row runs the exact path on float32 weights: the reference is {reference.key}"
    if reference is None:
        return "", "no row was measured"
    for row in measured:
        if row.perplexity is not None and reference.perplexity:
            row.perplexity_ratio = row.perplexity / reference.perplexity
        row.agreement, row.same_lead = agreement(row.token_ids, reference.token_ids)
    return reference.key, note


def tradeoffs(loaded: Any, settings: TradeoffSettings | None = None,
              ctx: JobContext | None = None, compiled: bool = False,
              other_storage: bool = True) -> TradeoffResult:
    """The trade-off table of ``loaded`` (a causal LM; see the module docstring):
    ``compiled`` adds the compiled path's row, ``other_storage`` (a .gguf model) the rows of
    its other storage."""
    from workbench.core.models.catalog import CAUSAL_LM

    ctx = ctx or JobContext()
    settings = settings or TradeoffSettings()
    settings.validate()
    loaded.require(CAUSAL_LM, "a trade-off table")
    start = time.perf_counter()
    inputs, notes = _inputs(loaded, settings)
    rows = plan_rows(loaded, compiled)
    other, why_not = other_weights(loaded) if other_storage else ("", "")
    total = sum(r.measured for r in rows) + (3 if other == "float32" else 1 if other else 0)
    done = [0]
    _warm_up(loaded, inputs, ctx)
    _measure_rows(rows, loaded, inputs, ctx, done, max(total, 1))
    if other:
        rows += _other_storage_rows(loaded, other, inputs, ctx, compiled, done, max(total, 1))
    elif why_not:
        rows.append(TradeoffRow("quantized", "quantized", skipped=why_not))
    if loaded.storage or other == "quantized":
        notes.append("On a GGUF's quantized weights the model decodes on them only: one row.")
    reference, note = _compare(rows)
    ctx.progress("Done", 1.0)
    return TradeoffResult(
        model=loaded.name, device=loaded.device, settings=asdict(settings), rows=rows,
        prompt_tokens=len(inputs.prompt_ids), text_tokens=inputs.text_tokens,
        window=inputs.window,
        decode_prompt=inputs.decode_prompt, reference=reference, reference_note=note,
        peak_kind="GPU" if loaded.device.startswith("cuda") else "RSS", notes=notes,
        seconds=time.perf_counter() - start)

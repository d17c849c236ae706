"""Text generation with transformers' own ``generate``, streamed and inspected per step.

The app adds inspection and samplers, not a parallel decoder. Decoding is transformers'
``generate`` through a chain of ``LogitsProcessor``s: the chain of the settings
(``sampling.row_chain``: transformers' own processors and warpers, and the samplers of
``core.generation.samplers``, in the settings' sampler order), passed to ``generate`` with
transformers' own copies of them switched off, so that what is sampled from is exactly that
chain. The app adds two recorders to the chain for the duration of one call: one at its
start (the model's raw distribution) and one at its end (the distribution the sampler
actually draws from, after temperature, top-k, top-p, ...).
From the two, each step reports the chosen token's probability, the top-N candidates
raw and processed, the kept set (what top-k / top-p / min-p left) and its mass, the
entropy and the surprisal. Stopping is a ``StoppingCriteria`` watching the cancel token.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.generation.memory import check_generation_memory
from workbench.core.generation.records import (
    GeneratedSequence,
    GenerationResult,
    StepInspector,
    StepRecord,
    TokenEvent,
    recording_chain,
)
from workbench.core.generation.settings import SamplingSettings, row_chain
from workbench.core.generation.shared_prompt import cache_keyword, shared_prompt
from workbench.core.models.info import context_length


def encode_prompt(tokenizer: Any, prompt: str, chat: bool):
    """Token ids of ``prompt``, through the chat template when asked and available."""
    if chat and getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)
        return encoded["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def prepare_prompt(loaded: Any, prompt: str, chat: bool, max_new_tokens: int
                   ) -> tuple[Any, list[str]]:
    """Prompt token ids (1 × n) ready for generate(), and notices about what was changed.

    An empty prompt starts from the model's start token when it has one; a prompt too
    long for the context keeps its end, with a notice.
    """
    import torch

    from workbench.core.models.catalog import CAUSAL_LM

    loaded.require(CAUSAL_LM, "generation")
    tokenizer, notices = loaded.tokenizer, []
    if not prompt.strip():
        if tokenizer.bos_token_id is None:
            raise WorkbenchError(f"The prompt is empty and {loaded.name} has no start token "
                                 "to begin from: type a prompt.")
        ids = torch.tensor([[tokenizer.bos_token_id]])
        notices.append("Empty prompt: generating from the model's start token.")
    else:
        ids = encode_prompt(tokenizer, prompt, chat)
    context = context_length(loaded.model)
    if context is not None and ids.shape[1] + max_new_tokens > context:
        keep = context - max_new_tokens
        if keep < 1:
            raise WorkbenchError(f"{max_new_tokens} new tokens do not fit the model's context "
                                 f"of {context} tokens.")
        notices.append(f"The prompt has {ids.shape[1]} tokens: only its last {keep} fit in "
                       f"the model's context of {context} with {max_new_tokens} new tokens.")
        ids = ids[:, -keep:]
    return ids.to(loaded.model.device), notices


def generate(loaded: Any, prompt: str, settings: SamplingSettings, ctx: JobContext | None = None,
             top_n: int = 10) -> GenerationResult:
    """Generate from ``prompt`` with ``loaded`` (a LoadedModel), emitting TokenEvents.

    Every step of every sequence is recorded (probabilities, entropy, kept set, the
    ``top_n`` candidates). Beam search cannot stream: its tokens are reported at the end,
    with the probabilities transformers computes for them and no candidates.
    """
    ctx = ctx or JobContext()
    settings.validate()
    settings, notices = settings.effective()
    input_ids, more = prepare_prompt(loaded, prompt, settings.chat, settings.max_new_tokens)
    check_generation_memory(loaded, input_ids.shape[1], settings.max_new_tokens,
                            [(settings.rows, settings.num_beams > 1)], top_n)
    run = run_generation(loaded, input_ids, settings.num_return_sequences,
                         settings.generate_kwargs(own_chain=True), settings.seed, ctx, top_n,
                         beams=settings.num_beams > 1,
                         extra_processors=chain_processors(loaded, settings))
    return GenerationResult(prompt=prompt, sequences=run.sequences, seconds=run.seconds,
                            stopped=ctx.cancel.cancelled, settings=asdict(settings),
                            prompt_token_ids=input_ids[0].tolist(),
                            notices=notices + more + ([run.note] if run.note else []),
                            decoding=run.decoding)


def chain_processors(loaded: Any, settings: SamplingSettings) -> tuple[Any, ...]:
    """The processors a run of ``settings`` samples through (``row_chain``), for ``generate``
    called with ``settings.generate_kwargs(own_chain=True)``: as transformers builds its own
    (beam sampling keeps one more token than there are end-of-text tokens), and greedy
    decoding and beam search left to ``generate``."""
    keep = 1
    if settings.do_sample and settings.num_beams > 1:
        keep = max(len(eos_ids(loaded.model, loaded.tokenizer)), 1) + 1
    return tuple(row_chain(settings, loaded.tokenizer, greedy_argmax=False,
                           min_tokens_to_keep=keep, device=loaded.model.device))


@dataclass
class GenerationRun:
    sequences: list[GeneratedSequence]
    seconds: float
    decoding: str = "exact"
    note: str = ""  # why the decoding path is not the one asked for


def run_generation(loaded: Any, input_ids: Any, rows: int, generate_kwargs: dict[str, Any],
                   seed: int, ctx: JobContext, top_n: int, beams: bool = False,
                   extra_processors: tuple[Any, ...] = (), exact: bool = False,
                   attention_mask: Any = None) -> GenerationRun:
    """One ``model.generate`` call with streaming, per-step records and cancel.

    ``rows`` is the number of sequences it returns; ``extra_processors`` join the end of
    transformers' chain (before the recorder of the processed distribution): with
    ``generate_kwargs`` that switch transformers' own processors off, they are the chain.
    It runs on the model's decoding path (``loaded.decoding``), or on the loaded model
    itself when ``exact``.

    ``attention_mask`` (default: all ones) lets ``input_ids`` be a batch of different
    prompts, left-padded to one length (0 over the padding); each row's tokens and steps
    are its own. Processors see the padded ids: those that read them (repetition penalty,
    DRY, ...) must strip each row's padding themselves.
    """
    import torch
    from transformers import StoppingCriteriaList, set_seed

    path = None if exact or not hasattr(loaded, "decoding") else loaded.decoding(ctx)
    tokenizer, model = loaded.tokenizer, loaded.model if path is None else path.model
    inspector = StepInspector(tokenizer, top_n)
    inspector.start = input_ids.shape[1]
    eos = eos_ids(model, tokenizer)
    ids_out: list[list[int]] = [[] for _ in range(rows)]
    steps_out: list[list[StepRecord]] = [[] for _ in range(rows)]
    set_seed(seed)
    start = time.perf_counter()
    with torch.inference_mode(), recording_chain(model, inspector.first, inspector.last,
                                                 extra_processors):
        shape = None
        if path is not None and path.name == "compiled" and not beams:
            generate_kwargs, shape = compiled_kwargs(loaded, model, input_ids, generate_kwargs,
                                                     ctx)
        elif not beams and attention_mask is None:
            input_ids, generate_kwargs = shared_prompt(model, input_ids, generate_kwargs)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        from workbench.core.common.threads import sharing_the_gil
        from workbench.core.models import compiling

        first_compile = shape is not None and shape not in loaded.compiled_shapes
        try:
            with sharing_the_gil(0.0005) if first_compile else nullcontext():
                out = model.generate(input_ids, attention_mask=mask,
                                     stopping_criteria=StoppingCriteriaList(
                                         [_cancel_criteria(ctx)]),
                                     streamer=None if beams else _token_stream(
                                         tokenizer, inspector, eos, ctx, ids_out, steps_out),
                                     pad_token_id=tokenizer.pad_token_id,
                                     return_dict_in_generate=True, output_scores=beams,
                                     **generate_kwargs)
        except Exception as exc:
            if shape is None or not compiling.is_compile_error(exc):
                raise
            why = compiling.note_compile_failure(model.device.type, exc)
            raise WorkbenchError(
                f"Compiling the model failed ({why}). The compiled path is off for this "
                f"session: generate again to decode on {path.base}, uncompiled.") from exc
    seconds = time.perf_counter() - start
    note = "" if path is None else path.note
    if first_compile and max(map(len, ids_out)) >= 2:  # a decoding step ran (not only prefill)
        loaded.compiled_shapes.add(shape)
        note = "; ".join(n for n in (note, f"this run compiled the model for its shape: its "
                                     f"{seconds:.1f} s include the compile") if n)
    if beams:
        _beam_results(out, model, input_ids.shape[1], tokenizer, eos, ids_out, steps_out, ctx)
    sequences = [GeneratedSequence(tokenizer.decode(ids, skip_special_tokens=True), ids, steps)
                 for ids, steps in zip(ids_out, steps_out, strict=True)]
    name = "exact" if path is None else path.name
    if name == "compiled" and shape is None:  # beam search: not compiled, the base path ran
        name = path.base
    return GenerationRun(sequences, seconds, name, note)


def _cancel_criteria(ctx: JobContext) -> Any:
    """A ``StoppingCriteria`` that ends every row once ``ctx`` is cancelled."""
    import torch
    from transformers import StoppingCriteria

    class CancelCriteria(StoppingCriteria):
        def __call__(self, ids: torch.LongTensor, scores: torch.FloatTensor, **kw: Any):
            return torch.full((ids.shape[0],), ctx.cancel.cancelled, dtype=torch.bool,
                              device=ids.device)

    return CancelCriteria()


def _token_stream(tokenizer: Any, inspector: StepInspector, eos: set[int], ctx: JobContext,
                  ids_out: list[list[int]], steps_out: list[list[StepRecord]]) -> Any:
    """The streamer of one ``generate`` call: each row's new token goes to ``ids_out``, its
    step record to ``steps_out`` and a TokenEvent to ``ctx`` as it comes; a row that ended
    takes no more."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    texts = [""] * len(ids_out)
    done = [False] * len(ids_out)

    class Stream(BaseStreamer):
        def __init__(self) -> None:
            self.prompt_seen = False

        def put(self, value: torch.Tensor) -> None:
            if not self.prompt_seen:  # generate() first passes the prompt itself
                self.prompt_seen = True
                return
            for row, token in enumerate(value.reshape(-1).tolist()):
                if done[row]:
                    continue  # finished rows keep receiving padding
                ids_out[row].append(token)
                text = tokenizer.decode(ids_out[row], skip_special_tokens=True)
                delta = text[len(texts[row]):] if text.startswith(texts[row]) else text
                texts[row] = text
                step = inspector.record(row, len(ids_out[row]) - 1, token, delta)
                steps_out[row].append(step)
                ctx.emit(TokenEvent(row, step.index, token, delta, step.probability, step))
                done[row] = token in eos

        def end(self) -> None:
            pass

    return Stream()


def compiled_kwargs(loaded: Any, model: Any, input_ids: Any, generate_kwargs: dict[str, Any],
                    ctx: JobContext) -> tuple[dict[str, Any], tuple]:
    """``generate_kwargs`` for the compiled path: a static cache of a bucketed length
    (``compiling.static_cache_length``) and transformers' CompileConfig, which makes
    ``generate`` compile the model's forward for its decoding steps; and the shape
    (model, rows, cache length) that compiles. The first run of a shape says so first."""
    from transformers import StaticCache

    from workbench.core.models import compiling

    rows = input_ids.shape[0] * int(generate_kwargs.get("num_return_sequences") or 1)
    length = compiling.static_cache_length(input_ids.shape[1], generate_kwargs["max_new_tokens"],
                                          context_length(model))
    shape = (id(model), rows, length)
    if shape not in loaded.compiled_shapes:
        ctx.progress(f"Compiling the model for {rows} row{'s' if rows != 1 else ''} and "
                     f"{length} positions (torch.compile, once for this shape: 10-60 s)…", None)
    cache = StaticCache(config=model.config, max_cache_len=length)
    kwargs = {**generate_kwargs, cache_keyword(model): cache,
              "compile_config": compiling.compile_config(model.device.type)}
    return kwargs, shape


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])


def _beam_results(out: Any, model: Any, prompt_len: int, tokenizer: Any, eos: set[int],
                  ids_out: list[list[int]], steps_out: list[list[StepRecord]],
                  ctx: JobContext) -> None:
    """Tokens of beam search's returned sequences, with each token's probability as
    transformers' ``compute_transition_scores`` gives it (no candidates: beams don't stream).
    """
    scores = model.compute_transition_scores(out.sequences, out.scores, out.beam_indices,
                                             normalize_logits=False)
    nan = float("nan")
    for row, seq in enumerate(out.sequences):
        ids: list[int] = []
        for token in seq[prompt_len:].tolist():
            ids.append(token)
            if token in eos:  # a beam that ended early: what follows is padding (the pad
                break         # token anywhere before its end is a token it chose)
        ids_out[row] = ids
        text = ""
        for i, token in enumerate(ids):
            full = tokenizer.decode(ids[:i + 1], skip_special_tokens=True)
            delta, text = full[len(text):], full
            p = math.exp(float(scores[row, i])) if i < scores.shape[1] else nan
            step = StepRecord(i, token, delta, nan, p, nan, nan, nan, 0, nan)
            steps_out[row].append(step)
            ctx.emit(TokenEvent(row, i, token, delta, p, step))

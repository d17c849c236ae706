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
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.common.memory import MEMORY_SHARE, available_memory, format_bytes
from workbench.core.common.units import LN2
from workbench.core.generation.settings import (
    MAX_SEQUENCES,
    SamplingSettings,
    row_chain,
)
from workbench.core.models.info import context_length


@dataclass(frozen=True)
class Candidate:
    """One candidate for the next token at a step."""

    token_id: int
    text: str
    raw_probability: float  # softmax of the model's logits
    probability: float  # after the processor chain: what the sampler drew from
    kept: bool  # still possible after top-k / top-p / min-p ...


@dataclass(frozen=True)
class StepRecord:
    """What the sampler saw and did at one step of one sequence."""

    index: int
    token_id: int
    text: str
    raw_probability: float
    probability: float
    entropy: float  # bits, of the processed distribution
    raw_entropy: float  # bits, of the model's distribution
    surprisal: float  # bits, -log2 of the chosen token's raw probability
    kept_count: int
    kept_mass: float  # raw probability mass of the kept set
    candidates: tuple[Candidate, ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of sequence ``sequence``, as it streams in."""

    sequence: int
    index: int
    token_id: int
    text: str  # the text this token adds
    probability: float
    step: StepRecord | None = None


@dataclass
class GeneratedSequence:
    text: str
    token_ids: list[int]
    steps: list[StepRecord]

    @property
    def probabilities(self) -> list[float]:
        return [s.probability for s in self.steps]

    @property
    def mean_logprob(self) -> float:
        """Mean natural-log probability of the tokens under the model (raw distribution)."""
        if not self.steps:
            return float("nan")
        return sum(math.log(max(s.raw_probability, 1e-45)) for s in self.steps) / len(self.steps)

    @property
    def perplexity(self) -> float:
        return math.exp(-self.mean_logprob) if self.steps else float("nan")


@dataclass
class GenerationResult:
    prompt: str
    sequences: list[GeneratedSequence]
    seconds: float
    stopped: bool
    settings: dict = field(default_factory=dict)
    prompt_token_ids: list[int] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    decoding: str = "exact"  # the decoding path it ran on (workbench.core.models.decoding)

    @property
    def text(self) -> str:
        return self.sequences[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.sequences[0].token_ids

    @property
    def probabilities(self) -> list[float]:
        return self.sequences[0].probabilities

    @property
    def new_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.sequences)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self, top_n: int = 0) -> dict:
        def step_dict(step: StepRecord) -> dict:
            data = {k: v for k, v in asdict(step).items() if k != "candidates"}
            if top_n:
                data["candidates"] = [asdict(c) for c in step.candidates[:top_n]]
            return data

        return {
            "prompt": self.prompt, "settings": self.settings, "seconds": round(self.seconds, 4),
            "stopped": self.stopped, "tokens_per_second": round(self.tokens_per_second, 2),
            "notices": self.notices, "decoding": self.decoding,
            "text": self.text, "token_ids": self.token_ids,
            "sequences": [{"text": s.text, "token_ids": s.token_ids,
                           "mean_logprob": s.mean_logprob, "perplexity": s.perplexity,
                           "steps": [step_dict(st) for st in s.steps]} for s in self.sequences],
        }


def encode_prompt(tokenizer: Any, prompt: str, chat: bool):
    """Token ids of ``prompt``, through the chat template when asked and available."""
    if chat and getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)
        return encoded["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


@contextmanager
def recording_chain(model: Any, first: Any = None, last: Any = None,
                    extra: tuple[Any, ...] = ()) -> Iterator[None]:
    """Put ``first`` at the start and ``last`` at the end of generate()'s processor chain.

    A ``logits_processor`` passed to generate() runs before the sampling warpers
    (temperature, top-k, top-p), so it would not see the distribution actually sampled
    from. generate() assembles its chain in ``_get_logits_processor``; the recorders are
    added to that chain for this call only.
    """
    original = model._get_logits_processor

    def with_recorders(*args: Any, **kwargs: Any):
        chain = original(*args, **kwargs)
        if first is not None:
            chain.insert(0, first)
        chain.extend(extra)
        if last is not None:
            chain.append(last)
        return chain

    model._get_logits_processor = with_recorders
    try:
        yield
    finally:
        del model._get_logits_processor  # back to the class's own method


class StepInspector:
    """Records the raw and processed distributions of each step; builds StepRecords.

    The recorders compute each step's statistics for the whole batch at once (a few
    vectorised operations); :meth:`record` then only picks a row's numbers.
    """

    def __init__(self, tokenizer: Any, top_n: int) -> None:
        import torch
        from transformers import LogitsProcessor

        self.tokenizer = tokenizer
        self.top_n = top_n
        self.raw_logp: Any = None
        self.proc_logp: Any = None
        self.stats: dict[str, list] = {}
        self.start = 0  # prompt length, to number steps in messages
        inspector = self

        class Raw(LogitsProcessor):
            def __call__(self, ids: torch.LongTensor, scores: torch.FloatTensor):
                if torch.isnan(scores).any():
                    raise WorkbenchError(
                        f"The model returned NaN logits at step {ids.shape[1] - inspector.start}"
                        " (its weights or this dtype may be broken: try float32).")
                inspector.raw_logp = torch.log_softmax(scores.detach().float(), dim=-1)
                return scores

        class Processed(LogitsProcessor):
            def __call__(self, ids: torch.LongTensor, scores: torch.FloatTensor):
                inspector.summarise(torch.log_softmax(scores.detach().float(), dim=-1))
                return scores

        self.first, self.last = Raw(), Processed()

    def summarise(self, proc_logp: Any) -> None:
        import torch

        raw_logp = self.raw_logp
        raw_p, proc_p = raw_logp.exp(), proc_logp.exp()
        kept = proc_p > 0
        zero = torch.zeros_like(proc_p)
        self.proc_logp = proc_logp
        self.stats = {
            "kept_count": kept.sum(-1).tolist(),
            "kept_mass": torch.where(kept, raw_p, zero).sum(-1).tolist(),
            "entropy": (-torch.where(kept, proc_p * proc_logp, zero).sum(-1) / LN2).tolist(),
            "raw_entropy": (-torch.where(raw_p > 0, raw_p * raw_logp, zero).sum(-1)
                            / LN2).tolist(),
        }
        if self.top_n:
            top = torch.topk(raw_logp, min(self.top_n, raw_logp.shape[-1]), dim=-1).indices
            self.stats.update(top_ids=top.tolist(), top_raw=raw_p.gather(-1, top).tolist(),
                              top_proc=proc_p.gather(-1, top).tolist(),
                              top_kept=kept.gather(-1, top).tolist())

    def record(self, row: int, index: int, token: int, text: str) -> StepRecord:
        st = self.stats
        raw_logp = float(self.raw_logp[row, token])
        candidates: tuple[Candidate, ...] = ()
        if self.top_n:
            candidates = tuple(
                Candidate(i, self.tokenizer.decode([i]), r, p, k) for i, r, p, k in zip(
                    st["top_ids"][row], st["top_raw"][row], st["top_proc"][row],
                    st["top_kept"][row], strict=True))
        return StepRecord(
            index=index, token_id=token, text=text, raw_probability=math.exp(raw_logp),
            probability=math.exp(float(self.proc_logp[row, token])),
            entropy=st["entropy"][row], raw_entropy=st["raw_entropy"][row],
            surprisal=-raw_logp / LN2, kept_count=int(st["kept_count"][row]),
            kept_mass=st["kept_mass"][row], candidates=candidates)


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


# --- how much memory a generation needs ---------------------------------------------------------
STEP_RECORD_BYTES = 1024  # one StepRecord (floats, text), its TokenEvent and its share of output
CANDIDATE_BYTES = 400  # one recorded top-N candidate
SCORE_COPIES = 8  # rows × vocabulary float32 arrays alive in one step (logits, processed
# scores, raw and processed log-probabilities and probabilities, masks: see StepInspector)
_RECURRENT = ("rwkv", "xlstm", "mamba", "mamba2", "falcon_mamba")


def _positive_int(config: Any, *names: str) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def generation_memory(model: Any, rows: int, prompt_tokens: int, new_tokens: int,
                      top_n: int = 0, beams: bool = False) -> tuple[int, int, dict[str, int]]:
    """Estimated bytes one ``generate`` call of ``rows`` rows needs: (on the model's device,
    in this process's RAM, the parts by name).

    - cache: rows × (prompt + new tokens) × layers × 2 (keys, values) × KV width × dtype size
    - attention: the weights of one layer, rows × heads × prompt² × 4 at the prompt's pass
      (rows × (heads + 1) × (prompt + new)² × 4 at every step for a model that recomputes
      the whole sequence each step instead of caching it, such as XLNet)
    - scores: rows × vocabulary × 4 × SCORE_COPIES for one step's distributions
    - beam scores: 2 × rows × new tokens × vocabulary × 4 (beam search keeps every step's)
    - step records (RAM): rows × new tokens × (STEP_RECORD_BYTES + top-N × CANDIDATE_BYTES)
    """
    import torch

    config = model.config
    try:
        config = config.get_text_config()
    except (AttributeError, TypeError, ValueError):
        pass
    layers = _positive_int(config, "num_hidden_layers", "n_layer", "num_layers") or 1
    hidden = _positive_int(config, "hidden_size", "n_embd", "d_model") or 1
    heads = _positive_int(config, "num_attention_heads", "n_head") or 1
    head_dim = _positive_int(config, "head_dim") or max(hidden // heads, 1)
    kv_width = (_positive_int(config, "num_key_value_heads") or heads) * head_dim
    vocab = _positive_int(config, "vocab_size") or 1
    dtype = getattr(model, "dtype", torch.float32)
    size = torch.empty((), dtype=dtype).element_size() if isinstance(dtype, torch.dtype) else 4
    total = prompt_tokens + new_tokens
    supports_cache = getattr(type(model), "_supports_default_dynamic_cache", None)
    recurrent = getattr(config, "model_type", "") in _RECURRENT
    recomputes = not recurrent and callable(supports_cache) and not supports_cache()
    parts = {"cache": 0 if recurrent else rows * total * layers * 2 * kv_width * size,
             "attention": 0 if recurrent else (rows * (heads + 1) * total * total * 4 if recomputes
                                               else rows * heads * prompt_tokens ** 2 * 4),
             "scores": rows * vocab * 4 * SCORE_COPIES}
    if beams:
        parts["beam scores"] = 2 * rows * new_tokens * vocab * 4
    records = rows * new_tokens * (STEP_RECORD_BYTES + min(max(top_n, 0), vocab) * CANDIDATE_BYTES)
    return sum(parts.values()), records, {**parts, "step records": records}


def check_generation_memory(loaded: Any, prompt_tokens: int, new_tokens: int,
                            runs: list[tuple[int, bool]], top_n: int = 0) -> None:
    """Refuse a generation that would not fit in memory (see :func:`generation_memory`).

    ``runs`` lists the ``generate`` calls made one after another, as (rows, beam search);
    device memory is needed by the largest, step records by all of them together.
    """
    if sum(rows for rows, _ in runs) > MAX_SEQUENCES:
        raise WorkbenchError(f"At most {MAX_SEQUENCES:,} sequences at once (each is a row of "
                             f"the batch, with its own cache and scores), not "
                             f"{sum(rows for rows, _ in runs):,}.")
    estimates = [generation_memory(loaded.model, rows, prompt_tokens, new_tokens, top_n, beams)
                 for rows, beams in runs]
    on_device = max(e[0] for e in estimates)
    in_ram = sum(e[1] for e in estimates)
    parts = max(estimates, key=lambda e: e[0])[2]
    parts["step records"] = in_ram
    device = str(getattr(loaded, "device", "cpu"))
    ram = available_memory("cpu")
    checks = ([(on_device, available_memory(device)), (in_ram, ram)] if device.startswith("cuda")
              else [(on_device + in_ram, ram)])
    for need, budget in checks:
        if need > budget * MEMORY_SHARE:
            rows = sum(r for r, _ in runs)
            detail = ", ".join(f"{name} {format_bytes(value)}" for name, value in parts.items()
                               if value >= need / 100)  # the parts that matter
            raise WorkbenchError(
                f"{rows:,} sequence{'s' if rows != 1 else ''} of {prompt_tokens:,} prompt + "
                f"{new_tokens:,} new tokens with {getattr(loaded, 'name', 'this model')} would "
                f"need about {format_bytes(need)} ({detail}), more than {MEMORY_SHARE:.0%} of the "
                f"{format_bytes(budget)} available: ask for fewer sequences or new tokens.")


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
        keep = max(len(_eos_ids(loaded.model, loaded.tokenizer)), 1) + 1
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
    from transformers import StoppingCriteria, StoppingCriteriaList, set_seed
    from transformers.generation.streamers import BaseStreamer

    path = None if exact or not hasattr(loaded, "decoding") else loaded.decoding(ctx)
    tokenizer, model = loaded.tokenizer, loaded.model if path is None else path.model
    inspector = StepInspector(tokenizer, top_n)
    inspector.start = input_ids.shape[1]
    eos = _eos_ids(model, tokenizer)
    ids_out: list[list[int]] = [[] for _ in range(rows)]
    steps_out: list[list[StepRecord]] = [[] for _ in range(rows)]
    texts = [""] * rows
    done = [False] * rows

    class CancelCriteria(StoppingCriteria):
        def __call__(self, ids: torch.LongTensor, scores: torch.FloatTensor, **kw: Any):
            return torch.full((ids.shape[0],), ctx.cancel.cancelled, dtype=torch.bool,
                              device=ids.device)

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
                                         [CancelCriteria()]),
                                     streamer=None if beams else Stream(),
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


def _cache_keyword(model: Any) -> str:
    """transformers 5.24 renamed past_key_values to cache (forward and generate alike;
    generate takes it through **kwargs, so the forward's signature tells)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters \
        else "past_key_values"


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
    kwargs = {**generate_kwargs, _cache_keyword(model): cache,
              "compile_config": compiling.compile_config(model.device.type)}
    return kwargs, shape


def shared_prompt(model: Any, input_ids: Any, generate_kwargs: dict[str, Any]
                  ) -> tuple[Any, dict[str, Any]]:
    """Several sequences of one prompt (a comparison's rows, n sequences): read the
    prompt once, not once a row.

    The prompt but its last token goes through the model for one row; its cache, repeated
    for every row, is handed to ``generate`` with the rows spelled out (instead of
    ``num_return_sequences``, which would not repeat the cache). ``generate`` then starts
    from the last token of each row: the same steps, records and use of the seed, with the
    prompt's cost paid once (4 rows of a 120-token prompt on the reference machine: 1.0 s
    against 1.45 s). The ids and kwargs are returned unchanged where this does not apply:
    one row, different prompts, a one-token prompt, a model whose cache ``generate``
    does not build as a ``DynamicCache`` (encoder-decoder, recurrent, XLNet, ...), one
    whose generation config names its own cache, or a cache with layers that cannot be
    repeated (LFM2's convolution states)."""
    import torch
    from transformers import DynamicCache

    copies = int(generate_kwargs.get("num_return_sequences") or 1)
    rows = input_ids.shape[0] * copies
    supported = getattr(model, "_supports_default_dynamic_cache", None)
    own_cache = getattr(model.generation_config, "cache_implementation", None)
    if rows < 2 or input_ids.shape[1] < 2 or getattr(model.config, "is_encoder_decoder", False) \
            or getattr(model, "_is_stateful", False) or supported is None or not supported() \
            or own_cache or not bool((input_ids == input_ids[:1]).all()):
        return input_ids, generate_kwargs

    keyword = _cache_keyword(model)
    cache = DynamicCache(config=model.config)
    if not all(hasattr(layer, "batch_repeat_interleave") for layer in
               getattr(cache, "layers", [None])):  # LFM2's convolution states, ...
        return input_ids, generate_kwargs
    head = input_ids[:1, :-1]
    model(input_ids=head, attention_mask=torch.ones_like(head), use_cache=True,
          logits_to_keep=1, **{keyword: cache})
    cache.batch_repeat_interleave(rows)
    kwargs = {**generate_kwargs, "num_return_sequences": 1, keyword: cache}
    return input_ids[:1].repeat(rows, 1), kwargs


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
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


def next_token_logits(loaded: Any, token_ids: list[int]) -> Any:
    """The model's raw logits for the token after ``token_ids`` (a 1-D float tensor), on
    the decoding path generation uses, so they are the logits its steps recorded."""
    import torch

    model = loaded.decoding().model if hasattr(loaded, "decoding") else loaded.model
    ids = torch.tensor([token_ids], device=loaded.model.device)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    return logits[0, -1].float().cpu()


@dataclass(frozen=True)
class Distribution:
    """A next-token distribution before and after a chain of processors."""

    token_ids: list[int]  # the top candidates by raw probability
    raw: list[float]
    processed: list[float]
    kept: list[bool]
    kept_count: int
    kept_mass: float
    entropy: float  # bits, processed


def explore_distribution(logits: Any, settings: SamplingSettings, top_n: int = 20,
                         prefix_ids: list[int] | None = None, tokenizer: Any = None,
                         breaker_ids: frozenset[int] | None = None) -> Distribution:
    """Reshape stored ``logits`` with ``settings``' processors, without running the model.

    Uses the same chain as generation (``sampling.row_chain``, in the settings' sampler
    order; greedy keeps the most likely token). DRY needs the ``tokenizer`` or the
    ``breaker_ids`` of its sequence breakers (``samplers.breaker_token_ids``); Mirostat
    shows its first step (``mu = 2 · tau``).
    """
    import torch

    scores = logits.reshape(1, -1).float()
    ids = torch.tensor([prefix_ids or [0]], dtype=torch.long)
    processed = row_chain(settings, tokenizer, breaker_ids=breaker_ids)(ids, scores.clone())[0]
    raw_p = torch.softmax(scores[0], -1)
    proc_logp = torch.log_softmax(processed, -1)
    proc_p = proc_logp.exp()
    kept = proc_p > 0
    top = torch.topk(raw_p, min(top_n, raw_p.shape[-1])).indices
    terms = torch.where(proc_p > 0, proc_p * proc_logp, torch.zeros_like(proc_p))
    return Distribution(token_ids=top.tolist(), raw=raw_p[top].tolist(),
                        processed=proc_p[top].tolist(), kept=kept[top].tolist(),
                        kept_count=int(kept.sum()), kept_mass=float(raw_p[kept].sum()),
                        entropy=float(-terms.sum()) / LN2)


@dataclass
class Branch:
    """A sequence that takes another candidate at one step and continues from there."""

    parent: int  # the sequence it branches from
    step: int
    sequence: GeneratedSequence

    @property
    def cumulative_logprob(self) -> float:
        """Sum of the natural-log probabilities of all its tokens under the model."""
        return sum(math.log(max(s.raw_probability, 1e-45)) for s in self.sequence.steps)

    @property
    def label(self) -> str:
        token = self.sequence.steps[self.step].text if self.step < len(self.sequence.steps) else ""
        return f"branch at step {self.step} ({token!r}), log-prob {self.cumulative_logprob:.2f}"


def branch(loaded: Any, result: GenerationResult, parent: int, step: int, token_id: int,
           settings: SamplingSettings, ctx: JobContext | None = None, top_n: int = 10) -> Branch:
    """Take ``token_id`` instead of the chosen token at ``step`` of sequence ``parent``,
    then let the model continue with ``settings`` (one sampled or greedy sequence)."""
    import torch

    ctx = ctx or JobContext()
    base = result.sequences[parent]
    if not 0 <= step < len(base.steps):
        raise WorkbenchError(f"Step {step} is not part of sequence {parent + 1}.")
    settings, _ = replace(settings, num_beams=1, num_return_sequences=1).effective()
    settings.validate()
    prefix = result.prompt_token_ids + base.token_ids[:step]
    forced = next((c for c in base.steps[step].candidates if c.token_id == token_id), None)
    if forced is None:  # not among the recorded candidates: ask the model
        logp = torch.log_softmax(next_token_logits(loaded, prefix), -1)
        raw = float(logp[token_id].exp())
        forced_step = replace(base.steps[step], token_id=token_id, raw_probability=raw,
                              probability=float("nan"), surprisal=-float(logp[token_id]) / LN2)
    else:
        forced_step = replace(base.steps[step], token_id=token_id,
                              raw_probability=forced.raw_probability,
                              probability=forced.probability,
                              surprisal=-math.log(max(forced.raw_probability, 1e-45)) / LN2)
    tokenizer = loaded.tokenizer
    head_ids = base.token_ids[:step] + [token_id]
    head_text = tokenizer.decode(head_ids, skip_special_tokens=True)
    forced_step = replace(forced_step, text=head_text[len(tokenizer.decode(
        base.token_ids[:step], skip_special_tokens=True)):])
    remaining = max(settings.max_new_tokens - step - 1, 0)
    steps = list(base.steps[:step]) + [forced_step]
    ids = list(head_ids)
    if remaining and token_id not in _eos_ids(loaded.model, tokenizer):
        input_ids = torch.tensor([prefix + [token_id]], device=loaded.model.device)
        tail_settings = replace(settings, max_new_tokens=remaining)
        run = run_generation(loaded, input_ids, 1, tail_settings.generate_kwargs(own_chain=True),
                             settings.seed, ctx, top_n,
                             extra_processors=chain_processors(loaded, tail_settings))
        tail = run.sequences[0]
        ids += tail.token_ids
        # each step's text is what it adds to the whole branch's decoded text
        shown = head_text
        for s in tail.steps:
            full = tokenizer.decode(ids[:step + 2 + s.index], skip_special_tokens=True)
            steps.append(replace(s, index=step + 1 + s.index, text=full[len(shown):]))
            shown = full
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return Branch(parent, step, GeneratedSequence(text, ids, steps))

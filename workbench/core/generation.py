"""Text generation with transformers' own ``generate``, streamed token by token.

The app adds inspection, not a parallel sampler: decoding is transformers' chain of
``LogitsProcessor``s; a processor appended at the end of that chain records the
distribution the sampler actually drew from, so each streamed token carries its
probability. Stopping is a ``StoppingCriteria`` that watches the job's cancel token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from workbench.core.errors import WorkbenchError
from workbench.core.jobs import JobContext


@dataclass
class SamplingSettings:
    """The decoding controls; ``do_sample=False`` is greedy decoding."""

    max_new_tokens: int = 64
    do_sample: bool = True
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    seed: int = 0
    chat: bool = True  # wrap the prompt in the tokenizer's chat template, if it has one

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise WorkbenchError("Max new tokens must be at least 1.")
        if self.do_sample and self.temperature <= 0:
            raise WorkbenchError("Temperature must be above 0 when sampling (use greedy instead).")
        if not 0 < self.top_p <= 1:
            raise WorkbenchError("Top-p must be in (0, 1].")
        if self.top_k < 0:
            raise WorkbenchError("Top-k must be 0 (off) or more.")
        if self.repetition_penalty <= 0:
            raise WorkbenchError("Repetition penalty must be above 0.")

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens,
                                      do_sample=self.do_sample,
                                      repetition_penalty=self.repetition_penalty)
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        else:  # override sampling defaults a model's generation_config may carry
            kwargs.update(temperature=None, top_k=None, top_p=None)
        return kwargs


@dataclass(frozen=True)
class TokenEvent:
    """One generated token: its id, its text and its probability under the sampler."""

    index: int
    token_id: int
    text: str
    probability: float


@dataclass
class GenerationResult:
    prompt: str
    text: str
    token_ids: list[int]
    probabilities: list[float]
    seconds: float
    stopped: bool
    settings: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return len(self.token_ids) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["tokens_per_second"] = round(self.tokens_per_second, 2)
        return data


@contextmanager
def _recording_last(model: Any, recorder: Any) -> Iterator[None]:
    """Append ``recorder`` after every processor and warper that generate() builds.

    A ``logits_processor`` passed to generate() runs before the sampling warpers
    (temperature, top-k, top-p), so it would not see the distribution actually sampled
    from; generate() assembles its chain in ``_get_logits_processor``, and the recorder
    is added to the end of that chain for this call only.
    """
    original = model._get_logits_processor

    def with_recorder(*args: Any, **kwargs: Any):
        chain = original(*args, **kwargs)
        chain.append(recorder)
        return chain

    model._get_logits_processor = with_recorder
    try:
        yield
    finally:
        del model._get_logits_processor  # back to the class's own method


def encode_prompt(tokenizer: Any, prompt: str, chat: bool):
    """Token ids of ``prompt``, through the chat template when asked and available."""
    if chat and getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)
        return encoded["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def generate(loaded: Any, prompt: str, settings: SamplingSettings, ctx: JobContext | None = None
             ) -> GenerationResult:
    """Generate from ``prompt`` with ``loaded`` (a LoadedModel), emitting TokenEvents."""
    import torch
    from transformers import LogitsProcessor, StoppingCriteria, StoppingCriteriaList, set_seed
    from transformers.generation.streamers import BaseStreamer

    from workbench.core.catalog import CAUSAL_LM

    ctx = ctx or JobContext()
    settings.validate()
    if loaded.task != CAUSAL_LM:
        raise WorkbenchError(f"{loaded.name} is a {loaded.task} model; generation needs a "
                             "causal language model such as SmolLM2-135M-Instruct.")
    if not prompt.strip():
        raise WorkbenchError("The prompt is empty.")
    tokenizer, model = loaded.tokenizer, loaded.model
    input_ids = encode_prompt(tokenizer, prompt, settings.chat).to(model.device)
    last_probs: list[torch.Tensor] = []

    class RecordDistribution(LogitsProcessor):
        """Last in the chain: keeps the distribution the next token is drawn from."""

        def __call__(self, ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            last_probs[:] = [torch.softmax(scores[0].float(), dim=-1)]
            return scores

    class CancelCriteria(StoppingCriteria):
        def __call__(self, ids: torch.LongTensor, scores: torch.FloatTensor, **kw: Any):
            return torch.full((ids.shape[0],), ctx.cancel.cancelled, dtype=torch.bool,
                              device=ids.device)

    ids_out: list[int] = []
    probs_out: list[float] = []
    emitted = [""]

    class Stream(BaseStreamer):
        def __init__(self) -> None:
            self.prompt_seen = False

        def put(self, value: torch.Tensor) -> None:
            if not self.prompt_seen:  # generate() first passes the prompt itself
                self.prompt_seen = True
                return
            token = int(value.reshape(-1)[0])
            prob = float(last_probs[0][token]) if last_probs else float("nan")
            ids_out.append(token)
            probs_out.append(prob)
            text = tokenizer.decode(ids_out, skip_special_tokens=True)
            delta = text[len(emitted[0]):] if text.startswith(emitted[0]) else text
            emitted[0] = text
            ctx.emit(TokenEvent(len(ids_out) - 1, token, delta, prob))

        def end(self) -> None:
            pass

    set_seed(settings.seed)
    start = time.perf_counter()
    with torch.inference_mode(), _recording_last(model, RecordDistribution()):
        model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                       stopping_criteria=StoppingCriteriaList([CancelCriteria()]),
                       streamer=Stream(), pad_token_id=tokenizer.pad_token_id,
                       **settings.generate_kwargs())
    seconds = time.perf_counter() - start
    return GenerationResult(prompt=prompt, text=tokenizer.decode(ids_out, skip_special_tokens=True),
                            token_ids=ids_out, probabilities=probs_out, seconds=seconds,
                            stopped=ctx.cancel.cancelled, settings=asdict(settings))

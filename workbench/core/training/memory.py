"""How much memory a fine-tuning run will hold at its peak, and the refusal of one that will
not fit, made before the model is loaded (headers only: no torch, no weights read).

A run trains float32 weights (``model.py``: whatever the checkpoint's dtype; a GGUF file is
converted to float32 first, :func:`workbench.core.models.loader.gguf_choice`) with the
Trainer's default optimizer, AdamW (fused), and no gradient checkpointing. Its peak is
counted as:

- the weights in float32 (4 bytes a parameter) and the runtime beside them, as a load counts
  them (:meth:`MemoryEstimate.load_bytes`: 10% of the weights and 0.5 GB), and the run's
  own process (``PROCESS_BYTES``: a tiny model's whole run peaked at 0.45 GB from a shell,
  0.68 GB under the test suite alone, 1.21 GB under the whole suite and 1.62 GB with the
  newest releases of torch and transformers: its interpreter,
  torch, transformers and the Trainer);
- a full fine-tune: their gradients (4 bytes) and AdamW's two moments (8 bytes);
  LoRA: the frozen weights only, and the adapter's parameters with their gradients and
  moments (16 bytes each), counted as if every linear layer of each block were adapted
  (``r × (in + out)`` each: an upper bound, whatever the target modules);
- the activations kept for the backward pass, per token of a batch (``batch × max length``
  tokens): per layer ``ACT_HIDDEN × hidden + ACT_INTERMEDIATE × intermediate`` bytes plus
  ``4 × max length`` (the attention mask the CPU's attention saves), or with attention
  dropout (BERT, GPT-2: the attention probabilities are kept) ``12 × heads × max length``;
  a language model adds ``LOGIT_BYTES × vocabulary`` (the float32 logits, their
  log-softmax and its gradient, alive together when the backward pass starts);
- on a GPU, under bfloat16/float16 autocast: the 16-bit copies of the weights autocast keeps
  for a step (2 bytes a parameter); the activations are counted in float32 all the same;
- a GGUF file not converted yet: its conversion's peak (RAM), if that is higher.

The constants were measured on the CPU by summing the bytes of every tensor autograd saves
for the backward pass (``torch.autograd.graph.saved_tensors_hooks``), float32, batches of
1 to 4 and lengths of 64 to 256, with a padded row: SmolLM2-135M (Llama, hidden 576,
intermediate 1536) kept 83 bytes × hidden per layer and token beside the mask term; the
tests' tiny Llama (hidden 32, intermediate 64) 80; the tiny GPT-2 (GELU-tanh, dropout)
127 × hidden beside its attention probabilities; MiniLM (BERT, classification) 74 × hidden.
``64 × hidden + 16 × intermediate`` covers each (SmolLM2 107, tiny Llama 96, GPT-2 128,
MiniLM 128 × hidden). ``LMWB_SKIP_MEMORY_CHECK=1`` starts a run without the check.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from workbench.core.common import memory as common_memory
from workbench.core.common.errors import WorkbenchError
from workbench.core.common.memory import format_bytes
from workbench.core.models import model_headers
from workbench.core.models.memory import MemoryEstimate, estimate_path

ACT_HIDDEN = 64  # bytes per layer, token and unit of the hidden size (measured 74 to 127)
ACT_INTERMEDIATE = 16  # bytes per layer, token and unit of the MLP's width
MASK_BYTES = 4  # per layer, token and position: the float attention mask sdpa saves
PROBS_BYTES = 12  # per layer, token, head and position with attention dropout
LOGIT_BYTES = 12  # per token and vocabulary entry (logits, log-softmax, its gradient)
ADAM_BYTES = 8  # AdamW's two float32 moments
AUTOCAST_BYTES = 2  # the 16-bit copy of each weight autocast keeps on a GPU
PROCESS_BYTES = 1_300_000_000  # the run's own interpreter, torch, transformers, the Trainer
_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout",
                 "dropout")


@dataclass(frozen=True)
class Shape:
    """What the activations depend on, from a model's configuration or tensor table."""

    hidden: int
    layers: int
    intermediate: int
    vocab: int
    heads: int = 0
    attention_dropout: bool = False
    positions: int = 0  # the longest input the model takes (0: not said)


@dataclass(frozen=True)
class TrainingEstimate:
    """The peak of a fine-tuning run, in bytes, by part."""

    model: MemoryEstimate
    shape: Shape
    task: str
    lora: bool
    lora_r: int
    batch: int
    length: int
    gpu: bool = False

    @property
    def adapter(self) -> int:
        """The LoRA adapter's parameters (an upper bound: every linear layer adapted)."""
        s = self.shape
        return self.lora_r * s.layers * (10 * s.hidden + 3 * s.intermediate) if self.lora else 0

    @property
    def weights(self) -> int:
        return self.model.weights_bytes("float32") + 4 * self.adapter

    @property
    def gradients(self) -> int:
        return 4 * (self.adapter if self.lora else self.model.parameters)

    @property
    def optimizer(self) -> int:
        return ADAM_BYTES * (self.adapter if self.lora else self.model.parameters)

    @property
    def activations(self) -> int:
        s = self.shape
        attention = PROBS_BYTES * max(s.heads, 1) if s.attention_dropout else MASK_BYTES
        per_layer = ACT_HIDDEN * s.hidden + ACT_INTERMEDIATE * s.intermediate \
            + attention * self.length
        per_token = s.layers * per_layer + (LOGIT_BYTES * s.vocab if self.task == "lm" else 0)
        return self.batch * self.length * per_token

    @property
    def runtime(self) -> int:
        """The load's overhead beside the weights, and autocast's copies on a GPU."""
        autocast = AUTOCAST_BYTES * self.model.parameters if self.gpu else 0
        return self.model.load_bytes("float32") - self.model.weights_bytes("float32") \
            + PROCESS_BYTES + autocast

    @property
    def training(self) -> int:
        """The training's peak, on the device it trains on."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.runtime

    @property
    def ram(self) -> int:
        """What RAM must hold: the training on the CPU, the load on a GPU; a GGUF file's first
        conversion when that is more."""
        held = self.model.load_bytes("float32") if self.gpu else self.training
        return max(held, self.model.conversion_bytes())

    def parts(self) -> str:
        """"0.54 GB of float32 weights, 0.54 GB of gradients, …"."""
        trained = f"{self.adapter:,} LoRA parameters" if self.lora else "the weights"
        return (f"{format_bytes(self.weights)} of float32 weights, "
                f"{format_bytes(self.gradients)} of gradients and "
                f"{format_bytes(self.optimizer)} of AdamW state for {trained}, "
                f"{format_bytes(self.activations)} of activations for batch {self.batch} × "
                f"{self.length} tokens, {format_bytes(self.runtime)} of runtime")


def _int(config: dict, *keys: str) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def folder_shape(folder: Path) -> Shape | None:
    """The shape in a transformers folder's ``config.json`` (the text part of a multimodal
    one); None when it does not say."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    if isinstance(config.get("text_config"), dict):
        config = config["text_config"]
    hidden = _int(config, "hidden_size", "n_embd", "d_model", "dim")
    layers = _int(config, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    if not hidden or not layers:
        return None
    dropout = any(isinstance(config.get(k), (int, float)) and config.get(k, 0) > 0
                  for k in _DROPOUT_KEYS)
    return Shape(hidden, layers, _int(config, "intermediate_size", "n_inner", "d_inner",
                                      "ffn_dim") or 4 * hidden,
                 _int(config, "vocab_size"), _int(config, "num_attention_heads", "n_head"),
                 dropout, _int(config, "max_position_embeddings", "n_positions"))


def gguf_shape(path: Path) -> Shape | None:
    """The shape from a GGUF file's tensor table: the embeddings give the hidden size and
    the vocabulary, the ``blk.N.`` names the layers, a feed-forward matrix the width."""
    try:
        _start, table = model_headers.read_tensor_table(path)
    except model_headers.UnreadableModel:
        return None
    shapes = {entry.name: entry.shape for entry in table}
    embeddings = shapes.get("token_embd.weight")
    layers = {int(m.group(1)) for name in shapes if (m := re.match(r"blk\.(\d+)\.", name))}
    if not embeddings or len(embeddings) != 2 or not layers:
        return None
    hidden, vocab = embeddings  # GGML's order: the row length first
    up = shapes.get("blk.0.ffn_up.weight") or shapes.get("blk.0.ffn_gate.weight")
    intermediate = max(up) if up else 4 * hidden
    return Shape(hidden, max(layers) + 1, intermediate, vocab)


def model_shape(path: Path) -> Shape | None:
    return folder_shape(path) if path.is_dir() else gguf_shape(path)


def estimate_run(config: Any, device: str = "cpu") -> TrainingEstimate | None:
    """The estimate for the run ``config`` (a ``FinetuneConfig``) on ``device``; None when
    its model is not on this machine or its size cannot be told from headers."""
    from workbench.core.models import catalog

    try:
        source = catalog.resolve(config.model, allow_network=False)
    except Exception:  # not local, or not a model: the load says why
        return None
    model, shape = estimate_path(source.path), model_shape(source.path)
    if model is None or shape is None:
        return None
    if shape.positions and config.max_length > shape.positions:
        return None  # longer than the model takes: the run's own check says so, precisely
    return TrainingEstimate(model, shape, config.task, bool(config.lora), config.lora_r,
                            config.batch_size, config.max_length, str(device).startswith("cuda"))


def _fits(estimate: TrainingEstimate, ram: int, gpu: int | None) -> bool:
    return estimate.ram <= ram and (gpu is None or estimate.training <= gpu)


def _choices(estimate: TrainingEstimate, ram: int, gpu: int | None,
             accumulation: int) -> list[str]:
    """What fits instead, each with its estimate: LoRA, a smaller batch, a shorter length."""
    found = []
    if not estimate.lora and estimate.task == "lm":
        lora = replace(estimate, lora=True)
        while lora.batch > 1 and not _fits(lora, ram, gpu):
            lora = replace(lora, batch=lora.batch // 2)
        if _fits(lora, ram, gpu):
            batch = "" if lora.batch == estimate.batch else f" with a batch size of {lora.batch}"
            found.append(f"LoRA (--lora){batch}, about {format_bytes(_need(lora))}")
    batch = estimate.batch // 2
    while batch >= 1:
        smaller = replace(estimate, batch=batch)
        if _fits(smaller, ram, gpu):
            steps = accumulation * -(-estimate.batch // batch)
            found.append(f"a batch size of {batch} with gradient accumulation {steps} (the "
                         f"same examples a step), about {format_bytes(_need(smaller))}")
            break
        batch //= 2
    length = estimate.length // 2
    while length >= 8:
        shorter = replace(estimate, length=length)
        if _fits(shorter, ram, gpu):
            found.append(f"a maximum length of {length} tokens, about "
                         f"{format_bytes(_need(shorter))}")
            break
        length //= 2
    return found


def _need(estimate: TrainingEstimate) -> int:
    return estimate.training if estimate.gpu else estimate.ram


def refusal(estimate: TrainingEstimate, ram: int, gpu: int | None = None,
            accumulation: int = 1, name: str = "the model") -> str | None:
    """The one-sentence refusal of a run that does not fit (``ram`` free, and ``gpu`` free
    on the GPU it trains on), with what would fit instead; None when it fits."""
    if _fits(estimate, ram, gpu):
        return None
    on_gpu = gpu is not None and estimate.training > gpu
    kind = "LoRA fine-tune" if estimate.lora else "full fine-tune"
    needed = estimate.training if on_gpu else estimate.ram
    free = gpu if on_gpu else ram
    where = "GPU memory" if on_gpu else "memory"
    parts = estimate.parts() if needed == estimate.training else \
        f"its first conversion of the GGUF file to float32 ({format_bytes(needed)})"
    text = (f"A {kind} of {name} does not fit in {where}: it needs about "
            f"{format_bytes(needed)} ({parts}) and {format_bytes(free)} is free")
    choices = _choices(estimate, ram, gpu, accumulation)
    if choices:
        return text + "; choose " + ", or ".join(choices) + "."
    return text + "; even the smallest batch needs more: choose a smaller model, or close " \
        "programs that hold memory."


def skip_check() -> bool:
    return os.environ.get("LMWB_SKIP_MEMORY_CHECK", "").lower() in {"1", "true", "yes", "on"}


def check_run_memory(config: Any, device: str) -> str | None:
    """Refuse (WorkbenchError) the run ``config`` on ``device`` when it will not fit in free
    RAM (and, on a CUDA GPU, free GPU memory); when it fits, the line for the run's log
    (None when it cannot be estimated or ``LMWB_SKIP_MEMORY_CHECK`` is set)."""
    if skip_check():
        return None
    estimate = estimate_run(config, device)
    if estimate is None:
        return None
    ram = common_memory.available_memory()
    gpu = common_memory.available_memory(device) if estimate.gpu else None
    name = Path(os.path.expanduser(config.model)).name or config.model
    message = refusal(estimate, ram, gpu, config.gradient_accumulation, name)
    if message is not None:
        raise WorkbenchError(message)
    free = format_bytes(gpu if gpu is not None else ram)
    return (f"Memory estimate: about {format_bytes(_need(estimate))} at the peak, "
            f"{free} free on {device} ({estimate.parts()}).")

"""Decoding paths: which copy of the model the token-by-token work runs on.

Decoding a small model on a CPU multiplies every weight matrix by one row per token, and
float32 matrix-vector products in MKL run on one thread at about half the memory
bandwidth (measured on the reference machine: SmolLM2-135M's output projection at
11 GB/s, the machine reads 25). A path that reads fewer bytes per token is the way to
more tokens per second:

``exact``
    The loaded model itself (float32 on the CPU): the numbers of transformers' own
    ``generate``.
``int8``
    A copy whose linear layers hold int8 weights with one scale per output row
    (symmetric, round to nearest) and compute with bfloat16 activations through ATen's
    ``_weight_int8pack_mm``; embeddings and norms in bfloat16. A quarter of float32's
    bytes; for CPUs with native bfloat16 instructions (AVX-512 BF16 or AMX), where it
    decodes 2-3x faster. Reduced precision: labelled as such.
``bf16``
    A bfloat16 copy of the model (half the bytes).
``compiled``
    The model ``auto`` would decode with, its forward compiled by ``torch.compile`` with
    transformers' static cache (``generate``'s own compiled decoding; on a GPU the forward
    becomes CUDA graphs). The first generation of each shape (rows, cache length in steps
    of ``compiling.CACHE_BUCKET``) compiles, 10-60 s; compiled code is cached on disk. Never
    chosen by ``auto``: only a long session repays the compile on a CPU.

``auto`` picks ``int8`` on such a CPU for a model whose linear weights do not fit in the
caches (at least :data:`AUTO_MIN_BYTES`; below that the copy gains nothing), else
``exact``. The loaded model stays as loaded: perplexity, attention, attribution and
evaluation use it, so their numbers stay those of the reference implementations; only
generation and what replays its steps (the explorer, the stage inspector, branches) use the
decoding path. Every path keeps ``generate``'s logits processors and the app's recorders:
transformers casts each step's logits to float32 before them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from workbench.core.common.errors import WorkbenchError

DECODE_CHOICES = ("auto", "exact", "int8", "bf16", "compiled")
AUTO_MIN_BYTES = 64 * 2**20  # float32 linear weights below this stay in the caches

LABELS = {
    "exact": "exact (float32)",
    "int8": "int8 weights · bfloat16 (reduced precision)",
    "bf16": "bfloat16 (reduced precision)",
    "compiled": "compiled (torch.compile, static cache)",
    "quantized": "the model's quantized weights · float32 activations (reduced precision)",
}


@dataclass(frozen=True)
class DecodePath:
    """The path a generation runs on: its name, what the status bar says, the model."""

    name: str  # exact, int8, bf16, compiled, or quantized (a model loaded on a GGUF's weights)
    model: Any
    note: str = ""  # why auto chose it, or why a requested path fell back
    base: str = ""  # for compiled: the path whose model is compiled

    @property
    def label(self) -> str:
        if self.name == "compiled":
            return f"{LABELS['compiled']} · {LABELS[self.base or 'exact']}"
        return LABELS[self.name]

    @property
    def reduced(self) -> bool:
        return (self.base or self.name) != "exact"


def storage_of(model: Any) -> str:
    """How a model loaded on a GGUF's quantized weights holds them ("" for any other)."""
    return getattr(model, "workbench_storage", "") or ""


def check_decode(requested: str) -> str:
    value = (requested or "auto").strip().lower()
    if value not in DECODE_CHOICES:
        raise WorkbenchError(f"Unknown decoding path '{requested}': use one of "
                             f"{', '.join(DECODE_CHOICES)}.")
    return value


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: the instructions ATen's bfloat16 kernels are fast with."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = (getattr(cpu, "_is_avx512_bf16_supported", None),
              getattr(cpu, "_is_amx_tile_supported", None))
    return any(bool(check()) for check in checks if check is not None)


def int8_kernel_available() -> bool:
    import torch

    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def linear_bytes(model: Any) -> int:
    import torch

    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
               if isinstance(m, torch.nn.Linear))


def unavailable(name: str, model: Any, built: str | None = None) -> str | None:
    """Why path ``name`` cannot run ``model`` here (None when it can); ``built`` names the
    path whose copy exists already (its memory is spent)."""
    import torch

    device = next(model.parameters()).device.type
    dtype = next(model.parameters()).dtype
    if name == "exact":
        return None
    if dtype != torch.float32 and not (name == "int8" and dtype == torch.bfloat16):
        return f"the model is loaded in {str(dtype).removeprefix('torch.')} already"
    if name == "int8":
        if device != "cpu":
            return f"the int8 path runs on the CPU (the model is on {device})"
        if not int8_kernel_available():
            return "this torch has no int8 weight kernel (_weight_int8pack_mm)"
        if not cpu_has_native_bf16():
            return "this CPU has no native bfloat16 instructions (AVX-512 BF16 or AMX)"
    if name == "bf16":
        if device == "cuda" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bfloat16"
        if device == "cpu" and not cpu_has_native_bf16():
            return "this CPU has no native bfloat16 instructions (AVX-512 BF16 or AMX)"
        if device == "mps":
            return "bfloat16 is not used on Apple MPS"
    if name == built:
        return None
    from workbench.core.common import memory

    need, free = copy_bytes(name, model), memory.available_memory(device)
    if need > 0.8 * free:
        return (f"its copy of the model needs {need / 1e9:.1f} GB and "
                f"{free / 1e9:.1f} GB are free")
    return None


def plan(requested: str, model: Any, built: str | None = None, probe: bool = False
         ) -> tuple[str, str, str]:
    """(path, base, note) for ``requested`` (after :func:`check_decode`): the path that
    runs, for ``compiled`` the path whose model it compiles (``auto``'s), and the note of
    :func:`choose` (or why ``compiled`` is off). ``probe``: see
    :func:`workbench.core.models.compiling.compile_unavailable`."""
    compiled = requested == "compiled"
    name, note = choose("auto" if compiled else requested, model, built)
    if not compiled:
        return name, "", note
    if storage_of(model):
        return name, "", "compiled off (the model is loaded on its quantized weights)"
    from workbench.core.models.compiling import compile_unavailable

    why_not = compile_unavailable(model, probe)
    if why_not is not None:
        return name, "", f"compiled off ({why_not}): decoding {LABELS[name]}"
    return "compiled", name, ""


def choose(requested: str, model: Any, built: str | None = None) -> tuple[str, str]:
    """The path to run for ``requested`` (``auto``, ``exact``, ``int8`` or ``bf16``;
    ``compiled`` goes through :func:`plan`) and a note: why ``auto`` chose it, or why a
    requested path falls back to ``exact``. ``built`` names the path whose copy exists
    already."""
    if storage_of(model):  # one model: it decodes on the weights it was loaded with
        if requested in ("exact", "auto"):
            return "quantized", ""
        return "quantized", (f"{LABELS[requested]} is not used: the model is loaded on its "
                         f"quantized weights ({storage_of(model)})")
    if requested == "exact":
        return "exact", ""
    if requested == "auto":
        why_not = unavailable("int8", model, built)
        if why_not is None and linear_bytes(model) < AUTO_MIN_BYTES:
            why_not = "the model is small enough to decode from the caches"
        if why_not is None:
            return "int8", ""
        return "exact", f"fast decoding off: {why_not}"
    why_not = unavailable(requested, model, built)
    if why_not is None:
        return requested, ""
    return "exact", f"{LABELS[requested]} is not available ({why_not}); decoding exactly"


def _int8_layer(linear: Any) -> Any:
    """The int8 layer of a float linear layer: one scale per output row, symmetric, round to
    nearest (:class:`~workbench.core.models.quant_linear.Int8RowLinear`)."""
    import torch

    from workbench.core.models.gguf_layouts import int8_rows
    from workbench.core.models.quant_linear import int8_linear

    rows = int8_rows(linear.weight.detach().float().numpy())  # as a GGUF's matrices are
    return int8_linear(torch.from_numpy(rows.codes), torch.from_numpy(rows.scales),
                       None if linear.bias is None else linear.bias.detach())


def _output_layer(model: Any) -> Any:
    getter = getattr(model, "get_output_embeddings", None)
    return getter() if getter is not None else None


def _quantised(model: Any) -> list[tuple[str, Any]]:
    """The linear layers the int8 path quantises (name, module): all but the output
    projection, which stays in bfloat16 (the logits are what every record shows, and it is
    often tied to the embeddings, which the copy keeps anyway)."""
    import torch

    output = _output_layer(model)
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not output]


def copy_bytes(name: str, model: Any) -> int:
    """About how many bytes the copy for path ``name`` takes."""
    if name == "exact":
        return 0
    quantised = {id(m.weight) for _, m in _quantised(model)} if name == "int8" else set()
    import torch

    total = 0
    for p in model.parameters():  # a bfloat16 model's other tensors are shared, not copied
        total += p.numel() * (1 if id(p) in quantised else
                              0 if p.dtype == torch.bfloat16 else 2)
    return total


def build(name: str, model: Any) -> Any:
    """A decoding copy of ``model`` for path ``name`` (``exact`` returns ``model``).

    The copy never holds a second float32 model: deepcopy is handed each parameter already
    in bfloat16 (ties kept: one copy per shared tensor), and an empty stand-in for each
    weight the int8 layers replace; buffers (rotary frequencies) are copied as they are.
    """
    import torch

    if name == "exact":
        return model
    quantised = _quantised(model) if name == "int8" else []
    replaced = {id(m.weight) for _, m in quantised}
    memo: dict[int, Any] = {}
    for p in model.parameters():
        data = torch.empty(0) if id(p) in replaced else p.detach().to(torch.bfloat16)
        memo[id(p)] = torch.nn.Parameter(data, requires_grad=False)
    decoder = copy.deepcopy(model, memo)
    for full, original in quantised:
        parent_name, _, child_name = full.rpartition(".")
        parent = decoder.get_submodule(parent_name) if parent_name else decoder
        setattr(parent, child_name, _int8_layer(original))  # from the float32 weights
    decoder.eval()
    return decoder

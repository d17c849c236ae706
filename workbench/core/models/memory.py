"""How much memory a model will need in a dtype, and whether it fits before it loads.

The estimate is the parameter count times the bytes of one element of the dtype
(float32 4, bfloat16 and float16 2), plus an overhead for what a loaded model keeps beside
its weights (buffers, the tokenizer, a short generation): 10% of the weights and 0.5 GB.
Parameter counts come from headers only: a GGUF's tensor table, a folder's safetensors
headers. A GGUF file that has not been converted yet is de-quantized to float32 once at its
first load, whatever the dtype chosen, and that conversion holds about twice the float32
weights at its peak (measured: 1.85x for SmolLM2-135M), so its first load needs that.

Free memory is what the system says is available (``psutil``); the loader reads weights on
the CPU before moving them, so RAM must hold them even for a GPU, and a CUDA device must
also have them free. ``LMWB_SKIP_MEMORY_CHECK=1`` loads without the check.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from workbench.core.common import memory as common_memory
from workbench.core.common.errors import WorkbenchError
from workbench.core.common.memory import format_bytes
from workbench.core.models import catalog, model_headers

BYTES_PER_ELEMENT = {"float32": 4, "bfloat16": 2, "float16": 2}
OVERHEAD_PERCENT = 10
OVERHEAD_BYTES = 500_000_000
CONVERSION_FACTOR = 2  # peak of a GGUF's conversion, in float32 weights
QUANTIZED_AUTO_BYTES = 1_000_000_000  # weights auto keeps a GGUF quantized from this float32 size


@dataclass(frozen=True)
class MemoryEstimate:
    """The memory a model needs, from its parameter count."""

    parameters: int
    stored_as: str = ""  # "GGUF Q4_K_M", "safetensors bfloat16"
    converts_first: bool = False  # a GGUF not converted yet: de-quantized to float32 first
    quantized_bytes: int = 0  # a GGUF's weights as the quantized load holds them

    def weights_bytes(self, dtype: str) -> int:
        """The weights alone in ``dtype`` (``float32``, ``bfloat16``, ``float16``)."""
        return self.parameters * BYTES_PER_ELEMENT[dtype]

    def load_bytes(self, dtype: str) -> int:
        """Loading in ``dtype``: the weights plus the overhead (see the module docstring)."""
        return self.weights_bytes(dtype) * (100 + OVERHEAD_PERCENT) // 100 + OVERHEAD_BYTES

    def conversion_bytes(self) -> int:
        """The peak of the one-time conversion of a GGUF to float32 (0 when none is due)."""
        if not self.converts_first:
            return 0
        return self.weights_bytes("float32") * CONVERSION_FACTOR + OVERHEAD_BYTES

    def needed_bytes(self, dtype: str) -> int:
        """What this load needs at its peak: the conversion when one is due, the load."""
        return max(self.load_bytes(dtype), self.conversion_bytes())

    @property
    def stored_dtype(self) -> str:
        """The dtype of a folder's safetensors ("bfloat16"), "" for a GGUF or unknown."""
        return self.stored_as.removeprefix("safetensors ") if \
            self.stored_as.startswith("safetensors ") else ""

    def quantized_load_bytes(self) -> int:
        """Loading a GGUF on its quantized weights (no conversion): those plus the overhead."""
        return self.quantized_bytes * (100 + OVERHEAD_PERCENT) // 100 + OVERHEAD_BYTES

    def describe(self, free_bytes: int | None = None) -> str:
        """One line for people: "needs about 28 GB in float32 · 14 GB in bfloat16; 9.1 GB
        free" (the weights; the check adds the overhead)."""
        text = (f"needs about {format_bytes(self.weights_bytes('float32'))} in float32 · "
                f"{format_bytes(self.weights_bytes('bfloat16'))} in bfloat16")
        if free_bytes is not None:
            text += f"; {format_bytes(free_bytes)} free"
        return text

    def details(self) -> str:
        """Several lines: parameters, storage, each dtype with the overhead, the conversion."""
        lines = [f"{self.parameters / 1e9:.2f} billion parameters"
                 + (f" ({self.stored_as})" if self.stored_as else "")]
        for dtype in ("float32", "bfloat16"):
            lines.append(f"{dtype}: {format_bytes(self.weights_bytes(dtype))} of weights, about "
                         f"{format_bytes(self.load_bytes(dtype))} to load")
        if self.converts_first:
            lines.append(f"first load: converted to float32 once, about "
                         f"{format_bytes(self.conversion_bytes())} at its peak")
        return "\n".join(lines)


def estimate_path(path: Path) -> MemoryEstimate | None:
    """The estimate for a GGUF file or a transformers folder; None when its size cannot be
    told from headers (no safetensors, an unreadable file)."""
    try:
        if path.is_dir():
            found = model_headers.folder_parameters(path)
            return None if found is None else MemoryEstimate(found[0], found[1])
        header = model_headers.gguf_header(path)
    except (model_headers.UnreadableModel, OSError):
        return None
    from workbench.core.models.gguf_convert import cached_conversion

    try:
        converted = cached_conversion(path) is not None
    except OSError:
        converted = False
    stored = f"GGUF {header.quantization}" if header.quantization else "GGUF"
    from workbench.core.models.gguf_model import ARCHITECTURES

    kept = quantized_bytes(path) if header.architecture in ARCHITECTURES else 0
    return MemoryEstimate(header.parameters, stored, converts_first=not converted,
                          quantized_bytes=kept)


def stays_quantized(estimate: MemoryEstimate, weights: str, device: str, dtype: str) -> bool:
    """Whether a load with these choices keeps a GGUF on its quantized weights (the rule of
    :func:`workbench.core.models.loader.gguf_choice`, for an estimate)."""
    weights, dtype = (weights or "auto").lower(), (dtype or "auto").lower()
    if not estimate.quantized_bytes or weights == "float32" or device not in ("cpu", "auto"):
        return False
    if weights == "auto" and estimate.weights_bytes("float32") < QUANTIZED_AUTO_BYTES:
        return False
    return dtype in ("auto", "float32")


def quantized_bytes(path: Path) -> int:
    """The bytes the quantized load holds for the GGUF ``path`` (gguf_layouts): 4-bit types
    0.625 a value (codes and a 16-bit scale and offset per 32), the embeddings and other
    matrices 1 (int8 rows), vectors 4 (float32); 0 when the table cannot be read."""
    from workbench.core.models.gguf_layouts import INT4_BLOCK_BYTES

    try:
        _start, table = model_headers.read_tensor_table(path)
    except model_headers.UnreadableModel:
        return 0
    total = 0.0
    for entry in table:
        elements = math.prod(entry.shape)
        kind = model_headers.ggml_type_name(entry.kind)
        if len(entry.shape) < 2:
            total += 4 * elements
        elif kind in INT4_BLOCK_BYTES and entry.name != "token_embd.weight":
            total += 0.625 * elements
        else:
            total += elements
    return int(total)


def estimate_reference(reference: str) -> MemoryEstimate | None:
    """The estimate for what a user typed (built-in name, folder, ``.gguf`` file, Hub id in
    the cache, ``ollama:`` name), found locally only: None when it is not on this machine."""
    try:
        source = catalog.resolve(reference, allow_network=False)
    except Exception:  # not local, or not a model: the load says why
        return None
    return estimate_path(source.path)


def effective_dtype(dtype: str, device: str, stored: str = "") -> str | None:
    """The dtype a load with these choices will use, without importing torch; None when
    only torch can tell (``auto`` on ``auto``: float32 on the CPU, 16 bits on a GPU).
    ``stored``: the dtype of the weights (bfloat16 ones stay bfloat16 on the CPU)."""
    dtype = (dtype or "auto").lower()
    if dtype in BYTES_PER_ELEMENT:
        return dtype
    device = (device or "auto").lower()
    if device == "cpu":
        return "bfloat16" if stored == "bfloat16" else "float32"
    if device == "mps":
        return "float16"
    return None  # cuda: bfloat16 where the GPU supports it, else float16; auto: either


def refusal(estimate: MemoryEstimate, dtype: str, free_bytes: int, name: str = "The model",
            where: str = "memory", quantized: bool = False) -> str | None:
    """The message refusing a load of ``estimate`` in ``dtype`` (``quantized``: a GGUF kept
    on its quantized weights) with ``free_bytes`` free, or None when it fits. It suggests
    bfloat16 when that fits, else a smaller model."""
    if quantized:
        needed = estimate.quantized_load_bytes()
        if needed <= free_bytes:
            return None
        return (f"{name} does not fit in {where}: on its quantized weights it needs about "
                f"{format_bytes(needed)} and {format_bytes(free_bytes)} is free. Choose a "
                "smaller model or a smaller quantization, or close programs that hold memory.")
    needed = estimate.needed_bytes(dtype)
    if needed <= free_bytes:
        return None
    free = format_bytes(free_bytes)
    conversion = estimate.conversion_bytes()
    if conversion and conversion >= estimate.load_bytes(dtype):
        return (f"{name} does not fit in {where}: its first load converts the GGUF file to "
                f"float32 once, whatever the dtype, which needs about {format_bytes(conversion)} "
                f"({format_bytes(estimate.weights_bytes('float32'))} of float32 weights, held "
                f"twice while it is written), and {free} is free. Convert it on a machine with "
                "more memory (later loads read the converted copy), or choose a smaller model.")
    text = (f"{name} does not fit in {where}: in {dtype} it needs about {format_bytes(needed)} "
            f"({format_bytes(estimate.weights_bytes(dtype))} of weights and the runtime), and "
            f"{free} is free.")
    half = estimate.needed_bytes("bfloat16")
    if dtype == "float32" and half <= free_bytes:
        return text + (f" Choose bfloat16 in Dtype (--dtype bfloat16): about {format_bytes(half)}"
                       ", which fits.")
    if dtype == "float32":
        return text + (f" Even bfloat16 needs about {format_bytes(half)}: choose a smaller model, "
                       "or close programs that hold memory.")
    return text + " Choose a smaller model, or close programs that hold memory."


def check_memory(source: catalog.ModelSource, device: str, dtype: str,
                 name: str | None = None, quantized: bool = False) -> None:
    """Refuse (WorkbenchError) to load ``source`` (called ``name``) on ``device`` in ``dtype``
    when it will not fit in free RAM (and, for CUDA, free GPU memory); ``quantized``: a GGUF
    kept on its quantized weights. What cannot be estimated loads unchecked."""
    if os.environ.get("LMWB_SKIP_MEMORY_CHECK", "").lower() in {"1", "true", "yes", "on"}:
        return
    estimate = estimate_path(source.path)
    if estimate is None:
        return
    if quantized and estimate.quantized_bytes:
        message = refusal(estimate, "float32", common_memory.available_memory(),
                          name or source.path.name, quantized=True)
        if message is not None:
            raise WorkbenchError(message)
        return
    from workbench.core.models.device import pick_device, pick_dtype

    device = pick_device(device)
    chosen = str(pick_dtype(dtype, device, estimate.stored_dtype)).removeprefix("torch.")
    if chosen not in BYTES_PER_ELEMENT:
        return
    if name and os.path.exists(os.path.expanduser(name)):  # a path: its last part is enough
        name = Path(os.path.expanduser(name)).name
    name = name or source.path.name or str(source.path)
    message = refusal(estimate, chosen, common_memory.available_memory(), name, "memory")
    if message is None and device.startswith("cuda"):

        free_gpu = common_memory.available_memory(device)
        message = refusal(MemoryEstimate(estimate.parameters, estimate.stored_as), chosen,
                          int(free_gpu), name, "GPU memory")
    if message is not None:
        raise WorkbenchError(message)

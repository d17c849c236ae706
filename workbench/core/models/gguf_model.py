"""A GGUF model loaded on its quantized weights, never through a float32 copy.

transformers reads the file's configuration and tokenizer (its own GGUF support), and
builds the model with its parameters on the ``meta`` device (accelerate's
``init_empty_weights``: no memory). Each tensor is then read from the memory-mapped file
and converted on its own (:mod:`workbench.core.models.gguf_layouts`): linear layers become
int4 or int8 kernels' layers (:mod:`workbench.core.models.quant_linear`), the token
embeddings int8 rows (shared with a tied output layer), norms float32. Activations stay
float32; the matrix products run in bfloat16.

Only architectures whose tensors this module knows how to place are loaded this way
(:data:`ARCHITECTURES`); others are converted to float32 as before, with a note.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext
from workbench.core.models import gguf_layouts as layouts

# architecture → whether llama.cpp's converter permuted the rows of attn_q / attn_k (it
# interleaves the rotary halves for llama; HF keeps them in two halves)
ARCHITECTURES = {"llama": True}


@dataclass
class QuantizedLoad:
    model: Any
    tokenizer: Any
    storage: str  # "Q4_1 → int4 g32 · Q8_0 → int8 rows", for the status bar


def unsupported(path: Path) -> str | None:
    """Why ``path`` cannot be loaded quantized here (None when it can)."""
    from workbench.core.models.model_headers import UnreadableModel, gguf_header

    try:
        arch = gguf_header(path).architecture
    except UnreadableModel as exc:
        return str(exc)
    if arch not in ARCHITECTURES:
        return (f"its architecture ({arch or 'unnamed'}) is not yet loaded quantized "
                f"(only {', '.join(sorted(ARCHITECTURES))})")
    return None


def _unpermute(raw: np.ndarray, heads: int) -> np.ndarray:
    """The rows of a llama attn_q / attn_k weight back in transformers' order."""
    rows = raw.shape[0]
    order = np.arange(rows).reshape(heads, rows // heads // 2, 2).swapaxes(1, 2).reshape(-1)
    return raw[order]


def _heads_of(hf_name: str, config: Any) -> int | None:
    if hf_name.endswith("q_proj"):
        return config.num_attention_heads
    if hf_name.endswith("k_proj"):
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return None


def _linear(tensor: Any, bias: Any, heads: int | None) -> tuple[Any, str]:
    """The quantized layer for a GGUF weight tensor (rows unpermuted when ``heads``)."""
    import torch

    from workbench.core.models import quant_linear

    type_, raw, columns = tensor.type_, tensor.raw, tensor.columns
    if heads:
        raw = _unpermute(raw, heads)
    if type_ in layouts.INT4_BLOCK_BYTES and quant_linear.int4_packable(raw.shape[0], columns):
        w = layouts.int4_weight(raw, type_, columns)
        layer = quant_linear.int4_linear(torch.from_numpy(w.codes), torch.from_numpy(w.scales),
                                         torch.from_numpy(w.zeros), bias)
    else:
        w = layouts.int8_weight(raw, type_, columns)
        layer = quant_linear.int8_linear(torch.from_numpy(w.codes),
                                         torch.from_numpy(w.scales), bias)
    return layer, f"{type_} → {layer.storage}"


def _float(tensor: Any) -> Any:
    import torch

    values = layouts.float_rows(tensor.raw, tensor.type_, tensor.columns)
    return torch.from_numpy(np.array(values.reshape(-1), dtype=np.float32))


def _set(model: Any, name: str, module: Any) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _place_tensors(model: Any, config: Any, path: Path, arch: str, ctx: JobContext) -> Counter:
    """Replace each meta parameter of ``model`` by the file's tensor; returns the storages
    used (``"Q4_K → int4 g32"`` → number of tensors)."""
    import gguf
    import torch

    from workbench.core.common.memory import give_back_freed
    from workbench.core.models import quant_linear

    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
    names = gguf.get_tensor_name_map(arch_enum, config.num_hidden_layers)
    tensors = layouts.file_tensors(path)
    used: Counter = Counter()

    def tensor_for(hf_name: str) -> Any:
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        return tensors.get(gguf_name) if gguf_name else None

    embed = model.get_input_embeddings()
    output = model.get_output_embeddings()
    modules = list(model.named_modules())
    for index, (name, module) in enumerate(modules):
        ctx.cancel.raise_if_cancelled()
        if module is output:
            continue  # placed last: it may share the embeddings' rows
        if module is embed:
            source = tensor_for(f"{name}.weight")
            w = layouts.int8_weight(source.raw, source.type_, source.columns)
            _set(model, name, quant_linear.embedding(torch.from_numpy(w.codes),
                                                     torch.from_numpy(w.scales), torch.float32))
            used[f"{source.type_} → int8 rows"] += 1
            give_back_freed()
        elif isinstance(module, torch.nn.Linear):
            weight = tensor_for(f"{name}.weight")
            if weight is None:
                raise WorkbenchError(f"The GGUF file has no tensor for {name}.")
            bias = tensor_for(f"{name}.bias") if module.bias is not None else None
            layer, label = _linear(weight, None if bias is None else _float(bias),
                                   _heads_of(name, config) if ARCHITECTURES[arch] else None)
            _set(model, name, layer)
            used[label] += 1
            give_back_freed()  # the conversion's transient arrays, before the next matrix
        else:
            for pname, param in list(module.named_parameters(recurse=False)):
                if param.device.type == "meta":
                    found = tensor_for(f"{name}.{pname}")
                    if found is None:
                        raise WorkbenchError(f"The GGUF file has no tensor for {name}.{pname}.")
                    value = _float(found).reshape(param.shape)
                    module._parameters[pname] = torch.nn.Parameter(value, requires_grad=False)
        if index % 20 == 0:
            ctx.progress(f"Reading the quantized weights ({index}/{len(modules)})…",
                         index / len(modules))
    _place_output(model, output, tensor_for, used)
    return used


def _place_output(model: Any, output: Any, tensor_for: Any, used: Counter) -> None:
    """The output layer: its own tensor, or the embeddings' rows when the file ties them."""
    if output is None:
        return
    name = next(n for n, m in model.named_modules() if m is output)
    own = tensor_for(f"{name}.weight")
    if own is not None:
        layer, label = _linear(own, None, None)
        used[label] += 1
    else:
        layer = model.get_input_embeddings().tied_output()
    _set(model, name, layer)


def _metadata_folder(path: Path, ctx: JobContext) -> Path:
    """A folder with the file's configuration and tokenizer as transformers writes them,
    made once (reading them from the GGUF takes transformers 20-30 s) and kept in the cache
    beside the conversions; a half-written folder never counts."""
    import shutil
    import tempfile

    import transformers

    from workbench.core.common import paths
    from workbench.core.models.gguf_convert import conversion_key

    folder = paths.cache_dir() / "gguf-metadata" / conversion_key(path)  # not by name
    if (folder / ".complete").is_file():
        return folder
    ctx.progress(f"Reading the configuration and tokenizer of {path.name} (first load only)…",
                 None)
    try:
        config = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkbenchError(f"Cannot read GGUF file {path.name}: {first}") from exc
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".metadata-", dir=folder.parent))
    try:
        config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / ".complete").write_text("ok\n")
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def load_quantized(path: Path, ctx: JobContext | None = None,
                   attentions: bool = False) -> QuantizedLoad:
    """``path``'s model with its weights kept quantized (see the module docstring)."""
    import transformers
    from accelerate import init_empty_weights

    from workbench.core.models.model_headers import gguf_header

    ctx = ctx or JobContext()
    why_not = unsupported(path)
    if why_not:
        raise WorkbenchError(f"Cannot load {path.name} quantized: {why_not}.")
    folder = _metadata_folder(path, ctx)
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    config.tie_word_embeddings = False  # the output layer is placed by hand (tied or not)
    kwargs = {"attn_implementation": "eager"} if attentions else {}
    with init_empty_weights():
        model = transformers.AutoModelForCausalLM.from_config(config, **kwargs)
    used = _place_tensors(model, config, path, gguf_header(path).architecture or "", ctx)
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise WorkbenchError(f"The GGUF file left {len(left)} weights unset ({left[0]}, …).")
    model.eval()
    storage = " · ".join(label for label, _ in used.most_common())
    model.workbench_storage = storage
    return QuantizedLoad(model, tokenizer, storage)

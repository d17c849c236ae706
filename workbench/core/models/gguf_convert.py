"""One-time conversion of a ``.gguf`` file into a safetensors folder in the user cache.

transformers de-quantises a GGUF on every ``from_pretrained`` (about 17 s for SmolLM2)
and refuses ``save_pretrained`` on the result, so the converted weights are written with
safetensors beside a config without ``quantization_config``. Later loads read that folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from workbench.core.common import paths
from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import JobContext

_COMPLETE = ".complete"


def conversion_key(gguf: Path, named: bool = False) -> str:
    """A key that changes when the file does: size plus hashes of its head and tail. Not its
    name: the same file under two names (a path and Ollama's blob) is converted once.
    ``named``: the key of earlier versions, which began with the name (their conversions
    are still found)."""
    digest = hashlib.sha256()
    size = gguf.stat().st_size
    digest.update(f"{gguf.name}:{size}".encode() if named else f"{size}".encode())
    with open(gguf, "rb") as f:
        digest.update(f.read(1 << 22))
        f.seek(max(0, size - (1 << 22)))
        digest.update(f.read(1 << 22))
    return digest.hexdigest()[:16]


def converted_dir(gguf: Path) -> Path:
    """Where ``gguf``'s conversion is (or goes): a finished one of the same file under
    another name when there is one, else ``<stem>-<key>``."""
    key = conversion_key(gguf)
    root = paths.cache_dir() / "converted"
    earlier = root / f"{gguf.stem}-{conversion_key(gguf, named=True)}"
    try:
        done = sorted(p for p in [*root.glob(f"*-{key}"), earlier]
                      if (p / _COMPLETE).is_file())
    except OSError:
        done = []
    return done[0] if done else root / f"{gguf.stem}-{key}"


def cached_conversion(gguf: Path) -> Path | None:
    """The finished conversion of ``gguf``, or None. A half-written folder never counts."""
    folder = converted_dir(gguf)
    return folder if (folder / _COMPLETE).is_file() else None


def convert_gguf(gguf: Path, ctx: JobContext | None = None) -> Path:
    """Convert ``gguf`` once into a safetensors folder and return that folder."""
    ctx = ctx or JobContext()
    done = cached_conversion(gguf)
    if done is not None:
        return done
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.disable_progress_bar()  # progress goes through ctx instead

    target = converted_dir(gguf)
    target.parent.mkdir(parents=True, exist_ok=True)
    ctx.progress(f"Converting {gguf.name} to safetensors (first load only)…", None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        ctx.cancel.raise_if_cancelled()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
    except WorkbenchError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WorkbenchError(f"Cannot read GGUF file {gguf.name}: {first}") from exc
    ctx.cancel.raise_if_cancelled()
    ctx.progress("Writing the converted model to the cache…", None)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        # Tied weights (lm_head = embeddings) share storage; safetensors wants one copy.
        seen: set[int] = set()
        tensors = {}
        for name, tensor in model.state_dict().items():
            ptr = tensor.untyped_storage().data_ptr()
            if ptr in seen:
                continue
            seen.add(ptr)
            tensors[name] = tensor.detach().contiguous()
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "converted_from.json").write_text(json.dumps(
            {"gguf_file": gguf.name, "key": conversion_key(gguf)}, indent=2))
        (staging / _COMPLETE).write_text("ok\n")
        if target.exists():  # an earlier, unfinished attempt
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target

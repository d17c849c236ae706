"""torch.compile for the ``compiled`` decoding path (see ``core.models.decoding``): whether it
can run here, the static cache's length, transformers' CompileConfig, and what a failure
leaves for the rest of the session. Imports neither generation nor decoding."""

from __future__ import annotations

from typing import Any

CACHE_BUCKET = 256  # the static cache's length: prompt + new tokens, rounded up to this

_compile_failures: dict[str, str] = {}  # device type -> why compiling failed there (session)
_compile_probed: set[str] = set()  # device types whose probe ran this session
RECOMPILE_LIMIT = 64  # shapes torch compiles per model class before it runs eagerly


def compile_unavailable(model: Any, probe: bool = False) -> str | None:
    """Why the compiled path cannot run ``model`` here (None when it can). ``probe``
    (on the worker, not the GUI thread) compiles a small function first, once a session
    per device: a compiler that is there but does not work (no Python headers, macOS's
    ``clang++`` without the command-line tools, a GPU without Triton) is found before a
    generation starts."""
    import os
    import shutil

    import torch

    dynamo = getattr(torch, "_dynamo", None)
    if not hasattr(torch, "compile") or dynamo is None or not dynamo.is_dynamo_supported():
        return "torch.compile does not run with this Python and torch"
    if not getattr(model, "_can_compile_fullgraph", False):
        return f"transformers does not mark {type(model).__name__} as compilable"
    own_cache = getattr(getattr(model, "generation_config", None), "cache_implementation", None)
    if own_cache:
        return f"the model's generation config chooses its own cache ({own_cache})"
    device = next(model.parameters()).device.type
    if device == "mps":
        return "torch.compile is not used on Apple MPS"
    if device == "cpu" and not any(shutil.which(c) for c in
                                   (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c):
        return "torch.compile needs a C++ compiler on the CPU, and none was found"
    if probe and device not in _compile_probed:  # once a session: it passed, or it failed
        _compile_probed.add(device)
        failure = _probe_compile(device)
        if failure:
            _compile_failures[device] = failure
    if device in _compile_failures:
        return f"compiling failed on this {device} ({_compile_failures[device]})"
    return None


def _probe_compile(device: str) -> str:
    """Compile and run a small function on ``device``; the first line of the error, or
    "" when it works (1-3 s the first time; then from Inductor's cache)."""
    import torch

    from workbench.core.common.threads import sharing_the_gil

    try:
        with sharing_the_gil(0.0005):  # the window stays responsive meanwhile
            compile_config(device)  # the same cache folder as the real compile
            doubled = torch.compile(lambda x: x * 2 + 1, dynamic=False)
            doubled(torch.ones(4, device=device))
    except Exception as exc:  # any failure of the toolchain: the path falls back
        return compile_failure(exc)
    return ""


def compile_probed(device: str) -> bool:
    """Whether this session has checked that torch.compile works on ``device``."""
    return device in _compile_probed


def compile_failure(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__


def note_compile_failure(device: str, exc: BaseException) -> str:
    """Remember that compiling failed on ``device`` (the path falls back from now on)."""
    _compile_failures[device] = compile_failure(exc)
    return _compile_failures[device]


def is_compile_error(exc: BaseException) -> bool:
    """Whether ``exc`` is torch.compile's (dynamo's or Inductor's), not the model's."""
    module = type(exc).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor"))


def static_cache_length(prompt_tokens: int, new_tokens: int, limit: int | None) -> int:
    """The compiled path's cache length: prompt + new tokens rounded up to
    :data:`CACHE_BUCKET` (each length compiles once), at most the model's ``limit``."""
    need = prompt_tokens + new_tokens
    length = -(-need // CACHE_BUCKET) * CACHE_BUCKET
    return max(need, min(length, limit)) if limit else length


def compile_config(device: str) -> Any:
    """transformers' CompileConfig for ``generate`` (on every device, not only GPUs), with
    Inductor's compiled code cached in the app's cache folder."""
    import os

    from transformers import CompileConfig

    from workbench.core.common.paths import cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:  # torch writes its default into the variable the first time it looks
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        torch_default = os.path.abspath(default_cache_dir())
    except (ImportError, AttributeError):
        torch_default = None
    if current is None or current == torch_default:  # a folder of the user's own is kept
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "torch-compile")
    import torch

    dynamo_config = torch._dynamo.config  # each new shape compiles anew (dynamic=False):
    for limit in ("recompile_limit", "cache_size_limit"):  # allow a session's worth
        if hasattr(dynamo_config, limit) and getattr(dynamo_config, limit) < RECOMPILE_LIMIT:
            setattr(dynamo_config, limit, RECOMPILE_LIMIT)
    config = CompileConfig(fullgraph=False, dynamic=False)
    config._compile_all_devices = True  # transformers compiles on GPUs only unless told
    return config

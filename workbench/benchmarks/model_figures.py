"""Performance figures of the models' work for ``python main.py bench`` (start-up, loading,
generation, comparison, perplexity).

Each figure is a ratio of the app's measurement to a bare baseline measured in the same
run, on the same machine, so the target holds on a fast or a slow (or busy) machine.
Every result has ``value``, ``target`` (an upper or lower bound, per ``better``), ``met``
and the raw measurements behind the ratio.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from workbench.core.common.jobs import Progress
from workbench.core.common.paths import sample_data

# The baseline: a bare PySide6 window in a new process (run as a script, never imported
# by the core, which stays Qt-free).
_BARE_WINDOW = "; ".join([
    "import sys",
    "from PySide6.QtWidgets import QApplication, QMainWindow",
    "from PySide6.QtCore import QTimer",
    "app = QApplication(sys.argv)",
    "w = QMainWindow()",
    "w.resize(1200, 800)",
    "w.show()",
    "QTimer.singleShot(0, lambda: (print('window-shown', flush=True), app.quit()))",
    "app.exec()",
])


def _time_until_shown(cmd: list[str]) -> float:
    """Seconds from spawning ``cmd`` until it prints ``window-shown``."""
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if line.strip() == "window-shown":
                return time.perf_counter() - start
        raise RuntimeError(f"{cmd[-1]!r} exited without showing a window")
    finally:
        proc.kill()
        proc.wait()


def figure(value: float, target: float, better: str, detail: str, **raw: Any) -> dict:
    met = value <= target if better == "lower" else value >= target
    sign = "≤" if better == "lower" else "≥"
    return {"value": round(value, 4), "target": target, "better": better, "met": met,
            "target_text": f"{sign} {target}", "detail": detail, **raw}


def bench_startup(emit: Callable[[Any], None], repeats: int = 3) -> dict:
    """Window shown: the app vs a bare PySide6 window, each started as a new process.

    Target: the app's window within 4x a bare Qt window (the app builds four tabs and
    its menus; torch, transformers and pyqtgraph load only after the window is shown),
    and within 1.5 s in absolute terms (``seconds`` / ``seconds_target``): both must hold.
    """
    app_cmd = [sys.executable, "-m", "workbench", "--startup-probe", "--no-autoload"]
    bare_cmd = [sys.executable, "-c", _BARE_WINDOW]
    _time_until_shown(bare_cmd)  # warm the file cache for both
    apps, bares = [], []
    for i in range(repeats):
        emit(Progress("startup: timing window start-up", i / repeats))
        bares.append(_time_until_shown(bare_cmd))
        apps.append(_time_until_shown(app_cmd))
    app_s, bare_s = statistics.median(apps), statistics.median(bares)
    result = figure(app_s / bare_s, 4.0, "lower",
                  f"app window {app_s:.2f} s vs bare Qt window {bare_s:.2f} s",
                  seconds=round(app_s, 3), seconds_target=1.5, baseline_seconds=round(bare_s, 3),
                  runs=[round(a, 3) for a in apps], baseline_runs=[round(b, 3) for b in bares])
    result["met"] = result["met"] and app_s <= 1.5
    return result


def bench_model_load_cached(emit: Callable[[Any], None]) -> dict:
    """Loading SmolLM2 from the converted cache vs the first load from its GGUF file."""
    from workbench.core.common.jobs import JobContext
    from workbench.core.models import catalog
    from workbench.core.models.loader import load_model

    gguf = catalog.resolve(catalog.SMOLLM2.name, JobContext(emit=emit)).path
    if gguf.suffix != ".gguf":  # the user's own copy is a folder; bench the wheel's GGUF
        gguf = catalog._wheel_file(catalog.SMOLLM2) or gguf
        if gguf.suffix != ".gguf":
            raise RuntimeError("the SmolLM2 GGUF wheel is not available; run models fetch")
    saved = os.environ.get("LMWB_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="lmwb-bench-") as tmp:
        os.environ["LMWB_CACHE_DIR"] = tmp  # a cold conversion cache for the first load
        try:
            emit(Progress("model_load_cached: first load (GGUF conversion)", 0.1))
            start = time.perf_counter()
            first = load_model(str(gguf))
            first_s = time.perf_counter() - start
            assert first.converted_now
            del first
            emit(Progress("model_load_cached: cached load", 0.8))
            start = time.perf_counter()
            load_model(str(gguf))
            cached_s = time.perf_counter() - start
        finally:
            if saved is None:
                os.environ.pop("LMWB_CACHE_DIR", None)
            else:
                os.environ["LMWB_CACHE_DIR"] = saved
    return figure(cached_s / first_s, 0.25, "lower",
                  f"cached load {cached_s:.2f} s vs first load {first_s:.2f} s",
                  cached_seconds=round(cached_s, 3), first_seconds=round(first_s, 3),
                  model=Path(gguf).name)


BENCH_PROMPT = "Once upon a time, in a small village by the sea, there lived"


def _median_rate(runs: list[tuple[int, float]]) -> float:
    return statistics.median(tokens / seconds for tokens, seconds in runs)


def bench_generate_overhead(emit: Callable[[Any], None], repeats: int = 3,
                            tokens: int = 48) -> dict:
    """Tokens/s of the app's streaming generation with top-N capture ÷ a bare ``generate()``
    on the same decoding path (the model copy the app's default path runs on)."""
    import torch

    from workbench.core.generation.generate import generate
    from workbench.core.generation.settings import SamplingSettings
    from workbench.core.models.loader import load_model

    emit(Progress("generate_overhead: loading SmolLM2", 0.0))
    loaded = load_model("SmolLM2-135M-Instruct")
    settings = SamplingSettings(max_new_tokens=tokens, do_sample=False, chat=False)
    ids = loaded.tokenizer(BENCH_PROMPT, return_tensors="pt")["input_ids"]
    app_runs, bare_runs = [], []
    generate(loaded, BENCH_PROMPT, settings)  # warm-up (and the path's copy built)
    path = loaded.decoding()
    for i in range(repeats):
        emit(Progress("generate_overhead: timing", (i + 1) / (repeats + 1)))
        start = time.perf_counter()
        with torch.inference_mode():
            out = path.model.generate(ids, attention_mask=torch.ones_like(ids),
                                      **settings.generate_kwargs(),
                                      pad_token_id=loaded.tokenizer.pad_token_id)
        bare_runs.append((out.shape[1] - ids.shape[1], time.perf_counter() - start))
        start = time.perf_counter()
        result = generate(loaded, BENCH_PROMPT, settings, top_n=10)
        app_runs.append((len(result.token_ids), time.perf_counter() - start))
    app, bare = _median_rate(app_runs), _median_rate(bare_runs)
    return figure(app / bare, 0.9, "higher",
                  f"app {app:.1f} tokens/s (streaming, top-10 per step) vs bare generate "
                  f"{bare:.1f} tokens/s, both decoding {path.label}",
                  app_tokens_per_second=round(app, 2),
                  bare_tokens_per_second=round(bare, 2), dtype=loaded.dtype,
                  device=loaded.device, decoding=path.name)


def _timed(run: Callable[[], int]) -> tuple[int, float, float]:
    """(tokens, wall seconds, CPU seconds of this process) of one run."""
    cpu, start = time.process_time(), time.perf_counter()
    tokens = run()
    return tokens, time.perf_counter() - start, time.process_time() - cpu


def bench_decode_speedup(emit: Callable[[Any], None], repeats: int = 3,
                         tokens: int = 64) -> dict:
    """Greedy tokens/s of the app's default decoding, with its per-step records (top-10
    candidates, raw and processed distributions), ÷ a bare float32 ``generate()`` of
    transformers on the loaded model, in alternating runs; threads as a command takes them."""
    import torch

    from workbench.core.common.threads import adapted_threads
    from workbench.core.generation.generate import generate
    from workbench.core.generation.settings import SamplingSettings
    from workbench.core.models.loader import load_model

    emit(Progress("decode_speedup: loading SmolLM2", 0.0))
    loaded = load_model("SmolLM2-135M-Instruct")
    settings = SamplingSettings(max_new_tokens=tokens, do_sample=False, chat=False)
    ids = loaded.tokenizer(BENCH_PROMPT, return_tensors="pt")["input_ids"]

    def bare() -> int:
        with torch.inference_mode():
            out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids),
                                        **settings.generate_kwargs(),
                                        pad_token_id=loaded.tokenizer.pad_token_id)
        return out.shape[1] - ids.shape[1]

    def app() -> int:
        with adapted_threads():
            return len(generate(loaded, BENCH_PROMPT, settings, top_n=10).token_ids)

    bare()  # warm-ups; the app's builds its decoding copy
    app()
    path = loaded.decoding()
    app_runs, bare_runs = [], []
    for i in range(repeats):
        emit(Progress("decode_speedup: timing", (i + 1) / (repeats + 1)))
        bare_runs.append(_timed(bare))
        app_runs.append(_timed(app))
    app_rate = _median_rate([(n, w) for n, w, _ in app_runs])
    bare_rate = _median_rate([(n, w) for n, w, _ in bare_runs])
    app_cpu = sum(c for *_, c in app_runs) / sum(w for _, w, _ in app_runs)
    bare_cpu = sum(c for *_, c in bare_runs) / sum(w for _, w, _ in bare_runs)
    return figure(app_rate / bare_rate, 2.0, "higher",
                  f"app {app_rate:.1f} tokens/s decoding {path.label} with per-step records "
                  f"(CPU÷wall {app_cpu:.2f}) vs bare float32 generate {bare_rate:.1f} "
                  f"(CPU÷wall {bare_cpu:.2f})",
                  app_tokens_per_second=round(app_rate, 2),
                  bare_tokens_per_second=round(bare_rate, 2), decoding=path.name,
                  app_cpu_per_wall=round(app_cpu, 2), bare_cpu_per_wall=round(bare_cpu, 2))


def bench_compiled_decode(emit: Callable[[Any], None], repeats: int = 3,
                          tokens: int = 64) -> dict:
    """Greedy tokens/s of the ``compiled`` path once compiled ÷ the same model eager
    (``auto``'s path), both with their per-step records, in alternating runs; the first
    compiled run's seconds (the compile) beside it."""
    from workbench.core.common.threads import adapted_threads
    from workbench.core.generation.generate import generate
    from workbench.core.generation.settings import SamplingSettings
    from workbench.core.models.loader import load_model

    emit(Progress("compiled_decode: loading SmolLM2", 0.0))
    loaded = load_model("SmolLM2-135M-Instruct")
    settings = SamplingSettings(max_new_tokens=tokens, do_sample=False, chat=False)

    def run(decode: str) -> int:
        loaded.decode = decode
        with adapted_threads():
            return len(generate(loaded, BENCH_PROMPT, settings, top_n=10).token_ids)

    run("auto")  # builds auto's copy
    emit(Progress("compiled_decode: compiling", 0.1))
    start = time.perf_counter()
    run("compiled")
    compile_seconds = time.perf_counter() - start
    label = loaded.decoding().label
    eager_runs, compiled_runs = [], []
    for i in range(repeats):
        emit(Progress("compiled_decode: timing", (i + 1) / (repeats + 1)))
        eager_runs.append(_timed(lambda: run("auto")))
        compiled_runs.append(_timed(lambda: run("compiled")))
    eager = _median_rate([(n, w) for n, w, _ in eager_runs])
    compiled = _median_rate([(n, w) for n, w, _ in compiled_runs])
    return figure(compiled / eager, 1.0, "higher",
                  f"{label}: {compiled:.1f} tokens/s vs {eager:.1f} eager, after a "
                  f"{compile_seconds:.0f} s first run (the compile; less in a later session, "
                  "from the disk cache)",
                  compiled_tokens_per_second=round(compiled, 2),
                  eager_tokens_per_second=round(eager, 2),
                  first_run_seconds=round(compile_seconds, 1))


def bench_reduced_precision_perplexity(emit: Callable[[Any], None]) -> dict:
    """Perplexity of a held-out text (the project's own sample corpus) on each
    reduced-precision decoding path ÷ float32's: the figure is the worst path's."""
    import dataclasses

    from workbench.core.evaluation.metrics import perplexity
    from workbench.core.models import decoding
    from workbench.core.models.loader import load_model

    emit(Progress("reduced_precision_perplexity: loading SmolLM2", 0.0))
    loaded = load_model("SmolLM2-135M-Instruct")
    text = sample_data("corpus.txt").read_text(encoding="utf-8")
    exact = perplexity(loaded, text, 512, 256).perplexity
    ratios = {}
    for i, name in enumerate(("int8", "bf16")):
        emit(Progress(f"reduced_precision_perplexity: {name}", (i + 1) / 3))
        copy = dataclasses.replace(loaded, model=decoding.build(name, loaded.model))
        ratios[name] = perplexity(copy, text, 512, 256).perplexity / exact
    worst = max(ratios, key=lambda n: ratios[n])
    return figure(ratios[worst], 1.01, "lower",
                  f"perplexity float32 {exact:.3f}; " + ", ".join(
                      f"{decoding.LABELS[n]} {exact * r:.3f} ({(r - 1) * 100:+.2f}%)"
                      for n, r in ratios.items()),
                  float32_perplexity=round(exact, 4),
                  ratios={n: round(r, 5) for n, r in ratios.items()})


@contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """``count`` processes each keeping one core busy (a second to get going), ended after."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(count)]
    try:
        time.sleep(1.0)
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def bench_busy_decode(emit: Callable[[Any], None], tokens: int = 32) -> dict:
    """Greedy tokens/s with one busy process per core ÷ tokens/s on the machine as it was
    just before (the threads adapted to the load at each job's start, as in the app);
    torch's default threads under the same load are measured beside it."""
    import torch

    from workbench.core.common.threads import LoadMeter, adapted_threads
    from workbench.core.generation.generate import generate
    from workbench.core.generation.settings import SamplingSettings
    from workbench.core.models.loader import load_model

    emit(Progress("busy_decode: loading SmolLM2", 0.0))
    loaded = load_model("SmolLM2-135M-Instruct")
    settings = SamplingSettings(max_new_tokens=tokens, do_sample=False, chat=False)
    generate(loaded, BENCH_PROMPT, settings)  # warm-up
    cores = os.cpu_count() or 1
    default_threads = torch.get_num_threads()

    def rate(threads: int | None) -> tuple[float, int]:
        if threads is None:
            with adapted_threads(meter=LoadMeter()) as used:
                result = generate(loaded, BENCH_PROMPT, settings)
        else:
            before, used = torch.get_num_threads(), threads
            torch.set_num_threads(threads)
            try:
                result = generate(loaded, BENCH_PROMPT, settings)
            finally:
                torch.set_num_threads(before)
        return len(result.token_ids) / result.seconds, used

    emit(Progress("busy_decode: the machine as it is", 0.2))
    quiet, quiet_threads = rate(None)
    with busy_cores(cores):
        emit(Progress("busy_decode: one busy process per core", 0.5))
        busy, busy_threads = rate(None)
        emit(Progress("busy_decode: the same load, torch's default threads", 0.75))
        fixed, _ = rate(max(default_threads, cores))
    return figure(busy / quiet, 0.4, "higher",
                  f"{busy:.1f} tokens/s with {cores} busy processes ({busy_threads} "
                  f"thread(s)) vs {quiet:.1f} before ({quiet_threads}); torch's default "
                  f"{max(default_threads, cores)} threads under the same load: {fixed:.1f}",
                  busy_tokens_per_second=round(busy, 2), quiet_tokens_per_second=round(quiet, 2),
                  default_threads_busy_tokens_per_second=round(fixed, 2),
                  busy_threads=busy_threads, quiet_threads=quiet_threads)


def _compare_ratio(emit: Callable[[Any], None], name: str, repeats: int, tokens: int,
                   busy: bool) -> dict:
    """Wall time of 4 sampled strategies compared together ÷ one strategy alone, each
    compare run as the app runs a job (threads adapted to the load at its start); with
    ``busy``, under one busy process per core."""
    from workbench.core.common.threads import LoadMeter, adapted_threads
    from workbench.core.generation.compare import compare
    from workbench.core.generation.settings import parse_strategy
    from workbench.core.models.loader import load_model

    loaded = load_model("SmolLM2-135M-Instruct")
    specs = ["top_k=40,temperature=0.8", "top_p=0.9", "temperature=1.2", "min_p=0.1"]
    four = [parse_strategy(s) for s in specs]
    one = [parse_strategy(specs[0])]
    compare(loaded, BENCH_PROMPT, one, max_new_tokens=4, chat=False)  # warm-up

    def timed(strategies: list, seed: int) -> tuple[float, int]:
        with adapted_threads(meter=LoadMeter()):
            result = compare(loaded, BENCH_PROMPT, strategies, seed=seed,
                             max_new_tokens=tokens, chat=False)
        return result.seconds, sum(len(s.token_ids) for r in result.strategies
                                   for s in r.sequences)

    four_s, one_s, four_tokens, one_tokens = [], [], [], []
    with busy_cores(os.cpu_count() or 1) if busy else nullcontext():
        for i in range(repeats):
            emit(Progress(f"{name}: timing", i / repeats))
            seconds, count = timed(one, i)
            one_s.append(seconds)
            one_tokens.append(count)
            seconds, count = timed(four, i)
            four_s.append(seconds)
            four_tokens.append(count)
        bare = _bare_batch_ratio(loaded, tokens)
    ratio = statistics.median(four_s) / statistics.median(one_s)
    load = "with one busy process per core" if busy else "on the machine as it is"
    return figure(ratio, 2.0 if busy else 1.6, "lower",
                  f"{load}: 4 strategies {statistics.median(four_s):.2f} s vs 1 strategy "
                  f"{statistics.median(one_s):.2f} s ({tokens} new tokens each); bare "
                  f"generate() of 4 vs 1 sampled sequences: {bare:.2f}x",
                  bare_batch_ratio=round(bare, 3),
                  four_seconds=[round(x, 3) for x in four_s],
                  one_seconds=[round(x, 3) for x in one_s],
                  four_tokens=four_tokens, one_tokens=one_tokens)


def bench_compare_batched(emit: Callable[[Any], None], repeats: int = 3,
                          tokens: int = 32) -> dict:
    """4 sampled strategies compared together ÷ one strategy alone, on the machine as it is."""
    return _compare_ratio(emit, "compare_batched", repeats, tokens, busy=False)


def bench_compare_batched_busy(emit: Callable[[Any], None], repeats: int = 3,
                               tokens: int = 32) -> dict:
    """The same with one busy process per core (another program using the CPU)."""
    return _compare_ratio(emit, "compare_batched_busy", repeats, tokens, busy=True)


def _bare_batch_ratio(loaded: Any, tokens: int) -> float:
    """What 4 sampled rows cost against 1 in plain ``generate`` on this machine, now."""
    import torch

    ids = loaded.tokenizer(BENCH_PROMPT, return_tensors="pt")["input_ids"]

    def timed(rows: int) -> float:
        batch = ids.repeat(rows, 1)
        start = time.perf_counter()
        with torch.inference_mode():
            loaded.model.generate(batch, attention_mask=torch.ones_like(batch), do_sample=True,
                                  top_k=40, max_new_tokens=tokens, min_new_tokens=tokens,
                                  pad_token_id=loaded.tokenizer.pad_token_id)
        return time.perf_counter() - start

    return timed(4) / timed(1)


def bench_perplexity_overhead(emit: Callable[[Any], None], repeats: int = 2) -> dict:
    """Tokens/s of the app's perplexity ÷ a bare sliding-window loop with transformers
    (``model(input_ids, labels=...)`` per window) on the same text, window and stride."""
    import torch

    from workbench.core.evaluation.metrics import perplexity
    from workbench.core.models.loader import load_model

    loaded = load_model("SmolLM2-135M-Instruct")
    corpus = sample_data("corpus.txt")
    text = corpus.read_text(encoding="utf-8") * 3
    max_length, stride = 256, 128
    ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]

    def bare() -> tuple[int, float]:
        start, count, prev_end = time.perf_counter(), 0, 0
        for begin in range(0, ids.shape[1], stride):
            end = min(begin + max_length, ids.shape[1])
            window = ids[:, begin:end]
            target = window.clone()
            target[:, : -(end - prev_end)] = -100
            with torch.inference_mode():
                loaded.model(window, labels=target)
            count += int((target[:, 1:] != -100).sum())
            prev_end = end
            if end == ids.shape[1]:
                break
        return count, time.perf_counter() - start

    perplexity(loaded, text, max_length, stride)  # warm-up
    app_runs, bare_runs = [], []
    for i in range(repeats):
        emit(Progress("perplexity_overhead: timing", i / repeats))
        bare_runs.append(bare())
        start = time.perf_counter()
        result = perplexity(loaded, text, max_length, stride)
        app_runs.append((result.tokens, time.perf_counter() - start))
    app, base = _median_rate(app_runs), _median_rate(bare_runs)
    return figure(app / base, 0.95, "higher",
                  f"app {app:.0f} tokens/s vs bare sliding window {base:.0f} tokens/s "
                  f"({ids.shape[1]} tokens, window {max_length}, stride {stride})",
                  app_tokens_per_second=round(app, 1), bare_tokens_per_second=round(base, 1))


def bench_generate_score_batched(emit: Callable[[Any], None], repeats: int = 2,
                                 prompts: int = 16, tokens: int = 16) -> dict:
    """Prompts/s of the app's generate-then-score (greedy, left-padded batches of its
    default size, sacrebleu's scores) on the sample questions ÷ a bare loop of one
    ``generate()`` a prompt on the same decoding model, in alternating runs."""
    import torch

    from workbench.core.common.data_files import read_pairs
    from workbench.core.evaluation.generate_score import BATCH_SIZE, generate_and_score
    from workbench.core.generation.settings import SamplingSettings
    from workbench.core.models.loader import load_model

    emit(Progress("generate_score_batched: loading SmolLM2", 0.0))
    loaded = load_model("SmolLM2-135M-Instruct")
    questions, references = read_pairs(sample_data("questions.tsv"))
    questions = questions[:prompts]
    references = [column[:prompts] for column in references]
    settings = SamplingSettings(max_new_tokens=tokens, do_sample=False, chat=False)

    def app() -> tuple[int, float]:
        start = time.perf_counter()
        result = generate_and_score(loaded, questions, references, settings)
        return result.rows_done, time.perf_counter() - start

    app()  # warm-up (and the decoding path's copy built)
    model = loaded.decoding().model
    encoded = [loaded.tokenizer(q, return_tensors="pt")["input_ids"] for q in questions]

    def bare() -> tuple[int, float]:
        start = time.perf_counter()
        with torch.inference_mode():
            for ids in encoded:
                model.generate(ids, attention_mask=torch.ones_like(ids),
                               **settings.generate_kwargs(),
                               pad_token_id=loaded.tokenizer.pad_token_id)
        return len(encoded), time.perf_counter() - start

    bare()
    app_runs, bare_runs = [], []
    for i in range(repeats):
        emit(Progress("generate_score_batched: timing", (i + 1) / (repeats + 1)))
        bare_runs.append(bare())
        app_runs.append(app())
    app_rate, bare_rate = _median_rate(app_runs), _median_rate(bare_runs)
    return figure(app_rate / bare_rate, 1.5, "higher",
                  f"app {app_rate:.2f} prompts/s (batches of {BATCH_SIZE}, {tokens} new tokens, "
                  f"scored) vs bare generate one prompt at a time {bare_rate:.2f} prompts/s, "
                  f"{len(questions)} prompts, both decoding {loaded.decoding().label}",
                  app_prompts_per_second=round(app_rate, 3),
                  bare_prompts_per_second=round(bare_rate, 3), batch_size=BATCH_SIZE,
                  decoding=loaded.decoding().name)


def bench_logit_lens_first_view(emit: Callable[[Any], None], repeats: int = 2,
                                tokens: int = 400, view: tuple[int, int] = (192, 208)) -> dict:
    """Seconds until the logit lens of the 16 columns in view (positions 192-207 of a
    400-token text, SmolLM2) is computed ÷ seconds of the whole lens in one pass with bare
    transformers (hidden states, the final norm and the output embedding over every layer
    and position, as the app computed it before): ≤ 0.5."""
    import torch

    from workbench.core.common.jobs import CancelToken, run_job
    from workbench.core.interpret.attention import LensColumns, LogitLensJob
    from workbench.core.models.loader import load_model

    emit(Progress("logit_lens_first_view: loading SmolLM2", 0.0))
    loaded = load_model("SmolLM2-135M-Instruct")
    model = loaded.model
    text = sample_data("corpus.txt").read_text(encoding="utf-8") * 3
    ids = loaded.tokenizer(text, truncation=True, max_length=tokens, return_tensors="pt")

    def one_pass() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            states = model(**ids, output_hidden_states=True).hidden_states
            for i, h in enumerate(states[1:], start=1):
                logits = model.lm_head(h if i == len(states) - 1 else model.model.norm(h))
                torch.softmax(logits[0].float(), -1).max(-1)
        return time.perf_counter() - start

    def chunked() -> tuple[float, float, int]:
        """Seconds to the first chunk and to the whole lens, and the first chunk's width."""
        first: list[tuple[float, int]] = []
        start = time.perf_counter()

        def on_event(event: Any) -> None:
            if isinstance(event, LensColumns) and not first:
                if not event.start <= view[0] < view[1] <= event.stop:
                    raise RuntimeError(f"the first chunk {event.start}-{event.stop} is not "
                                       f"the view {view[0]}-{view[1]}")
                first.append((time.perf_counter() - start, event.stop - event.start))

        job = LogitLensJob(text, tokens, first=view)
        run_job(lambda ctx: job.run(loaded), on_event, CancelToken())
        return first[0][0], time.perf_counter() - start, first[0][1]

    one_pass()  # warm-up
    firsts, wholes, passes = [], [], []
    width = 0
    for i in range(repeats):  # alternated: a busy moment weighs on both alike
        emit(Progress("logit_lens_first_view: timing", (i + 1) / (repeats + 1)))
        passes.append(one_pass())
        seconds, whole, width = chunked()
        firsts.append(seconds)
        wholes.append(whole)
    first_s, pass_s = statistics.median(firsts), statistics.median(passes)
    whole_s = statistics.median(wholes)
    return figure(first_s / pass_s, 0.5, "lower",
                  f"the {width} columns in view of {ids['input_ids'].shape[1]} SmolLM2 tokens "
                  f"after {first_s:.2f} s, the whole lens in one pass {pass_s:.2f} s (all "
                  f"chunks {whole_s:.2f} s)",
                  first_view_seconds=round(first_s, 3), one_pass_seconds=round(pass_s, 3),
                  chunked_whole_seconds=round(whole_s, 3))

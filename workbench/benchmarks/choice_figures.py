"""Performance figure of multiple-choice scoring for ``python main.py bench``: the app
against lm-evaluation-harness itself, on the same items, model and device.

``choice_throughput``: items per second of :func:`workbench.core.evaluation.choice.score_choices`
(reading the file included) ÷ items per second of the harness's ``HFLM.loglikelihood`` on
the very requests its own multiple-choice task made of the same file (its ``hf`` model
loaded from the app's model folder, default settings: batch size 1, logits cache on). Only
the harness's scoring is timed, not its task and data-set set-up, so the ratio is the
strict one. The harness is a test dependency (``pip install -e ".[test]"``).
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from workbench.benchmarks.model_figures import figure
from workbench.core.common.jobs import Progress
from workbench.core.common.paths import sample_data

SAMPLE = "commonsense.jsonl"


@contextlib.contextmanager
def _offline_harness(cache: Path) -> Iterator[None]:
    """The harness and its data sets offline, with a data-set cache of their own."""
    wanted = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
              "HF_DATASETS_CACHE": str(cache)}
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _task_yaml(folder: Path, data: Path) -> None:
    (folder / "wb_commonsense.yaml").write_text(
        f"task: wb_commonsense\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8")


def bench_choice_throughput(emit: Callable[[Any], None], repeats: int = 2) -> dict:
    """Items/s of the app's multiple-choice scoring ÷ the harness's, SmolLM2 on the shipped
    sample (see the module docstring). Target: at least as fast (≥ 1.0)."""
    try:
        import lm_eval
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise RuntimeError("lm-eval is not installed: pip install lm-eval (the reference "
                           "for this figure)") from None
    from workbench.core.evaluation.choice import read_choice_items, score_choices
    from workbench.core.models.loader import load_model

    emit(Progress("choice_throughput: loading SmolLM2", 0.0))
    loaded = load_model("SmolLM2-135M-Instruct")
    data = sample_data(SAMPLE)
    items = read_choice_items(data)
    with tempfile.TemporaryDirectory(prefix="lmwb-bench-") as tmp, _offline_harness(
            Path(tmp) / "datasets"):
        _task_yaml(Path(tmp), data)
        emit(Progress("choice_throughput: the harness's task (warm-up)", 0.1))
        dtype = loaded.dtype if loaded.dtype in ("float32", "bfloat16", "float16") else "auto"
        harness = HFLM(pretrained=str(loaded.folder), device=loaded.device, dtype=dtype,
                       batch_size=1)
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bars
            run = lm_eval.simple_evaluate(
                model=harness, tasks=["wb_commonsense"], log_samples=True,
                task_manager=TaskManager(include_path=tmp, include_defaults=False))
        samples = sorted(run["samples"]["wb_commonsense"], key=lambda s: s["doc_id"])
        requests = [Instance("loglikelihood", s["doc"], tuple(args), i)
                    for s in samples for i, args in enumerate(s["arguments"])]
        score_choices(loaded, items[:2])  # warm-up
        app_s, harness_s = [], []
        result = None
        for i in range(repeats):
            emit(Progress("choice_throughput: timing", 0.2 + 0.8 * i / repeats))
            start = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):
                harness.loglikelihood(requests, disable_tqdm=True)
            harness_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = score_choices(loaded, read_choice_items(data))
            app_s.append(time.perf_counter() - start)
    assert result is not None
    # the same numbers, or the speed would mean nothing
    differences = [abs(a - resp[0][0]) for item, s in zip(result.items, samples, strict=True)
                   for a, resp in zip(item.loglikelihoods, s["resps"], strict=True)]
    expected = run["results"]["wb_commonsense"]
    app_rate = len(items) / statistics.median(app_s)
    harness_rate = len(items) / statistics.median(harness_s)
    return figure(app_rate / harness_rate, 1.0, "higher",
                  f"app {app_rate:.2f} items/s vs lm-evaluation-harness {harness_rate:.2f} "
                  f"items/s ({len(items)} items, {len(requests)} choices, {loaded.name}, "
                  f"{loaded.device}, {loaded.dtype}); acc {result.acc:.3f} (harness "
                  f"{expected['acc,none']:.3f}), largest log-likelihood difference "
                  f"{max(differences):.2e}",
                  app_items_per_second=round(app_rate, 3),
                  harness_items_per_second=round(harness_rate, 3),
                  app_seconds=[round(x, 3) for x in app_s],
                  harness_seconds=[round(x, 3) for x in harness_s],
                  acc=result.acc, acc_norm=result.acc_norm, harness_acc=expected["acc,none"],
                  harness_acc_norm=expected["acc_norm,none"],
                  max_loglikelihood_difference=max(differences), device=loaded.device,
                  dtype=loaded.dtype)

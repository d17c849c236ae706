"""Runs that survive: a run is a process of its own, stops with a checkpoint, resumes from
anywhere within its limits, and its folder always tells how it stands."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runner import run_in_process
from test_finetune import config, sentiment_csv

from workbench.core.common.errors import WorkbenchError
from workbench.core.training.finetune import run_finetune
from workbench.core.training.process import (
    STATUS_FILE,
    latest_checkpoint,
    read_status,
    request_stop,
    run_state,
    train_command,
)

ROOT = Path(__file__).resolve().parents[1]


def wait_for(condition, timeout=180.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def metric_steps(folder: Path) -> list[int]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r.get("loss") is not None]


def long_run(tmp_path, tiny, **changes):
    """A classification run far longer than any test waits for (it is stopped or killed)."""
    cfg = config(tmp_path, tiny, max_steps=100000, eval_steps=100000, save_steps=100000,
                 **changes)
    folder = Path(cfg.output_dir)
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(cfg.to_json())
    return cfg, folder


def start(folder: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workbench.train", "--config",
                             str(folder / "run.json"), *extra], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_a_stop_request_saves_a_checkpoint_and_the_state_says_stopped(tmp_path, tiny):
    cfg, folder = long_run(tmp_path, tiny)
    process = start(folder)
    wait_for(lambda: (folder / "metrics.jsonl").is_file() and len(metric_steps(folder)) >= 2,
             what="two logged steps")
    assert run_state(folder).state == "running" and run_state(folder).live
    request_stop(folder)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    state = run_state(folder)
    assert state.state == "stopped" and state.resumable
    assert Path(state.checkpoint).name == f"checkpoint-{state.step}"
    assert f"checkpoint: {state.checkpoint}" in out
    # a stop request left from that session never stops the next one at once
    resumed = run_finetune(config(tmp_path, tiny, max_steps=state.step + 2), resume=True)
    assert resumed.global_step == state.step + 2 and not resumed.stopped


def test_sigkill_then_resume_logs_every_step_once(tmp_path, tiny):
    cfg, folder = long_run(tmp_path, tiny)
    cfg.save_steps = 3
    (folder / "run.json").write_text(cfg.to_json())
    process = start(folder)
    wait_for(lambda: (folder / "checkpoint-3").is_dir() and
             (folder / "metrics.jsonl").is_file() and max(metric_steps(folder)) >= 5,
             what="a checkpoint and two steps after it")
    os.killpg(process.pid, signal.SIGKILL)  # pull the plug
    process.wait(timeout=30)
    state = run_state(folder)
    assert state.state == "interrupted" and state.resumable
    assert "ended without saving" in state.message
    done = int(Path(state.checkpoint).name.split("-")[1])
    resumed = run_finetune(config(tmp_path, tiny, max_steps=done + 3), resume=True)
    steps = metric_steps(folder)
    assert steps == list(range(1, done + 4)), steps  # each step once, none lost
    assert resumed.global_step == done + 3
    assert run_state(folder).state == "finished"


def test_a_run_outlives_the_process_that_started_it(tmp_path, tiny):
    """The window's launch(): the run is in a session of its own, so a SIGKILL of the
    window (and of its whole process group) leaves it training."""
    cfg = config(tmp_path, tiny, max_steps=8, save_steps=4)
    folder = Path(cfg.output_dir)
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(cfg.to_json())
    starter = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from workbench.core.training.process import launch, train_command\n"
         f"launch({str(folder)!r}, train_command({str(folder / 'run.json')!r}))\n"
         "print('launched', flush=True)\ntime.sleep(600)\n"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert starter.stdout.readline().strip() == "launched"
    os.killpg(starter.pid, signal.SIGKILL)
    starter.wait(timeout=30)
    wait_for(lambda: run_state(folder).state == "finished", timeout=300,
             what=f"the run to finish (its log then: {folder / 'train.log'})")
    assert (folder / "final" / "config.json").is_file()
    assert "finished at step 8" in (folder / "train.log").read_text()


def test_resume_trains_nothing_past_the_limit_and_says_so(tmp_path, tiny):
    run_finetune(config(tmp_path, tiny, max_steps=6))
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    for limit in (6, 4):  # finished at 6: the same limit, or a lower one
        with pytest.raises(WorkbenchError, match="already reached step 6.*nothing to train"):
            run_finetune(config(tmp_path, tiny, max_steps=limit), resume=True)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before  # nothing written
    assert not (tmp_path / "run" / "checkpoint-7").exists()
    more = run_finetune(config(tmp_path, tiny, max_steps=8), resume=True)
    assert more.global_step == 8


def test_resume_at_the_step_reached_saves_the_final_model_only(tmp_path, tiny):
    token_cfg = config(tmp_path, tiny, max_steps=6, save_steps=3)
    from workbench.core.common.jobs import CancelToken, JobContext

    token = CancelToken()
    token.cancel()  # stop at the first step boundary with a checkpoint
    stopped = run_finetune(token_cfg, JobContext(token))
    assert stopped.stopped and stopped.global_step == 1
    finished = run_finetune(config(tmp_path, tiny, max_steps=1), resume=True)
    assert finished.global_step == 1 and Path(finished.final_model, "config.json").is_file()
    assert metric_steps(tmp_path / "run") == [1]


def test_interrupt_in_the_cli_stops_with_a_checkpoint_and_names_it(tmp_path, tiny):
    data = sentiment_csv(tmp_path / "d.csv")
    folder = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "main.py", "finetune", "--task", "classify", "--model",
         str(tiny("bert")), "--train", data, "--output", str(folder), "--max-steps", "100000",
         "--batch-size", "4", "--logging-steps", "1", "--save-steps", "100000",
         "--eval-steps", "100000"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    wait_for(lambda: (folder / "metrics.jsonl").is_file() and len(metric_steps(folder)) >= 2,
             what="two logged steps")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Stopping at the end of this step: saving a checkpoint" in err
    last = latest_checkpoint(folder)
    assert last is not None and f"checkpoint: {last}" in out
    assert "Traceback" not in err


def test_a_second_interrupt_leaves_at_once():
    from workbench.core.common.jobs import JobContext, stop_on_signals

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    said = []
    ctx = JobContext()
    try:
        stop_on_signals(ctx, said.append)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handler runs between bytecodes of the main thread
        assert ctx.cancel.cancelled and "saving a checkpoint" in said[0]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


def test_state_of_damaged_and_unknown_folders(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    assert run_state(folder).state == "prepared"
    for damaged in ('{"state": "running", "pid": "x"', "[1, 2]", '{"state": 3}', "\xff\xfe"):
        (folder / STATUS_FILE).write_text(damaged, encoding="latin-1")
        assert run_state(folder).state == "prepared"  # read as no status, never raised
    (folder / STATUS_FILE).write_text(json.dumps({"state": "running", "pid": 2**22 + 12345,
                                                  "started": 1.0, "step": 7}))
    state = run_state(folder)
    assert state.state == "interrupted" and state.step == 7 and not state.resumable


def test_a_live_run_refuses_a_second_start_in_its_folder(tmp_path, tiny):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / STATUS_FILE).write_text(json.dumps({"state": "running", "pid": os.getpid(),
                                                  "started": None, "step": 2}))
    with pytest.raises(WorkbenchError, match="is running now"):
        run_finetune(config(tmp_path, tiny))


def test_nonfinite_checkpoints_are_set_aside_and_the_last_finite_one_named(tmp_path):
    import torch
    from safetensors.torch import save_file

    from workbench.core.training.run_folder import set_aside_nonfinite

    for step, value in ((2, 1.0), (4, 2.0), (6, float("nan")), (8, float("inf"))):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        save_file({"w": torch.full((3,), value), "steps": torch.tensor([step])},
                  str(checkpoint / "model.safetensors"))
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    moved, finite = set_aside_nonfinite(tmp_path)
    assert moved == ["nonfinite-checkpoint-8", "nonfinite-checkpoint-6"]
    assert finite.name == "checkpoint-4" and latest_checkpoint(tmp_path).name == "checkpoint-4"


def test_nan_stop_names_a_checkpoint_with_finite_weights_or_none(tmp_path, tiny):
    with pytest.raises(WorkbenchError, match="NaN or infinite at step") as error:
        run_finetune(config(tmp_path, tiny, "lm", learning_rate=1e12, max_steps=6,
                            save_steps=1))
    message = str(error.value)
    last = latest_checkpoint(tmp_path / "run")
    if last is None:
        assert "no checkpoint has finite weights" in message
    else:
        assert f"resume from {last.name}, the last checkpoint whose weights are all finite" \
            in message
    assert read_status(tmp_path / "run").state == "failed"


def test_the_multi_process_command():
    single = train_command("/r/run.json")
    assert single[1:] == ["-m", "workbench.train", "--config", "/r/run.json"]
    resumed = train_command("/r/run.json", resume=True, max_steps=9)
    assert resumed[-3:] == ["--resume", "--max-steps", "9"]
    two = train_command("/r/run.json", processes=2)
    assert two[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    assert two[two.index("--num_processes") + 1] == "2"
    assert two[-4:] == ["-m", "workbench.train", "--config", "/r/run.json"]


@pytest.mark.timeout(400)
def test_two_processes_train_one_run(tmp_path, tiny):
    """accelerate launch with 2 processes (gloo on the CPU): one set of logs, the real loss,
    a complete run folder."""
    cfg = config(tmp_path, tiny, max_steps=4, save_steps=2, eval_steps=2)
    folder = Path(cfg.output_dir)
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(cfg.to_json())
    result = subprocess.run(train_command(folder / "run.json", processes=2), cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert metric_steps(folder) == [1, 2, 3, 4]  # written once, by the main process
    losses = [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text()
              .splitlines() if json.loads(line).get("loss") is not None]
    assert all(0.3 < v < 1.2 for v in losses), losses  # two labels: about ln 2, not twice it
    assert run_state(folder).state == "finished"
    assert (folder / "final" / "config.json").is_file()


FINETUNE_BAD = [
    (["--seed", "-1"], "seed"),
    (["--seed", "4294967296"], "seed"),
    (["--warmup-steps", "-1"], "warmup"),
    (["--epochs", "inf"], "finite"),
    (["--epochs", "nan"], "finite"),
    (["--learning-rate", "0"], "learning rate"),
    (["--scheduler", "bogus"], "Unknown learning-rate schedule"),
    (["--batch-size", "0"], "batch size"),
    (["--logging-steps", "0"], "logging interval must be at least 1"),
    (["--max-steps", "abc"], "invalid int value"),
    (["--max-length", "100000"], "positions"),
    (["--lora", "--lora-dropout", "1.5"], "LoRA"),
]


@pytest.mark.parametrize("extra, message", FINETUNE_BAD)
def test_bad_finetune_arguments_are_one_line_and_write_nothing(tmp_path, tiny, extra, message):
    data = sentiment_csv(tmp_path / "d.csv")
    folder = tmp_path / "run"
    task = ["--task", "lm", "--model", str(tiny("llama"))] if "--lora" in extra else \
        ["--task", "classify", "--model", str(tiny("bert"))]
    result = run_in_process("finetune", *task, "--train", data, "--output", str(folder),
                            "--max-steps", "2", *extra)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len([x for x in lines if x.startswith("error: ")]) == 1, lines
    assert message.lower() in lines[-1].lower() and "Traceback" not in result.stderr
    assert not folder.exists()  # checked before anything is written


def test_trust_and_pickle_permissions_are_kept_with_the_run(tmp_path, tiny):
    data = sentiment_csv(tmp_path / "d.csv")
    folder = tmp_path / "run"
    result = run_in_process("finetune", "--task", "classify", "--model", str(tiny("bert")),
                            "--train", data, "--output", str(folder), "--max-steps", "1",
                            "--trust-remote-code", "--allow-pickle")
    assert result.returncode == 0, result.stderr
    saved = json.loads((folder / "run.json").read_text())
    assert saved["trust_remote_code"] is True and saved["allow_pickle"] is True

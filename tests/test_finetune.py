"""Fine-tuning with transformers' Trainer: runs, stop and resume, monitoring, bad input."""

import errno
import json
import math
import re
import shutil
from pathlib import Path

import pytest
from transformers import AutoConfig

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import CancelToken, JobContext, LogLine
from workbench.core.models.loader import load_model
from workbench.core.training.config import FinetuneConfig
from workbench.core.training.events import ProbeText, TrainLog
from workbench.core.training.finetune import run_finetune
from workbench.core.training.process import latest_checkpoint
from workbench.core.training.runs import read_run

WORDS = "the cat sat on mat dog sea is blue and green hello world".split()


def sentiment_csv(path, rows=40, labels=("good", "bad")):
    lines = ["text,label"]
    for i in range(rows):
        label = labels[i % len(labels)]
        lines.append(f"{'hello world' if label == 'good' else 'the sea is blue'} {WORDS[i % 13]},{label}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def corpus(path):
    path.write_text("\n\n".join(" ".join(WORDS[(i + j) % 13] for j in range(30))
                                for i in range(12)), encoding="utf-8")
    return str(path)


def config(tmp_path, tiny, task="classify", **changes):
    tmp_path.mkdir(parents=True, exist_ok=True)
    base = dict(task=task, model=str(tiny("bert" if task == "classify" else "llama")),
                train_file=sentiment_csv(tmp_path / "s.csv") if task == "classify"
                else corpus(tmp_path / "c.txt"),
                output_dir=str(tmp_path / "run"), max_steps=6, batch_size=4,
                logging_steps=1, eval_steps=3, save_steps=3, learning_rate=1e-3, max_length=32)
    base.update(changes)
    return FinetuneConfig(**base)


def test_classification_run_writes_a_complete_run_folder(tmp_path, tiny):
    events = []
    result = run_finetune(config(tmp_path, tiny), JobContext(emit=events.append))
    run = tmp_path / "run"
    assert result.global_step == 6 and not result.stopped
    assert json.loads((run / "run.json").read_text())["task"] == "classify"
    assert (run / "checkpoint-6" / "trainer_state.json").is_file()
    logs = [e for e in events if isinstance(e, TrainLog)]
    assert [e.step for e in logs if e.loss is not None] == [1, 2, 3, 4, 5, 6]
    assert any(e.eval_accuracy is not None for e in logs)
    assert logs[0].learning_rate > logs[-2].learning_rate  # the linear schedule decays
    tokens = [e.tokens for e in logs if e.loss is not None]  # for the throughput chart
    assert all(b > a > 0 for a, b in zip(tokens, tokens[1:], strict=False))
    final = load_model(result.final_model)  # "Use this model": every tab can open it
    assert final.task == "classifier"
    assert final.model.config.id2label == {0: "bad", 1: "good"}
    snap = read_run(run)
    assert snap.source == "metrics.jsonl" and snap.global_step == 6 and snap.max_steps == 6
    events = list(run.rglob("events.out.tfevents.*"))  # TensorBoard, read back alone:
    assert events
    only_tb = tmp_path / "tb-only"
    only_tb.mkdir()
    (only_tb / events[0].name).write_bytes(events[0].read_bytes())
    tb = read_run(only_tb)
    assert tb.source == "tensorboard" and tb.global_step == 6
    assert tb.latest("loss") == pytest.approx(snap.latest("loss"), rel=1e-5)
    timed = [r for r in tb.rows if "loss" in r]  # speed: when each loss was written, tokens
    assert [r["tokens"] for r in timed] == [e.tokens for e in logs if e.loss is not None]
    assert all(b["seconds"] > a["seconds"] for a, b in zip(timed, timed[1:], strict=False))
    assert snap.latest("loss") == pytest.approx([e.loss for e in logs if e.loss][-1])


@pytest.mark.parametrize("labels, new_head", [(("good", "bad", "meh"), True),
                                                (("good", "bad"), False)])
def test_a_trained_classifier_trains_again_on_other_labels(tmp_path, tiny, labels, new_head):
    """A classifier fine-tuned on two labels is fine-tuned again on three: a new head, said
    in the log (transformers refused the mismatched sizes with a RuntimeError); on the same
    labels its head is kept."""
    first = run_finetune(config(tmp_path / "first", tiny, max_steps=2))
    events = []
    cfg = config(tmp_path / "second", tiny, model=first.final_model, max_steps=2,
                 train_file=sentiment_csv(tmp_path / "three.csv", labels=labels))
    result = run_finetune(cfg, JobContext(emit=events.append))
    saved = AutoConfig.from_pretrained(result.final_model)
    assert [saved.id2label[i] for i in range(len(labels))] == sorted(labels)
    notes = [e.message for e in events if isinstance(e, LogLine) and "new head" in e.message]
    assert len(notes) == (1 if new_head else 0)
    if new_head:
        assert "bad, good;" in notes[0] and "bad, good, meh" in notes[0]


def test_lm_run_with_probes(tmp_path, tiny):
    events = []
    cfg = config(tmp_path, tiny, "lm", probe_prompts=["the cat"], probe_every=3)
    result = run_finetune(cfg, JobContext(emit=events.append))
    probes = [e for e in events if isinstance(e, ProbeText)]
    assert [p.step for p in probes] == [3, 6] and probes[0].prompt == "the cat"
    assert load_model(result.final_model).task == "causal-lm"


def test_stop_saves_a_checkpoint_and_resume_continues_the_same_schedule(tmp_path, tiny):
    whole = []
    run_finetune(config(tmp_path / "a", tiny, "lm", output_dir=str(tmp_path / "a" / "run")),
                 JobContext(emit=whole.append))
    token = CancelToken()
    first = []

    def stop_at_3(event):
        first.append(event)
        if isinstance(event, TrainLog) and event.step == 3 and event.loss is not None:
            token.cancel()

    cfg = config(tmp_path / "b", tiny, "lm", output_dir=str(tmp_path / "b" / "run"),
                 save_steps=100)
    stopped = run_finetune(cfg, JobContext(token, stop_at_3))
    assert stopped.stopped and stopped.global_step == 3 and stopped.final_model is None
    assert stopped.checkpoint.endswith("checkpoint-3")
    second = []
    resumed = run_finetune(cfg, JobContext(emit=second.append), resume=True)
    assert resumed.global_step == 6 and resumed.final_model
    lr = {e.step: e.learning_rate for e in whole if isinstance(e, TrainLog) and e.loss}
    loss = {e.step: e.loss for e in whole if isinstance(e, TrainLog) and e.loss}
    for e in second:
        if isinstance(e, TrainLog) and e.loss is not None:
            assert e.learning_rate == pytest.approx(lr[e.step])
            assert e.loss == pytest.approx(loss[e.step], rel=1e-3)
    assert sorted(e.step for e in second if isinstance(e, TrainLog) and e.loss) == [4, 5, 6]
    tokens = {e.step: e.tokens for e in whole if isinstance(e, TrainLog) and e.loss}
    for e in second:  # the token count goes on from the checkpoint, too
        if isinstance(e, TrainLog) and e.loss is not None:
            assert e.tokens == tokens[e.step]


def test_a_run_folder_is_not_overwritten(tmp_path, tiny):
    run_finetune(config(tmp_path, tiny, max_steps=1))
    with pytest.raises(WorkbenchError, match="already holds a run"):
        run_finetune(config(tmp_path, tiny, max_steps=1))


@pytest.mark.parametrize("change, message", [
    (dict(learning_rate=0), "learning rate must be above 0"),
    (dict(batch_size=0), "batch size must be at least 1"),
    (dict(label_column="sentiment"), "no column 'sentiment'"),
])
def test_bad_settings(tmp_path, tiny, change, message):
    with pytest.raises(WorkbenchError, match=message):
        run_finetune(config(tmp_path, tiny, **change))


def test_the_schedules_are_the_trainers_own():
    """A configuration is checked without importing the Trainer: its list of schedules is
    transformers' own, and a name that is not known is refused with transformers' list."""
    from transformers.trainer_utils import SchedulerType

    from workbench.core.training.config import SCHEDULERS

    assert list(SCHEDULERS) == [kind.value for kind in SchedulerType]
    base = dict(task="classify", model="m", train_file="t", output_dir="o")
    FinetuneConfig(**base, lr_scheduler="cosine").validate()
    with pytest.raises(WorkbenchError, match="Unknown learning-rate schedule 'bogus': use one "
                       "of linear, cosine, .*, greedy"):
        FinetuneConfig(**base, lr_scheduler="bogus").validate()


def test_bad_data(tmp_path, tiny):
    one = sentiment_csv(tmp_path / "one.csv", labels=("good",))
    with pytest.raises(WorkbenchError, match="single class"):
        run_finetune(config(tmp_path, tiny, train_file=one))
    val = sentiment_csv(tmp_path / "val.csv", labels=("good", "meh"))
    with pytest.raises(WorkbenchError, match="labels that are not in the training data: meh"):
        run_finetune(config(tmp_path, tiny, validation_file=val))
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"text,label\n\xff\xfe,good\n")
    with pytest.raises(WorkbenchError, match="not UTF-8"):
        run_finetune(config(tmp_path, tiny, train_file=str(binary)))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(WorkbenchError, match="is empty"):
        run_finetune(config(tmp_path, tiny, "lm", train_file=str(empty)))


def test_nan_loss_stops_the_run(tmp_path, tiny):
    with pytest.raises(WorkbenchError, match="NaN or infinite"):
        run_finetune(config(tmp_path, tiny, "lm", learning_rate=1e12, max_steps=6))


def test_monitor_reads_any_trainer_output(tmp_path):
    ckpt = tmp_path / "other" / "checkpoint-40"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({
        "global_step": 40, "max_steps": 100,
        "log_history": [{"step": 20, "loss": 2.5, "learning_rate": 1e-4, "epoch": 0.5},
                        {"step": 40, "loss": 2.1, "learning_rate": 8e-5, "epoch": 1.0},
                        {"step": 40, "eval_loss": 2.3, "epoch": 1.0}]}))
    snap = read_run(tmp_path / "other")
    assert snap.source == "trainer_state.json"
    assert (snap.global_step, snap.max_steps, snap.latest("loss"), snap.latest("eval_loss")) == (
        40, 100, 2.1, 2.3)
    with pytest.raises(WorkbenchError, match="not a training run"):
        read_run(tmp_path)


def test_monitor_reads_token_counts_and_times_where_the_trainer_logged_them(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps({
        "global_step": 20, "max_steps": 100,
        "log_history": [{"step": 10, "loss": 2.5, "num_input_tokens_seen": 5120,
                         "train_runtime": 4.0},
                        {"step": 20, "loss": 2.2, "num_input_tokens_seen": 10240,
                         "train_runtime": 6.0}]}))
    rows = read_run(tmp_path).rows
    assert [(r["tokens"], r["seconds"]) for r in rows] == [(5120, 4.0), (10240, 6.0)]


# --- LoRA (peft) ----------------------------------------------------------------------------
def lora_config(tmp_path, tiny, **changes):
    return config(tmp_path, tiny, "lm", lora=True, lora_r=4, lora_alpha=8, learning_rate=1e-2,
                  **changes)


def trainable_line(events):
    lines = [e.message for e in events if isinstance(e, LogLine) and "trainable" in e.message]
    assert len(lines) == 1, lines
    trainable, total = re.search(r"([\d,]+) trainable parameters of ([\d,]+)", lines[0]).groups()
    return int(trainable.replace(",", "")), int(total.replace(",", ""))


def test_lora_trains_only_the_adapter_and_the_final_model_has_it_merged(tmp_path, tiny):
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    events = []
    result = run_finetune(lora_config(tmp_path, tiny), JobContext(emit=events.append))
    run = tmp_path / "run"
    trainable, total = trainable_line(events)
    assert 0 < trainable < total / 10
    losses = [e.loss for e in events if isinstance(e, TrainLog) and e.loss is not None]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    # Checkpoints hold the adapter only: nothing else was trained.
    checkpoint = run / "checkpoint-6"
    assert not (checkpoint / "model.safetensors").exists()
    with safe_open(str(checkpoint / "adapter_model.safetensors"), "pt") as f:
        sizes = {k: math.prod(f.get_slice(k).get_shape()) for k in f.keys()}
    assert sizes and all("lora_" in k for k in sizes) and sum(sizes.values()) == trainable
    assert result.adapter == str(run / "adapter") and "merged" in result.summary
    # The final folder is a plain model every tab loads, with the adapter merged in ...
    final = load_model(result.final_model)
    assert final.task == "causal-lm" and not (run / "final" / "adapter_config.json").exists()
    base = load_model(str(tiny("llama")))
    tuned, frozen = final.model.state_dict(), base.model.state_dict()
    assert tuned.keys() == frozen.keys()
    changed = {k for k in tuned if not torch.equal(tuned[k], frozen[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed)
    # ... and it is exactly the untouched base plus the saved adapter: the base weights did
    # not move during training.
    rebuilt = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny("llama")), str(run / "adapter")
    ).merge_and_unload().state_dict()
    for key, value in tuned.items():
        assert torch.allclose(rebuilt[key], value, atol=1e-6), key


def test_lora_stop_and_resume_continue_at_the_same_step(tmp_path, tiny):
    whole = []
    run_finetune(lora_config(tmp_path / "a", tiny, output_dir=str(tmp_path / "a" / "run")),
                 JobContext(emit=whole.append))
    token = CancelToken()

    def stop_at_3(event):
        if isinstance(event, TrainLog) and event.step == 3 and event.loss is not None:
            token.cancel()

    cfg = lora_config(tmp_path / "b", tiny, output_dir=str(tmp_path / "b" / "run"),
                      save_steps=100)
    stopped = run_finetune(cfg, JobContext(token, stop_at_3))
    assert stopped.stopped and stopped.checkpoint.endswith("checkpoint-3")
    assert (tmp_path / "b" / "run" / "checkpoint-3" / "adapter_model.safetensors").is_file()
    second = []
    resumed = run_finetune(cfg, JobContext(emit=second.append), resume=True)
    assert resumed.global_step == 6 and resumed.adapter and load_model(resumed.final_model)
    lr = {e.step: e.learning_rate for e in whole if isinstance(e, TrainLog) and e.loss}
    loss = {e.step: e.loss for e in whole if isinstance(e, TrainLog) and e.loss}
    rows = [e for e in second if isinstance(e, TrainLog) and e.loss is not None]
    assert [e.step for e in rows] == [4, 5, 6]
    for e in rows:
        assert e.learning_rate == pytest.approx(lr[e.step])
        assert e.loss == pytest.approx(loss[e.step], rel=1e-3)


@pytest.mark.parametrize("task, change, message", [
    ("classify", {}, "LoRA is for causal-LM fine-tuning \\(task lm\\) only"),
    ("lm", dict(lora_r=0), "LoRA rank r must be at least 1"),
    ("lm", dict(lora_dropout=1.0), r"LoRA dropout must be in \[0, 1\)"),
    ("lm", dict(lora_target_modules="q_proj, nope"),
     "This llama model has no module named nope for LoRA; its linear layers: "
     "down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"),
    ("lm", dict(lora_target_modules="k_proj,o_proj"), None),  # named ones are used
])
def test_lora_settings(tmp_path, tiny, task, change, message):
    if message is None:
        events = []
        run_finetune(config(tmp_path, tiny, task, lora=True, max_steps=1, **change),
                     JobContext(emit=events.append))
        assert any("on k_proj, o_proj:" in e.message for e in events if isinstance(e, LogLine))
        return
    with pytest.raises(WorkbenchError, match=message):
        run_finetune(config(tmp_path, tiny, task, lora=True, **change))


def test_lora_asks_for_target_modules_where_peft_has_no_default(tmp_path, tiny):
    with pytest.raises(WorkbenchError, match="peft has no default LoRA target modules for "
                       "xlnet models: name them \\(its linear layers: .*layer_1"):
        run_finetune(config(tmp_path, tiny, "lm", model=str(tiny("xlnet")), lora=True))


def test_lora_settings_survive_run_json():
    cfg = FinetuneConfig.from_dict({"task": "lm", "model": "m", "train_file": "t",
                                    "output_dir": "o", "lora": True,
                                    "lora_target_modules": "q_proj, v_proj"})
    assert cfg.lora_target_modules == ["q_proj", "v_proj"]
    again = FinetuneConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg


# --- a disk that fills ----------------------------------------------------------------------
def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("error", ["ENOSPC", "torch"])
def test_a_full_disk_while_saving_a_checkpoint_keeps_the_run(tmp_path, tiny, monkeypatch, error):
    from transformers import Trainer

    real_save, real_usage = Trainer._save_optimizer_and_scheduler, shutil.disk_usage
    full = {"now": False}

    def fill_at_6(self, output_dir):  # the weights of checkpoint-6 are written, then no room
        if output_dir.endswith("checkpoint-6"):
            full["now"] = True
            if error == "ENOSPC":
                disk_full()
            # what torch.save says on a full disk (measured on a full tmpfs)
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                               "117824 vs 117712")
        real_save(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", fill_at_6)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(
        free=0 if full["now"] else real_usage(path).free))
    cfg = config(tmp_path, tiny, "lm")
    with pytest.raises(WorkbenchError) as info:
        run_finetune(cfg)
    run = tmp_path / "run"
    assert str(info.value) == (
        "The disk is full while saving checkpoint-6 (checkpoint-6 was incomplete and is "
        f"removed): free space and resume; the last complete checkpoint is checkpoint-3 in {run}.")
    assert not (run / "checkpoint-6").exists() and not (run / "final").exists()
    assert (run / "checkpoint-3" / "trainer_state.json").is_file()
    monkeypatch.undo()
    resumed = run_finetune(cfg, resume=True)
    assert resumed.global_step == 6 and load_model(resumed.final_model).task == "causal-lm"


def test_other_errors_while_saving_are_not_called_a_full_disk(tmp_path, tiny, monkeypatch):
    from transformers import Trainer

    def broken(self, output_dir):
        raise RuntimeError("unexpected pos 1 vs 2")

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", broken)
    with pytest.raises(RuntimeError, match="unexpected pos"):  # plenty of space left
        run_finetune(config(tmp_path, tiny, "lm", max_steps=3))
    assert latest_checkpoint(tmp_path / "run") is None  # the partial one is not complete


def test_a_half_written_checkpoint_is_never_resumed(tmp_path):
    run = tmp_path / "run"
    for step, state in ((3, '{"global_step": 3}'), (6, '{"global_st'), (9, None)):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"x")
        if state is not None:
            (run / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert latest_checkpoint(run) == run / "checkpoint-3"


def test_a_full_disk_while_saving_the_final_model(tmp_path, tiny, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    real = PreTrainedTokenizerBase.save_pretrained

    def fill_in_final(self, folder, *args, **kwargs):  # the weights are written, then no room
        if "final" in Path(folder).name:
            disk_full()
        return real(self, folder, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", fill_in_final)
    cfg = config(tmp_path, tiny, "lm")
    with pytest.raises(WorkbenchError, match="The disk is full while saving the final model: "
                       "free space and resume; the last complete checkpoint is checkpoint-6"):
        run_finetune(cfg)
    run = tmp_path / "run"
    assert not any(p.name.startswith((".final", "final")) for p in run.iterdir())
    monkeypatch.undo()
    resumed = run_finetune(cfg, resume=True)  # nothing left to train: it saves the model
    assert resumed.global_step == 6 and load_model(resumed.final_model).task == "causal-lm"


def test_too_little_free_space_refuses_to_start(tmp_path, tiny, monkeypatch):
    real = shutil.disk_usage
    free = {"bytes": 900}

    def fake(path):
        usage = real(path)
        return usage._replace(free=free["bytes"]) if str(path).startswith(str(tmp_path)) \
            else usage

    monkeypatch.setattr(shutil, "disk_usage", fake)
    with pytest.raises(WorkbenchError, match="Only 900 bytes is free on the disk of .*: the "
                       "trained model alone needs about .* KB. Free space or choose"):
        run_finetune(config(tmp_path / "a", tiny))
    assert not (tmp_path / "a" / "run" / "run.json").exists()  # nothing started
    free["bytes"] = 200 * 1024  # room for the model (~100 KB), not for its checkpoints: on,
    # with a warning
    events = []
    result = run_finetune(config(tmp_path / "b", tiny, max_steps=2, save_steps=1),
                          JobContext(emit=events.append))
    warnings = [e.message for e in events if isinstance(e, LogLine) and e.level == "warning"]
    assert result.global_step == 2 and any("2 checkpoint(s) and final model" in w
                                           for w in warnings)


def _saved_dtypes(folder) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(Path(folder) / "model.safetensors"), "pt") as f:
        return {f.get_slice(name).get_dtype() for name in f.keys()}


@pytest.mark.parametrize("task", ["lm", "classify"])
def test_a_run_trains_float32_weights_from_a_bfloat16_checkpoint(tmp_path, tiny, task):
    """The weights train in float32 (on a GPU under autocast), also from a checkpoint saved
    in bfloat16 (as most on the Hub are), whose updates would otherwise mostly round away."""

    half = tmp_path / "half"
    shutil.copytree(tiny("bert" if task == "classify" else "llama"), half)
    model_class = {"lm": "AutoModelForCausalLM", "classify": "AutoModel"}[task]
    import transformers

    getattr(transformers, model_class).from_pretrained(half, dtype="bfloat16").save_pretrained(
        half)
    assert _saved_dtypes(half) == {"BF16"}
    events = []
    result = run_finetune(config(tmp_path / "run", tiny, task, model=str(half), max_steps=2),
                          JobContext(emit=events.append))
    assert _saved_dtypes(result.final_model) == {"F32"}
    lines = [e.message for e in events if isinstance(e, LogLine)]
    assert "Training on cpu in float32" in lines, lines


def test_a_model_handed_over_in_bfloat16_is_trained_in_float32(tmp_path, tiny):
    """A GPU loads a model in bfloat16 by default: the run loads it again in float32."""
    import torch

    from workbench.core.models.loader import LoadOptions

    cfg = config(tmp_path, tiny, "lm", max_steps=2)
    half = load_model(cfg.model, LoadOptions(dtype="bfloat16"))
    result = run_finetune(cfg, loaded=half)
    assert _saved_dtypes(result.final_model) == {"F32"}
    assert next(half.model.parameters()).dtype == torch.bfloat16  # the caller's model untouched


def test_on_a_gpu_a_run_trains_under_autocast(monkeypatch):
    import torch

    from workbench.core.training.trainer import mixed_precision

    assert mixed_precision("cpu") is None and mixed_precision("mps") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert mixed_precision("cuda") == "bf16" and mixed_precision("cuda:1") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert mixed_precision("cuda") == "fp16"


def test_a_classification_run_holds_one_copy_of_the_weights(tmp_path, tiny, monkeypatch):
    """A run that loads its model itself (as the training process does) lets the loaded
    encoder go before it reads the classifier: never both in memory."""
    import weakref

    from transformers import modeling_utils

    original = modeling_utils.PreTrainedModel.from_pretrained.__func__
    loaded_models, alive_at_classifier = [], []

    def watched(cls, *args, **kwargs):
        if cls.__name__.endswith("ForSequenceClassification"):
            import gc

            gc.collect()
            alive_at_classifier.extend(ref() is not None for ref in loaded_models)
        model = original(cls, *args, **kwargs)
        loaded_models.append(weakref.ref(model))
        return model

    monkeypatch.setattr(modeling_utils.PreTrainedModel, "from_pretrained", classmethod(watched))
    result = run_finetune(config(tmp_path, tiny, "classify", max_steps=2))
    assert result.global_step == 2
    assert alive_at_classifier == [False]  # the encoder read first was gone by then


def test_a_language_model_run_reads_the_weights_once(tmp_path, tiny, monkeypatch):
    """A run that loads its model itself (as the training process does) trains that model:
    the weights are not read a second time (twice the memory for a while)."""
    from transformers import modeling_utils

    original = modeling_utils.PreTrainedModel.from_pretrained.__func__
    reads = []

    def counted(cls, *args, **kwargs):
        reads.append(cls.__name__)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(modeling_utils.PreTrainedModel, "from_pretrained", classmethod(counted))
    result = run_finetune(config(tmp_path, tiny, "lm", max_steps=2))
    assert reads == ["LlamaForCausalLM"]
    assert result.global_step == 2 and _saved_dtypes(result.final_model) == {"F32"}

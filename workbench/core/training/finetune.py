"""Fine-tuning with transformers' ``Trainer``: causal-LM training on a text corpus, or
sequence classification on a labelled file, into a run folder that can be stopped,
resumed and monitored.

A run folder holds ``run.json`` (the configuration), ``metrics.jsonl`` (one line per
logged step, written as training goes, so any process can follow it), the Trainer's
``checkpoint-N`` folders with ``trainer_state.json``, TensorBoard event files when
tensorboard is installed, and ``final/``: the trained model, loadable by every tab.
With LoRA (peft, causal LMs only) the checkpoints hold the adapter, ``adapter/`` keeps the
trained adapter and ``final/`` holds the base model with the adapter merged in.

A checkpoint counts as complete only once its ``trainer_state.json`` (which the Trainer
writes last) is there and reads as JSON, and ``final/`` appears only once it is whole: a
disk that fills during a run never leaves a half-written folder that looks finished.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from workbench.core.common.data_files import read_rows, read_texts
from workbench.core.common.errors import WorkbenchError
from workbench.core.common.files import check_writable, write_atomically
from workbench.core.common.jobs import JobContext
from workbench.core.common.memory import format_bytes
from workbench.core.training.inputs import (
    check_lora_targets,
    check_validation_labels,
    linear_layer_names,
    training_labels,
)
from workbench.core.training.process import (
    ADAPTER_DIR,
    FINAL_DIR,
    LAUNCHED_ENV,
    METRICS_FILE,
    PROBES_FILE,
    RUN_FILE,
    RunStatus,
    checkpoint_complete,
    checkpoints,
    clear_stop_request,
    latest_checkpoint,
    process_alive,
    read_status,
    stop_requested,
    this_process_started,
    write_status,
)

__all__ = ["ADAPTER_DIR", "FINAL_DIR", "METRICS_FILE", "RUN_FILE", "FinetuneConfig",
           "RunResult", "TrainLog", "ProbeText", "checkpoint_complete", "latest_checkpoint",
           "read_rows", "read_texts", "run_finetune"]  # the readers live in data_files


@dataclass
class FinetuneConfig:
    """Everything a run needs; saved as ``run.json`` in the run folder."""

    task: str  # "lm" or "classify"
    model: str
    train_file: str
    output_dir: str
    validation_file: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    validation_split: float = 0.1  # used when there is no validation file
    learning_rate: float = 2e-5
    lr_scheduler: str = "linear"
    warmup_steps: int = 0
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8
    gradient_accumulation: int = 1
    max_length: int = 128
    weight_decay: float = 0.0
    seed: int = 42
    logging_steps: int = 5
    eval_steps: int = 50
    save_steps: int = 50
    probe_prompts: list[str] = field(default_factory=list)
    probe_every: int = 0  # steps; 0: no probes
    lora: bool = False  # train a LoRA adapter (peft) instead of every weight; lm only
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=list)  # empty: peft's default
    # the model's own code and pickle checkpoints, allowed for this run's model only
    trust_remote_code: bool = False
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.lora_target_modules, str):  # "q_proj, v_proj" in a hand-written file
            self.lora_target_modules = split_names(self.lora_target_modules)

    def validate(self) -> None:
        """Raise a WorkbenchError naming the first setting that cannot work."""
        numbers = (self.learning_rate, self.epochs, self.weight_decay, self.validation_split,
                   self.lora_dropout, self.lora_alpha)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in numbers):
            raise WorkbenchError("Learning rate, epochs, weight decay, validation split and "
                                 "LoRA alpha and dropout must be finite numbers.")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (
                self.warmup_steps, self.max_steps, self.batch_size, self.gradient_accumulation,
                self.max_length, self.seed, self.logging_steps, self.eval_steps, self.save_steps,
                self.probe_every, self.lora_r)):
            raise WorkbenchError("Step counts, sizes, intervals and the seed must be whole "
                                 "numbers.")
        if not all(isinstance(v, bool) for v in (self.lora, self.trust_remote_code,
                                                 self.allow_pickle)):
            raise WorkbenchError("LoRA, trust-remote-code and allow-pickle must be true or "
                                 "false.")
        if not all(isinstance(v, str) for v in (self.task, self.model, self.train_file,
                                                 self.output_dir, self.lr_scheduler)):
            raise WorkbenchError("The task, model, files and schedule must be text.")
        if not (self.validation_file is None or isinstance(self.validation_file, str)) or \
                not all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                        for v in (self.probe_prompts, self.lora_target_modules)):
            raise WorkbenchError("The validation file must be text, and the probe prompts and "
                                 "LoRA target modules lists of text.")
        unknown_schedule = _unknown_schedule(self.lr_scheduler)
        checks = [
            (self.task in ("lm", "classify"), f"Unknown task '{self.task}': use lm or classify."),
            (unknown_schedule is None, unknown_schedule or ""),
            (self.learning_rate > 0, "The learning rate must be above 0."),
            (self.warmup_steps >= 0, "The warmup steps cannot be negative."),
            (0 <= self.seed < 2**32, "The seed must be in [0, 2³²)."),
            (self.weight_decay >= 0, "The weight decay cannot be negative."),
            (self.batch_size >= 1, "The batch size must be at least 1."),
            (self.gradient_accumulation >= 1, "Gradient accumulation must be at least 1."),
            (self.max_steps > 0 or self.epochs > 0, "Give a positive number of epochs or steps."),
            (self.max_length >= 8, "The maximum length must be at least 8 tokens."),
            (0 <= self.validation_split < 1, "The validation split must be in [0, 1)."),
            (self.logging_steps >= 1 and self.eval_steps >= 1 and self.save_steps >= 1,
             "Logging, evaluation and save intervals must be at least 1 step."),
        ]
        if self.lora:
            checks += [
                (self.task == "lm", "LoRA is for causal-LM fine-tuning (task lm) only: turn "
                 "LoRA off to fine-tune a classifier."),
                (self.lora_r >= 1, "The LoRA rank r must be at least 1."),
                (self.lora_alpha > 0, "The LoRA alpha must be above 0."),
                (0 <= self.lora_dropout < 1, "The LoRA dropout must be in [0, 1)."),
            ]
        for ok, message in checks:
            if not ok:
                raise WorkbenchError(message)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> FinetuneConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


#: The learning-rate schedules transformers' Trainer knows by name (its ``SchedulerType``),
#: so that checking a configuration imports nothing: importing the Trainer's module takes
#: seconds (it imports peft, and with it most of transformers), which a refused argument on
#: the command line or the window's Start button paid before saying anything. A name not
#: here is looked up in transformers itself (test_finetune checks that both agree).
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
              "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau",
              "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay",
              "greedy")


def _schedulers() -> list[str]:
    """The learning-rate schedules transformers' Trainer knows by name."""
    from transformers.trainer_utils import SchedulerType

    return [kind.value for kind in SchedulerType]


def _unknown_schedule(name: str) -> str | None:
    """What is wrong with the learning-rate schedule ``name``; None when the Trainer knows
    it."""
    if name in SCHEDULERS:
        return None
    known = _schedulers()
    return None if name in known else \
        f"Unknown learning-rate schedule '{name}': use one of {', '.join(known)}."


def split_names(text: str) -> list[str]:
    """``"q_proj, v_proj"`` → ``["q_proj", "v_proj"]`` (a comma list of module names)."""
    return [name.strip() for name in text.split(",") if name.strip()]


# --- data ---------------------------------------------------------------------------------
class _Encoded:
    """A list of feature dicts as a torch-style dataset."""

    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def lm_blocks(tokenizer: Any, texts: list[str], max_length: int) -> list[dict]:
    """The texts tokenised, joined with EOS and cut into blocks of ``max_length`` tokens."""
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        if eos is not None:
            ids.append(eos)
    blocks = [ids[i:i + max_length] for i in range(0, len(ids), max_length)]
    blocks = [b for b in blocks if len(b) >= 2]
    return [{"input_ids": b, "attention_mask": [1] * len(b)} for b in blocks]


@dataclass
class PreparedData:
    train: Any
    validation: Any | None
    labels: list[str] = field(default_factory=list)
    summary: str = ""


@dataclass
class DataRead:
    """A run's data as read from its files and checked, not yet tokenised: the texts of a
    causal-LM run, or the labelled rows and the labels of a classification run."""

    texts: list[str] = field(default_factory=list)
    validation_texts: list[str] = field(default_factory=list)
    rows: list[tuple[str, str | None]] = field(default_factory=list)
    validation_rows: list[tuple[str, str | None]] | None = None  # None: no validation file
    labels: list[str] = field(default_factory=list)


def read_data(config: FinetuneConfig) -> DataRead:
    """Read and check the training (and validation) files of ``config``: what needs no
    tokenizer, so that a run refuses bad data before it loads the model."""
    if config.task == "lm":
        return DataRead(texts=read_texts(config.train_file, config.text_column),
                        validation_texts=read_texts(config.validation_file, config.text_column)
                        if config.validation_file else [])
    rows = read_rows(config.train_file, config.text_column, config.label_column)
    labels = training_labels(rows)
    val_rows = None
    if config.validation_file:
        val_rows = read_rows(config.validation_file, config.text_column, config.label_column)
        check_validation_labels(val_rows, labels)
    return DataRead(rows=rows, validation_rows=val_rows, labels=labels)


def prepare_data(config: FinetuneConfig, tokenizer: Any, read: DataRead | None = None
                 ) -> PreparedData:
    """Read (unless ``read`` holds what :func:`read_data` read), check and tokenise the
    training (and validation) data.

    For classification the rows of a batch are padded: a model without a pad token (GPT-2,
    Llama) pads with its end-of-text token, as transformers' examples do, and the summary
    says so (the model's ``config.pad_token_id`` must then be that token too, see
    :func:`workbench.core.models.loader.set_pad_token`)."""
    import random

    read = read_data(config) if read is None else read
    rng = random.Random(config.seed)
    if config.task == "lm":
        train = lm_blocks(tokenizer, read.texts, config.max_length)
        if not train:
            raise WorkbenchError("The training text is too short to make one block of tokens.")
        if read.validation_texts:
            validation = lm_blocks(tokenizer, read.validation_texts, config.max_length)
        elif config.validation_split > 0 and len(train) >= 4:
            rng.shuffle(train)
            cut = max(1, int(len(train) * config.validation_split))
            validation, train = train[:cut], train[cut:]
        else:
            validation = []
        summary = f"{len(train)} training blocks of up to {config.max_length} tokens" + \
            (f", {len(validation)} validation blocks" if validation else "")
        return PreparedData(_Encoded(train), _Encoded(validation) if validation else None,
                            summary=summary)
    rows, labels, val_rows = list(read.rows), read.labels, read.validation_rows
    if val_rows is None:
        rng.shuffle(rows)
        cut = int(len(rows) * config.validation_split)
        val_rows, rows = rows[:cut], rows[cut:]
    index = {lab: i for i, lab in enumerate(labels)}

    def encode(items: list[tuple[str, str | None]]) -> list[dict]:
        out = []
        for text, lab in items:
            features = tokenizer(text, truncation=True, max_length=config.max_length)
            out.append({**features, "labels": index[lab]})
        return out

    padding = ""
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        from workbench.core.models.loader import set_pad_token

        if tokenizer.pad_token is None and tokenizer.eos_token is None:
            raise WorkbenchError("The model has neither a pad token nor an end-of-text token: "
                                 "rows of different lengths cannot be batched for "
                                 "classification.")
        set_pad_token(tokenizer)
        padding = (f"; rows are padded with the end-of-text token {tokenizer.eos_token!r} "
                   "(the model has no pad token of its own)")
    train, validation = encode(rows), encode(val_rows)
    summary = f"{len(train)} training and {len(validation)} validation examples, labels " + \
        ", ".join(labels) + padding
    return PreparedData(_Encoded(train), _Encoded(validation) if validation else None, labels,
                        summary)


# --- events -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainLog:
    """One logged row: training loss rows and evaluation rows both come as TrainLog."""

    step: int
    max_steps: int
    epoch: float
    loss: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    samples_per_second: float | None = None
    seconds: float = 0.0  # since the start of this session of training
    tokens: int | None = None  # input tokens trained on so far, padding not counted


@dataclass(frozen=True)
class ProbeText:
    step: int
    prompt: str
    text: str


@dataclass
class RunResult:
    output_dir: str
    final_model: str | None
    global_step: int
    stopped: bool
    checkpoint: str | None
    train_loss: float | None
    summary: str = ""
    adapter: str | None = None  # the LoRA adapter folder, when the run trained one


def format_train_log(event: Any) -> str | None:
    """One line of a run's output for a log row or a probe (the CLI and train.log)."""
    if isinstance(event, TrainLog):
        parts = [f"step {event.step}/{event.max_steps}"]
        if event.loss is not None:
            parts.append(f"loss {event.loss:.4f}")
        if event.eval_loss is not None:
            parts.append(f"eval_loss {event.eval_loss:.4f}")
        if event.eval_accuracy is not None:
            parts.append(f"accuracy {event.eval_accuracy:.3f}")
        if event.learning_rate is not None:
            parts.append(f"lr {event.learning_rate:.2e}")
        return "  ".join(parts)
    if isinstance(event, ProbeText):
        return f"  probe @{event.step} {event.prompt!r} -> {event.text!r}"
    return None


# --- the run folder -----------------------------------------------------------------------
def _existing_ancestor(folder: Path) -> Path:
    for parent in (folder, *folder.parents):
        if parent.exists():
            return parent
    return Path(".")


def check_output_dir(config: FinetuneConfig, resume: bool) -> Path:
    """The run folder, checked without writing anything: writable, not a live run, and not
    another run (nor a model) unless resuming. A folder whose earlier attempt ended before
    its first complete checkpoint can be started again."""
    folder = Path(config.output_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise WorkbenchError(f"{folder} is a file, not a folder: choose a folder for the run.")
    status = read_status(folder) if folder.is_dir() else None
    if status is not None and status.state == "running" and \
            process_alive(status.pid, status.started):
        raise WorkbenchError(f"The run in {folder} is running now (process {status.pid}): "
                             "stop it first, or follow it in the Fine-tune tab or with "
                             "'monitor'.")
    if resume:
        if not (folder / RUN_FILE).is_file():
            raise WorkbenchError(f"{folder} holds no run to resume (no {RUN_FILE}).")
        if latest_checkpoint(folder) is None:
            raise WorkbenchError(f"{folder} has no complete checkpoint to resume from.")
    elif folder.is_dir():
        if latest_checkpoint(folder) is not None or (folder / FINAL_DIR).is_dir():
            raise WorkbenchError(f"{folder} already holds a run: resume it (--resume) or "
                                 "choose a new folder.")
        if not (folder / RUN_FILE).is_file() and (
                (folder / "config.json").is_file() or any(folder.glob("*.safetensors"))
                or any(folder.glob("*.bin"))):
            raise WorkbenchError(f"{folder} holds a model, not a run: choose a new folder for "
                                 "the run (it would be mixed with the model's files).")
    parent = _existing_ancestor(folder)
    if not parent.is_dir():
        raise WorkbenchError(f"Cannot write to {folder}: {parent} is not a writable folder.")
    try:  # os.access() says yes to root where every write fails (/sys): tried for real
        check_writable(parent)
    except OSError as exc:
        raise WorkbenchError(f"Cannot write to {folder}: {parent} is not a writable folder "
                             f"({exc.strerror or exc}).") from None
    return folder


def save_config(config: FinetuneConfig, folder: Path) -> Path:
    """Write ``config`` as the ``run.json`` of ``folder``, atomically (a reader sees the old
    file or the new one, never half of one)."""
    return write_atomically(folder / RUN_FILE, config.to_json())


def saved_config(folder: Path) -> FinetuneConfig:
    """The ``run.json`` of ``folder``, checked whole."""
    try:
        data = json.loads((folder / RUN_FILE).read_bytes().decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not an object")
        saved = FinetuneConfig.from_dict(data)
        saved.validate()
    except (OSError, ValueError, TypeError) as exc:
        raise WorkbenchError(f"{folder / RUN_FILE} is damaged ({exc}): the run cannot be "
                             "resumed from it.") from None
    return saved


def _checkpoint_step(path: Path) -> int:
    try:
        state = json.loads((path / "trainer_state.json").read_bytes().decode("utf-8"))
        return int(state.get("global_step", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return int(path.name.split("-")[-1])


def _keep_lines(path: Path, keep) -> None:
    """Rewrite the JSON-lines file ``path`` with only the complete lines ``keep`` accepts
    (atomically: a reader sees the old file or the new one)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short when the process was killed
        if isinstance(row, dict) and keep(row):
            kept.append(line + "\n")
    write_atomically(path, "".join(kept))


def _row_step(row: dict) -> float:
    step = row.get("step")
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else math.inf


def _launch_time() -> float | None:
    try:
        return float(os.environ.get(LAUNCHED_ENV, ""))
    except ValueError:
        return None


def _is_main_process() -> bool:
    """The process that writes the run's logs and status (rank 0 under accelerate)."""
    return os.environ.get("RANK", "0") == "0"


@dataclass
class RunFolder:
    """The run folder as this process writes it: ``run.json``, the logs, ``status.json``."""

    path: Path
    main: bool  # the process that writes the logs and the status (rank 0)
    created: float  # when this process started: with the pid, tells it from a later one
    since: float  # stop requests count from then

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def probes(self) -> Path:
        return self.path / PROBES_FILE

    def start(self, config: FinetuneConfig, done: int, resume: bool) -> None:
        """Create the folder and say the run is running, at step ``done``: a resumed run
        logs again what was logged after its checkpoint; an earlier attempt that ended
        before its first checkpoint leaves no logs behind."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not self.main:
            return
        if resume:
            _keep_lines(self.metrics, lambda row: _row_step(row) <= done)
            _keep_lines(self.probes, lambda row: _row_step(row) <= done)
        else:
            for leftover in (self.metrics, self.probes):
                leftover.unlink(missing_ok=True)
        save_config(config, self.path)
        clear_stop_request(self.path, self.since)
        write_status(self.path, RunStatus("running", os.getpid(), self.created, done))

    def end(self, status: str, step: int, message: str = "", final: str | None = None) -> None:
        """Say how the run ended (``finished``, ``stopped`` or ``failed``) and at which step."""
        if self.main:
            last = latest_checkpoint(self.path)
            write_status(self.path, RunStatus(status, os.getpid(), self.created, step, message,
                                              final, str(last) if last else None))

    def stop_requested(self) -> bool:
        return stop_requested(self.path, self.since)

    @staticmethod
    def append(path: Path, row: dict) -> None:
        """One line of a JSON-lines log, written as training goes (others follow the file)."""
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def _weights_finite(checkpoint: Path) -> bool:
    """Whether every floating-point weight saved in ``checkpoint`` is finite (safetensors
    files; other formats are never unpickled to look)."""
    import torch
    from safetensors import safe_open

    for file in checkpoint.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open has no __iter__)
                tensor = weights.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    return False
    return True


def _set_aside_nonfinite(folder: Path) -> tuple[list[str], Path | None]:
    """Rename the newest checkpoints whose weights are not all finite to
    ``nonfinite-checkpoint-N`` (kept, but never resumed), and return their new names and
    the newest checkpoint left, whose weights are all finite."""
    moved = []
    for _, path in reversed(checkpoints(folder)):
        if not checkpoint_complete(path):
            continue
        if _weights_finite(path):
            return moved, path
        target = path.with_name(f"nonfinite-{path.name}")
        os.replace(path, target)
        moved.append(target.name)
    return moved, None


# --- the run ------------------------------------------------------------------------------
def run_finetune(config: FinetuneConfig, ctx: JobContext | None = None, resume: bool = False,
                 loaded: Any = None) -> RunResult:
    """Train as ``config`` says (or resume the run in its folder) and return the outcome.

    Events: :class:`TrainLog` rows and :class:`ProbeText`. Cancelling (the context's token,
    or a stop file in the run folder, see ``training_process``) stops at the next step
    boundary after writing a checkpoint, so the run can be resumed. On resume the saved run
    decides the data and model, and ``config``'s ``max_steps`` and ``epochs`` are the new
    limits. Everything is checked before anything is written.
    """
    from workbench.core.models.loader import LoadOptions, load_model

    ctx = ctx or JobContext()
    created = this_process_started()  # with the pid, tells this process from a later one
    # Stop requests count from when this run was launched (the window sets it, so a Stop
    # pressed while the process was still starting counts) or else from now.
    since = _launch_time() or time.time()
    config, folder, checkpoint = checked_config(config, resume)
    ctx.progress("Reading the data…", None)
    read = read_data(config)  # bad data is refused before torch and the model are loaded
    ctx.progress("Loading the model…", None)
    import torch

    # The weights train in float32 (on a GPU under bfloat16/float16 autocast: see
    # mixed_precision); a model loaded in half precision would round most of AdamW's small
    # updates away.
    own = (loaded is None or loaded.reference != config.model
           or next(loaded.model.parameters()).dtype != torch.float32)
    if own:  # loaded for this run alone: a language model trains as it is, not a copy
        loaded = load_model(config.model, LoadOptions(
            dtype="float32", trust_remote_code=config.trust_remote_code,
            allow_pickle=config.allow_pickle, training=True), ctx.emit)
    tokenizer = loaded.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    data = prepare_data(config, tokenizer, read)
    ctx.log(data.summary)
    amp = mixed_precision(loaded.device)
    ctx.log(f"Training on {loaded.device} in float32"
            + (f" under {'bfloat16' if amp == 'bf16' else 'float16'} autocast" if amp else ""))
    model = _model_to_train(config, loaded, data, ctx, own)
    check_free_space(_existing_ancestor(folder), model,
                     _checkpoint_count(config, len(data.train)), config.lora, ctx)
    run = RunFolder(folder, _is_main_process(), created, since)
    events = _training_callback(config, run, tokenizer, ctx)
    trainer = _build_trainer(config, folder, model, tokenizer, data, loaded.device, events)
    done, target = _steps(trainer, folder, checkpoint)
    # At its limit without a final model (the disk filled while saving it, or a new limit
    # at the step reached): nothing to train, the final model is saved from the checkpoint.
    finish_only = checkpoint is not None and done == target

    # --- everything is checked: from here on the run folder is written -----------------------
    run.start(config, done, resume)
    torch.manual_seed(config.seed)
    try:
        if finish_only:
            ctx.log(f"The run is at step {done} of {target}: nothing to train; the final "
                    f"model is saved from {checkpoint.name}.")
        training_loss = _train(trainer, folder, checkpoint, done, finish_only)
        step = trainer.state.global_step
        if events.nan_step is not None:
            raise _nonfinite_error(folder, events.nan_step, run.main)
        if events.stopped:  # the callback set should_save with should_training_stop: it exists
            last = latest_checkpoint(folder)
            message = f"Stopped at step {step}; checkpoint {last.name if last else '-'} saved."
            ctx.log(message)
            run.end("stopped", step, message)
            return RunResult(str(folder), None, step, True, str(last) if last else None,
                             training_loss, data.summary)
        ctx.progress("Saving the final model…", None)
        final, adapter = _save_final(trainer, tokenizer, config, folder)
        summary = data.summary
        if adapter is not None:
            summary += (f"; LoRA: the adapter is in {ADAPTER_DIR}/ and merged into the base "
                        f"weights in {FINAL_DIR}/")
            ctx.log(f"LoRA adapter saved in {adapter}; {final} holds the base model with the "
                    "adapter merged in.")
        last = latest_checkpoint(folder)
        run.end("finished", step, f"Finished at step {step}.", str(final))
        return RunResult(str(folder), str(final), step, False, str(last) if last else None,
                         training_loss, summary, str(adapter) if adapter else None)
    except BaseException as exc:
        reason = "Interrupted." if isinstance(exc, KeyboardInterrupt) else \
            str(exc) or type(exc).__name__
        run.end("failed", trainer.state.global_step, reason)
        raise


def checked_config(config: FinetuneConfig, resume: bool
                   ) -> tuple[FinetuneConfig, Path, Path | None]:
    """The configuration a run follows, its folder, and the checkpoint it resumes from,
    checked without writing anything. On resume the saved run decides the data and model,
    and ``config``'s ``max_steps`` and ``epochs`` are the new limits."""
    config.validate()
    folder = check_output_dir(config, resume)
    if not resume:
        return config, folder, None
    checkpoint = latest_checkpoint(folder)
    saved = saved_config(folder)
    saved.max_steps, saved.epochs = config.max_steps, config.epochs
    saved.validate()
    return saved, folder, checkpoint


def _steps(trainer: Any, folder: Path, checkpoint: Path | None) -> tuple[int, int]:
    """The step the run starts from and the step it ends at (as the Trainer computes it from
    the limits and the data); refused when a resumed run has nothing left to train."""
    target = trainer.set_initial_training_values(trainer.args,
                                                 trainer.get_train_dataloader())[-1]
    done = _checkpoint_step(checkpoint) if checkpoint else 0
    if checkpoint and (done > target or done == target and (folder / FINAL_DIR).is_dir()):
        finished = " and finished" if (folder / FINAL_DIR).is_dir() else ""
        raise WorkbenchError(
            f"The run in {folder} already reached step {done}{finished}; with these limits it "
            f"would end at step {target}: nothing to train. Give more steps or epochs to train "
            "further.")
    return done, target


def _train(trainer: Any, folder: Path, checkpoint: Path | None, done: int,
           finish_only: bool) -> float | None:
    """Train from ``checkpoint`` (or from the start), or only load the checkpoint when the
    run is already at its limit; returns the training loss. A full disk becomes one error
    that says what to do, after the checkpoint it cut short is removed."""
    try:
        if finish_only:
            trainer._load_from_checkpoint(str(checkpoint))  # what train() would load
            trainer.state.global_step = done
            return None
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        return output.training_loss
    except Exception as exc:
        if not _is_disk_full(exc, folder):
            raise
        removed = _drop_incomplete_checkpoints(folder)
        what = removed[-1] if removed else f"the run's logs at step {trainer.state.global_step}"
        raise _disk_full_error(folder, what, removed) from exc


def _nonfinite_error(folder: Path, step: int, main: bool) -> WorkbenchError:
    """The error of a run whose loss became NaN or infinite at ``step``; the checkpoints with
    non-finite weights are set aside first (by the main process)."""
    moved, finite = _set_aside_nonfinite(folder) if main else ([], None)
    aside = f" ({', '.join(moved)} had non-finite weights and {'are' if len(moved) > 1 else 'is'} " \
        "kept under that name, never resumed)" if moved else ""
    where = f"resume from {finite.name}, the last checkpoint whose weights are all " \
        f"finite{aside}" if finite else f"no checkpoint has finite weights{aside}: " \
        "start again in a new folder"
    return WorkbenchError(f"The loss became NaN or infinite at step {step}: the run stopped. "
                          f"Lower the learning rate; {where}.")


def _save_final(trainer: Any, tokenizer: Any, config: FinetuneConfig, folder: Path
                ) -> tuple[Path, Path | None]:
    """Save ``final/`` (and, with LoRA, ``adapter/``, the adapter merged into ``final/``),
    each whole or not at all; returns both folders."""
    final = folder / FINAL_DIR
    adapter = folder / ADAPTER_DIR if config.lora else None
    try:
        if not trainer.args.should_save:
            pass  # one process writes (under accelerate launch)
        elif adapter is None:
            _save_whole(final, lambda out: (trainer.save_model(out),
                                            tokenizer.save_pretrained(out)))
        else:
            peft_model = trainer.model
            _save_whole(adapter, peft_model.save_pretrained)
            merged = peft_model.merge_and_unload()  # plain weights: every tab loads them
            _save_whole(final, lambda out: (merged.save_pretrained(out),
                                            tokenizer.save_pretrained(out)))
    except Exception as exc:
        if not _is_disk_full(exc, folder):
            raise
        raise _disk_full_error(folder, "the final model", []) from exc
    return final, adapter


# --- the trainer ----------------------------------------------------------------------------
class TrainingEvents:
    """What a run does when the Trainer logs a row or ends a step: rows go to the job and to
    ``metrics.jsonl``, probes to ``probes.jsonl``; Stop (the job's cancel token or a stop
    request in the run folder) saves a checkpoint and stops; a NaN or infinite loss stops.

    A transformers ``TrainerCallback`` once :func:`_training_callback` mixes it in
    (transformers is imported only when a run starts)."""

    def __init__(self, config: FinetuneConfig, run: RunFolder, tokenizer: Any,
                 ctx: JobContext) -> None:
        self.config, self.run, self.tokenizer, self.ctx = config, run, tokenizer, ctx
        self.started = time.perf_counter()
        self.nan_step: int | None = None  # the step whose loss was NaN or infinite
        self.stopped = False  # Stop was seen: a checkpoint is saved and training ends

    def stop_wanted(self) -> bool:
        return self.ctx.cancel.cancelled or self.run.stop_requested()

    def on_log(self, args, st, control, logs=None, **kwargs):
        logs = logs or {}
        row = TrainLog(
            step=st.global_step, max_steps=st.max_steps, epoch=float(st.epoch or 0),
            loss=logs.get("loss"), eval_loss=logs.get("eval_loss"),
            eval_accuracy=logs.get("eval_accuracy"), learning_rate=logs.get("learning_rate"),
            grad_norm=logs.get("grad_norm"),
            samples_per_second=logs.get("train_samples_per_second"),
            seconds=time.perf_counter() - self.started,
            tokens=logs.get("num_input_tokens_seen"))
        if row.loss is None and row.eval_loss is None:
            return
        if st.is_world_process_zero:
            # without the fields this row lacks: a run of 400,000 steps reads faster
            self.run.append(self.run.metrics, {k: v for k, v in asdict(row).items()
                                               if v is not None})
            self.ctx.emit(row)
        self.on_step_end(args, st, control, probe=False)  # the log comes after it
        for value in (row.loss, row.eval_loss):
            if value is not None and not math.isfinite(value):
                self.nan_step = st.global_step
                control.should_training_stop = True

    def on_step_end(self, args, st, control, probe=True, **kwargs):
        config = self.config
        self.ctx.progress(f"Step {st.global_step} of {st.max_steps}",
                          st.global_step / max(st.max_steps, 1))
        if not self.stopped and _agree(self.stop_wanted(), args.device):
            self.stopped = True
            control.should_save = True  # Stop keeps everything: a checkpoint first
            control.should_training_stop = True
        if (probe and config.task == "lm" and config.probe_every and config.probe_prompts
                and st.global_step % config.probe_every == 0 and st.is_world_process_zero):
            for prompt, text in _probe(kwargs["model"], self.tokenizer, config.probe_prompts):
                probe_text = ProbeText(st.global_step, prompt, text)
                self.run.append(self.run.probes, asdict(probe_text))
                self.ctx.emit(probe_text)


def _training_callback(config: FinetuneConfig, run: RunFolder, tokenizer: Any,
                       ctx: JobContext) -> TrainingEvents:
    """:class:`TrainingEvents` as a transformers ``TrainerCallback``."""
    from transformers import TrainerCallback

    callback = type("TrainingCallback", (TrainingEvents, TrainerCallback), {})
    return callback(config, run, tokenizer, ctx)


def mixed_precision(device: str) -> str | None:
    """The autocast a run on ``device`` trains under: ``bf16`` on a GPU that has it, else
    ``fp16`` (with loss scaling) on CUDA; none on the CPU or Apple MPS (float32)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _build_trainer(config: FinetuneConfig, folder: Path, model: Any, tokenizer: Any,
                   data: PreparedData, device: str, callback: Any) -> Any:
    """transformers' Trainer for the run: its arguments from ``config``, the collator of the
    task, ``callback`` instead of its own progress printing; mixed precision on a GPU."""
    from transformers import (
        DataCollatorForLanguageModeling,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    amp = mixed_precision(device)
    args = TrainingArguments(
        output_dir=str(folder), learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler, warmup_steps=config.warmup_steps,
        num_train_epochs=config.epochs, max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        weight_decay=config.weight_decay, seed=config.seed, logging_steps=config.logging_steps,
        eval_strategy="steps" if data.validation is not None else "no",
        eval_steps=config.eval_steps, save_strategy="steps", save_steps=config.save_steps,
        report_to=["tensorboard"] if _has_tensorboard() else [], disable_tqdm=True,
        logging_nan_inf_filter=False, use_cpu=device == "cpu",
        bf16=amp == "bf16", fp16=amp == "fp16",
        dataloader_num_workers=0,
        # Under accelerate launch with N processes, True multiplies each process's loss by N
        # (for token-exact gradients) and the logged losses came out N times too high;
        # DDP's mean of the per-process means keeps the logged loss the run's real loss.
        average_tokens_across_devices=False,
        include_num_input_tokens_seen="non_padding")  # for the throughput chart
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False) if config.task == "lm" \
        else DataCollatorWithPadding(tokenizer)
    trainer = Trainer(model=model, args=args, train_dataset=data.train,
                      eval_dataset=data.validation, data_collator=collator,
                      compute_metrics=_accuracy if config.task == "classify" else None,
                      callbacks=[callback])
    for noisy in (PrinterCallback, ProgressCallback):  # the app reports progress itself
        trainer.remove_callback(noisy)
    return trainer


def _agree(flag: bool, device: Any) -> bool:
    """``flag`` made the same in every process of a distributed run (any one wanting to
    stop stops them all at the same step, or they would wait for each other forever)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _accuracy(prediction) -> dict:
    import numpy as np

    logits, labels = prediction
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def _has_tensorboard() -> bool:
    from importlib.util import find_spec

    return find_spec("tensorboard") is not None


def _probe(model: Any, tokenizer: Any, prompts: list[str], tokens: int = 20):
    import torch

    was_training = model.training
    model.eval()
    try:
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            yield prompt, tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    finally:
        if was_training:
            model.train()


# --- the model ------------------------------------------------------------------------------
def _model_to_train(config: FinetuneConfig, loaded: Any, data: PreparedData,
                    ctx: JobContext, own: bool = False) -> Any:
    """The model to train, ready: the classification head sized to the labels, a pad token,
    and the LoRA adapter when ``config`` asks for one. A fresh copy of the loaded model,
    unless the run ``own``s it (loaded for it alone) and it is the language model to train:
    then the weights are not read twice (twice the memory for a while)."""
    from workbench.core.models.loader import load_report_to_log, set_pad_token

    tokenizer = loaded.tokenizer
    with load_report_to_log(ctx):  # transformers' LOAD REPORT table to the log, one note
        model = _model_for(config, loaded, data.labels, ctx, own)
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and 0 < positions < config.max_length:
        raise WorkbenchError(f"The maximum length {config.max_length} is beyond what "
                             f"{loaded.name} can take ({positions} positions): use at most "
                             f"{positions}.")
    if config.task == "classify":
        note = set_pad_token(tokenizer, model)  # end-of-text as pad, as transformers' examples
        if note:
            ctx.log(note)
    if config.lora:
        import torch

        torch.manual_seed(config.seed)  # the adapter's initial weights follow the run's seed
        model, note = _with_lora(model, config)
        ctx.log(note)
    return model


def _model_for(config: FinetuneConfig, loaded: Any, labels: list[str],
               ctx: JobContext | None = None, own: bool = False):
    """The model to train: a fresh copy (the loaded one stays as it is), or for a language
    model the run ``own``s, that one. A classifier is read from the folder with its head
    (one trained on other labels gets a new head for these, and the log says so); a model
    the run ``own``s is released first."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from workbench.core.models.catalog import CAUSAL_LM

    # float32 whatever the checkpoint's dtype (transformers loads a bfloat16 checkpoint in
    # bfloat16 unless told): the weights train in float32, under autocast on a GPU
    if config.task == "lm":
        loaded.require(CAUSAL_LM, "language-model fine-tuning")
        if own:  # float32 already (LoadOptions), as saved (training=True)
            return loaded.model
        return AutoModelForCausalLM.from_pretrained(
            loaded.folder, local_files_only=True, dtype=torch.float32,
            trust_remote_code=config.trust_remote_code)
    earlier = _head_labels(loaded.model.config)
    if earlier is not None and earlier != labels and ctx is not None:
        ctx.log(f"{loaded.name}'s classification head was trained for the labels "
                f"{', '.join(earlier)}; a new head for {', '.join(labels)} is initialised "
                "(the rest of the model is kept).")
    if own:  # loaded for this run alone: its weights go before the classifier's are read
        import gc

        loaded.model = None  # (at most one copy of the weights in memory, not two)
        gc.collect()
    return AutoModelForSequenceClassification.from_pretrained(
        loaded.folder, local_files_only=True, trust_remote_code=config.trust_remote_code,
        dtype=torch.float32, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)},
        # a head of another size is made anew instead of refused
        ignore_mismatched_sizes=earlier is not None and len(earlier) != len(labels))


def _head_labels(model_config: Any) -> list[str] | None:
    """The labels a saved classification head was trained for, by id; None for a model
    without one (an encoder, a language model) or with transformers' placeholder names."""
    architectures = getattr(model_config, "architectures", None) or []
    names = getattr(model_config, "id2label", None) or {}
    if not any(a.endswith("ForSequenceClassification") for a in architectures) or not names:
        return None
    labels = [str(names[i]) for i in sorted(names, key=int)]
    return None if labels == [f"LABEL_{i}" for i in range(len(labels))] else labels


def _with_lora(model: Any, config: FinetuneConfig) -> tuple[Any, str]:
    """``model`` wrapped by peft so that only a LoRA adapter trains, and a line saying how
    many parameters that is."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=config.lora_r,
                      lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=config.lora_target_modules or None)
    check_lora_targets(model, config.lora_target_modules)
    kind = getattr(model.config, "model_type", "this")
    layers = ", ".join(linear_layer_names(model)) or "none found"
    try:
        wrapped = get_peft_model(model, lora)
    except ValueError as exc:
        if "target_modules" in str(exc):
            raise WorkbenchError(f"peft has no default LoRA target modules for {kind} models: "
                                 f"name them (its linear layers: {layers}).") from None
        raise WorkbenchError(f"peft cannot add LoRA to this {kind} model: {exc}") from None
    trainable, total = wrapped.get_nb_trainable_parameters()
    targets = wrapped.peft_config["default"].target_modules
    targets = sorted(targets) if isinstance(targets, (set, list, tuple)) else [str(targets)]
    return wrapped, (f"LoRA (r={config.lora_r}, alpha={config.lora_alpha}, dropout="
                     f"{config.lora_dropout}) on {', '.join(targets)}: {trainable:,} trainable "
                     f"parameters of {total:,} ({100 * trainable / max(total, 1):.2f}%); the "
                     "base weights stay frozen.")


# --- disk space ---------------------------------------------------------------------------
def _checkpoint_count(config: FinetuneConfig, train_items: int) -> int:
    """How many checkpoints the run will write (the Trainer also saves at the last step)."""
    if config.max_steps > 0:
        steps = config.max_steps
    else:
        per_epoch = math.ceil(train_items / config.batch_size / config.gradient_accumulation)
        steps = math.ceil(per_epoch * config.epochs)
    return math.ceil(steps / config.save_steps)


def check_free_space(folder: Path, model: Any, checkpoints: int, lora: bool,
                     ctx: JobContext) -> None:
    """Refuse to start when the disk of ``folder`` cannot even hold the trained model;
    warn when it cannot hold every checkpoint and the final model (the run will stop
    with a clear message when the disk fills, and can be resumed)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters()
                    if p.requires_grad)
    # A checkpoint: the weights that train (all of them, or the adapter) and AdamW's two
    # moments of each; the final model: every weight.
    checkpoint = (trainable if lora else weights) + 2 * trainable
    free = shutil.disk_usage(folder).free
    if free < weights:
        raise WorkbenchError(f"Only {format_bytes(free)} is free on the disk of {folder}: the trained "
                             f"model alone needs about {format_bytes(weights)}. Free space or choose "
                             "an output folder on another disk.")
    whole = weights + checkpoints * checkpoint
    if free < whole:
        ctx.log(f"Only {format_bytes(free)} is free on the disk of {folder}; this run's {checkpoints} "
                f"checkpoint(s) and final model need about {format_bytes(whole)}. It will stop with "
                "a message if the disk fills: free space then and resume.", "warning")


def _is_disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc`` (or an exception behind it) comes from a full disk (or quota)."""
    seen = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left" in str(error) or "Disk quota exceeded" in str(error):
            return True  # safetensors says so in its own exception type
        error = error.__cause__ or error.__context__
    # torch.save on a full disk only says "unexpected pos …" (a RuntimeError): ask the disk.
    if isinstance(exc, (OSError, RuntimeError)):
        try:
            return shutil.disk_usage(folder).free < 8 * 2**20
        except OSError:
            return False
    return False


def _drop_incomplete_checkpoints(folder: Path) -> list[str]:
    """Remove checkpoint folders newer than the last complete one that were cut short
    (they could never be resumed, and they hold the space that is missing)."""
    last = latest_checkpoint(folder)
    newest = int(last.name.split("-")[-1]) if last else -1
    removed = []
    for step, path in checkpoints(folder):
        if step > newest and not checkpoint_complete(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def _disk_full_error(folder: Path, what: str, removed: list[str]) -> WorkbenchError:
    note = f" ({', '.join(removed)} was incomplete and is removed)" if removed else ""
    last = latest_checkpoint(folder)
    if last is None:
        return WorkbenchError(f"The disk is full while saving {what}{note}: no checkpoint was "
                              f"complete yet, so free space and start the run again in a new "
                              f"folder.")
    return WorkbenchError(f"The disk is full while saving {what}{note}: free space and resume; "
                          f"the last complete checkpoint is {last.name} in {folder}.")


def _save_whole(target: Path, write) -> None:
    """``write(folder)`` into a scratch folder, renamed to ``target`` once it is all there:
    a save cut short leaves no ``target`` that looks finished."""
    scratch = target.with_name(f".{target.name}.incomplete")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        write(str(scratch))
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if target.exists():  # a resumed run that goes further replaces its older final model
        shutil.rmtree(target)
    os.replace(scratch, target)

"""A fine-tuning run's configuration (``run.json``) and the checks of its settings."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.settings import check_fields, setting

_STEPS = 10_000_000  # optimizer steps: far more than any run here takes
_COUNT = 1_000_000  # intervals, warmup, lengths: far past any use, a finite form's range


@dataclass
class FinetuneConfig:
    """Everything a run needs; saved as ``run.json`` in the run folder.

    Each number, true/false and choice setting carries its one description (label, range,
    unit, help: :mod:`workbench.core.common.settings`), from which the checks, the
    ``finetune`` command's options and the Fine-tune form's spin boxes are made."""

    task: str = setting(MISSING, "The task", choices=(
        ("lm", "causal language modelling"), ("classify", "sequence classification")),
        help="lm: predict each next token; classify: a label for each text")
    model: str
    train_file: str
    output_dir: str
    validation_file: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    validation_split: float = setting(
        0.1, "The validation split", low=0, high=1, high_open=True, style="interval",
        help="the share of the training file held out when there is no validation file")
    learning_rate: float = setting(
        2e-5, "The learning rate", low=0, high=1e12, low_open=True, decimals=7, step=1e-5,
        help="the optimizer's learning rate after warmup (a huge one makes the loss NaN: "
             "the run stops and says so)")
    lr_scheduler: str = setting("linear", "The learning-rate schedule",
                                help="one of transformers' Trainer schedules (SCHEDULERS)")
    warmup_steps: int = setting(0, "The warmup steps", low=0, high=_COUNT, unit="steps",
                                help="steps of linear warmup to the learning rate")
    epochs: float = setting(3.0, "The number of epochs", low=0, high=10_000, decimals=2,
                            step=1, help="passes over the training data")
    max_steps: int = setting(
        -1, "Max steps", low=-1, high=_STEPS, off="by epochs", unit="steps",
        help="stop after this many optimizer steps (above 0: overrides the epochs)")
    batch_size: int = setting(8, "The batch size", low=1, high=65_536, unit="examples",
                              help="examples per device and step")
    gradient_accumulation: int = setting(1, "Gradient accumulation", low=1, high=65_536,
                                         unit="batches",
                                         help="batches summed into one optimizer step")
    max_length: int = setting(128, "The maximum length in tokens", low=8, high=_COUNT,
                              unit="tokens", help="longer texts are cut to this many tokens")
    weight_decay: float = setting(0.0, "The weight decay", low=0, high=10, decimals=4,
                                  step=0.01, help="AdamW's decoupled weight decay")
    seed: int = setting(42, "The seed", low=0, high=2**32 - 1, style="between",
                        note="2**32 - 1", help="the random seed of the run")
    logging_steps: int = setting(5, "The logging interval", low=1, high=_COUNT,
                                 unit="steps", help="log the loss every this many steps")
    eval_steps: int = setting(50, "The evaluation interval", low=1, high=_COUNT,
                              unit="steps", help="evaluate every this many steps")
    save_steps: int = setting(50, "The save interval", low=1, high=_COUNT, unit="steps",
                              help="save a checkpoint every this many steps")
    probe_prompts: list[str] = field(default_factory=list)
    probe_every: int = setting(0, "The probe interval", low=0, high=_COUNT, off="off",
                               unit="steps",
                               help="generate from the probe prompts every this many steps "
                                    "(lm)")
    lora: bool = setting(False, "LoRA",
                         help="train a LoRA adapter (peft) instead of every weight (lm only); "
                              "the final model has it merged in, the run's adapter/ keeps it")
    lora_r: int = setting(8, "The LoRA rank r", low=1, high=65_536, help="LoRA rank")
    lora_alpha: int = setting(16, "The LoRA alpha", low=0, high=_COUNT, low_open=True,
                              help="LoRA scaling alpha")
    lora_dropout: float = setting(0.05, "The LoRA dropout", low=0, high=1, high_open=True,
                                  style="interval", help="dropout on the LoRA layers' input")
    lora_target_modules: list[str] = field(default_factory=list)  # empty: peft's default
    # the model's own code and pickle checkpoints, allowed for this run's model only
    trust_remote_code: bool = setting(
        False, "Trust remote code", help="allow Python code shipped with this model to run "
        "(only if you trust its author); kept in the run's run.json")
    allow_pickle: bool = setting(False, "Allow pickle",
                                 help="allow pickle checkpoints (.bin/.pt), which can run code")

    def __post_init__(self) -> None:
        if isinstance(self.lora_target_modules, str):  # "q_proj, v_proj" in a hand-written file
            self.lora_target_modules = split_names(self.lora_target_modules)

    def validate(self) -> None:
        """Raise a WorkbenchError naming the first setting that cannot work: each described
        value must have its type and lie in its range (one description of each, which the
        window and the command line share), then the settings must agree."""
        check_fields(self)
        if not all(isinstance(v, str) for v in (self.model, self.train_file, self.output_dir)):
            raise WorkbenchError("The model and the files must be text.")
        if not (self.validation_file is None or isinstance(self.validation_file, str)) or \
                not all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                        for v in (self.probe_prompts, self.lora_target_modules)):
            raise WorkbenchError("The validation file must be text, and the probe prompts and "
                                 "LoRA target modules lists of text.")
        unknown_schedule = _unknown_schedule(self.lr_scheduler)
        checks = [
            (self.task in ("lm", "classify"), f"Unknown task '{self.task}': use lm or classify."),
            (unknown_schedule is None, unknown_schedule or ""),
            (self.max_steps > 0 or self.epochs > 0, "Give a positive number of epochs or steps."),
            (not self.lora or self.task == "lm", "LoRA is for causal-LM fine-tuning (task lm) "
             "only: turn LoRA off to fine-tune a classifier."),
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

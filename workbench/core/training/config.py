"""A fine-tuning run's configuration (``run.json``) and the checks of its settings."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from workbench.core.common.errors import WorkbenchError


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

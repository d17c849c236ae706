"""Loading a model and its tokenizer from any source, safely.

Safety rules: ``trust_remote_code`` stays off unless the caller allows it for this model,
and pickle checkpoints (``.bin``, ``.pt``) are refused unless explicitly allowed;
safetensors are always preferred.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from workbench.core import catalog
from workbench.core.catalog import CAUSAL_LM, CLASSIFIER, ENCODER, MASKED_LM, SEQ2SEQ, ModelSource
from workbench.core.errors import NeedsPickle, NeedsRemoteCode, WorkbenchError
from workbench.core.jobs import JobContext, Progress, run_job

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class LoadOptions:
    """How to load: device (``auto`` = CUDA, MPS, CPU), dtype, and the safety switches."""

    device: str = "auto"
    dtype: str = "auto"
    attentions: bool = False  # load with eager attention so attention weights are returned
    trust_remote_code: bool = False
    allow_pickle: bool = False
    allow_network: bool = True


@dataclass
class LoadedModel:
    """A model ready to run, with everything the UI and CLI say about it."""

    reference: str
    name: str
    source: ModelSource
    folder: Path
    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    task: str
    device: str
    dtype: str
    options: LoadOptions
    load_seconds: float
    converted_now: bool = False
    config: dict = field(default_factory=dict, repr=False)

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def layers(self) -> int | None:
        cfg = self.model.config
        return getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)

    @property
    def heads(self) -> int | None:
        cfg = self.model.config
        return getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)

    def describe(self) -> str:
        return f"{self.name} · {self.task} · {self.device} · {self.dtype}"

    def ensure_attentions(self) -> None:
        """Switch to eager attention (sdpa returns no attention weights)."""
        if self.model.config._attn_implementation != "eager":
            self.model.set_attn_implementation("eager")
            self.options = replace(self.options, attentions=True)


def task_of(config: Any) -> str:
    """What kind of model a config describes, from its architectures."""
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return CLASSIFIER
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return CAUSAL_LM
    if getattr(config, "is_encoder_decoder", False):
        return SEQ2SEQ
    if any(a.endswith("ForMaskedLM") for a in archs):
        return MASKED_LM
    if not archs:
        from transformers.models.auto import modeling_auto as auto

        # Encoders such as BERT also have a causal head class; only pure decoders count.
        if (config.model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                and config.model_type not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES):
            return CAUSAL_LM
    return ENCODER


def _model_class(task: str):
    import transformers

    return {
        CAUSAL_LM: transformers.AutoModelForCausalLM,
        CLASSIFIER: transformers.AutoModelForSequenceClassification,
        MASKED_LM: transformers.AutoModelForMaskedLM,
        SEQ2SEQ: transformers.AutoModelForSeq2SeqLM,
        ENCODER: transformers.AutoModel,
    }[task]


def check_folder(folder: Path, options: LoadOptions) -> dict:
    """Refuse what is unsafe or unusable before transformers touches it; return config.json."""
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkbenchError(f"{folder} is not a model folder: it has no config.json.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WorkbenchError(f"{folder}/config.json is not valid JSON ({exc}).") from None
    if not isinstance(raw, dict):
        raise WorkbenchError(f"{folder}/config.json does not describe a model.")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = raw.get("model_type")
    native = model_type in CONFIG_MAPPING_NAMES
    if not native and "auto_map" in raw and not options.trust_remote_code:
        raise NeedsRemoteCode(
            f"This model ({model_type or 'custom'}) needs remote code: Python files shipped "
            "with the model would run on this machine. Allow remote code for this model "
            "only if you trust its author.")
    if not native and "auto_map" not in raw:
        raise WorkbenchError(f"Unsupported architecture '{model_type}': transformers "
                             "does not know this model type.")
    files = [p for p in folder.iterdir() if p.is_file()]
    has_safetensors = any(p.suffix == ".safetensors" for p in files)
    pickles = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES
                     and not p.name.startswith("training_args"))
    if not has_safetensors:
        if pickles and not options.allow_pickle:
            raise NeedsPickle(
                f"{folder.name} has only pickle weights ({pickles[0]}), which can run code "
                "when loaded. Allow pickle files for this model to load it anyway.")
        if not pickles:
            raise WorkbenchError(f"{folder} has no model weights (no .safetensors file).")
    return raw


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model_job(reference: str, options: LoadOptions | None = None):
    """A job that loads ``reference`` (see :func:`catalog.resolve`) into a LoadedModel."""
    options = options or LoadOptions()

    def job(ctx: JobContext) -> Generator[Any, None, LoadedModel]:
        from workbench.core.gguf_convert import cached_conversion, convert_gguf

        start = time.perf_counter()
        yield Progress(f"Finding {reference}…", 0.0)
        source = catalog.resolve(reference, ctx, options.allow_network, options.allow_pickle)
        yield Progress(f"Found {reference} in {source.origin}", 0.1)
        converted_now = False
        folder = source.path
        if source.is_gguf:
            converted_now = cached_conversion(source.path) is None
            folder = convert_gguf(source.path, ctx)
        yield Progress("Checking the model files…", 0.5)
        raw_config = check_folder(folder, options)

        import transformers

        from workbench.core.device import pick_device, pick_dtype

        transformers.logging.disable_progress_bar()  # the app reports progress itself
        device = pick_device(options.device)
        dtype = pick_dtype(options.dtype, device)
        try:
            config = transformers.AutoConfig.from_pretrained(
                folder, trust_remote_code=options.trust_remote_code, local_files_only=True)
        except Exception as exc:
            raise WorkbenchError(f"Unsupported model configuration in {folder.name}: "
                                 f"{_first_line(exc)}") from exc
        task = task_of(config)
        yield Progress("Loading the tokenizer…", 0.6)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                folder, trust_remote_code=options.trust_remote_code, local_files_only=True)
        except Exception as exc:
            raise WorkbenchError(f"Cannot load the tokenizer of {folder.name}: "
                                 f"{_first_line(exc)}") from exc
        yield Progress(f"Loading weights ({task}) on {device}…", 0.7)
        kwargs: dict[str, Any] = dict(dtype=dtype, local_files_only=True,
                                      trust_remote_code=options.trust_remote_code)
        if options.attentions:
            kwargs["attn_implementation"] = "eager"
        if not options.allow_pickle:
            kwargs["use_safetensors"] = True
        try:
            model = _model_class(task).from_pretrained(folder, **kwargs)
        except Exception as exc:
            raise WorkbenchError(f"Cannot load the weights of {folder.name}: "
                                 f"{_first_line(exc)}") from exc
        model.to(device)
        model.eval()
        import torch

        from workbench.core.few_rows import few_rows_helps, use_few_rows_linears

        if device == "cpu" and dtype == torch.float32 and few_rows_helps():
            use_few_rows_linears(model)  # batched decoding (compare) about 1.8x faster
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        entry = catalog.find_builtin(reference)
        name = entry.name if entry else (Path(reference).name if source.kind != "hf-cache"
                                         else reference)
        if (Path(reference).parent / "run.json").is_file():  # a fine-tuning run's model
            name = f"{Path(reference).parent.name}/{Path(reference).name}"
        seconds = time.perf_counter() - start
        yield Progress(f"Loaded {name} in {seconds:.1f} s", 1.0)
        return LoadedModel(
            reference=reference, name=name, source=source, folder=folder, model=model,
            tokenizer=tokenizer, task=task, device=device,
            dtype=str(dtype).removeprefix("torch."), options=options, load_seconds=seconds,
            converted_now=converted_now, config=raw_config)

    return job


def load_model(reference: str, options: LoadOptions | None = None, on_event=None) -> LoadedModel:
    """Load directly on this thread (CLI, tests)."""
    return run_job(load_model_job(reference, options), on_event)

"""Loading a model and its tokenizer from any source, safely.

Safety rules: ``trust_remote_code`` stays off unless the caller allows it for this model,
and pickle checkpoints (``.bin``, ``.pt``) are refused unless explicitly allowed;
safetensors are always preferred.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from workbench.core.common.errors import NeedsPickle, NeedsRemoteCode, WorkbenchError
from workbench.core.common.jobs import JobContext, Progress, run_job
from workbench.core.models import catalog
from workbench.core.models.catalog import (
    CAUSAL_LM,
    CLASSIFIER,
    ENCODER,
    MASKED_LM,
    SEQ2SEQ,
    ModelSource,
)
from workbench.core.models.load_report import load_report_to_log

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
WEIGHTS_CHOICES = ("auto", "quantized", "float32")  # how a GGUF's weights are held

# For LoadedModel.require: what a model of another kind lacks, and what the job needs.
_REQUIRED = {
    CAUSAL_LM: (" without a causal language-modelling head",
                "a causal language model (a decoder such as SmolLM2-135M-Instruct)"),
    CLASSIFIER: (", not a classifier", "a model fine-tuned for classification (Fine-tune tab, "
                 "task classify)"),
}


@dataclass(frozen=True)
class LoadOptions:
    """How to load: device (``auto`` = CUDA, MPS, CPU), dtype, and the safety switches."""

    device: str = "auto"
    dtype: str = "auto"
    attentions: bool = False  # load with eager attention so attention weights are returned
    trust_remote_code: bool = False
    allow_pickle: bool = False
    allow_network: bool = True
    training: bool = False  # for a fine-tuning run: the model as saved, no decoding helpers
    weights: str = "auto"  # a GGUF's weights: auto, quantized or float32 (see gguf_choice)


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
    decode: str = "auto"  # the decoding path asked for (workbench.core.models.decoding)
    storage: str = ""  # a GGUF loaded quantized: "Q4_K → int4 g32 · Q6_K → int8 rows"
    _decoder: tuple[str, Any] | None = field(default=None, repr=False, compare=False)
    # (model copy, rows, cache length) the compiled path has compiled this session
    compiled_shapes: set = field(default_factory=set, repr=False, compare=False)

    def decoding(self, ctx: JobContext | None = None) -> Any:
        """The :class:`~workbench.core.models.decoding.DecodePath` generation runs on: the path
        :attr:`decode` asks for where it can run, its model copy built on first use (about
        half a second for SmolLM2; one copy is kept, dropped when another path is asked
        for)."""
        from workbench.core.models import compiling, decoding

        requested = decoding.check_decode(self.decode)
        device = next(self.model.parameters()).device.type
        if requested == "compiled" and ctx is not None and not compiling.compile_probed(device):
            ctx.progress("Checking that torch.compile works here (once a session)…", None)
        path, base, note = decoding.plan(requested, self.model,
                                         None if self._decoder is None else self._decoder[0],
                                         probe=True)
        name = base or path  # the model that runs: compiled compiles auto's
        if name in ("exact", "quantized"):  # the loaded model itself
            self._decoder = None  # a copy no longer used gives its memory back
            model = self.model
        else:
            if self._decoder is None or self._decoder[0] != name:
                self._decoder = None  # the old copy goes before the new one is built
                if ctx is not None:
                    ctx.progress(f"Preparing the {decoding.LABELS[name]} copy for decoding…",
                                 None)
                self._decoder = (name, decoding.build(name, self.model))
                self.compiled_shapes = {shape for shape in self.compiled_shapes  # the old
                                        if shape[0] == id(self.model)}  # copy's are gone
            model = self._decoder[1]
        return decoding.DecodePath(path, model, note, base=base)

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

    def require(self, task: str, purpose: str) -> None:
        """Refuse, in one message, a model of another kind than ``task`` (``CAUSAL_LM`` or
        ``CLASSIFIER``) for ``purpose`` (what the user asked for: "generation",
        "perplexity", ...)."""
        if self.task == task:
            return
        lacks, needs = _REQUIRED[task]
        article = "an" if self.task[:1] in "aeiou" else "a"
        raise WorkbenchError(f"{self.name} is {article} {self.task} model{lacks}: {purpose} "
                             f"needs {needs}.")

    def ensure_attentions(self) -> None:
        """Switch to eager attention for good (sdpa returns no attention weights); a job
        that needs attention weights once uses :meth:`eager_attention` instead."""
        if self.model.config._attn_implementation != "eager":
            self.model.set_attn_implementation("eager")
            self.options = replace(self.options, attentions=True)

    @contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Eager attention (the one that returns attention weights) for one job, then the
        model's own again: generation and perplexity keep the faster sdpa."""
        before = self.model.config._attn_implementation
        if before == "eager":
            yield
            return
        self.model.set_attn_implementation("eager")
        try:
            yield
        finally:
            self.model.set_attn_implementation(before)


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


# --- what a path that is not a model is ------------------------------------------------------
WEIGHT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
_SIGNATURES = ((b"PK\x03\x04", "a zip archive"), (b"\x1f\x8b", "a gzip archive"),
               (b"%PDF", "a PDF document"), (b"\x89PNG", "a PNG image"),
               (b"\xff\xd8\xff", "a JPEG image"), (b"\x7fELF", "a program"),
               (b"SQLite format 3", "an SQLite database"))


def _what_file(path: Path, head: bytes) -> str:
    """A few words on what a file that is not a model is, from its first bytes."""
    if not head:
        return "it is empty"
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return f"it is {kind}"
    if head.startswith(b"\x80") and path.suffix.lower() in PICKLE_SUFFIXES:
        return "it is a pickle file"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the sample
            return "it holds binary data of an unknown kind"
    return "it is a text file"


def check_model_file(reference: str) -> None:
    """Refuse, with what it is, an existing file that is not a model (a .txt, a weights file
    out of its folder, a .gguf that is not GGUF); anything else is left to catalog.resolve."""
    ref = reference.strip()
    if not ref or catalog.find_builtin(ref) is not None:
        return
    path = Path(os.path.expanduser(ref))
    try:
        if not path.is_file():
            return
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise WorkbenchError(f"Cannot read {path}: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        if head.startswith(b"GGUF"):
            return
        what = _what_file(path, head)
        raise WorkbenchError(f"{path} is a file but not a model: it does not start with GGUF's "
                             f"magic bytes, so it is not a GGUF file ({what.removeprefix('it is ')})"
                             ".")
    folder = path.parent
    if (suffix in WEIGHT_SUFFIXES or path.name.endswith(".json")) and \
            (folder / "config.json").is_file():
        raise WorkbenchError(f"{path} is a file but not a model: it is one file of the model "
                             f"folder {folder}; give the folder instead.")
    weights = (suffix == ".safetensors" and head[8:9] == b"{"  # a JSON header after its size
               or suffix in PICKLE_SUFFIXES and head.startswith((b"PK\x03\x04", b"\x80")))
    what = ("it holds model weights without their config.json and tokenizer" if weights
            else _what_file(path, head))
    raise WorkbenchError(f"{path} is a file but not a model: {what}. Give a model folder "
                         "(with config.json), a .gguf file, a built-in name or a Hub id.")


# --- the tokenizer --------------------------------------------------------------------------
_TOKENIZER_FILES = re.compile(r"(tokenizer.*\.json|vocab.*|merges\.txt|.*\.model|.*\.spm|"
                              r".*\.tiktoken|bpe\.codes|spiece.*)$")


def tokenizer_files(folder: Path) -> list[str]:
    """The files of ``folder`` that look like a tokenizer's (vocabulary, merges, models)."""
    try:
        return sorted(p.name for p in folder.iterdir() if _TOKENIZER_FILES.match(p.name))
    except OSError:
        return []


def tokenizer_is_empty(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` knows no token but its special ones: what transformers builds for
    a folder without tokenizer files (every text then encodes to nothing or to unknowns)."""
    if len(tokenizer) > 1000:
        return False
    specials = set(tokenizer.all_special_tokens)
    return all(token in specials for token in tokenizer.get_vocab())


def check_tokenizer(tokenizer: Any, folder: Path) -> None:
    if not tokenizer_is_empty(tokenizer):
        return
    files = [name for name in tokenizer_files(folder) if name != "tokenizer_config.json"]
    found = (f"its tokenizer files ({', '.join(files[:4])}) hold no vocabulary" if files else
             "it has no tokenizer files (tokenizer.json, or vocab / merges / .model files)")
    raise WorkbenchError(f"The tokenizer of {folder.name} is missing: {found}. Copy the "
                         f"tokenizer files of the model it comes from into {folder}.")


def set_pad_token(tokenizer: Any, model: Any = None) -> str | None:
    """Pad with the end-of-text token when the model has no pad token (GPT-2, Llama), in the
    tokenizer and in ``model.config`` (a sequence classifier finds each row's last token by
    it, as transformers' examples set it); returns what was done, for the log."""
    note = None
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
        note = (f"The model has no pad token: its end-of-text token {tokenizer.eos_token!r} "
                "is used for padding.")
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "pad_token_id", None) is None \
            and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
        note = note or (f"The model's configuration has no pad token: {tokenizer.pad_token!r} "
                        "(the tokenizer's) is used.")
    return note




def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model_job(reference: str, options: LoadOptions | None = None):
    """A job that loads ``reference`` (see :func:`catalog.resolve`) into a LoadedModel."""
    options = options or LoadOptions()

    def job(ctx: JobContext) -> Generator[Any, None, LoadedModel]:
        from workbench.core.models.gguf_convert import cached_conversion, convert_gguf

        start = time.perf_counter()
        yield Progress(f"Finding {reference}…", 0.0)
        check_model_file(reference)
        source = catalog.resolve(reference, ctx, options.allow_network, options.allow_pickle)
        yield Progress(f"Found {reference} in {source.origin}", 0.1)
        from workbench.core.models.memory import check_memory

        quantized, why = gguf_choice(source.path, options) if source.is_gguf else (False, "")
        if why:
            ctx.log(why)
        check_memory(source, options.device, options.dtype, reference,  # before any weight
                     quantized)
        converted_now = False
        folder = source.path
        if source.is_gguf:
            if quantized:
                return (yield from _quantized_job(reference, source, options, ctx, start))
            converted_now = cached_conversion(source.path) is None
            folder = convert_gguf(source.path, ctx)
        yield Progress("Checking the model files…", 0.5)
        raw_config = check_folder(folder, options)

        import transformers

        from workbench.core.models.device import pick_device, pick_dtype

        transformers.logging.disable_progress_bar()  # the app reports progress itself
        device = pick_device(options.device)
        dtype = pick_dtype(options.dtype, device, "" if options.training else stored_dtype(folder))
        task = task_of(_read_config(folder, options))
        yield Progress("Loading the tokenizer…", 0.6)
        tokenizer = _read_tokenizer(folder, options)
        yield Progress(f"Loading weights ({task}) on {device}…", 0.7)
        model = _read_weights(folder, task, device, dtype, options, ctx)
        note = set_pad_token(tokenizer, model if task == CLASSIFIER else None)
        if note:
            ctx.log(note)
        name = _display_name(reference, source)
        seconds = time.perf_counter() - start
        yield Progress(f"Loaded {name} in {seconds:.1f} s", 1.0)
        return LoadedModel(
            reference=reference, name=name, source=source, folder=folder, model=model,
            tokenizer=tokenizer, task=task, device=device,
            dtype=str(dtype).removeprefix("torch."), options=options, load_seconds=seconds,
            converted_now=converted_now, config=raw_config)

    return job


def stored_dtype(folder: Path) -> str:
    """The dtype most of ``folder``'s safetensors weights are stored in ("bfloat16"), "" when
    it cannot be told from their headers."""
    from workbench.core.models.memory import MemoryEstimate
    from workbench.core.models.model_headers import UnreadableModel, folder_parameters

    try:
        found = folder_parameters(folder)
    except (UnreadableModel, OSError):
        return ""
    return "" if found is None else MemoryEstimate(*found).stored_dtype


def _quantized_job(reference: str, source: ModelSource, options: LoadOptions, ctx: JobContext,
                   start: float) -> Generator[Any, None, LoadedModel]:
    """The rest of a load that keeps a GGUF's weights quantized (gguf_model)."""
    from workbench.core.models.gguf_model import load_quantized

    yield Progress("Reading the quantized weights…", 0.5)
    load = load_quantized(source.path, ctx, options.attentions)
    note = set_pad_token(load.tokenizer)
    if note:
        ctx.log(note)
    name = _display_name(reference, source)
    seconds = time.perf_counter() - start
    yield Progress(f"Loaded {name} ({load.storage}) in {seconds:.1f} s", 1.0)
    return LoadedModel(
        reference=reference, name=name, source=source, folder=source.path.parent,
        model=load.model, tokenizer=load.tokenizer, task=CAUSAL_LM, device="cpu",
        dtype="float32", options=options, load_seconds=seconds, storage=load.storage,
        config=load.model.config.to_dict())


def gguf_choice(path: Path, options: LoadOptions) -> tuple[bool, str]:
    """Whether the GGUF ``path`` loads on its quantized weights, and a note for the log.

    ``auto`` keeps the weights quantized when their float32 form would pass
    :data:`~workbench.core.models.memory.QUANTIZED_AUTO_BYTES` (a model of about 250 million parameters and more: the
    models people bring), and converts smaller ones to float32 once (the numbers of the
    reference implementations, at little memory). ``float32`` always converts, and so does a
    fine-tuning run's load. ``quantized`` keeps them wherever it can; where it cannot (an
    architecture not yet placed, a GPU, a dtype asked for) the load converts and says why."""
    from workbench.core.models.gguf_model import unsupported
    from workbench.core.models.memory import QUANTIZED_AUTO_BYTES
    from workbench.core.models.model_headers import UnreadableModel, gguf_header

    choice = check_weights(options.weights)
    try:  # a damaged file is refused here, by its header, whichever way it would load
        parameters = gguf_header(path).parameters
    except UnreadableModel as exc:
        raise WorkbenchError(f"Cannot read GGUF file {path.name}: {exc}.") from None
    if choice == "float32" or options.training:
        return False, ""
    if choice == "auto" and parameters * 4 < QUANTIZED_AUTO_BYTES:
        return False, ""
    from workbench.core.models.device import pick_device

    why_not = unsupported(path)
    if why_not is None and pick_device(options.device) != "cpu":
        why_not = "its kernels run on the CPU only so far"
    if why_not is None and (options.dtype or "auto").lower() not in ("auto", "float32"):
        why_not = f"--dtype {options.dtype} asks for a converted copy"
    if why_not:
        return False, f"{path.name} is converted to float32: {why_not}."
    return True, ""


def check_weights(value: str) -> str:
    choice = (value or "auto").strip().lower()
    if choice not in WEIGHTS_CHOICES:
        raise WorkbenchError(f"Unknown weights '{value}': use one of "
                             f"{', '.join(WEIGHTS_CHOICES)}.")
    return choice


def _read_config(folder: Path, options: LoadOptions) -> Any:
    """transformers' configuration of the model in ``folder``."""
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(
            folder, trust_remote_code=options.trust_remote_code, local_files_only=True)
    except Exception as exc:
        raise WorkbenchError(f"Unsupported model configuration in {folder.name}: "
                             f"{_first_line(exc)}") from exc


def _read_tokenizer(folder: Path, options: LoadOptions) -> Any:
    """The tokenizer in ``folder``, checked (without files transformers builds an empty one)."""
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            folder, trust_remote_code=options.trust_remote_code, local_files_only=True)
    except Exception as exc:
        raise WorkbenchError(f"Cannot load the tokenizer of {folder.name}: "
                             f"{_first_line(exc)}") from exc
    check_tokenizer(tokenizer, folder)  # without files transformers builds an empty one
    return tokenizer


def _read_weights(folder: Path, task: str, device: str, dtype: Any, options: LoadOptions,
                  ctx: JobContext) -> Any:
    """The model of ``task`` in ``folder``, on ``device`` in eval mode, its linear layers
    made ready for decoding unless it is to be trained."""
    kwargs: dict[str, Any] = dict(dtype=dtype, local_files_only=True,
                                  trust_remote_code=options.trust_remote_code)
    if options.attentions:
        kwargs["attn_implementation"] = "eager"
    if not options.allow_pickle:
        kwargs["use_safetensors"] = True
    try:
        with load_report_to_log(ctx):
            model = _model_class(task).from_pretrained(folder, **kwargs)
    except Exception as exc:
        raise WorkbenchError(f"Cannot load the weights of {folder.name}: "
                             f"{_first_line(exc)}") from exc
    model.to(device)
    model.eval()
    import torch

    from workbench.core.models.few_rows import (
        contiguous_output_input,
        few_rows_helps,
        use_few_rows_linears,
    )

    if not options.training:
        contiguous_output_input(model)  # generate's first step of several rows
    if device == "cpu" and dtype == torch.float32 and not options.training \
            and few_rows_helps():
        use_few_rows_linears(model)  # batched decoding (compare) about 1.8x faster
    return model


def _display_name(reference: str, source: Any) -> str:
    """The name a loaded model goes by: a built-in model's, a folder's or file's own name,
    the Hub id of a cached model, or ``run/final`` for a fine-tuning run's model."""
    entry = catalog.find_builtin(reference)
    name = entry.name if entry else (Path(reference).name if source.kind != "hf-cache"
                                     else reference)
    if (Path(reference).parent / "run.json").is_file():  # a fine-tuning run's model
        name = f"{Path(reference).parent.name}/{Path(reference).name}"
    return name


def load_model(reference: str, options: LoadOptions | None = None, on_event=None) -> LoadedModel:
    """Load directly on this thread (CLI, tests)."""
    return run_job(load_model_job(reference, options), on_event)

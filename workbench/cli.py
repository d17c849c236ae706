"""The headless command line. Every command calls the same core functions as the GUI."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from workbench import APP_NAME, __version__
from workbench.core.catalog import DEFAULT_MODEL
from workbench.core.errors import Cancelled, WorkbenchError
from workbench.core.jobs import LogLine, Progress
from workbench.core.sampling import SamplingSettings as SamplingDefaults


class OneLineParser(argparse.ArgumentParser):
    """argparse with the app's error format: bad arguments give one line starting with
    ``error:`` on stderr and exit status 2 (argparse's own prints its usage block first)."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())  # one line, whatever the message quotes
        self.exit(2, f"error: {text} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python main.py",
        description=f"{APP_NAME}: experiment with language models on your own machine. "
                    "Without a command, opens the window.")
    parser.add_argument("--version", action="version", version=f"{APP_NAME} {__version__}")
    parser.add_argument("--model", help="model to load when the window opens "
                        "(built-in name, folder, .gguf file or Hub id)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda or mps")
    parser.add_argument("--screenshot", metavar="DIR",
                        help="open the window offscreen, save a PNG of each tab into DIR, exit")
    parser.add_argument("--no-autoload", action="store_true",
                        help="do not load the last model when the window opens")
    parser.add_argument("--startup-probe", action="store_true", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)

    models = sub.add_parser("models", help="the model catalog")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True,
                                       parser_class=OneLineParser)
    listing = models_sub.add_parser("list", help="built-in models and the Hugging Face cache")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    fetch = models_sub.add_parser("fetch", help="download a built-in model (or a Hub id)")
    fetch.add_argument("name")
    fetch.add_argument("--json", action="store_true", help="print one JSON document")

    gen = sub.add_parser("generate", help="generate text with the sampling options")
    add_model_options(gen)
    add_text_options(gen, "prompt", "the prompt text")
    defaults = SamplingDefaults()
    gen.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    gen.add_argument("--temperature", type=float, default=defaults.temperature)
    gen.add_argument("--top-k", type=int, default=defaults.top_k, help="0 turns top-k off")
    gen.add_argument("--top-p", type=float, default=defaults.top_p)
    gen.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty)
    gen.add_argument("--seed", type=int, default=defaults.seed)
    gen.add_argument("--greedy", action="store_true", help="greedy decoding (no sampling)")
    gen.add_argument("--chat", action=argparse.BooleanOptionalAction, default=defaults.chat,
                     help="wrap the prompt in the model's chat template (default: on)")
    gen.add_argument("--json", action="store_true", help="print one JSON document")

    gen.add_argument("--min-p", type=float, default=defaults.min_p, help="0 turns min-p off")
    gen.add_argument("--typical-p", type=float, default=defaults.typical_p)
    gen.add_argument("--no-repeat-ngram-size", type=int, default=defaults.no_repeat_ngram_size)
    gen.add_argument("--num-beams", type=int, default=defaults.num_beams)
    gen.add_argument("--num-return-sequences", type=int, default=defaults.num_return_sequences)
    gen.add_argument("--top-n", type=int, default=0,
                     help="with --json: each step's top-N candidates, raw and processed")

    cmp = sub.add_parser("compare", help="several sampling strategies on one prompt and seed")
    add_model_options(cmp)
    add_text_options(cmp, "prompt", "the prompt text")
    cmp.add_argument("--strategy", action="append", required=True,
                     help='repeat 2-6 times: "greedy", a preset (top-k 40, nucleus 0.9, '
                          'creative, min-p 0.1) or "top_k=40,temperature=0.8,n=3"')
    cmp.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    cmp.add_argument("--seed", type=int, default=defaults.seed)
    cmp.add_argument("--chat", action=argparse.BooleanOptionalAction, default=defaults.chat)
    cmp.add_argument("--top-n", type=int, default=0, help="with --json: per-step candidates")
    cmp.add_argument("--json", action="store_true", help="print one JSON document")

    att = sub.add_parser("attention", help="attention of a text: offline bertviz page and "
                         "head statistics")
    add_model_options(att)
    add_text_options(att, "text", "the text to analyse")
    att.add_argument("--text-b", help="sentence B, for encoders")
    att.add_argument("--view", choices=["head", "model"], default="head")
    att.add_argument("--html", metavar="FILE", help="write the bertviz page (works offline)")
    att.add_argument("--max-tokens", type=int, default=64,
                     help="tokens analysed (head statistics); longer texts are cut, with a notice")
    att.add_argument("--page-tokens", type=int, default=64,
                     help="tokens drawn in the bertviz page (it grows with tokens²)")
    att.add_argument("--layers", help="comma-separated layer indices for the page "
                     "(default: all, or 6 spread over deeper models)")
    att.add_argument("--json", action="store_true", help="print one JSON document")

    ft = sub.add_parser("finetune", help="fine-tune a model into a run folder")
    ft.add_argument("--task", choices=["lm", "classify"], required=True)
    ft.add_argument("--model", default=None, help="default: SmolLM2 for lm, MiniLM for classify")
    ft.add_argument("--train", required=True, help=".txt/.jsonl (lm) or .csv/.tsv/.jsonl")
    ft.add_argument("--validation", help="a validation file (default: a split of --train)")
    ft.add_argument("--text-column", default="text")
    ft.add_argument("--label-column", default="label")
    ft.add_argument("--output", required=True, help="the run folder")
    ft.add_argument("--max-steps", type=int, default=None,
                    help="stop after this many optimizer steps (overrides --epochs); with "
                    "--resume, a new limit (default: the run's own)")
    ft.add_argument("--epochs", type=float, default=None,
                    help="default 3; with --resume, a new limit (default: the run's own)")
    ft.add_argument("--learning-rate", type=float, default=2e-5)
    ft.add_argument("--batch-size", type=int, default=8)
    ft.add_argument("--gradient-accumulation", type=int, default=1)
    ft.add_argument("--max-length", type=int, default=128)
    ft.add_argument("--weight-decay", type=float, default=0.0)
    ft.add_argument("--warmup-steps", type=int, default=0)
    ft.add_argument("--scheduler", default="linear", help="linear, cosine, constant, ...")
    ft.add_argument("--seed", type=int, default=42)
    ft.add_argument("--logging-steps", type=int, default=5)
    ft.add_argument("--eval-steps", type=int, default=50)
    ft.add_argument("--save-steps", type=int, default=50)
    ft.add_argument("--probe", action="append", default=[], help="a probe prompt (lm; repeat)")
    ft.add_argument("--probe-every", type=int, default=0)
    ft.add_argument("--lora", action="store_true",
                    help="train a LoRA adapter (peft) instead of every weight (lm only); the "
                    "final model has it merged in, the run's adapter/ keeps it")
    ft.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    ft.add_argument("--lora-alpha", type=int, default=16, help="LoRA scaling alpha")
    ft.add_argument("--lora-dropout", type=float, default=0.05)
    ft.add_argument("--lora-target-modules", default="", metavar="A,B",
                    help="module names to adapt, e.g. q_proj,v_proj (default: peft's choice "
                    "for the architecture)")
    ft.add_argument("--trust-remote-code", action="store_true",
                    help="allow Python code shipped with this model to run (only if you "
                         "trust its author); kept in the run's run.json")
    ft.add_argument("--allow-pickle", action="store_true",
                    help="allow pickle checkpoints (.bin/.pt), which can run code")
    ft.add_argument("--resume", action="store_true",
                    help="continue the run in --output from its last checkpoint")
    ft.add_argument("--json", action="store_true", help="print one JSON document at the end")
    mon = sub.add_parser("monitor", help="progress of a run folder (this app's, any HF "
                         "Trainer output, or TensorBoard events)")
    mon.add_argument("run_dir")
    mon.add_argument("--smoothing", type=float, default=0.6, metavar="W",
                     help="weight of the smoothed training loss (TensorBoard's debiased "
                     "moving average), in [0, 1); default 0.6")
    mon.add_argument("--json", action="store_true", help="print one JSON document")

    ev = sub.add_parser("evaluate", help="perplexity, BLEU / chrF / TER with sacrebleu, "
                        "generate-then-score, classifier metrics")
    ev_sub = ev.add_subparsers(dest="evaluate_command", metavar="METRIC", required=True,
                               parser_class=OneLineParser)
    ppl = ev_sub.add_parser("perplexity", help="perplexity of a model on a text file")
    add_model_options(ppl)
    ppl.add_argument("--file", required=True, help="a UTF-8 text file")
    ppl.add_argument("--max-length", type=int, default=None,
                     help="window in tokens (default: the model's context)")
    ppl.add_argument("--stride", type=int, default=None, help="default: half the window")
    ppl.add_argument("--per-token", action="store_true", help="with --json: every token's NLL")
    ppl.add_argument("--compare-model", metavar="M2",
                     help="a second model scored on the same text and settings, side by side")
    ppl.add_argument("--json", action="store_true", help="print one JSON document")
    bleu = ev_sub.add_parser("bleu", help="BLEU, chrF and TER of a hypothesis file")
    bleu.add_argument("--hyp", required=True, help="hypotheses, one segment a line")
    bleu.add_argument("--ref", action="append", required=True, help="a reference file (repeat)")
    bleu.add_argument("--metrics", default="bleu,chrf,ter",
                      help="comma-separated: bleu, chrf, chrf++, ter")
    bleu.add_argument("--tokenize", default=None,
                      help="sacrebleu BLEU tokenizer (13a, intl, char, none, zh, ...)")
    bleu.add_argument("--lowercase", action="store_true")
    bleu.add_argument("--compare", metavar="HYP2", help="a second system: paired significance "
                      "tests against the first")
    bleu.add_argument("--test", default="bs", choices=["bs", "ar", "both"],
                      help="paired bootstrap (bs), approximate randomization (ar), or both")
    bleu.add_argument("--samples", type=int, default=0, help="resamples / trials (default: "
                      "sacrebleu's, 1000 for bs and 10000 for ar)")
    bleu.add_argument("--json", action="store_true", help="print one JSON document")

    gs = ev_sub.add_parser("generate", help="generate-then-score: the model writes an output "
                           "for each prompt of a TSV, scored against its references")
    add_model_options(gs)
    gs.add_argument("--file", required=True,
                    help="TSV: prompt<TAB>reference[<TAB>reference2...] a line; optional header")
    gs.add_argument("--strategy", default="greedy",
                    help='"greedy", a preset (top-k 40, nucleus 0.9, creative, min-p 0.1) or '
                         '"top_k=40,temperature=0.8" (as for compare)')
    gs.add_argument("--max-new-tokens", type=int, default=48)
    gs.add_argument("--seed", type=int, default=defaults.seed)
    gs.add_argument("--chat", action=argparse.BooleanOptionalAction, default=defaults.chat)
    gs.add_argument("--all-lines", action="store_true",
                    help="score the whole output joined on one line (default: its first line)")
    gs.add_argument("--metrics", default="bleu,chrf", help="comma-separated: bleu, chrf, "
                    "chrf++, ter")
    gs.add_argument("--output", metavar="DIR", help="folder for outputs.tsv and result.json "
                    "(default: a new folder in the app's data folder)")
    gs.add_argument("--json", action="store_true", help="print one JSON document")
    cl = ev_sub.add_parser("classify", help="accuracy, macro-F1 and confusion matrix of a "
                           "classifier on a labelled file")
    add_model_options(cl)
    cl.add_argument("--file", required=True, help="a labelled .csv, .tsv or .jsonl file")
    cl.add_argument("--text-column", default="text")
    cl.add_argument("--label-column", default="label")
    cl.add_argument("--json", action="store_true", help="print one JSON document")

    bench = sub.add_parser("bench", help="performance figures, each a ratio against a "
                           "bare baseline measured in the same run")
    bench.add_argument("--only", help="comma-separated figure names")
    bench.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def add_text_options(parser: argparse.ArgumentParser, name: str, what: str) -> None:
    """``--NAME TEXT`` or ``--NAME-file FILE`` (UTF-8; for texts longer than one command-line
    argument may be: 128 KiB on Linux), exactly one of them."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(f"--{name}", help=what)
    group.add_argument(f"--{name}-file", metavar="FILE",
                       help=f"read {what} from a UTF-8 file (any length)")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"built-in name, folder, .gguf file or Hub id (default {DEFAULT_MODEL})")
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, mps")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow Python code shipped with this model to run (only if you "
                             "trust its author)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pickle checkpoints (.bin/.pt), which can run code")


def load_from_args(args: argparse.Namespace, bar: TerminalProgress):
    from workbench.core.loader import LoadOptions, load_model

    options = LoadOptions(device=args.device, dtype=args.dtype,
                          trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    loaded = load_model(args.model, options, on_event=bar)
    bar.finish()
    return loaded


# --- checks of arguments: cheap, and before any model is loaded or anything is written ----------
MAX_TEXT_FILE_CHARS = 16 * 2**20  # a prompt or text file: far more than any model's context
MAX_SAMPLES = 100_000  # paired-test resamples: sacrebleu holds samples × lines indices at once


def check_utf8(value: str, option: str) -> None:
    """Python turns bytes of the command line that are not UTF-8 into lone surrogates;
    such a text cannot be tokenized or written: refuse it, naming the argument."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        what = (f"the byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF
                else f"a lone surrogate U+{code:04X}")
        raise WorkbenchError(f"{option} is not valid UTF-8 text ({what} at character "
                             f"{exc.start + 1}).") from None


def read_text_file(path: str, option: str) -> str:
    """A UTF-8 text file (universal newlines; a byte-order mark is dropped), or one error."""
    if not path.strip():
        raise WorkbenchError(f"{option} needs a file name.")
    file = Path(path)
    try:
        if file.is_dir():
            raise WorkbenchError(f"{option} {path} is a folder, not a text file.")
        with file.open(encoding="utf-8", newline=None) as handle:
            text = handle.read(MAX_TEXT_FILE_CHARS + 1)
    except FileNotFoundError:
        raise WorkbenchError(f"{option} {path}: no such file.") from None
    except UnicodeDecodeError as exc:
        raise WorkbenchError(f"{option} {path} is not UTF-8 text (the byte "
                             f"0x{exc.object[exc.start]:02x} cannot be decoded).") from None
    except OSError as exc:
        raise WorkbenchError(f"Cannot read {option} {path}: {exc.strerror or exc}.") from None
    if len(text) > MAX_TEXT_FILE_CHARS:
        raise WorkbenchError(f"{option} {path} is longer than {MAX_TEXT_FILE_CHARS // 2**20} MB "
                             "of text, more than any model's context.")
    return text.removeprefix("\ufeff")


def text_argument(args: argparse.Namespace, name: str) -> str:
    """The text of ``--NAME`` or of ``--NAME-file`` (argparse lets exactly one through)."""
    value = getattr(args, name)
    if value is not None:
        check_utf8(value, f"--{name.replace('_', '-')}")
        return value
    return read_text_file(getattr(args, f"{name}_file"), f"--{name.replace('_', '-')}-file")


def check_whole(value: int | None, option: str, least: int, most: int | None = None) -> None:
    """A whole-number option: None (its default) or in [least, most]."""
    if value is None:
        return
    if value < least:
        raise WorkbenchError(f"{option} must be at least {least}, not {value}.")
    if most is not None and value > most:
        raise WorkbenchError(f"{option} can be at most {most:,}, not {value:,}.")


def check_model_options(args: argparse.Namespace, *models: str) -> None:
    """--model (and the other model options named), --device and --dtype."""
    from workbench.core.device import DEVICE_CHOICES, DTYPE_CHOICES

    for option in ("--model", *models):
        value = getattr(args, option[2:].replace("-", "_"))
        if value is not None and not value.strip():
            raise WorkbenchError(f"{option} is empty: give a built-in name, folder, .gguf file "
                                 "or Hub id.")
    device = (args.device or "auto").lower()
    if device not in DEVICE_CHOICES and not re.fullmatch(r"cuda:\d+", device):
        raise WorkbenchError(f"Unknown device '{args.device}': use one of "
                             f"{', '.join(DEVICE_CHOICES)} (or cuda:N).")
    if (args.dtype or "auto").lower() not in DTYPE_CHOICES:
        raise WorkbenchError(f"Unknown dtype '{args.dtype}': use one of "
                             f"{', '.join(DTYPE_CHOICES)}.")


def check_window_options(args: argparse.Namespace) -> None:
    """The options of ``python main.py`` without a command (the window)."""
    from workbench.core.device import DEVICE_CHOICES

    if args.model is not None:
        check_utf8(args.model, "--model")
        if not args.model.strip():
            raise WorkbenchError("--model is empty: give a built-in name, folder, .gguf file "
                                 "or Hub id.")
    device = (args.device or "auto").lower()
    if device not in DEVICE_CHOICES and not re.fullmatch(r"cuda:\d+", device):
        raise WorkbenchError(f"Unknown device '{args.device}': use one of "
                             f"{', '.join(DEVICE_CHOICES)} (or cuda:N).")
    if args.screenshot is not None:
        folder = Path(args.screenshot).expanduser()
        if not args.screenshot.strip() or (folder.exists() and not folder.is_dir()):
            raise WorkbenchError(f"--screenshot needs a folder, not '{args.screenshot}'.")


def check_output_file(path: str, option: str) -> None:
    """A file about to be written: a name, in a folder that exists, and writable."""
    if not path.strip():
        raise WorkbenchError(f"{option} needs a file name.")
    file = Path(path)
    if file.is_dir():
        raise WorkbenchError(f"{option} {path} is a folder: give a file name.")
    folder = file.parent
    if not folder.is_dir():
        raise WorkbenchError(f"{option} {path}: the folder {folder} does not exist.")
    if not os.access(folder, os.W_OK) or (file.exists() and not os.access(file, os.W_OK)):
        raise WorkbenchError(f"{option} {path}: cannot write there (permission denied).")


def parse_names(text: str, option: str, known: tuple[str, ...] | None = None,
                lower: bool = True) -> list[str]:
    """A comma-separated list of names: not empty, each known, each once."""
    names: list[str] = []
    for part in text.split(","):
        name = part.strip().lower() if lower else part.strip()
        if name and name not in names:
            names.append(name)
    if not names:
        raise WorkbenchError(f"{option} names nothing: give {', '.join(known) if known else 'a name'}"
                             f"{' (comma-separated)' if known else ''}.")
    unknown = [n for n in names if known is not None and n not in known]
    if unknown:
        raise WorkbenchError(f"{option}: unknown {', '.join(repr(n) for n in unknown)}; use "
                             f"{', '.join(known or ())}.")
    return names


def parse_metrics(text: str) -> tuple[str, ...]:
    from workbench.core.evaluation import METRIC_NAMES

    return tuple(parse_names(text, "--metrics", METRIC_NAMES))


def check_tokenizer(name: str | None) -> None:
    """A sacrebleu BLEU tokenizer that exists and can be made here (some need extra packages
    or a download)."""
    if name is None:
        return
    import logging

    from sacrebleu.metrics import BLEU

    if name not in BLEU.TOKENIZERS:
        raise WorkbenchError(f"Unknown --tokenize '{name}': use one of "
                             f"{', '.join(BLEU.TOKENIZERS)}.")
    logging.disable(logging.CRITICAL)  # sacrebleu logs its own many-line explanation
    try:
        BLEU(tokenize=name)
    except Exception as exc:  # a missing package, no network for a model: say which
        raise WorkbenchError(f"The {name} tokenizer cannot be used here: "
                             f"{' '.join(str(exc).split()) or type(exc).__name__}") from None
    finally:
        logging.disable(logging.NOTSET)


def check_test_memory(samples: int, lines: int, tests: tuple[str, ...]) -> None:
    """sacrebleu draws every resample's line indices at once (samples × lines × 8 bytes) and
    gathers each metric's statistics for them (a few times more): refuse what cannot fit."""
    import psutil

    from workbench.core.generation import MEMORY_SHARE, _gb

    most = max(samples or (10_000 if t == "ar" else 1_000) for t in tests)
    need = most * lines * 8 * 8
    available = psutil.virtual_memory().available
    if need > available * MEMORY_SHARE:
        raise WorkbenchError(f"{most:,} resamples of {lines:,} lines would need about "
                             f"{_gb(need)}, more than {MEMORY_SHARE:.0%} of the {_gb(available)} "
                             "available: give fewer --samples.")


def parse_layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    layers: list[int] = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            layer = int(part)
        except ValueError:
            raise WorkbenchError(f"--layers takes numbers such as 0,5, not '{text}'.") from None
        if layer < 0:
            raise WorkbenchError(f"--layers: layer {layer} does not exist (layers count from 0).")
        if layer not in layers:
            layers.append(layer)
    if not layers:
        raise WorkbenchError(f"--layers names no layer ('{text}'): give numbers such as 0,5.")
    return layers


class TerminalProgress:
    """A one-line progress bar on stderr, when stderr is a terminal."""

    def __init__(self, quiet: bool = False) -> None:
        # Only a terminal gets a bar: in logs and pipes, stderr is kept for errors.
        self.tty = sys.stderr.isatty()
        self.quiet = quiet or not self.tty
        self.last = ""

    def __call__(self, event: Any) -> None:
        if isinstance(event, Progress) and not self.quiet:
            if event.fraction is None:
                text = f"{event.message}"
            else:
                filled = int(event.fraction * 30)
                text = f"[{'#' * filled}{'.' * (30 - filled)}] {event.fraction:4.0%} {event.message}"
            sys.stderr.write("\r" + text[:120].ljust(120))
            sys.stderr.flush()
            self.last = event.message
        elif isinstance(event, LogLine) and event.level != "info":
            self.finish()
            print(f"{event.level}: {event.message}", file=sys.stderr)

    def finish(self) -> None:
        if self.last:
            sys.stderr.write("\n")
            self.last = ""


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def cmd_models_list(args: argparse.Namespace) -> int:
    from workbench.core.catalog import list_models

    rows = list_models()
    if args.json:
        print_json({"models": [r.to_dict() for r in rows]})
        return 0
    print(f"{'NAME':40} {'TASK':10} {'AVAILABLE':10} SOURCE")
    for r in rows:
        where = f"{r.source}: {r.location}" if r.available else \
            f"not downloaded (python main.py models fetch {r.name})"
        flag = " (default)" if r.default else ""
        print(f"{r.name + flag:40} {r.task:10} {'yes' if r.available else 'no':10} {where}")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from workbench.core import catalog
    from workbench.core.jobs import JobContext

    bar = TerminalProgress(quiet=args.json)
    source = catalog.resolve(args.name, JobContext(emit=bar))
    bar.finish()
    if args.json:
        print_json({"name": args.name, "source": source.kind, "path": str(source.path)})
    else:
        print(f"{args.name}: {source.origin} -> {source.path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from workbench.core.generation import SamplingSettings, TokenEvent, generate
    from workbench.core.jobs import JobContext

    check_model_options(args)
    settings = SamplingSettings(
        max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed, chat=args.chat,
        min_p=args.min_p, typical_p=args.typical_p,
        no_repeat_ngram_size=args.no_repeat_ngram_size, num_beams=args.num_beams,
        num_return_sequences=args.num_return_sequences)
    settings.validate()  # before spending time on loading
    check_whole(args.top_n, "--top-n", 0)
    prompt = text_argument(args, "prompt")
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)

    def stream(event: Any) -> None:
        if isinstance(event, TokenEvent) and event.sequence == 0 and not args.json:
            sys.stdout.write(event.text)
            sys.stdout.flush()

    result = generate(loaded, prompt, settings, JobContext(emit=stream), top_n=args.top_n)
    if args.json:
        data = result.to_dict(top_n=args.top_n)
        data.update(model=loaded.name, device=loaded.device, dtype=loaded.dtype,
                    tokens=loaded.tokenizer.convert_ids_to_tokens(result.token_ids))
        print_json(data)
    else:
        print()
        for i, seq in enumerate(result.sequences[1:], start=2):
            print(f"--- sequence {i}\n{seq.text}")
        for notice in result.notices:
            print(f"note: {notice}", file=sys.stderr)
        print(f"[{len(result.token_ids)} tokens, {result.tokens_per_second:.1f} tokens/s, "
              f"{loaded.device}, {loaded.dtype}]", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from workbench.core.compare import compare, strategy_runs
    from workbench.core.sampling import SamplingSettings, parse_strategy

    check_model_options(args)
    if not 2 <= len(args.strategy) <= 6:
        raise WorkbenchError(f"Give 2 to 6 --strategy options, not {len(args.strategy)}.")
    base = SamplingSettings(max_new_tokens=args.max_new_tokens, seed=args.seed, chat=args.chat)
    base.validate()
    for spec in args.strategy:
        check_utf8(spec, "--strategy")
    strategies = [parse_strategy(spec, base) for spec in args.strategy]
    strategy_runs(strategies)  # the number of sequences, before loading
    check_whole(args.top_n, "--top-n", 0)
    prompt = text_argument(args, "prompt")
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)
    result = compare(loaded, prompt, strategies, seed=args.seed,
                     max_new_tokens=args.max_new_tokens, chat=args.chat, top_n=args.top_n)
    if args.json:
        data = result.to_dict()
        data.update(model=loaded.name, device=loaded.device, dtype=loaded.dtype)
        if args.top_n:
            for s, r in zip(data["strategies"], result.strategies, strict=True):
                s["steps"] = [[{"token_id": st.token_id, "text": st.text,
                                "probability": st.probability,
                                "raw_probability": st.raw_probability,
                                "candidates": [vars(c) | {} for c in st.candidates[:args.top_n]]}
                               for st in seq.steps] for seq in r.sequences]
        print_json(data)
        return 0
    for r in result.strategies:
        print(f"=== {r.name}")
        for i, seq in enumerate(r.sequences):
            print(("" if len(r.sequences) == 1 else f"[{i + 1}] ") + seq.text)
        print()
    header = f"{'strategy':28} {'mean logp':>9} {'ppl':>8} {'dist-1':>6} {'dist-2':>6} " \
             f"{'self-BLEU':>9} {'tok/s':>7} {'diverges at':>11}"
    print(header)
    for r in result.strategies:
        sb = "-" if r.self_bleu is None else f"{r.self_bleu:.1f}"
        div = "-" if r.diverges_at is None else str(r.diverges_at)
        print(f"{r.name[:28]:28} {r.mean_logprob:9.3f} {r.perplexity:8.2f} {r.distinct_1:6.2f} "
              f"{r.distinct_2:6.2f} {sb:>9} {r.tokens_per_second:7.1f} {div:>11}")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_attention(args: argparse.Namespace) -> int:
    from workbench.core.attention import (
        attention_layers,
        bertviz_html,
        compute_attention,
        head_statistics,
    )

    check_model_options(args)
    check_whole(args.max_tokens, "--max-tokens", 1)
    check_whole(args.page_tokens, "--page-tokens", 2)
    layers = parse_layers(args.layers)
    if args.html is not None:
        check_output_file(args.html, "--html")
    if args.text_b is not None:
        check_utf8(args.text_b, "--text-b")
    text = text_argument(args, "text")
    if not text.strip():
        raise WorkbenchError("The text is empty." if args.text is not None
                             else f"--text-file {args.text_file} holds no text.")
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)
    count = attention_layers(loaded.model)
    bad = [layer for layer in layers or [] if count is not None and layer >= count]
    if bad:
        raise WorkbenchError(f"--layers: layer {', '.join(map(str, bad))} is out of range: "
                             f"{loaded.name} has {count} layers (0–{count - 1}).")
    result = compute_attention(loaded, text, args.text_b, args.max_tokens)
    notices = list(result.notices)
    if layers is not None and not args.html:
        notices.append("--layers chooses the layers of the --html page; without --html it "
                       "changes nothing.")
    if args.html:
        page, more = bertviz_html(result, args.view, layers, max_tokens=args.page_tokens)
        notices += more
        try:
            Path(args.html).write_text(page, encoding="utf-8")
        except OSError as exc:
            raise WorkbenchError(f"Cannot write {args.html}: {exc.strerror or exc}") from None
    stats = head_statistics(result)
    if args.json:
        print_json({"model": loaded.name, "tokens": result.tokens, "layers": result.layers,
                     "heads": result.heads, "sentence_b_start": result.sentence_b_start,
                     "head_statistics": {k: v.round(5).tolist() for k, v in stats.items()},
                     "html": args.html, "notices": notices})
        return 0
    print(f"{loaded.name}: {len(result.tokens)} tokens, {result.layers} layers × "
          f"{result.heads} heads")
    print("tokens: " + " ".join(repr(t) for t in result.tokens))
    prev = stats["previous token"]
    layer, head = divmod(int(prev.argmax()), result.heads)
    print(f"most previous-token head: layer {layer} head {head} ({prev.max():.2f})")
    ent = stats["entropy"]
    layer, head = divmod(int(ent.argmin()), result.heads)
    print(f"most focused head: layer {layer} head {head} (entropy {ent.min():.2f} bits)")
    if args.html:
        print(f"bertviz {args.view} view written to {args.html}")
    for notice in notices:
        print(f"note: {notice}", file=sys.stderr)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from workbench.core.catalog import MINILM, SMOLLM2
    from workbench.core.finetune import (
        FinetuneConfig,
        format_train_log,
        run_finetune,
        saved_config,
        split_names,
    )
    from workbench.core.jobs import JobContext, stop_on_signals

    model = args.model or (SMOLLM2.name if args.task == "lm" else MINILM.name)
    max_steps, epochs = args.max_steps, args.epochs
    if args.resume and max_steps is None and epochs is None:  # the run's own limits
        saved = saved_config(Path(args.output).expanduser())
        max_steps, epochs = saved.max_steps, saved.epochs
    elif epochs is not None and max_steps is None:
        max_steps = -1  # an epoch limit
    config = FinetuneConfig(
        task=args.task, model=model, train_file=args.train, output_dir=args.output,
        validation_file=args.validation, text_column=args.text_column,
        label_column=args.label_column, learning_rate=args.learning_rate,
        lr_scheduler=args.scheduler, warmup_steps=args.warmup_steps,
        epochs=3.0 if epochs is None else epochs, max_steps=-1 if max_steps is None else max_steps,
        batch_size=args.batch_size,
        gradient_accumulation=args.gradient_accumulation, max_length=args.max_length,
        weight_decay=args.weight_decay, seed=args.seed, logging_steps=args.logging_steps,
        eval_steps=args.eval_steps, save_steps=args.save_steps, probe_prompts=args.probe,
        probe_every=args.probe_every, lora=args.lora, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        lora_target_modules=split_names(args.lora_target_modules),
        trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    config.validate()
    bar = TerminalProgress(quiet=args.json)

    def report(event: Any) -> None:
        bar(event)
        if args.json:
            return
        line = format_train_log(event)
        if line is not None:
            bar.finish()
            print(line, flush=True)
        elif isinstance(event, LogLine) and event.level == "info" and \
                event.message.startswith(("LoRA", "Stopped")):
            print(event.message, flush=True)  # what trains, and where the adapter went

    ctx = JobContext(emit=report)

    def say(message: str) -> None:
        bar.finish()
        print(message, file=sys.stderr, flush=True)

    stop_on_signals(ctx, say)  # Ctrl-C: a checkpoint at the step boundary; twice: at once
    result = run_finetune(config, ctx, resume=args.resume)
    bar.finish()
    if args.json:
        print_json(vars(result))
    else:
        print(f"{'stopped' if result.stopped else 'finished'} at step {result.global_step}; "
              f"final model: {result.final_model or '-'}; checkpoint: {result.checkpoint or '-'}"
              + (f"; LoRA adapter: {result.adapter} (merged into the final model)"
                 if result.adapter else ""))
    return 130 if result.stopped and ctx.cancel.cancelled else 0


def cmd_monitor(args: argparse.Namespace) -> int:
    import math

    from workbench.core.runs import read_run
    from workbench.core.training_curves import summary

    if not 0 <= args.smoothing < 1:
        raise WorkbenchError(f"--smoothing takes a weight in [0, 1), not {args.smoothing}.")
    snap = read_run(args.run_dir)
    d = snap.to_dict()
    d.update(summary(snap.rows, args.smoothing))
    for key, value in d.items():  # strict JSON: a NaN or infinite loss is null (and an alarm)
        if isinstance(value, float) and not math.isfinite(value):
            d[key] = None
    if args.json:
        print_json(d)
        return 0
    total = f"/{d['max_steps']}" if d["max_steps"] else ""
    print(f"{d['folder']} ({d['source']}): step {d['global_step']}{total}")
    for key in ("loss", "smoothed_loss", "eval_loss", "learning_rate", "tokens_per_second",
                "steps_per_second"):
        if d[key] is not None:
            print(f"  {key:17} {d[key]:.6g}")
    for alarm in d["alarms"]:
        print(f"  warning: {alarm['message']}")
    return 0


def cmd_evaluate_perplexity(args: argparse.Namespace) -> int:
    from workbench.core.evaluation import perplexity, read_text
    from workbench.core.jobs import JobContext

    check_model_options(args, "--compare-model")
    check_whole(args.max_length, "--max-length", 2)
    check_whole(args.stride, "--stride", 1)
    if args.max_length is not None and args.stride is not None and args.stride > args.max_length:
        raise WorkbenchError(f"--stride ({args.stride}) is larger than --max-length "
                             f"({args.max_length}): tokens between windows would never be scored.")
    text = read_text(args.file)
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)
    results = [(loaded, perplexity(loaded, text, args.max_length, args.stride,
                                   JobContext(emit=bar)))]
    if args.compare_model:
        other = load_from_args(argparse.Namespace(**{**vars(args), "model": args.compare_model}),
                               bar)
        results.append((other, perplexity(other, text, args.max_length, args.stride,
                                          JobContext(emit=bar))))
    bar.finish()
    if args.json:
        documents = []
        for model, result in results:
            data = result.to_dict(per_token=args.per_token)
            data.update(device=model.device, dtype=model.dtype, file=args.file)
            documents.append(data)
        if len(documents) == 2:
            documents[0]["compare"] = documents[1]
            documents[0]["same_tokens"] = results[0][1].same_tokens(results[1][1])
        print_json(documents[0])
        return 0
    rows = [("perplexity", lambda r: f"{r.perplexity:.4f}"),
            ("nll per token", lambda r: f"{r.nll_per_token:.4f} nats"),
            ("bits per byte", lambda r: f"{r.bits_per_byte:.4f}"),
            ("tokens scored", lambda r: str(r.tokens)),
            ("window, stride", lambda r: f"{r.max_length}, {r.stride}")]
    print(f"{'model':16}" + "".join(f"{m.name[:30]:32}" for m, _ in results))
    for label, show in rows:
        print(f"{label:16}" + "".join(f"{show(r):32}" for _, r in results))
    print(f"{'device':16}" + "".join(f"{m.device + ', ' + m.dtype:32}" for m, _ in results))
    for model, result in results:
        print(f"most surprising ({model.name}): " + ", ".join(
            f"{t!r} ({b:.1f} bits)" for _, t, b in result.worst(5)))
    if len(results) == 2 and not results[0][1].same_tokens(results[1][1]):
        print("note: the models tokenize the text differently; compare bits per byte.")
    return 0


def cmd_evaluate_generate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from workbench.core.evaluation import make_metric
    from workbench.core.generate_score import (
        RowDone,
        generate_and_score,
        output_folder,
        read_pairs,
        save_result,
    )
    from workbench.core.generation import SamplingSettings
    from workbench.core.jobs import JobContext
    from workbench.core.sampling import parse_strategy

    check_model_options(args)
    metrics = parse_metrics(args.metrics)
    for name in metrics:
        make_metric(name)  # an unknown metric fails before loading
    prompts, refs = read_pairs(args.file)
    base = SamplingSettings(max_new_tokens=args.max_new_tokens, seed=args.seed, chat=args.chat)
    strategy = parse_strategy(args.strategy, base)
    if strategy.settings.num_return_sequences != 1:
        raise WorkbenchError(f"--strategy '{args.strategy}' asks for "
                             f"{strategy.settings.num_return_sequences} sequences: generate-then-"
                             "score scores one output per prompt (leave out n=).")
    settings = replace(strategy.settings, num_return_sequences=1)
    settings.validate()
    folder = output_folder(args.output)  # checked before anything is generated
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)

    def report(event: Any) -> None:
        bar(event)
        if isinstance(event, RowDone) and not args.json:  # a line a row: logs show progress
            bar.finish()
            text = event.hypothesis if len(event.hypothesis) <= 100 else \
                event.hypothesis[:99] + "…"
            print(f"[{event.row}/{event.total}] {event.seconds:.1f} s  {text}", flush=True)

    result = generate_and_score(loaded, prompts, refs, settings, strategy.name, metrics,
                                first_line=not args.all_lines, ctx=JobContext(emit=report))
    bar.finish()
    try:
        folder = save_result(result, folder)
        unsaved = None
    except OSError as exc:  # the scores still reach the output; then one error line
        unsaved = f"The outputs could not be saved in {folder}: {exc.strerror or exc}."
    if args.json:
        print_json(result.to_dict())
    else:
        for m in result.scores.metrics:
            print(f"{m.text}\n    signature: {m.signature}")
        print(f"{result.rows_done} outputs by {loaded.name} ({result.strategy}), "
              f"{result.new_tokens} tokens in {result.seconds:.1f} s"
              + ("" if unsaved else f"; saved in {folder}"))
        for notice in result.notices:
            print(f"note: {notice}")
    if unsaved:
        raise WorkbenchError(unsaved)
    return 0


def cmd_evaluate_classify(args: argparse.Namespace) -> int:
    from workbench.core.classification import evaluate_classifier
    from workbench.core.finetune import read_rows
    from workbench.core.jobs import JobContext

    check_model_options(args)
    for option in ("--text-column", "--label-column"):
        if not getattr(args, option[2:].replace("-", "_")).strip():
            raise WorkbenchError(f"{option} is empty: give the name of a column.")
    read_rows(args.file, args.text_column, args.label_column)  # bad files fail before loading
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)
    result = evaluate_classifier(loaded, args.file, args.text_column, args.label_column,
                                 ctx=JobContext(emit=bar))
    bar.finish()
    if args.json:
        print_json(result.to_dict(with_rows=True))
        return 0
    print(f"accuracy   {result.accuracy:.4f}\nmacro-F1   {result.macro_f1:.4f}\n"
          f"rows       {result.examples}")
    width = max(8, *(len(label) for label in result.labels)) + 2
    print(f"\n{'label':{width}}{'precision':>10}{'recall':>10}{'F1':>10}{'support':>9}")
    for s in result.per_label:
        print(f"{s.label:{width}}{s.precision:10.4f}{s.recall:10.4f}{s.f1:10.4f}{s.support:9}")
    print(f"\nconfusion matrix (rows: true label, columns: predicted)\n{'':{width}}"
          + "".join(f"{label[:9]:>10}" for label in result.labels))
    for label, row in zip(result.labels, result.confusion, strict=True):
        print(f"{label:{width}}" + "".join(f"{n:10}" for n in row))
    for notice in result.notices:
        print(f"note: {notice}")
    return 0


def cmd_evaluate_bleu(args: argparse.Namespace) -> int:
    from workbench.core.evaluation import read_lines, score_translation
    from workbench.core.jobs import JobContext

    metrics = parse_metrics(args.metrics)
    check_whole(args.samples, "--samples", 0, MAX_SAMPLES)
    if args.samples and args.compare is None:
        raise WorkbenchError("--samples sets the resamples of the paired test: give a second "
                             "system with --compare HYP2 as well.")
    check_tokenizer(args.tokenize)
    hyps = read_lines(args.hyp)
    refs = [read_lines(r) for r in args.ref]
    other = read_lines(args.compare) if args.compare else None
    tests = ("bs", "ar") if args.test == "both" else (args.test,)
    if other is not None:
        check_test_memory(args.samples, len(hyps), tests)
    bar = TerminalProgress(quiet=args.json)
    result = score_translation(hyps, refs, metrics, args.tokenize, args.lowercase, other, tests,
                               args.samples, JobContext(emit=bar))
    bar.finish()
    if args.json:
        print_json(result.to_dict())
        return 0
    for m in result.metrics:
        print(f"{m.text}\n    signature: {m.signature}")
    for s in result.significance:
        p = "-" if s.p_value is None else f"{s.p_value:.4f}"
        ci = "" if s.system_ci is None else f" (mean {s.system_mean:.2f} ± {s.system_ci:.2f})"
        print(f"{s.test} {s.metric}: baseline {s.baseline:.2f}, system {s.system:.2f}{ci}, "
              f"p = {p}")
    return 0


COMMANDS = {
    ("models", "list"): cmd_models_list,
    ("models", "fetch"): cmd_models_fetch,
    ("generate", None): cmd_generate,
    ("compare", None): cmd_compare,
    ("attention", None): cmd_attention,
    ("finetune", None): cmd_finetune,
    ("monitor", None): cmd_monitor,
    ("evaluate", "perplexity"): cmd_evaluate_perplexity,
    ("evaluate", "bleu"): cmd_evaluate_bleu,
    ("evaluate", "generate"): cmd_evaluate_generate,
    ("evaluate", "classify"): cmd_evaluate_classify,
}


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text.strip())


def dispatch(args: argparse.Namespace,
             handler: Callable[[argparse.Namespace], int] | None = None) -> int:
    """Run one subcommand (``handler``, or the one COMMANDS names); bad input gives one
    line on stderr and a non-zero exit."""
    handler = handler or COMMANDS[(args.command,
                                   getattr(args, f"{args.command}_command", None))]
    try:
        return handler(args)
    except WorkbenchError as exc:
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:  # torch's OutOfMemoryError is a RuntimeError
        if not isinstance(exc, MemoryError) and type(exc).__name__ != "OutOfMemoryError":
            raise
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        print(f"error: out of memory: {_one_line(str(exc)) or 'an allocation failed'}",
              file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("error: cancelled", file=sys.stderr)
        return 130

"""What every command shares: the parser class, the model and text options, the checks of
arguments (cheap, and before any model is loaded or anything is written), the progress bar
and the JSON output."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from workbench.core.common.errors import WorkbenchError
from workbench.core.common.jobs import LogLine, Progress
from workbench.core.models.catalog import DEFAULT_MODEL

MAX_TEXT_FILE_CHARS = 16 * 2**20  # a prompt or text file: far more than any model's context


class OneLineParser(argparse.ArgumentParser):
    """argparse with the app's error format: bad arguments give one line starting with
    ``error:`` on stderr and exit status 2 (argparse's own prints its usage block first)."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())  # one line, whatever the message quotes
        self.exit(2, f"error: {text} (see {self.prog} --help)\n")

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        # argparse calls this for each subcommand's parser too, with that command's arguments
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self._attach_numbers(args), namespace)

    def _attach_numbers(self, args: list[str]) -> list[str]:
        """``--top-p -inf`` as ``--top-p=-inf``: argparse takes a value that starts with '-'
        for an option unless it looks like ``-1`` or ``-.5`` (not ``-inf``, ``-nan`` or
        ``-1e-3``), and says only "expected one argument". Attached to its number option, the
        value reaches the option's type and the checks, which say what is wrong with it."""
        out: list[str] = []
        index = 0
        while index < len(args):
            arg = args[index]
            if arg == "--":
                out += args[index:]
                break
            following = args[index + 1] if index + 1 < len(args) else None
            if (following is not None and following.startswith("-")
                    and not following.startswith("--")
                    and following not in self._option_string_actions
                    and self._takes_a_number(arg)):
                out.append(f"{arg}={following}")
                index += 2
                continue
            out.append(arg)
            index += 1
        return out

    def _takes_a_number(self, option: str) -> bool:
        """Whether ``option`` (or the one it abbreviates) takes one int or float value."""
        action = self._option_string_actions.get(option)
        if action is None and option.startswith("--") and self.allow_abbrev:
            matches = {a for name, a in self._option_string_actions.items()
                       if name.startswith(option)}
            action = matches.pop() if len(matches) == 1 else None
        return action is not None and action.nargs is None and action.type in (int, float)


def add_text_options(parser: argparse.ArgumentParser, name: str, what: str) -> None:
    """``--NAME TEXT`` or ``--NAME-file FILE`` (UTF-8; for texts longer than one command-line
    argument may be: 128 KiB on Linux), exactly one of them."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(f"--{name}", help=what)
    group.add_argument(f"--{name}-file", metavar="FILE",
                       help=f"read {what} from a UTF-8 file (any length)")


def add_setting_options(parser: Any, cls: type, names: Sequence[str], defaults: Any = None,
                        said: dict[str, str] | None = None) -> None:
    """One option for each of dataclass ``cls``'s settings ``names`` (``--top-k`` for
    ``top_k``), made from the setting's description (:mod:`workbench.core.common.settings`):
    its type, its default (``defaults``' value, else the field's), and a help that names its
    range and its default (as ``said`` words it, where the command gives the option's
    default a meaning of its own). A true/false setting is a ``--name`` / ``--no-name``
    pair."""
    from workbench.core.common.settings import described, kind, option_help

    fields = {f.name: (f, meta) for f, meta in described(cls)}
    for name in names:
        f, meta = fields[name]
        default = getattr(defaults, name) if defaults is not None else f.default
        option = "--" + name.replace("_", "-")
        numeric = kind(f)
        if numeric is bool:
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=default,
                                help=f"{meta.help} (default: {'on' if default else 'off'})")
        else:
            parser.add_argument(option, type=numeric, default=default,
                                metavar={str: "TEXT", int: "N"}.get(numeric, "X"),
                                help=option_help(f, meta, (said or {}).get(name)))


def check_options(settings: Any) -> None:
    """Each described setting of dataclass instance ``settings`` in its range, named by its
    option (``--max-length``), as the commands' own checks name them."""
    from dataclasses import replace

    from workbench.core.common.settings import check_value, described

    for f, meta in described(type(settings)):
        option = "--" + f.name.replace("_", "-")
        check_value(f, replace(meta, label=option), getattr(settings, f.name))


def add_model_options(parser: argparse.ArgumentParser, decode: bool = True) -> None:
    """--model, --device, --dtype, --weights, (``decode``:) --decode and the safety switches."""
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"built-in name, folder, .gguf file or Hub id (default {DEFAULT_MODEL})")
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, mps")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--weights", default="auto", metavar="HOW",
                        help="how a .gguf model's weights are held: auto (kept quantized for "
                             "a model of 250 million parameters and more, else converted to "
                             "float32 once), quantized (4-bit types as int4 with a scale per "
                             "32 values, the others as int8 rows; float32 activations), "
                             "float32 (converted once, the reference numbers)")
    if decode:
        _add_decode_option(parser)
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow Python code shipped with this model to run (only if you "
                             "trust its author)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow pickle checkpoints (.bin/.pt), which can run code")


def _add_decode_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--decode", default="auto", metavar="PATH",
                        help="the decoding path of generation: auto (int8 weights with "
                             "bfloat16 on a CPU with native bfloat16, for models too big for "
                             "its caches; else exact), exact (the loaded model, float32 on "
                             "the CPU), int8 or bf16 (reduced precision), compiled (auto's "
                             "model compiled by torch.compile with a static cache; the first "
                             "run of each shape compiles, 10-60 s)")


def load_from_args(args: argparse.Namespace, bar: TerminalProgress):
    from workbench.core.models.loader import LoadOptions, load_model

    options = LoadOptions(device=args.device, dtype=args.dtype,
                          weights=getattr(args, "weights", "auto"),
                          trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    loaded = load_model(args.model, options, on_event=bar)
    loaded.decode = getattr(args, "decode", "auto")
    bar.finish()
    return loaded


# --- checks of arguments: cheap, and before any model is loaded or anything is written ----------
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


def text_argument(args: argparse.Namespace, name: str) -> str:
    """The text of ``--NAME`` or of ``--NAME-file`` (argparse lets exactly one through)."""
    from workbench.core.common.data_files import read_text

    value = getattr(args, name)
    if value is not None:
        check_utf8(value, f"--{name.replace('_', '-')}")
        return value
    return read_text(getattr(args, f"{name}_file"), f"--{name.replace('_', '-')}-file",
                     max_chars=MAX_TEXT_FILE_CHARS, empty_ok=True)


def check_device(value: str | None) -> None:
    from workbench.core.models.device import DEVICE_CHOICES

    device = (value or "auto").lower()
    if device not in DEVICE_CHOICES and not re.fullmatch(r"cuda:\d+", device):
        raise WorkbenchError(f"Unknown device '{value}': use one of "
                             f"{', '.join(DEVICE_CHOICES)} (or cuda:N).")


def check_model_options(args: argparse.Namespace, *models: str) -> None:
    """--model (and the other model options named), --device and --dtype."""
    from workbench.core.models.device import DTYPE_CHOICES

    for option in ("--model", *models):
        value = getattr(args, option[2:].replace("-", "_"))
        if value is not None and not value.strip():
            raise WorkbenchError(f"{option} is empty: give a built-in name, folder, .gguf file "
                                 "or Hub id.")
    from workbench.core.models.decoding import check_decode

    check_device(args.device)
    if (args.dtype or "auto").lower() not in DTYPE_CHOICES:
        raise WorkbenchError(f"Unknown dtype '{args.dtype}': use one of "
                             f"{', '.join(DTYPE_CHOICES)}.")
    if hasattr(args, "decode"):
        check_utf8(args.decode, "--decode")
        args.decode = check_decode(args.decode)
    if hasattr(args, "weights"):
        from workbench.core.models.loader import check_weights

        check_utf8(args.weights, "--weights")
        args.weights = check_weights(args.weights)


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


# --- output -------------------------------------------------------------------------------------
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

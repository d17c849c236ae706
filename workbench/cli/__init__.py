"""The headless command line. Every command calls the same core functions as the GUI.

One module per command group, each with the function that adds its arguments next to the
functions that run it (``add_parsers`` and ``COMMANDS``): ``models``, ``generate``
(generate, compare), ``sweep``, ``attention``, ``attribute``, ``finetune`` (finetune, monitor),
``evaluate``, ``tradeoffs`` and ``bench`` (its arguments; the command is
``workbench.benchmarks.command``). ``common`` holds what they share, ``window`` the options of
``python main.py`` without a command.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

from workbench import APP_NAME, __version__
from workbench.cli import (
    attention,
    attribute,
    bench,
    evaluate,
    finetune,
    generate,
    models,
    sweep,
    tradeoffs,
)
from workbench.cli.common import OneLineParser, TerminalProgress, parse_names, print_json
from workbench.cli.window import add_window_options, check_window_options
from workbench.core.common.errors import Cancelled, WorkbenchError

__all__ = ["COMMANDS", "OneLineParser", "TerminalProgress", "WorkbenchError", "build_parser",
           "check_window_options", "dispatch", "parse_names", "print_json"]

GROUPS = (models, generate, sweep, attention, attribute, finetune, evaluate, tradeoffs,
          bench)  # --help order

COMMANDS: dict[tuple[str, str | None], Callable[[argparse.Namespace], int]] = {
    key: handler for group in GROUPS for key, handler in getattr(group, "COMMANDS", {}).items()}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python main.py",
        description=f"{APP_NAME}: experiment with language models on your own machine. "
                    "Without a command, opens the window.")
    parser.add_argument("--version", action="version", version=f"{APP_NAME} {__version__}")
    add_window_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def _one_line(text: str) -> str:
    return re.sub(r"\s*\n\s*", " ", text.strip())


def dispatch(args: argparse.Namespace,
             handler: Callable[[argparse.Namespace], int] | None = None) -> int:
    """Run one subcommand (``handler``, or the one COMMANDS names); bad input gives one
    line on stderr and a non-zero exit."""
    handler = handler or COMMANDS[(args.command,
                                   getattr(args, f"{args.command}_command", None))]
    from workbench.core.common.threads import adapted_threads

    try:
        if args.command == "bench":  # the benchmarks set the threads of each measurement
            return handler(args)
        with adapted_threads():  # the cores other processes leave free now
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

"""``python main.py`` without a command: the options of the window, checked before it opens."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.cli.common import check_device, check_utf8
from workbench.core.errors import WorkbenchError


def add_window_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model to load when the window opens "
                        "(built-in name, folder, .gguf file or Hub id)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda or mps")
    parser.add_argument("--screenshot", metavar="DIR",
                        help="open the window offscreen, save a PNG of each tab into DIR, exit")
    parser.add_argument("--no-autoload", action="store_true",
                        help="do not load the last model when the window opens")
    parser.add_argument("--startup-probe", action="store_true", help=argparse.SUPPRESS)


def check_window_options(args: argparse.Namespace) -> None:
    """The options of ``python main.py`` without a command (the window)."""
    if args.model is not None:
        check_utf8(args.model, "--model")
        if not args.model.strip():
            raise WorkbenchError("--model is empty: give a built-in name, folder, .gguf file "
                                 "or Hub id.")
    check_device(args.device)
    if args.screenshot is not None:
        folder = Path(args.screenshot).expanduser()
        if not args.screenshot.strip() or (folder.exists() and not folder.is_dir()):
            raise WorkbenchError(f"--screenshot needs a folder, not '{args.screenshot}'.")

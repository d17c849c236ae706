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
    parser.add_argument("--theme", choices=("system", "light", "dark"), default=None,
                        help="the window's colours: the system's (default, or the one "
                        "chosen in View ▸ Theme), light or dark")
    parser.add_argument("--size", metavar="WxH", default=None,
                        help="the window's size in pixels, e.g. 1920x1080 (default 1280x820; "
                        "--screenshot takes its pictures at this size)")
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
    if args.size is not None:
        args.window_size = parse_size(args.size)
    if args.screenshot is not None:
        folder = Path(args.screenshot).expanduser()
        if not args.screenshot.strip() or (folder.exists() and not folder.is_dir()):
            raise WorkbenchError(f"--screenshot needs a folder, not '{args.screenshot}'.")


def parse_size(text: str) -> tuple[int, int]:
    """``1920x1080`` → (1920, 1080), each side between 640 and 7680 pixels."""
    width, sep, height = text.strip().lower().partition("x")
    try:
        size = int(width), int(height)
    except ValueError:
        size = None
    if not sep or size is None:
        raise WorkbenchError(f"--size takes WIDTHxHEIGHT in pixels (e.g. 1920x1080), not "
                             f"'{text[:40]}'.")
    if not all(640 <= side <= 7680 for side in size):
        raise WorkbenchError(f"--size must be between 640x640 and 7680x7680 pixels, not "
                             f"{size[0]}x{size[1]}.")
    return size

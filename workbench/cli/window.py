"""``python main.py`` without a command: the options of the window, checked before it opens."""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench.cli.common import check_device, check_utf8
from workbench.core.common.errors import WorkbenchError

# The views ``--screenshot`` takes (each into NAME.png): the four tabs (a number) and views
# inside them (a number and a letter). workbench.ui.shell.launch knows what each one needs.
SCREENSHOT_VIEWS = (
    "1-generate", "1b-compare", "1c-sampler-stages", "1d-why-this-token", "2-attention",
    "3-finetune", "3b-attached-run", "4-evaluate", "4b-multiple-choice", "4c-bleu",
    "4d-classification", "4e-sampling-sweep")
TAB_VIEWS = tuple(name for name in SCREENSHOT_VIEWS if name.partition("-")[0].isdigit())


def add_window_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model to load when the window opens "
                        "(built-in name, folder, .gguf file or Hub id)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda or mps")
    parser.add_argument("--screenshot", metavar="DIR",
                        help="open the window offscreen, run a short demo with the model, "
                        "save a PNG of each tab and of views inside them into DIR, exit")
    parser.add_argument("--theme", choices=("system", "light", "dark"), default=None,
                        help="the window's colours: the system's (default, or the one "
                        "chosen in View ▸ Theme), light or dark")
    parser.add_argument("--size", metavar="WxH", default=None,
                        help="the window's size in pixels, e.g. 1920x1080 (default 1280x820; "
                        "--screenshot takes its pictures at this size)")
    parser.add_argument("--views", metavar="NAMES", default=None,
                        help="with --screenshot: take only these views, comma-separated "
                        "names, their numbers or the start of a name (e.g. 1,1c or "
                        "generate,sampler-stages), and do only the demo's work they need "
                        f"(default: all): {', '.join(SCREENSHOT_VIEWS)}")
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
            raise WorkbenchError(f"--screenshot needs a folder, not {args.screenshot!r}.")
    if args.views is not None:
        if args.screenshot is None:
            raise WorkbenchError("--views chooses the views of --screenshot: give "
                                 "--screenshot DIR too.")
        args.views = parse_views(args.views)
        demo_only = [name for name in args.views if name not in TAB_VIEWS]
        if args.no_autoload and demo_only:
            raise WorkbenchError(f"--views {','.join(demo_only)} needs the demo, which "
                                 f"--no-autoload turns off (without it: "
                                 f"{', '.join(TAB_VIEWS)}).")


def parse_size(text: str) -> tuple[int, int]:
    """``1920x1080`` → (1920, 1080), each side between 640 and 7680 pixels."""
    width, sep, height = text.strip().lower().partition("x")
    try:
        size = int(width), int(height)
    except ValueError:
        size = None
    if not sep or size is None:
        raise WorkbenchError(f"--size takes WIDTHxHEIGHT in pixels (e.g. 1920x1080), not "
                             f"{text[:40]!r}.")
    if not all(640 <= side <= 7680 for side in size):
        raise WorkbenchError(f"--size must be between 640x640 and 7680x7680 pixels, not "
                             f"{size[0]}x{size[1]}.")
    return size


def parse_views(text: str) -> tuple[str, ...]:
    """``--views``: comma-separated view names (``1c-sampler-stages``), their numbers
    (``1c``), their names without the number (``sampler-stages``) or the unambiguous start
    of either (``1c-s``, ``sampler``) → the views' full names, in SCREENSHOT_VIEWS' order."""
    check_utf8(text, "--views")
    chosen: set[str] = set()
    items = [item.strip().lower().removesuffix(".png") for item in text.split(",")]
    for item in filter(None, items):
        exact = [name for name in SCREENSHOT_VIEWS
                 if item in (name, *name.split("-", 1))]
        starts = [name for name in SCREENSHOT_VIEWS
                  if name.startswith(item) or name.split("-", 1)[1].startswith(item)]
        found = exact or starts
        if not found:
            raise WorkbenchError(f"--views: no view {item[:40]!r} (the views: "
                                 f"{', '.join(SCREENSHOT_VIEWS)}).")
        if len(found) > 1:
            raise WorkbenchError(f"--views: {item[:40]!r} could be any of "
                                 f"{', '.join(found)}: give more of the name.")
        chosen.add(found[0])
    if not chosen:
        raise WorkbenchError(f"--views needs at least one view: "
                             f"{', '.join(SCREENSHOT_VIEWS)}.")
    return tuple(name for name in SCREENSHOT_VIEWS if name in chosen)

"""Entry point: parse the command line, then open the window or run a headless command.

Kept light on purpose: torch and transformers are imported only when a command (or the
worker thread, after the window is shown) needs them.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from workbench.core.common.threads import prepare_process

    prepare_process()  # before torch starts its threads: how long they spin while waiting
    from workbench import cli

    parser = cli.build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        try:
            cli.check_window_options(args)
        except cli.WorkbenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        from workbench.ui.shell.launch import run_gui

        return run_gui(args)
    if args.command == "bench":  # the benchmarks drive the window and the CLI: above both
        from workbench.benchmarks import command

        return cli.dispatch(args, command)
    return cli.dispatch(args)

"""``bench``: its arguments. The command itself is ``workbench.benchmarks.command``, which
drives the window and the command line (a layer above both): ``workbench.app`` hands it to
:func:`workbench.cli.dispatch`."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="performance figures, each a ratio against a "
                           "bare baseline measured in the same run")
    bench.add_argument("--only", help="comma-separated figure names")
    bench.add_argument("--json", action="store_true", help="print one JSON document")

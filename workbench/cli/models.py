"""``models list`` and ``models fetch``: the model catalog."""

from __future__ import annotations

import argparse

from workbench.cli.common import OneLineParser, TerminalProgress, print_json


def add_parsers(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="the model catalog")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True,
                                       parser_class=OneLineParser)
    listing = models_sub.add_parser("list", help="built-in models and the Hugging Face cache")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    fetch = models_sub.add_parser("fetch", help="download a built-in model (or a Hub id)")
    fetch.add_argument("name")
    fetch.add_argument("--json", action="store_true", help="print one JSON document")


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


COMMANDS = {
    ("models", "list"): cmd_models_list,
    ("models", "fetch"): cmd_models_fetch,
}

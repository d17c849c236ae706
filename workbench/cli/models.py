"""``models list`` and ``models fetch``: the model catalog."""

from __future__ import annotations

import argparse

from workbench.cli.common import OneLineParser, TerminalProgress, print_json


def add_parsers(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="the model catalog")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True,
                                       parser_class=OneLineParser)
    listing = models_sub.add_parser(
        "list", help="built-in models, the Hugging Face cache, and the models of LM Studio, "
                     "Ollama, GPT4All and llama.cpp's cache")
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    fetch = models_sub.add_parser("fetch", help="download a built-in model (or a Hub id)")
    fetch.add_argument("name")
    fetch.add_argument("--json", action="store_true", help="print one JSON document")


def _memory(parameters: int | None) -> dict[str, int] | None:
    """The weights' bytes in each dtype (what the picker shows; loading adds an overhead)."""
    from workbench.core.models.memory import BYTES_PER_ELEMENT, MemoryEstimate

    if parameters is None:
        return None
    estimate = MemoryEstimate(parameters)
    return {dtype: estimate.weights_bytes(dtype) for dtype in BYTES_PER_ELEMENT}


def _row(r) -> str:
    from workbench.core.common.memory import format_bytes
    from workbench.core.models.memory import MemoryEstimate

    params = f"{r.parameters / 1e9:.2f}B" if r.parameters is not None else "?"
    memory = ""
    if r.parameters is not None:
        estimate = MemoryEstimate(r.parameters)
        memory = (f"{format_bytes(estimate.weights_bytes('float32'))} fp32 / "
                  f"{format_bytes(estimate.weights_bytes('bfloat16'))} bf16")
    quant = r.quantization or ""
    line = f"  {r.name:58} {params:>7} {quant:8} {memory:22}"
    return line + (f" ({r.note})" if r.note else "")


def cmd_models_list(args: argparse.Namespace) -> int:
    from workbench.core.models.catalog import list_models, local_listing
    from workbench.core.models.local_models import discover

    rows = list_models()
    scans = discover()
    local_rows = [local_listing(m) for scan in scans for m in scan.models]
    if args.json:
        models = []
        for r in rows + local_rows:
            data = r.to_dict()
            data["weights_bytes"] = _memory(r.parameters)
            models.append(data)
        print_json({"models": models, "locations": [
            {"source": s.location.source, "label": s.location.label,
             "folders": [str(f) for f in s.location.folders], "origin": s.location.origin,
             "override": s.location.override, "found": s.found, "models": len(s.models),
             "notes": s.notes, "seconds": round(s.seconds, 4)} for s in scans]})
        return 0
    print(f"{'NAME':40} {'TASK':10} {'AVAILABLE':10} SOURCE")
    for r in rows:
        where = f"{r.source}: {r.location}" if r.available else \
            f"not downloaded (python main.py models fetch {r.name})"
        flag = " (default)" if r.default else ""
        print(f"{r.name + flag:40} {r.task:10} {'yes' if r.available else 'no':10} {where}")
    for scan in scans:
        loc = scan.location
        folders = ", ".join(str(f) for f in loc.folders)
        origin = f"set by {loc.origin}" if loc.origin != "default" else \
            f"{loc.override} overrides"
        state = f"{len(scan.models)} model(s)" if scan.found else "not found"
        print(f"\n{loc.label}: {state} in {folders} ({origin})")
        for model in scan.models:
            print(_row(local_listing(model)))
            print(f"    load with --model {model.reference}")
        for note in scan.notes:
            print(f"  note: {note}")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from workbench.core.common.jobs import JobContext
    from workbench.core.models import catalog

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

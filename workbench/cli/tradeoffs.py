"""``tradeoffs``: performance against efficiency, a row per decoding path and storage of the
model (``workbench.core.evaluation.tradeoffs``)."""

from __future__ import annotations

import argparse
import sys

from workbench.cli.common import (
    TerminalProgress,
    add_model_options,
    add_setting_options,
    check_model_options,
    check_options,
    load_from_args,
    print_json,
)
from workbench.core.evaluation.tradeoffs import TradeoffResult, TradeoffRow, TradeoffSettings

COLUMNS = ("path", "storage", "decode tok/s", "CPU÷wall", "prompt tok/s", "CPU÷wall",
           "weights", "peak +{kind}", "perplexity", "× ref", "agreement", "lead")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("tradeoffs", help="performance against efficiency: tokens/s, prompt "
                                          "tokens/s, memory, perplexity and agreement of each "
                                          "decoding path and storage of the model")
    add_model_options(tr, decode=False)  # every path is measured
    add_setting_options(tr, TradeoffSettings, ["new_tokens", "prompt_tokens", "text_tokens"])
    tr.add_argument("--compiled", action="store_true",
                    help="also the compiled path (torch.compile; compiles for 10-60 s)")
    tr.add_argument("--no-other-storage", action="store_true",
                    help="for a .gguf model, leave out the rows of its other storage (the "
                         "float32 conversion or the weights kept quantized, loaded in turn)")
    tr.add_argument("--json", action="store_true", help="print one JSON document")


def tradeoff_settings(args: argparse.Namespace) -> TradeoffSettings:
    """The settings as the options give them, checked, each named by its option."""
    settings = TradeoffSettings(new_tokens=args.new_tokens, prompt_tokens=args.prompt_tokens,
                                text_tokens=args.text_tokens)
    check_options(settings)
    return settings


def cmd_tradeoffs(args: argparse.Namespace) -> int:
    from workbench.core.common.jobs import JobContext
    from workbench.core.evaluation.tradeoffs import tradeoffs

    check_model_options(args)
    settings = tradeoff_settings(args)
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)
    result = tradeoffs(loaded, settings, JobContext(emit=bar), compiled=args.compiled,
                       other_storage=not args.no_other_storage)
    bar.finish()
    if args.json:
        print_json(result.to_dict())
        return 0
    print(table(result))
    for line in details(result):
        print(line)
    print(f"[{result.seconds:.1f} s, {loaded.device}]", file=sys.stderr)
    return 0


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def cells(row: TradeoffRow) -> list[str]:
    """A measured row's cells, in the order of :data:`COLUMNS`."""
    from workbench.core.common.memory import format_bytes

    speed = row.decode_tokens_per_second
    return [row.path, row.weights, _number(speed, 1 if speed is None or speed < 1000 else 0),
            _number(row.decode_cpu_per_wall, 2), _number(row.prompt_tokens_per_second, 0),
            _number(row.prompt_cpu_per_wall, 2),
            "-" if row.weight_bytes is None else format_bytes(row.weight_bytes),
            "-" if row.peak_increase_bytes is None else format_bytes(row.peak_increase_bytes),
            _number(row.perplexity, 3), _number(row.perplexity_ratio, 4),
            _number(row.agreement, 3), "-" if row.same_lead is None else str(row.same_lead)]


def table(result: TradeoffResult) -> str:
    """The measured rows with aligned columns (text left, numbers right)."""
    header = [c.format(kind=result.peak_kind) for c in COLUMNS]
    body = [cells(r) for r in result.rows if r.measured]
    widths = [max(len(header[i]), *(len(row[i]) for row in body)) if body else len(header[i])
              for i in range(len(header))]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if i < 2 else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    return "\n".join([line(header), *(line(row) for row in body)])


def details(result: TradeoffResult) -> list[str]:
    """What the table's numbers are, its reference, the rows not measured and the notes."""
    s = result.settings
    lines = [f"{result.model}: greedy decoding of {s['new_tokens']} new tokens, a forward "
             f"pass of {result.prompt_tokens} prompt tokens, perplexity on "
             f"{result.text_tokens} tokens (window {result.window}) of the sample corpus"]
    if result.reference:
        lines.append(f"reference (× ref, agreement): {result.reference}"
                     + (f" ({result.reference_note})" if result.reference_note else ""))
    skipped = [r for r in result.rows if not r.measured]
    if skipped:
        lines.append("not measured:")
        lines += [f"  {r.key}: {r.skipped}" for r in skipped]
    lines += [f"note: {r.key}: {r.note}" for r in result.rows if r.measured and r.note]
    lines += [f"note: {n}" for n in result.notes]
    return lines


COMMANDS = {
    ("tradeoffs", None): cmd_tradeoffs,
}

"""``attention``: the attention of a text, as an offline bertviz page and head statistics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workbench.cli.common import (
    TerminalProgress,
    add_model_options,
    add_setting_options,
    add_text_options,
    check_model_options,
    check_options,
    check_output_file,
    check_utf8,
    load_from_args,
    print_json,
    text_argument,
)
from workbench.core.common.errors import WorkbenchError
from workbench.core.interpret.attention import AttentionSettings


def add_parsers(sub: argparse._SubParsersAction) -> None:
    att = sub.add_parser("attention", help="attention of a text: offline bertviz page and "
                         "head statistics")
    add_model_options(att)
    add_text_options(att, "text", "the text to analyse")
    att.add_argument("--text-b", help="sentence B, for encoders")
    att.add_argument("--view", choices=["head", "model"], default="head")
    att.add_argument("--html", metavar="FILE", help="write the bertviz page (works offline)")
    add_setting_options(att, AttentionSettings, ["max_tokens", "page_tokens"])
    att.add_argument("--layers", help="comma-separated layer indices for the page "
                     "(default: all, or 6 spread over deeper models)")
    att.add_argument("--json", action="store_true", help="print one JSON document")


def parse_layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    layers: list[int] = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            layer = int(part)
        except ValueError:
            raise WorkbenchError(f"--layers takes numbers such as 0,5, not '{text}'.") from None
        if layer < 0:
            raise WorkbenchError(f"--layers: layer {layer} does not exist (layers count from 0).")
        if layer not in layers:
            layers.append(layer)
    if not layers:
        raise WorkbenchError(f"--layers names no layer ('{text}'): give numbers such as 0,5.")
    return layers


def attention_settings(args: argparse.Namespace) -> AttentionSettings:
    """The numbers of tokens as ``attention`` gives them, checked, each named by its option
    (``--max-tokens``) as this command's checks name them."""
    settings = AttentionSettings(max_tokens=args.max_tokens, page_tokens=args.page_tokens)
    check_options(settings)
    settings.validate()
    return settings


def cmd_attention(args: argparse.Namespace) -> int:
    from workbench.core.interpret.attention import (
        attention_layers,
        bertviz_html,
        compute_attention,
        head_statistics,
    )

    check_model_options(args)
    attention_settings(args)
    layers = parse_layers(args.layers)
    if args.html is not None:
        check_output_file(args.html, "--html")
    if args.text_b is not None:
        check_utf8(args.text_b, "--text-b")
    text = text_argument(args, "text")
    if not text.strip():
        raise WorkbenchError("The text is empty." if args.text is not None
                             else f"--text-file {args.text_file} holds no text.")
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)
    count = attention_layers(loaded.model)
    bad = [layer for layer in layers or [] if count is not None and layer >= count]
    if bad:
        raise WorkbenchError(f"--layers: layer {', '.join(map(str, bad))} is out of range: "
                             f"{loaded.name} has {count} layers (0–{count - 1}).")
    result = compute_attention(loaded, text, args.text_b, args.max_tokens)
    notices = list(result.notices)
    if layers is not None and not args.html:
        notices.append("--layers chooses the layers of the --html page; without --html it "
                       "changes nothing.")
    if args.html:
        page, more = bertviz_html(result, args.view, layers, max_tokens=args.page_tokens)
        notices += more
        try:
            Path(args.html).write_text(page, encoding="utf-8")
        except OSError as exc:
            raise WorkbenchError(f"Cannot write {args.html}: {exc.strerror or exc}") from None
    stats = head_statistics(result)
    if args.json:
        print_json({"model": loaded.name, "tokens": result.tokens, "layers": result.layers,
                     "heads": result.heads, "sentence_b_start": result.sentence_b_start,
                     "head_statistics": {k: v.round(5).tolist() for k, v in stats.items()},
                     "html": args.html, "notices": notices})
        return 0
    print(f"{loaded.name}: {len(result.tokens)} tokens, {result.layers} layers × "
          f"{result.heads} heads")
    print("tokens: " + " ".join(repr(t) for t in result.tokens))
    prev = stats["previous token"]
    layer, head = divmod(int(prev.argmax()), result.heads)
    print(f"most previous-token head: layer {layer} head {head} ({prev.max():.2f})")
    ent = stats["entropy"]
    layer, head = divmod(int(ent.argmin()), result.heads)
    print(f"most focused head: layer {layer} head {head} (entropy {ent.min():.2f} bits)")
    if args.html:
        print(f"bertviz {args.view} view written to {args.html}")
    for notice in notices:
        print(f"note: {notice}", file=sys.stderr)
    return 0


COMMANDS = {("attention", None): cmd_attention}

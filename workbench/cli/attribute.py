"""``attribute``: how much each input token contributed to a target, with captum's methods
(integrated gradients, input × gradient, saliency, feature ablation)."""

from __future__ import annotations

import argparse
import sys

from workbench.cli.common import (
    TerminalProgress,
    add_model_options,
    add_setting_options,
    add_text_options,
    check_model_options,
    check_output_file,
    check_utf8,
    load_from_args,
    print_json,
    text_argument,
)
from workbench.core.common.errors import WorkbenchError
from workbench.core.interpret.attribution_options import AttributionOptions


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from workbench.core.interpret.attribution_result import METHODS

    att = sub.add_parser("attribute", help="attribution of a target or generated tokens to the "
                         "input tokens (captum: integrated gradients, input × gradient, "
                         "saliency, feature ablation)")
    add_model_options(att)
    add_text_options(att, "prompt", "the prompt (for a classifier: the text to classify)")
    what = att.add_mutually_exclusive_group()
    what.add_argument("--target", help="a continuation of the prompt, attributed as it is "
                      "tokenized (a leading space usually belongs to it)")
    add_setting_options(what, AttributionOptions, ["max_new_tokens"])
    what.add_argument("--label", help="a classifier's label to attribute, by name or index "
                      "(default: the label it predicts)")
    att.add_argument("--method", default="ig", help=f"{', '.join(METHODS)} (default ig)")
    add_setting_options(att, AttributionOptions, ["steps"])
    base = att.add_mutually_exclusive_group()
    base.add_argument("--baseline", default=None,
                      help="what a token is compared with (integrated gradients, ablation): "
                           "pad (default), eos, zero (a zero embedding), or a token id (as "
                           "--baseline-id)")
    add_setting_options(base, AttributionOptions, ["baseline_id"])
    att.add_argument("--csv", metavar="FILE", help="write the tokens and their scores")
    att.add_argument("--html", metavar="FILE", help="write a self-contained page: the text "
                     "coloured by score, the table and the matrix")
    att.add_argument("--json", action="store_true", help="print one JSON document")


def options_from_args(args: argparse.Namespace) -> AttributionOptions:
    """The attribution's options as ``attribute`` gives them (checked by ``validate()``)."""
    return AttributionOptions(method=args.method, steps=args.steps, baseline=args.baseline,
                              baseline_id=args.baseline_id, max_new_tokens=args.max_new_tokens)


def cmd_attribute(args: argparse.Namespace) -> int:
    from workbench.core.common.jobs import JobContext
    from workbench.core.interpret.attribution import attribute
    from workbench.core.interpret.attribution_classifier import attribute_classifier
    from workbench.core.interpret.attribution_export import export_csv, export_html
    from workbench.core.models.catalog import CLASSIFIER

    check_model_options(args)
    options = options_from_args(args)
    options.validate()
    baseline = options.chosen_baseline()
    for option, value in (("--target", args.target), ("--label", args.label),
                          ("--baseline", args.baseline), ("--method", args.method)):
        if value is not None:
            check_utf8(value, option)
    if args.target is not None and not args.target:
        raise WorkbenchError("--target is empty: give the continuation to attribute.")
    for option, path in (("--csv", args.csv), ("--html", args.html)):
        if path is not None:
            check_output_file(path, option)
    prompt = text_argument(args, "prompt")
    if not prompt.strip():
        raise WorkbenchError("The prompt is empty." if args.prompt is not None
                             else f"--prompt-file {args.prompt_file} holds no text.")
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)
    ctx = JobContext(emit=bar)
    if loaded.task == CLASSIFIER:
        if args.target is not None or args.max_new_tokens is not None:
            raise WorkbenchError(f"{loaded.name} is a classifier: give --label (or nothing, for "
                                 "the label it predicts), not --target or --max-new-tokens.")
        result = attribute_classifier(loaded, prompt, args.label, args.method, args.steps,
                                      baseline, ctx)
    else:
        if args.label is not None:
            raise WorkbenchError(f"--label is for classifiers; {loaded.name} is a {loaded.task} "
                                 "model: give --target or --max-new-tokens.")
        if args.target is None and args.max_new_tokens is None:
            raise WorkbenchError("Give --target TEXT (a continuation to attribute) or "
                                 "--max-new-tokens N (a sequence to generate and attribute).")
        result = attribute(loaded, prompt, args.target, args.max_new_tokens, args.method,
                           args.steps, baseline, ctx)
    bar.finish()
    if args.csv:
        export_csv([result], args.csv)
    if args.html:
        export_html([result], args.html, f"{loaded.name}: {result.describe()}")
    if args.json:
        print_json(result.to_dict() | {"device": loaded.device, "dtype": loaded.dtype,
                                       "csv": args.csv, "html": args.html})
        return 0
    print(f"{loaded.name}: {result.describe()}")
    what = {"continuation": "target", "generated": "generated", "classification": "label"}
    line = (f"{what[result.kind]} {result.target!r} ({len(result.outputs)} token"
            f"{'s' if len(result.outputs) != 1 else ''}): log p = {result.target_logprob:.4f}")
    if result.baseline_logprob is not None:
        line += f", from the baseline {result.baseline_logprob:.4f}"
    if result.delta is not None:
        line += f"; convergence delta {result.delta:+.3g}"
    print(line)
    width = max([len(repr(t)) for t in result.tokens] + [5])
    print(f"{'position':>8}  {'token':{width}}  score")
    for position, token, score in zip(result.positions, result.tokens, result.scores,
                                      strict=True):
        print(f"{position:>8}  {token!r:{width}}  {score:+.5g}")
    if len(result.rows) > 1:
        print(f"[{len(result.rows)} rows, one per {what[result.kind]} token: --json or --html "
              "for them]", file=sys.stderr)
    for path in (args.csv, args.html):
        if path:
            print(f"written: {path}", file=sys.stderr)
    for notice in result.notices:
        print(f"note: {notice}", file=sys.stderr)
    return 0


COMMANDS = {("attribute", None): cmd_attribute}

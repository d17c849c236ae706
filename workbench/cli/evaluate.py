"""``evaluate``: perplexity, BLEU / chrF / TER with sacrebleu, generate-then-score,
classifier metrics, and multiple-choice tasks and sentence pairs scored as
lm-evaluation-harness scores them."""

from __future__ import annotations

import argparse
from typing import Any

from workbench.cli.common import (
    OneLineParser,
    TerminalProgress,
    add_model_options,
    add_setting_options,
    check_model_options,
    check_options,
    check_utf8,
    load_from_args,
    parse_names,
    print_json,
)
from workbench.core.common.errors import WorkbenchError
from workbench.core.evaluation.choice import TARGET_DELIMITER, ChoiceSettings
from workbench.core.evaluation.classification import ClassifierSettings
from workbench.core.evaluation.generate_score import GenerateScoreSettings
from workbench.core.evaluation.metrics import PerplexitySettings, SignificanceSettings
from workbench.core.generation.settings import SamplingSettings


def add_parsers(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("evaluate", help="perplexity, BLEU / chrF / TER with sacrebleu, "
                        "generate-then-score, classifier metrics, multiple choice, sentence "
                        "pairs")
    ev_sub = ev.add_subparsers(dest="evaluate_command", metavar="METRIC", required=True,
                               parser_class=OneLineParser)
    _add_perplexity(ev_sub)
    _add_bleu(ev_sub)
    _add_generate(ev_sub)
    _add_classify(ev_sub)
    _add_choice(ev_sub)
    _add_pairs(ev_sub)


def _add_perplexity(ev_sub: argparse._SubParsersAction) -> None:
    """``evaluate perplexity``: a model's perplexity on a text file."""
    ppl = ev_sub.add_parser("perplexity", help="perplexity of a model on a text file")
    add_model_options(ppl)
    ppl.add_argument("--file", required=True, help="a UTF-8 text file")
    add_setting_options(ppl, PerplexitySettings, ["max_length", "stride"])
    ppl.add_argument("--per-token", action="store_true", help="with --json: every token's NLL")
    ppl.add_argument("--compare-model", metavar="M2",
                     help="a second model scored on the same text and settings, side by side")
    ppl.add_argument("--json", action="store_true", help="print one JSON document")


def _add_bleu(ev_sub: argparse._SubParsersAction) -> None:
    """``evaluate bleu``: BLEU, chrF and TER of a hypothesis file."""
    bleu = ev_sub.add_parser("bleu", help="BLEU, chrF and TER of a hypothesis file")
    bleu.add_argument("--hyp", required=True, help="hypotheses, one segment a line")
    bleu.add_argument("--ref", action="append", required=True, help="a reference file (repeat)")
    bleu.add_argument("--metrics", default="bleu,chrf,ter",
                      help="comma-separated: bleu, chrf, chrf++, ter")
    bleu.add_argument("--tokenize", default=None,
                      help="sacrebleu BLEU tokenizer (13a, intl, char, none, zh, ...)")
    bleu.add_argument("--lowercase", action="store_true")
    bleu.add_argument("--compare", metavar="HYP2", help="a second system: paired significance "
                      "tests against the first")
    bleu.add_argument("--test", default="bs", choices=["bs", "ar", "both"],
                      help="paired bootstrap (bs), approximate randomization (ar), or both")
    add_setting_options(bleu, SignificanceSettings, ["samples"])
    bleu.add_argument("--json", action="store_true", help="print one JSON document")


def _add_generate(ev_sub: argparse._SubParsersAction) -> None:
    """``evaluate generate``: generate-then-score on a TSV of prompts and references."""
    defaults = SamplingSettings()
    gs = ev_sub.add_parser("generate", help="generate-then-score: the model writes an output "
                           "for each prompt of a TSV, scored against its references")
    add_model_options(gs)
    gs.add_argument("--file", required=True,
                    help="TSV: prompt<TAB>reference[<TAB>reference2...] a line; optional header")
    gs.add_argument("--strategy", default="greedy",
                    help='"greedy", a preset (top-k 40, nucleus 0.9, creative, min-p 0.1) or '
                         '"top_k=40,temperature=0.8" (as for compare)')
    add_setting_options(gs, GenerateScoreSettings, ["max_new_tokens", "batch_size", "seed"])
    gs.add_argument("--chat", action=argparse.BooleanOptionalAction, default=defaults.chat)
    gs.add_argument("--all-lines", action="store_true",
                    help="score the whole output joined on one line (default: its first line)")
    gs.add_argument("--metrics", default="bleu,chrf", help="comma-separated: bleu, chrf, "
                    "chrf++, ter")
    gs.add_argument("--output", metavar="DIR", help="folder for outputs.tsv and result.json "
                    "(default: a new folder in the app's data folder)")
    gs.add_argument("--json", action="store_true", help="print one JSON document")


def _add_classify(ev_sub: argparse._SubParsersAction) -> None:
    """``evaluate classify``: a classifier's metrics on a labelled file."""
    cl = ev_sub.add_parser("classify", help="accuracy, macro-F1 and confusion matrix of a "
                           "classifier on a labelled file")
    add_model_options(cl)
    cl.add_argument("--file", required=True, help="a labelled .csv, .tsv or .jsonl file")
    cl.add_argument("--text-column", default="text")
    cl.add_argument("--label-column", default="label")
    add_setting_options(cl, ClassifierSettings, ["batch_size", "max_length"])
    cl.add_argument("--json", action="store_true", help="print one JSON document")


def _add_choice(ev_sub: argparse._SubParsersAction) -> None:
    """``evaluate choice``: multiple-choice accuracy."""
    mc = ev_sub.add_parser("choice", help="multiple-choice accuracy (acc, acc_norm) by the "
                           "log-likelihood of each choice, as lm-evaluation-harness computes it")
    add_model_options(mc)
    mc.add_argument("--file", required=True, help="a .jsonl, .csv or .tsv file of items: a "
                    "context, a list of choices (in CSV/TSV a JSON list) and the index of the "
                    "right one, from 0 (workbench/data/commonsense.jsonl is a sample)")
    mc.add_argument("--context-column", default="context")
    mc.add_argument("--choices-column", default="choices")
    mc.add_argument("--answer-column", default="answer")
    mc.add_argument("--target-delimiter", default=TARGET_DELIMITER, metavar="TEXT",
                    help="put between the context and each choice (default: one space, as "
                         "in the harness)")
    add_setting_options(mc, ChoiceSettings, ["batch_size", "max_length"])
    mc.add_argument("--json", action="store_true", help="print one JSON document")


def _add_pairs(ev_sub: argparse._SubParsersAction) -> None:
    """``evaluate pairs``: sentence pairs (bias)."""
    sp = ev_sub.add_parser("pairs", help="sentence pairs (bias): how often the model finds "
                           "the first sentence likelier, as lm-evaluation-harness's crows_pairs")
    add_model_options(sp)
    sp.add_argument("--file", required=True, help="a .jsonl, .csv or .tsv file of pairs "
                    "(workbench/data/pairs.csv is a sample)")
    sp.add_argument("--more-column", default="more",
                    help="the sentence counted as stereotypical (default: more)")
    sp.add_argument("--less-column", default="less", help="the other sentence (default: less)")
    sp.add_argument("--category-column", default=None,
                    help="per-category numbers (default: 'category' when the file has it)")
    sp.add_argument("--json", action="store_true", help="print one JSON document")


def parse_metrics(text: str) -> tuple[str, ...]:
    from workbench.core.evaluation.metrics import METRIC_NAMES

    return tuple(parse_names(text, "--metrics", METRIC_NAMES))


def check_tokenizer(name: str | None) -> None:
    """A sacrebleu BLEU tokenizer that exists and can be made here (some need extra packages
    or a download)."""
    if name is None:
        return
    import logging

    from sacrebleu.metrics import BLEU

    if name not in BLEU.TOKENIZERS:
        raise WorkbenchError(f"Unknown --tokenize '{name}': use one of "
                             f"{', '.join(BLEU.TOKENIZERS)}.")
    from workbench.core.evaluation.metrics import make_metric

    logging.disable(logging.CRITICAL)  # sacrebleu logs its own many-line explanation
    try:
        make_metric("bleu", name)  # a missing package, no network for a model: said there
    except WorkbenchError:
        raise
    except Exception as exc:  # anything else sacrebleu raises: in one line
        raise WorkbenchError(f"The {name} tokenizer cannot be used here: "
                             f"{' '.join(str(exc).split()) or type(exc).__name__}") from None
    finally:
        logging.disable(logging.NOTSET)


def check_test_memory(samples: int, lines: int, tests: tuple[str, ...]) -> None:
    """sacrebleu draws every resample's line indices at once (samples × lines × 8 bytes) and
    gathers each metric's statistics for them (a few times more): refuse what cannot fit."""
    from workbench.core.common.memory import MEMORY_SHARE, available_memory, format_bytes

    most = max(samples or (10_000 if t == "ar" else 1_000) for t in tests)
    need = most * lines * 8 * 8
    available = available_memory()
    if need > available * MEMORY_SHARE:
        raise WorkbenchError(f"{most:,} resamples of {lines:,} lines would need about "
                             f"{format_bytes(need)}, more than {MEMORY_SHARE:.0%} of the {format_bytes(available)} "
                             "available: give fewer --samples.")


def perplexity_settings(args: argparse.Namespace) -> PerplexitySettings:
    """The window and stride as ``evaluate perplexity`` gives them, checked (each by its
    option's name, then the stride against the window by the settings' own check)."""
    settings = PerplexitySettings(max_length=args.max_length, stride=args.stride)
    check_options(settings)
    settings.validate()
    return settings


def generate_settings(args: argparse.Namespace) -> GenerateScoreSettings:
    """The new tokens, batch size and seed as ``evaluate generate`` gives them, checked, each
    named by its option (``--batch-size must be at least 1``)."""
    settings = GenerateScoreSettings(max_new_tokens=args.max_new_tokens,
                                     batch_size=args.batch_size, seed=args.seed)
    check_options(settings)
    return settings


def classifier_settings(args: argparse.Namespace) -> ClassifierSettings:
    """The batch size and length as ``evaluate classify`` gives them, checked by option."""
    settings = ClassifierSettings(batch_size=args.batch_size, max_length=args.max_length)
    check_options(settings)
    return settings


def choice_settings(args: argparse.Namespace) -> ChoiceSettings:
    """The batch size and context as ``evaluate choice`` gives them, checked by option."""
    settings = ChoiceSettings(batch_size=args.batch_size, max_length=args.max_length)
    check_options(settings)
    return settings


def cmd_evaluate_perplexity(args: argparse.Namespace) -> int:
    from workbench.core.common.data_files import read_text
    from workbench.core.common.jobs import JobContext
    from workbench.core.evaluation.metrics import perplexity

    check_model_options(args, "--compare-model")
    perplexity_settings(args)
    text = read_text(args.file)
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)
    results = [(loaded, perplexity(loaded, text, args.max_length, args.stride,
                                   JobContext(emit=bar)))]
    if args.compare_model:
        other = load_from_args(argparse.Namespace(**{**vars(args), "model": args.compare_model}),
                               bar)
        results.append((other, perplexity(other, text, args.max_length, args.stride,
                                          JobContext(emit=bar))))
    bar.finish()
    if args.json:
        documents = []
        for model, result in results:
            data = result.to_dict(per_token=args.per_token)
            data.update(device=model.device, dtype=model.dtype, file=args.file)
            documents.append(data)
        if len(documents) == 2:
            documents[0]["compare"] = documents[1]
            documents[0]["same_tokens"] = results[0][1].same_tokens(results[1][1])
        print_json(documents[0])
        return 0
    rows = [("perplexity", lambda r: f"{r.perplexity:.4f}"),
            ("nll per token", lambda r: f"{r.nll_per_token:.4f} nats"),
            ("bits per byte", lambda r: f"{r.bits_per_byte:.4f}"),
            ("tokens scored", lambda r: str(r.tokens)),
            ("window, stride", lambda r: f"{r.max_length}, {r.stride}")]
    print(f"{'model':16}" + "".join(f"{m.name[:30]:32}" for m, _ in results))
    for label, show in rows:
        print(f"{label:16}" + "".join(f"{show(r):32}" for _, r in results))
    print(f"{'device':16}" + "".join(f"{m.device + ', ' + m.dtype:32}" for m, _ in results))
    for model, result in results:
        print(f"most surprising ({model.name}): " + ", ".join(
            f"{t!r} ({b:.1f} bits)" for _, t, b in result.worst(5)))
    if len(results) == 2 and not results[0][1].same_tokens(results[1][1]):
        print("note: the models tokenize the text differently; compare bits per byte.")
    return 0


def cmd_evaluate_generate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from workbench.core.common.data_files import read_pairs
    from workbench.core.common.jobs import JobContext
    from workbench.core.evaluation.generate_score import (
        RowDone,
        generate_and_score,
        output_folder,
        save_result,
    )
    from workbench.core.evaluation.metrics import make_metric
    from workbench.core.generation.settings import parse_strategy

    check_model_options(args)
    generate_settings(args)
    metrics = parse_metrics(args.metrics)
    for name in metrics:
        make_metric(name)  # an unknown metric fails before loading
    prompts, refs = read_pairs(args.file)
    base = SamplingSettings(max_new_tokens=args.max_new_tokens, seed=args.seed, chat=args.chat)
    strategy = parse_strategy(args.strategy, base)
    if strategy.settings.num_return_sequences != 1:
        raise WorkbenchError(f"--strategy '{args.strategy}' asks for "
                             f"{strategy.settings.num_return_sequences} sequences: generate-then-"
                             "score scores one output per prompt (leave out n=).")
    settings = replace(strategy.settings, num_return_sequences=1)
    settings.validate()
    folder = output_folder(args.output)  # checked before anything is generated
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)

    def report(event: Any) -> None:
        bar(event)
        if isinstance(event, RowDone) and not args.json:  # a line a row: logs show progress
            bar.finish()
            text = event.hypothesis if len(event.hypothesis) <= 100 else \
                event.hypothesis[:99] + "…"
            print(f"[{event.row}/{event.total}] {event.seconds:.1f} s  {text}", flush=True)

    result = generate_and_score(loaded, prompts, refs, settings, strategy.name, metrics,
                                first_line=not args.all_lines, ctx=JobContext(emit=report),
                                batch_size=args.batch_size)
    bar.finish()
    try:
        folder = save_result(result, folder)
        unsaved = None
    except OSError as exc:  # the scores still reach the output; then one error line
        unsaved = f"The outputs could not be saved in {folder}: {exc.strerror or exc}."
    if args.json:
        print_json(result.to_dict())
    else:
        for m in result.scores.metrics:
            print(f"{m.text}\n    signature: {m.signature}")
        print(f"{result.rows_done} outputs by {loaded.name} ({result.strategy}), "
              f"{result.new_tokens} tokens in {result.seconds:.1f} s"
              + ("" if unsaved else f"; saved in {folder}"))
        for notice in result.notices:
            print(f"note: {notice}")
    if unsaved:
        raise WorkbenchError(unsaved)
    return 0


def cmd_evaluate_classify(args: argparse.Namespace) -> int:
    from workbench.core.common.data_files import read_rows
    from workbench.core.common.jobs import JobContext
    from workbench.core.evaluation.classification import evaluate_classifier

    check_model_options(args)
    for option in ("--text-column", "--label-column"):
        if not getattr(args, option[2:].replace("-", "_")).strip():
            raise WorkbenchError(f"{option} is empty: give the name of a column.")
    settings = classifier_settings(args)
    read_rows(args.file, args.text_column, args.label_column)  # bad files fail before loading
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)
    result = evaluate_classifier(loaded, args.file, args.text_column, args.label_column,
                                 settings.batch_size, settings.max_length,
                                 ctx=JobContext(emit=bar))
    bar.finish()
    if args.json:
        print_json(result.to_dict(with_rows=True))
        return 0
    print(f"accuracy   {result.accuracy:.4f}\nmacro-F1   {result.macro_f1:.4f}\n"
          f"rows       {result.examples}")
    width = max(8, *(len(label) for label in result.labels)) + 2
    print(f"\n{'label':{width}}{'precision':>10}{'recall':>10}{'F1':>10}{'support':>9}")
    for s in result.per_label:
        print(f"{s.label:{width}}{s.precision:10.4f}{s.recall:10.4f}{s.f1:10.4f}{s.support:9}")
    print(f"\nconfusion matrix (rows: true label, columns: predicted)\n{'':{width}}"
          + "".join(f"{label[:9]:>10}" for label in result.labels))
    for label, row in zip(result.labels, result.confusion, strict=True):
        print(f"{label:{width}}" + "".join(f"{n:10}" for n in row))
    for notice in result.notices:
        print(f"note: {notice}")
    return 0


def cmd_evaluate_bleu(args: argparse.Namespace) -> int:
    from workbench.core.common.data_files import read_lines
    from workbench.core.common.jobs import JobContext
    from workbench.core.evaluation.metrics import score_translation

    metrics = parse_metrics(args.metrics)
    check_options(SignificanceSettings(samples=args.samples))
    if args.samples and args.compare is None:
        raise WorkbenchError("--samples sets the resamples of the paired test: give a second "
                             "system with --compare HYP2 as well.")
    check_tokenizer(args.tokenize)
    hyps = read_lines(args.hyp)
    refs = [read_lines(r) for r in args.ref]
    other = read_lines(args.compare) if args.compare else None
    tests = ("bs", "ar") if args.test == "both" else (args.test,)
    if other is not None:
        check_test_memory(args.samples, len(hyps), tests)
    bar = TerminalProgress(quiet=args.json)
    result = score_translation(hyps, refs, metrics, args.tokenize, args.lowercase, other, tests,
                               args.samples, JobContext(emit=bar))
    bar.finish()
    if args.json:
        print_json(result.to_dict())
        return 0
    for m in result.metrics:
        print(f"{m.text}\n    signature: {m.signature}")
    for s in result.significance:
        p = "-" if s.p_value is None else f"{s.p_value:.4f}"
        ci = "" if s.system_ci is None else f" (mean {s.system_mean:.2f} ± {s.system_ci:.2f})"
        print(f"{s.test} {s.metric}: baseline {s.baseline:.2f}, system {s.system:.2f}{ci}, "
              f"p = {p}")
    return 0


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _plus_minus(value: float, stderr: float | None) -> str:
    return f"{value:.4f} ± {'n/a' if stderr is None else f'{stderr:.4f}'}"


def cmd_evaluate_choice(args: argparse.Namespace) -> int:
    from workbench.core.common.jobs import JobContext
    from workbench.core.evaluation.choice import read_choice_items, score_choices

    check_model_options(args)
    check_utf8(args.target_delimiter, "--target-delimiter")
    settings = choice_settings(args)
    items = read_choice_items(args.file, args.context_column, args.choices_column,
                              args.answer_column)  # bad files fail before loading
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)
    result = score_choices(loaded, items, args.target_delimiter, JobContext(emit=bar),
                           settings)
    bar.finish()
    if args.json:
        data = result.to_dict()
        data.update(device=loaded.device, dtype=loaded.dtype, file=args.file)
        print_json(data)
        return 0
    print(f"acc        {_plus_minus(result.acc, result.acc_stderr)}\n"
          f"acc_norm   {_plus_minus(result.acc_norm, result.acc_norm_stderr)}\n"
          f"items      {len(result.items)} by {loaded.name} ({loaded.device}, {loaded.dtype}) "
          f"in {result.seconds:.1f} s, {result.items_per_second:.1f} items/s")
    print(f"\n{'line':>5} {'answer':>6} {'pick':>5} {'norm':>5}  {'acc':4} {'norm':4}  "
          "log-likelihood of each choice · context")
    for item in result.items:
        lls = " ".join(f"{ll:9.3f}" for ll in item.loglikelihoods)
        print(f"{item.line:5} {item.answer:6} {item.pick:5} {item.pick_norm:5}  "
              f"{'yes' if item.correct else 'no':4} {'yes' if item.correct_norm else 'no':4}  "
              f"{lls} · {_shorten(item.context, 50)}")
    for notice in result.notices:
        print(f"note: {notice}")
    return 0


def cmd_evaluate_pairs(args: argparse.Namespace) -> int:
    from workbench.core.common.jobs import JobContext
    from workbench.core.evaluation.choice import read_sentence_pairs, score_pairs

    check_model_options(args)
    pairs = read_sentence_pairs(args.file, args.more_column, args.less_column,
                                args.category_column)  # bad files fail before loading
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)
    result = score_pairs(loaded, pairs, JobContext(emit=bar))
    bar.finish()
    if args.json:
        data = result.to_dict()
        data.update(device=loaded.device, dtype=loaded.dtype, file=args.file)
        print_json(data)
        return 0
    width = max([8, *(len(g.name) for g in result.categories)]) + 2
    print(f"{'':{width}}{'pairs':>6}  {'pct_stereotype':>20}  {'likelihood_diff':>20}")
    for g in [result.overall, *result.categories]:
        print(f"{g.name:{width}}{g.count:6}  "
              f"{_plus_minus(g.pct_stereotype, g.pct_stereotype_stderr):>20}  "
              f"{_plus_minus(g.likelihood_diff, g.likelihood_diff_stderr):>20}")
    print(f"\n{len(result.pairs)} pairs by {loaded.name} ({loaded.device}, {loaded.dtype}) in "
          f"{result.seconds:.1f} s; pct_stereotype is the share of pairs where the first "
          "sentence is the likelier")
    print(f"\n{'line':>5}  {'category':{width}}{'ll more':>10} {'ll less':>10} {'diff':>8}  "
          f"{'first':5}  sentences")
    for p in result.pairs:
        print(f"{p.line:5}  {p.category or '-':{width}}{p.loglikelihood_more:10.3f} "
              f"{p.loglikelihood_less:10.3f} {p.likelihood_diff:8.3f}  "
              f"{'yes' if p.stereotype else 'no':5}  {_shorten(p.more, 45)} | "
              f"{_shorten(p.less, 45)}")
    for notice in result.notices:
        print(f"note: {notice}")
    return 0


COMMANDS = {
    ("evaluate", "perplexity"): cmd_evaluate_perplexity,
    ("evaluate", "bleu"): cmd_evaluate_bleu,
    ("evaluate", "generate"): cmd_evaluate_generate,
    ("evaluate", "classify"): cmd_evaluate_classify,
    ("evaluate", "choice"): cmd_evaluate_choice,
    ("evaluate", "pairs"): cmd_evaluate_pairs,
}

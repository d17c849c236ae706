"""``generate`` and ``compare``: text from the sampling options, one strategy or several."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any

from workbench.cli.common import (
    TerminalProgress,
    add_model_options,
    add_setting_options,
    add_text_options,
    check_model_options,
    check_options,
    check_utf8,
    load_from_args,
    print_json,
    text_argument,
)
from workbench.core.common.errors import WorkbenchError
from workbench.core.generation.records import CandidateSettings
from workbench.core.generation.settings import STAGES, SamplingSettings
from workbench.core.models.decoding import LABELS

CLASSIC = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "typical_p",
           "repetition_penalty", "no_repeat_ngram_size", "num_beams", "num_return_sequences",
           "seed", "chat")
MORE = ("top_h", "epsilon_cutoff", "eta_cutoff", "top_n_sigma", "dynamic_temperature",
        "dynatemp_low", "dynatemp_high", "dynatemp_exponent", "smoothing_factor",
        "smoothing_curve", "xtc_threshold", "xtc_probability", "mirostat_mode", "mirostat_tau",
        "mirostat_eta", "dry_multiplier", "dry_base", "dry_allowed_length",
        "dry_sequence_breakers", "sampler_order")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="generate text with the sampling options")
    add_model_options(gen)
    add_text_options(gen, "prompt", "the prompt text")
    add_setting_options(gen, SamplingSettings, CLASSIC)
    gen.add_argument("--greedy", action="store_true", help="greedy decoding (no sampling)")
    gen.add_argument("--json", action="store_true", help="print one JSON document")
    add_setting_options(gen, CandidateSettings, ["top_n"])
    group = gen.add_argument_group("more samplers", "off by default; see also --sampler-order "
                                   f"(stages: {', '.join(STAGES)})")
    add_setting_options(group, SamplingSettings, MORE)
    gen.add_argument("--export-config", metavar="FILE",
                     help="also write the settings as a transformers GenerationConfig JSON "
                          "(what it has no field for is named on stderr)")

    cmp = sub.add_parser("compare", help="several sampling strategies on one prompt and seed")
    add_model_options(cmp)
    add_text_options(cmp, "prompt", "the prompt text")
    cmp.add_argument("--strategy", action="append", required=True,
                     help='repeat 2-6 times: "greedy", a preset (top-k 40, nucleus 0.9, '
                          'creative, min-p 0.1) or "top_k=40,temperature=0.8,n=3" (any '
                          'setting of generate, e.g. "xtc_probability=0.5,dry_multiplier=0.8,'
                          'sampler_order=min_p>temperature")')
    add_setting_options(cmp, SamplingSettings, ("max_new_tokens", "seed", "chat",
                                                "sampler_order", "dry_sequence_breakers"))
    add_setting_options(cmp, CandidateSettings, ["top_n"])
    cmp.add_argument("--json", action="store_true", help="print one JSON document")


def _settings_from_args(args: argparse.Namespace) -> SamplingSettings:
    for option in ("sampler_order", "dry_sequence_breakers"):
        check_utf8(getattr(args, option), f"--{option.replace('_', '-')}")
    values = {f.name: getattr(args, f.name) for f in fields(SamplingSettings)
              if f.name != "do_sample" and hasattr(args, f.name)}
    return SamplingSettings(do_sample=not args.greedy, **values)


def cmd_generate(args: argparse.Namespace) -> int:
    from workbench.core.common.jobs import JobContext
    from workbench.core.generation.generate import generate
    from workbench.core.generation.records import TokenEvent

    check_model_options(args)
    settings = _settings_from_args(args)
    settings.validate()  # before spending time on loading
    check_options(CandidateSettings(top_n=args.top_n))
    prompt = text_argument(args, "prompt")
    if args.export_config:
        _export_config(settings, args.export_config)
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)

    def stream(event: Any) -> None:
        if isinstance(event, TokenEvent) and event.sequence == 0 and not args.json:
            sys.stdout.write(event.text)
            sys.stdout.flush()

    result = generate(loaded, prompt, settings, JobContext(emit=stream), top_n=args.top_n)
    if args.json:
        data = result.to_dict(top_n=args.top_n)
        data.update(model=loaded.name, device=loaded.device, dtype=loaded.dtype,
                    tokens=loaded.tokenizer.convert_ids_to_tokens(result.token_ids))
        print_json(data)
    else:
        print()
        for i, seq in enumerate(result.sequences[1:], start=2):
            print(f"--- sequence {i}\n{seq.text}")
        for notice in result.notices:
            print(f"note: {notice}", file=sys.stderr)
        print(f"[{len(result.token_ids)} tokens, {result.tokens_per_second:.1f} tokens/s, "
              f"{loaded.device}, {loaded.dtype}, decoding {LABELS[result.decoding]}]",
              file=sys.stderr)
    return 0


def _export_config(settings: SamplingSettings, path: str) -> None:
    from workbench.core.common.files import write_atomically

    check_utf8(path, "--export-config")
    try:
        write_atomically(path, json.dumps(settings.to_generation_config(), indent=2) + "\n")
    except OSError as exc:
        raise WorkbenchError(f"Cannot write --export-config {path}: "
                             f"{exc.strerror or exc}.") from None
    left = settings.not_in_generation_config()
    if left:
        print(f"note: {path} leaves out {', '.join(left)}: a GenerationConfig has no field "
              "for them.", file=sys.stderr)


def cmd_compare(args: argparse.Namespace) -> int:
    from workbench.core.generation.compare import compare, strategy_runs
    from workbench.core.generation.settings import parse_strategy

    check_model_options(args)
    if not 2 <= len(args.strategy) <= 6:
        raise WorkbenchError(f"Give 2 to 6 --strategy options, not {len(args.strategy)}.")
    for option in ("sampler_order", "dry_sequence_breakers"):
        check_utf8(getattr(args, option), f"--{option.replace('_', '-')}")
    base = SamplingSettings(max_new_tokens=args.max_new_tokens, seed=args.seed, chat=args.chat,
                            sampler_order=args.sampler_order,
                            dry_sequence_breakers=args.dry_sequence_breakers)
    base.validate()
    for spec in args.strategy:
        check_utf8(spec, "--strategy")
    strategies = [parse_strategy(spec, base) for spec in args.strategy]
    strategy_runs(strategies)  # the number of sequences, before loading
    check_options(CandidateSettings(top_n=args.top_n))
    prompt = text_argument(args, "prompt")
    bar = TerminalProgress(quiet=args.json)
    loaded = load_from_args(args, bar)
    result = compare(loaded, prompt, strategies, seed=args.seed,
                     max_new_tokens=args.max_new_tokens, chat=args.chat, top_n=args.top_n)
    if args.json:
        data = result.to_dict()
        data.update(model=loaded.name, device=loaded.device, dtype=loaded.dtype)
        if args.top_n:
            for s, r in zip(data["strategies"], result.strategies, strict=True):
                s["steps"] = [[{"token_id": st.token_id, "text": st.text,
                                "probability": st.probability,
                                "raw_probability": st.raw_probability,
                                "candidates": [vars(c) | {} for c in st.candidates[:args.top_n]]}
                               for st in seq.steps] for seq in r.sequences]
        print_json(data)
        return 0
    for r in result.strategies:
        print(f"=== {r.name}")
        for i, seq in enumerate(r.sequences):
            print(("" if len(r.sequences) == 1 else f"[{i + 1}] ") + seq.text)
        print()
    header = f"{'strategy':28} {'mean logp':>9} {'ppl':>8} {'dist-1':>6} {'dist-2':>6} " \
             f"{'self-BLEU':>9} {'tok/s':>7} {'diverges at':>11}"
    print(header)
    for r in result.strategies:
        sb = "-" if r.self_bleu is None else f"{r.self_bleu:.1f}"
        div = "-" if r.diverges_at is None else str(r.diverges_at)
        print(f"{r.name[:28]:28} {r.mean_logprob:9.3f} {r.perplexity:8.2f} {r.distinct_1:6.2f} "
              f"{r.distinct_2:6.2f} {sb:>9} {r.tokens_per_second:7.1f} {div:>11}")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


COMMANDS = {
    ("generate", None): cmd_generate,
    ("compare", None): cmd_compare,
}

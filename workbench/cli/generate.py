"""``generate`` and ``compare``: text from the sampling options, one strategy or several."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from workbench.cli.common import (
    TerminalProgress,
    add_model_options,
    add_text_options,
    check_model_options,
    check_utf8,
    check_whole,
    load_from_args,
    print_json,
    text_argument,
)
from workbench.core.errors import WorkbenchError
from workbench.core.sampling import SamplingSettings


def add_parsers(sub: argparse._SubParsersAction) -> None:
    defaults = SamplingSettings()
    gen = sub.add_parser("generate", help="generate text with the sampling options")
    add_model_options(gen)
    add_text_options(gen, "prompt", "the prompt text")
    gen.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    gen.add_argument("--temperature", type=float, default=defaults.temperature)
    gen.add_argument("--top-k", type=int, default=defaults.top_k, help="0 turns top-k off")
    gen.add_argument("--top-p", type=float, default=defaults.top_p)
    gen.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty)
    gen.add_argument("--seed", type=int, default=defaults.seed)
    gen.add_argument("--greedy", action="store_true", help="greedy decoding (no sampling)")
    gen.add_argument("--chat", action=argparse.BooleanOptionalAction, default=defaults.chat,
                     help="wrap the prompt in the model's chat template (default: on)")
    gen.add_argument("--json", action="store_true", help="print one JSON document")

    gen.add_argument("--min-p", type=float, default=defaults.min_p, help="0 turns min-p off")
    gen.add_argument("--typical-p", type=float, default=defaults.typical_p)
    gen.add_argument("--no-repeat-ngram-size", type=int, default=defaults.no_repeat_ngram_size)
    gen.add_argument("--num-beams", type=int, default=defaults.num_beams)
    gen.add_argument("--num-return-sequences", type=int, default=defaults.num_return_sequences)
    gen.add_argument("--top-n", type=int, default=0,
                     help="with --json: each step's top-N candidates, raw and processed")

    cmp = sub.add_parser("compare", help="several sampling strategies on one prompt and seed")
    add_model_options(cmp)
    add_text_options(cmp, "prompt", "the prompt text")
    cmp.add_argument("--strategy", action="append", required=True,
                     help='repeat 2-6 times: "greedy", a preset (top-k 40, nucleus 0.9, '
                          'creative, min-p 0.1) or "top_k=40,temperature=0.8,n=3"')
    cmp.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    cmp.add_argument("--seed", type=int, default=defaults.seed)
    cmp.add_argument("--chat", action=argparse.BooleanOptionalAction, default=defaults.chat)
    cmp.add_argument("--top-n", type=int, default=0, help="with --json: per-step candidates")
    cmp.add_argument("--json", action="store_true", help="print one JSON document")


def cmd_generate(args: argparse.Namespace) -> int:
    from workbench.core.generation import TokenEvent, generate
    from workbench.core.jobs import JobContext

    check_model_options(args)
    settings = SamplingSettings(
        max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        repetition_penalty=args.repetition_penalty, seed=args.seed, chat=args.chat,
        min_p=args.min_p, typical_p=args.typical_p,
        no_repeat_ngram_size=args.no_repeat_ngram_size, num_beams=args.num_beams,
        num_return_sequences=args.num_return_sequences)
    settings.validate()  # before spending time on loading
    check_whole(args.top_n, "--top-n", 0)
    prompt = text_argument(args, "prompt")
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
              f"{loaded.device}, {loaded.dtype}]", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from workbench.core.compare import compare, strategy_runs
    from workbench.core.sampling import parse_strategy

    check_model_options(args)
    if not 2 <= len(args.strategy) <= 6:
        raise WorkbenchError(f"Give 2 to 6 --strategy options, not {len(args.strategy)}.")
    base = SamplingSettings(max_new_tokens=args.max_new_tokens, seed=args.seed, chat=args.chat)
    base.validate()
    for spec in args.strategy:
        check_utf8(spec, "--strategy")
    strategies = [parse_strategy(spec, base) for spec in args.strategy]
    strategy_runs(strategies)  # the number of sequences, before loading
    check_whole(args.top_n, "--top-n", 0)
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

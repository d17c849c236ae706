"""Bad input on the command line: one ``error:`` line on stderr, exit status 2, quickly,
with nothing written and (where the check needs no model) nothing loaded.

The cases that need no model run ``python main.py ...`` in a subprocess: they exit before
torch is imported, so most of the corpus costs a fraction of a second a case. The cases
that need a model (the tiny random models of ``tests/tiny_models.py``) call the same entry
point, ``workbench.app.main``, in the test's process (``tests/cli_runner.py``), so that they
do not import torch and transformers again each.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import run_in_process

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120  # a hang is a failure, not a stuck test run


def run(*args):
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT, env=dict(os.environ))


def assert_refused(result, fragment: str = "") -> str:
    """Exit status 2, exactly one stderr line starting with ``error: ``, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == "", result.stdout
    assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Paths the cases refer to as {name}."""
    root = tmp_path_factory.mktemp("bad-arguments")
    (root / "good.txt").write_text("the cat sat on the mat\n", encoding="utf-8")
    (root / "pairs.tsv").write_text("the cat\tthe cat sat\n", encoding="utf-8")
    (root / "labelled.csv").write_text("text,label\nthe cat,a\n", encoding="utf-8")
    (root / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    (root / "empty.txt").write_text("  \n", encoding="utf-8")
    (root / "folder").mkdir()
    return {"good": str(root / "good.txt"), "pairs": str(root / "pairs.tsv"),
            "labelled": str(root / "labelled.csv"), "latin1": str(root / "latin1.txt"),
            "empty": str(root / "empty.txt"), "folder": str(root / "folder"),
            "missing": str(root / "no-such-file.txt"), "out": str(root / "out.html"),
            "nodir": str(root / "no-such-folder" / "out.html")}


def fill(args, files):
    return [a.format(**files) if isinstance(a, str) else a for a in args]


GEN = ("generate", "--prompt", "the cat")
CMP = ("compare", "--prompt", "the cat")
ATT = ("attention", "--text", "the cat")
PPL = ("evaluate", "perplexity", "--file", "{good}")
BLEU = ("evaluate", "bleu", "--hyp", "{good}", "--ref", "{good}")
EGEN = ("evaluate", "generate", "--file", "{pairs}")

# (arguments, a fragment of the one error line): none of these needs a model
CHEAP = [
    # argparse's own errors: one line too, not a usage block
    ((*GEN, "--max-new-tokens", "abc"), "argument --max-new-tokens: invalid int value: 'abc'"),
    ((*GEN, "--temperature", "warm"), "invalid float value"),
    ((*GEN, "--no-such-option"), "unrecognized arguments: --no-such-option"),
    (("generate",), "one of the arguments --prompt --prompt-file is required"),
    ((*GEN, "--temperature"), "expected one argument"),
    (("compare", "--prompt", "x"), "the following arguments are required: --strategy"),
    ((*ATT, "--view", "diagonal"), "invalid choice: 'diagonal'"),
    (("evaluate",), "the following arguments are required: METRIC"),
    (("no-such-command",), "invalid choice: 'no-such-command'"),
    ((*PPL, "--stride", "1.5"), "invalid int value: '1.5'"),
    (("models", "fetch"), "the following arguments are required: name"),
    # a text given twice
    ((*GEN, "--prompt-file", "{good}"), "not allowed with argument --prompt"),
    ((*ATT, "--text-file", "{good}"), "not allowed with argument --text"),
    # seeds outside [0, 2**32)
    ((*GEN, "--seed", "-1"), "seed must be between 0 and 4294967295"),
    ((*GEN, "--seed", "4294967296"), "not 4294967296"),
    ((*CMP, "--strategy", "greedy", "--strategy", "top-k 40", "--seed", "99999999999"), "seed"),
    ((*EGEN, "--seed", "-5"), "seed must be between 0"),
    # text that is not UTF-8 (argv bytes become lone surrogates), files that cannot be read
    (("generate", "--prompt", b"the \xff cat"), "--prompt is not valid UTF-8 text (the byte 0xff"),
    (("generate", "--prompt", b"ab\xed\xa0\x80"), "--prompt is not valid UTF-8"),
    (("compare", "--prompt", b"\x80", "--strategy", "greedy", "--strategy", "top-k 40"),
     "--prompt is not valid UTF-8"),
    (("attention", "--text", b"caf\xe9"), "--text is not valid UTF-8"),
    ((*ATT, "--text-b", b"\xc3("), "--text-b is not valid UTF-8"),
    (("generate", "--prompt-file", "{latin1}"), "is not UTF-8 text (the byte 0xe9"),
    (("generate", "--prompt-file", "{missing}"), "no such file"),
    (("attention", "--text-file", "{folder}"), "is a folder"),
    (("compare", "--prompt-file", "", "--strategy", "greedy", "--strategy", "top-k 40"),
     "--prompt-file needs a file name"),
    (("attention", "--text-file", "{empty}"), "holds no text"),
    ((*ATT[:1], "--text", "   "), "The text is empty"),
    # token counts
    ((*GEN, "--max-new-tokens", "-3"), "Max new tokens must be at least 1, not -3"),
    ((*GEN, "--max-new-tokens", "0"), "at least 1"),
    ((*GEN, "--max-new-tokens", "10000000"), "at most 1,000,000"),
    ((*CMP, "--strategy", "greedy", "--strategy", "top-k 40", "--max-new-tokens", "-1"),
     "Max new tokens"),
    ((*EGEN, "--max-new-tokens", "0"), "--max-new-tokens must be at least 1, not 0"),
    # sampling numbers: finite and in range
    ((*GEN, "--temperature", "inf"), "Temperature must be a finite number, not inf"),
    ((*GEN, "--temperature", "nan"), "Temperature must be a finite number"),
    ((*GEN, "--temperature", "-0.5"), "Temperature must be 0 (greedy) or above"),
    ((*GEN, "--repetition-penalty", "inf"), "Repetition penalty must be a finite number"),
    ((*GEN, "--repetition-penalty", "0"), "Repetition penalty must be above 0"),
    ((*GEN, "--top-p", "0"), "Top-p must be in (0, 1]"),
    ((*GEN, "--top-p", "1.5"), "Top-p must be in (0, 1]"),
    ((*GEN, "--top-p=-inf"), "Top-p must be a finite number"),
    ((*GEN, "--top-k", "-1"), "Top-k must be 0 (off) or more"),
    ((*GEN, "--min-p", "1"), "Min-p must be in [0, 1)"),
    ((*GEN, "--typical-p", "nan"), "Typical-p must be a finite number"),
    ((*GEN, "--no-repeat-ngram-size", "-2"), "No-repeat n-gram size"),
    ((*GEN, "--num-beams", "0"), "beams must be at least 1"),
    ((*GEN, "--num-return-sequences", "0"), "sequences must be at least 1"),
    ((*GEN, "--num-return-sequences", "100000"), "The number of sequences can be at most 10,000"),
    ((*GEN, "--greedy", "--num-beams", "20000", "--num-return-sequences", "2"),
     "The number of beams can be at most 10,000"),
    ((*GEN, "--greedy", "--num-return-sequences", "3"), "Greedy decoding gives one sequence"),
    ((*GEN, "--top-n", "-1"), "--top-n must be 0 (none) or more, not -1"),
    ((*CMP, "--strategy", "greedy", "--strategy", "top-k 40", "--top-n", "-5"), "--top-n"),
    # compare strategies
    ((*CMP, "--strategy", "n=20000", "--strategy", "greedy"), "The number of sequences can be at most 10,000"),
    ((*CMP, "--strategy", "n=5000", "--strategy", "n=5000", "--strategy", "n=5000"),
     "15,000 sequences"),
    ((*CMP, "--strategy", "temperature=inf", "--strategy", "greedy"), "Temperature must be a finite"),
    ((*CMP, "--strategy", "top_p=nan", "--strategy", "greedy"), "Top-p must be a finite"),
    ((*CMP, "--strategy", "top_k=-4", "--strategy", "greedy"), "Top-k must be 0"),
    ((*CMP, "--strategy", "top_k=5,top_k=6", "--strategy", "greedy"), "sets top_k twice"),
    ((*CMP, "--strategy", "do_sample=maybe", "--strategy", "greedy"), "takes true or false"),
    ((*CMP, "--strategy", "greedy,temperature=0.5", "--strategy", "top-k 40"),
     "temperature only shapes sampling"),
    ((*CMP, "--strategy", "beams=3,top_k=5", "--strategy", "greedy"), "top_k only shapes sampling"),
    ((*CMP, "--strategy", "beams=2,n=3", "--strategy", "greedy"), "at most as many sequences"),
    ((*CMP, "--strategy", "  ", "--strategy", "greedy"), "An empty strategy"),
    ((*CMP, "--strategy", "greedy"), "Give 2 to 6 --strategy options, not 1"),
    ((*CMP, *["--strategy", "greedy"] * 7), "Give 2 to 6 --strategy options, not 7"),
    ((*EGEN, "--strategy", "n=3"), "one output per prompt"),
    ((*EGEN, "--strategy", "top_k=lots"), "is not a number"),
    # perplexity windows: refused, not replaced by the defaults
    ((*PPL, "--stride", "0"), "--stride must be at least 1, not 0"),
    ((*PPL, "--stride", "-4"), "--stride must be at least 1"),
    ((*PPL, "--max-length", "0"), "--max-length must be at least 2, not 0"),
    ((*PPL, "--max-length", "1"), "--max-length must be at least 2"),
    ((*PPL, "--max-length", "8", "--stride", "16"), "The stride (16) is larger than the window (8)"),
    ((*PPL, "--compare-model", " "), "--compare-model is empty"),
    # metrics and the paired test
    ((*BLEU, "--metrics", ","), "--metrics names nothing"),
    ((*BLEU, "--metrics", ""), "--metrics names nothing"),
    ((*BLEU, "--metrics", "bleu,rouge"), "unknown 'rouge'"),
    ((*EGEN, "--metrics", " , "), "--metrics names nothing"),
    ((*EGEN, "--metrics", "meteor"), "unknown 'meteor'"),
    ((*BLEU, "--samples", "-1"), "--samples must be 0 (sacrebleu's default) or more, not -1"),
    ((*BLEU, "--samples", "100"), "give a second system with --compare"),
    ((*BLEU, "--compare", "{good}", "--samples", "100000000"), "--samples can be at most 100,000"),
    ((*BLEU, "--tokenize", "bogus"), "Unknown --tokenize 'bogus'"),
    # attention caps and the page
    ((*ATT, "--page-tokens", "-1"), "--page-tokens must be at least 2, not -1"),
    ((*ATT, "--page-tokens", "1"), "--page-tokens must be at least 2"),
    ((*ATT, "--max-tokens", "0"), "--max-tokens must be at least 1, not 0"),
    ((*ATT, "--max-tokens", "-64"), "--max-tokens must be at least 1"),
    ((*ATT, "--layers", ","), "--layers names no layer"),
    ((*ATT, "--layers", "1,two"), "--layers takes numbers"),
    ((*ATT, "--layers", "-1"), "layer -1 does not exist"),
    ((*ATT, "--html", "{folder}"), "is a folder: give a file name"),
    ((*ATT, "--html", "{nodir}"), "does not exist"),
    ((*ATT, "--html", ""), "--html needs a file name"),
    # model options, empty names
    ((*GEN, "--model", ""), "--model is empty"),
    ((*GEN, "--device", "tpu"), "Unknown device 'tpu'"),
    ((*GEN, "--device", "cuda:x"), "Unknown device 'cuda:x'"),
    ((*ATT, "--dtype", "float8"), "Unknown dtype 'float8'"),
    (("evaluate", "classify", "--file", "{labelled}", "--text-column", ""),
     "--text-column is empty"),
    (("bench", "--only", ","), "--only names nothing"),
    (("bench", "--only", ""), "--only names nothing"),
    # a number that starts with '-' but does not look like -1 or -.5 reaches the checks
    # (argparse alone takes it for an option: "expected one argument")
    ((*GEN, "--top-p", "-inf"), "Top-p must be a finite number"),
    ((*GEN, "--temperature", "-1e-3"), "Temperature must be 0 (greedy) or above"),
    ((*GEN, "--temp", "-inf"), "Temperature must be a finite number"),  # an abbreviation
    ((*GEN, "--typical-p", "-nan"), "Typical-p must be a finite number"),
    ((*GEN, "--top-p", "-x"), "argument --top-p: invalid float value: '-x'"),
    ((*GEN, "--max-new-tokens", "-1e3"), "argument --max-new-tokens: invalid int value: '-1e3'"),
    ((*GEN, "--temperature", "--json"), "argument --temperature: expected one argument"),
    ((*PPL, "--stride", "-1e3"), "argument --stride: invalid int value: '-1e3'"),
    (("monitor", "{folder}", "--smoothing", "-inf"), "--smoothing must be a finite number, not -inf"),
    (("finetune", "--task", "lm", "--train", "{good}", "--output", "{out}", "--learning-rate",
      "-inf"), "The learning rate must be a finite number, not -inf"),
    # the window's own options: refused before any window opens
    (("--device", "tpu"), "Unknown device 'tpu'"),
    (("--model", ""), "--model is empty"),
    (("--screenshot", "{good}"), "--screenshot needs a folder"),
]


@pytest.mark.parametrize("args, fragment", CHEAP, ids=[" ".join(
    a if isinstance(a, str) else repr(a) for a in args)[:80] for args, _ in CHEAP])
def test_bad_arguments_give_one_error_line(args, fragment, files):
    assert_refused(run(*fill(args, files)), fragment)
    assert not Path(files["out"]).exists()


def test_the_corpus_covers_enough_cases():
    assert len(CHEAP) >= 40


def test_every_number_option_takes_a_value_that_starts_with_a_minus():
    """``--OPTION -inf`` (a float) or ``--OPTION -1e3`` (an int) reaches the option's type and
    the command's checks, for every number option of every command."""
    import argparse
    import contextlib
    import io

    from workbench.cli import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    checked = []
    for parser in parsers(build_parser()):
        for action in parser._actions:
            if action.type not in (int, float) or not action.option_strings:
                continue
            option, value = action.option_strings[-1], "-inf" if action.type is float else "-1e3"
            with contextlib.redirect_stderr(io.StringIO()) as err:
                try:
                    namespace, _ = parser.parse_known_args([option, value])
                except SystemExit:
                    namespace = None
            message = err.getvalue()
            if action.type is int:
                assert f"argument {option}: invalid int value: '-1e3'" in message, message
            else:  # accepted (a command's required options may be missing)
                assert option not in message, message
                assert namespace is None or getattr(namespace, action.dest) == float("-inf")
            checked.append(f"{parser.prog} {option}")
    assert len(checked) >= 30, checked


# --- cases that need the model's configuration ----------------------------------------------------
@pytest.mark.parametrize("family, args, fragment", [
    # prompt + new tokens beyond the positions limit (the tiny GPT-2 has 128)
    ("gpt2", ("generate", "--prompt", "the cat", "--no-chat", "--max-new-tokens", "200"),
     "200 new tokens do not fit the model's context of 128 tokens"),
    ("llama", ("compare", "--prompt", "the", "--strategy", "greedy", "--strategy", "top-k 40",
               "--no-chat", "--max-new-tokens", "128"), "context of 128 tokens"),
    # no positions limit (XLNet): the memory the tokens would need caps them
    ("xlnet", ("generate", "--prompt", "the cat", "--no-chat", "--max-new-tokens", "1000000"),
     "would need about"),
    ("xlnet", ("compare", "--prompt", "the cat", "--no-chat", "--strategy", "n=50",
               "--strategy", "n=50", "--max-new-tokens", "100000"), "100 sequences of"),
    # layers out of range, with and without a page
    ("gpt2", ("attention", "--text", "the cat", "--layers", "99"),
     "layer 99 is out of range: gpt2 has 2 layers (0–1)"),
    ("gpt2", ("attention", "--text", "the cat", "--layers", "0,5", "--html", "{out}"),
     "layer 5 is out of range"),
    # a token cap smaller than the special tokens an encoder adds
    ("bert", ("attention", "--text", "the cat", "--text-b", "the dog", "--max-tokens", "2",
              "--html", "{out}"), "allow at least 5"),
    ("bert", ("generate", "--prompt", "the cat"), "generation needs a causal language model"),
])
def test_bad_arguments_that_need_the_model(tiny, files, family, args, fragment):
    line = assert_refused(run_in_process(*fill(args, files), "--model", str(tiny(family))), fragment)
    assert not Path(files["out"]).exists(), line


def test_memory_message_says_the_limit_and_why(tiny):
    line = assert_refused(run_in_process("generate", "--model", str(tiny("xlnet")), "--prompt", "the cat",
                              "--no-chat", "--max-new-tokens", "1000000"))
    assert "1 sequence of" in line and "1,000,000 new tokens" in line
    assert "attention" in line and "available" in line and "fewer sequences or new tokens" in line


# --- what is accepted -----------------------------------------------------------------------------
def test_a_200_kb_prompt_file(tiny, tmp_path):
    """Longer than one argument may be on Linux (128 KiB); CRLF becomes LF."""
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(b"the cat sat on the mat\r\n" * 8600)  # 206 KB
    result = run_in_process("generate", "--model", str(tiny("gpt2")), "--prompt-file", str(prompt),
                 "--no-chat", "--max-new-tokens", "1", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["prompt"] == "the cat sat on the mat\n" * 8600
    assert len(data["token_ids"]) == 1
    assert any("fit in the model's context of 128" in n for n in data["notices"])


def test_compare_and_attention_read_files(tiny, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\ufeff" + "the cat sat on the mat " * 9000, encoding="utf-8")  # BOM, 207 KB
    result = run_in_process("compare", "--model", str(tiny("llama")), "--prompt-file", str(text),
                 "--no-chat", "--strategy", "greedy", "--strategy", "top-k 40",
                 "--max-new-tokens", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["prompt"].startswith("the cat")
    page = tmp_path / "page.html"
    result = run_in_process("attention", "--model", str(tiny("gpt2")), "--text-file", str(text),
                 "--html", str(page), "--max-tokens", "8", "--page-tokens", "2", "--layers", "1",
                 "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["tokens"][:2] == ["the", "cat"] and len(data["tokens"]) == 8
    assert page.is_file()


def test_borderline_values_are_accepted(tiny):
    result = run_in_process("generate", "--model", str(tiny("gpt2")), "--prompt", "the cat", "--no-chat",
                 "--seed", str(2**32 - 1), "--max-new-tokens", "1", "--temperature", "0",
                 "--top-p", "1", "--top-k", "0", "--min-p", "0", "--typical-p", "1",
                 "--repetition-penalty", "1", "--no-repeat-ngram-size", "0", "--top-n", "0",
                 "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["token_ids"]) == 1
    # prompt + new tokens exactly at the positions limit (128): the prompt keeps its end
    result = run_in_process("generate", "--model", str(tiny("gpt2")), "--prompt", "the cat", "--no-chat",
                 "--max-new-tokens", "127", "--seed", "0", "--json")
    assert result.returncode == 0, result.stderr


def test_perplexity_smallest_window(tiny, files):
    result = run_in_process("evaluate", "perplexity", "--model", str(tiny("gpt2")), "--file", files["good"],
                 "--max-length", "2", "--stride", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert (json.loads(result.stdout)["max_length"], json.loads(result.stdout)["stride"]) == (2, 2)


# --- the same checks in the core, as the window uses them -----------------------------------------
@pytest.mark.parametrize("field, value", [
    ("top_k", 40.0), ("max_new_tokens", True), ("temperature", "0.7"), ("do_sample", 1),
    ("seed", 2**32), ("temperature", float("inf")), ("min_p", float("nan")),
])
def test_sampling_settings_refuse_wrong_types_and_values(field, value):
    from workbench.core.common.errors import WorkbenchError
    from workbench.core.generation.generate import SamplingSettings

    with pytest.raises(WorkbenchError):
        SamplingSettings(**{field: value}).validate()


def test_beam_strategy_events_never_collide_with_batch_rows():
    from workbench.core.generation.compare import BEAM_EVENTS, owner_of
    from workbench.core.generation.settings import MAX_SEQUENCES

    owners = [0] * (MAX_SEQUENCES - 1) + [1]
    assert owner_of(MAX_SEQUENCES - 1, owners) == (1, 0)
    assert owner_of(BEAM_EVENTS + 3 * MAX_SEQUENCES + 250, owners) == (3, 250)


def test_memory_estimate_formula():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from workbench.core.generation.memory import (
        SCORE_COPIES,
        STEP_RECORD_BYTES,
        generation_memory,
    )

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=80))
    assert model.dtype == torch.float32
    device, ram, parts = generation_memory(model, rows=3, prompt_tokens=10, new_tokens=20)
    assert parts["cache"] == 3 * 30 * 2 * 2 * 32 * 4
    assert parts["attention"] == 3 * 2 * 10 * 10 * 4
    assert parts["scores"] == 3 * 80 * 4 * SCORE_COPIES
    assert ram == 3 * 20 * STEP_RECORD_BYTES
    assert device == parts["cache"] + parts["attention"] + parts["scores"]

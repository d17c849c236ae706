"""Bad models, bad files and file quirks (issue #12, items 4-6): each class of bad input
gives one clear message (a WorkbenchError; on the command line one ``error:`` line and
exit 2) before anything is written, and quirks that are not errors (Windows line endings,
a byte-order mark, an empty last line) give the same numbers as their references."""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runner import run_in_process

from workbench.core.common.data_files import read_lines, read_rows, read_text, read_texts
from workbench.core.common.errors import Cancelled, WorkbenchError
from workbench.core.common.jobs import CancelToken, JobContext, LogLine, Progress
from workbench.core.evaluation.generate_score import RowDone, generate_and_score, output_folder
from workbench.core.evaluation.metrics import perplexity
from workbench.core.generation.settings import SamplingSettings
from workbench.core.models.load_report import load_report_to_log
from workbench.core.models.loader import load_model, set_pad_token
from workbench.core.training.config import FinetuneConfig
from workbench.core.training.data import prepare_data

ROOT = Path(__file__).resolve().parents[1]
SACREBLEU = Path(sys.executable).with_name("sacrebleu")
WORDS = "the cat sat on the mat because it was tired and the dog sat on the sea".split()


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))


def assert_one_error(result, *fragments):
    """Exit 2, and stderr is exactly one ``error:`` line holding ``fragments``."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes: to show nothing was written or lost."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def gpt2(tiny):
    return load_model(str(tiny("gpt2")))


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory) -> Path:
    """A tiny GPT-2 with a byte-level BPE tokenizer, as the real GPT-2 has: ``\\r`` is a token
    of its own, and there is no pad token, only ``<|endoftext|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("byte-level-gpt2")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([" ".join(WORDS)] * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                        eos_token="<|endoftext|>")
    eos = tokenizer.eos_token_id
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2,
                                       n_head=2, n_positions=128, bos_token_id=eos,
                                       eos_token_id=eos))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def copy_without_tokenizer(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for path in source.iterdir():
        if not path.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy(path, target / path.name)
    return target


# --- models (item 4) ------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_a_model_folder_without_tokenizer_files_says_the_tokenizer_is_missing(
        tiny, tmp_path, family):
    folder = copy_without_tokenizer(tiny(family), tmp_path / f"{family}-no-tokenizer")
    with pytest.raises(WorkbenchError, match="tokenizer of .* is missing: it has no "
                                             "tokenizer files"):
        load_model(str(folder))


def test_a_model_folder_without_tokenizer_on_the_command_line(tiny, tmp_path):
    folder = copy_without_tokenizer(tiny("gpt2"), tmp_path / "model")
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat\n", encoding="utf-8")
    assert_one_error(run_in_process("evaluate", "perplexity", "--model", str(folder), "--file", str(text)),
                     "tokenizer of model is missing")


def not_models(tmp_path: Path, tiny) -> dict[str, tuple[Path, str]]:
    """Files that are not models, with what the message says they are."""
    (tmp_path / "notes.txt").write_text("the cat sat on the mat\n", encoding="utf-8")
    (tmp_path / "random.gguf").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "text.gguf").write_text("not a gguf file at all", encoding="utf-8")
    (tmp_path / "empty.bin").write_bytes(b"")
    shutil.make_archive(str(tmp_path / "archive"), "zip", tmp_path, "notes.txt")
    (tmp_path / "blob").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "weights.safetensors").write_bytes(
        (tiny("gpt2") / "model.safetensors").read_bytes())
    folder = tmp_path / "model"
    shutil.copytree(tiny("gpt2"), folder)
    return {
        "text": (tmp_path / "notes.txt", "it is a text file"),
        "random gguf": (tmp_path / "random.gguf", "it does not start with GGUF's magic bytes"),
        "text gguf": (tmp_path / "text.gguf", "not a GGUF file (a text file)"),
        "empty": (tmp_path / "empty.bin", "it is empty"),
        "zip": (tmp_path / "archive.zip", "it is a zip archive"),
        "binary": (tmp_path / "blob", "binary data"),
        "loose weights": (tmp_path / "weights.safetensors", "model weights without their "
                                                            "config.json"),
        "file of a model folder": (folder / "model.safetensors",
                                   f"one file of the model folder {folder}; give the folder"),
        "config of a model folder": (folder / "config.json", "give the folder instead"),
    }


@pytest.mark.parametrize("case", ["text", "random gguf", "text gguf", "empty", "zip", "binary",
                                  "loose weights", "file of a model folder",
                                  "config of a model folder"])
def test_an_existing_file_that_is_not_a_model_says_what_it_is(tiny, tmp_path, case):
    path, what = not_models(tmp_path, tiny)[case]
    with pytest.raises(WorkbenchError) as error:
        load_model(str(path))
    assert str(error.value).startswith(f"{path} is a file but not a model: ")
    assert what in str(error.value)
    assert "not found" not in str(error.value)


@pytest.mark.parametrize("case", ["text", "random gguf"])
def test_a_file_that_is_not_a_model_on_the_command_line(tiny, tmp_path, case):
    path, what = not_models(tmp_path, tiny)[case]
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat\n", encoding="utf-8")
    assert_one_error(run_in_process("evaluate", "perplexity", "--model", str(path), "--file", str(text)),
                     f"{path} is a file but not a model: ", what)


def labelled_csv(path: Path, rows: int = 12) -> Path:
    lines = ["text,label"] + [f"{' '.join(WORDS[i:i + 4 + i % 3])},{'good' if i % 2 else 'bad'}"
                              for i in range(rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_classifying_with_a_decoder_without_pad_token_pads_with_end_of_text(
        byte_level, tmp_path):
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    loaded = load_model(str(byte_level))
    tokenizer = loaded.tokenizer
    eos = tokenizer.eos_token_id
    config = FinetuneConfig(task="classify", model=str(byte_level),
                            train_file=str(labelled_csv(tmp_path / "s.csv")),
                            output_dir=str(tmp_path / "run"), max_length=16)
    data = prepare_data(config, tokenizer)
    assert "padded with the end-of-text token '<|endoftext|>'" in data.summary
    assert tokenizer.pad_token_id == eos
    model = AutoModelForSequenceClassification.from_pretrained(byte_level, num_labels=2)
    assert model.config.pad_token_id is None  # GPT-2's configuration has none
    set_pad_token(tokenizer, model)
    assert model.config.pad_token_id == eos
    batch = DataCollatorWithPadding(tokenizer)([data.train[0], data.train[1], data.train[2]])
    assert len({len(data.train[i]["input_ids"]) for i in range(3)}) > 1  # really padded
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                       ).logits
    assert logits.shape == (3, 2)


def test_classification_fine_tuning_of_a_decoder_without_pad_token(byte_level, tmp_path):
    from workbench.core.training.finetune import run_finetune

    events = []
    config = FinetuneConfig(task="classify", model=str(byte_level),
                            train_file=str(labelled_csv(tmp_path / "s.csv", 16)),
                            output_dir=str(tmp_path / "run"), max_steps=2, batch_size=4,
                            logging_steps=1, eval_steps=2, save_steps=2, max_length=16)
    result = run_finetune(config, JobContext(emit=events.append))
    assert result.global_step == 2
    assert any("end-of-text token" in e.message for e in events if isinstance(e, LogLine))


def headless_classifier(tiny, folder: Path) -> Path:
    """A BERT encoder whose config asks for a sequence classifier: its head is not in the
    weights, so transformers initialises one at random and prints its LOAD REPORT."""
    shutil.copytree(tiny("bert"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


NEW_HEAD = ("a new classification head (classifier.weight, classifier.bias) was initialised: "
            "fine-tune it before use.")


def test_the_load_report_is_one_note_in_the_log_not_its_table(tiny, capfd):
    from transformers import AutoModelForSequenceClassification

    events = []
    with load_report_to_log(JobContext(emit=events.append)):
        AutoModelForSequenceClassification.from_pretrained(tiny("bert"), num_labels=3)
    logs = [e for e in events if isinstance(e, LogLine)]
    assert [(e.message, e.level) for e in logs] == [(NEW_HEAD, "note")]
    assert "LOAD REPORT" not in capfd.readouterr().err


def test_a_load_report_outside_a_job_is_one_line_on_stderr(tiny):
    code = ("import workbench.core.models.loader, transformers\n"
            "transformers.logging.disable_progress_bar()\n"
            f"transformers.AutoModelForSequenceClassification.from_pretrained({str(tiny('bert'))!r})")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [f"note: {NEW_HEAD}"]


def test_the_command_line_prints_one_note_for_a_new_head(tiny, tmp_path):
    folder = headless_classifier(tiny, tmp_path / "headless")
    data = tmp_path / "d.csv"
    data.write_text("text,label\nthe cat,LABEL_0\nthe dog,LABEL_1\n", encoding="utf-8")
    result = run("evaluate", "classify", "--model", str(folder), "--file", str(data), "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [f"note: {NEW_HEAD}"]
    assert json.loads(result.stdout)["examples"] == 2


# --- line endings and perplexity (item 5) ---------------------------------------------------
TEXT = " ".join(WORDS[i % len(WORDS)] for i in range(120)) + " ."
LINES = "\n".join(" ".join(WORDS[i:i + 5]) for i in range(0, len(WORDS), 3)) + "\n"


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_windows_line_endings_give_the_same_perplexity(byte_level, tmp_path, newline):
    loaded = load_model(str(byte_level))
    unix, other = tmp_path / "unix.txt", tmp_path / "other.txt"
    unix.write_bytes(LINES.encode())
    other.write_bytes(LINES.replace("\n", newline).encode())
    assert read_text(other) == read_text(unix) == LINES
    # the file as it is, \r included, would score differently: the test can tell
    raw = perplexity(loaded, LINES.replace("\n", newline), 32, 16)
    first, second = (perplexity(loaded, read_text(p), 32, 16) for p in (unix, other))
    assert raw.token_ids != first.token_ids
    assert second.token_ids == first.token_ids
    assert second.perplexity == first.perplexity and second.token_nll == first.token_nll


def test_windows_line_endings_on_the_command_line(byte_level, tmp_path):
    unix, dos = tmp_path / "unix.txt", tmp_path / "dos.txt"
    unix.write_bytes(("\ufeff" + LINES).encode())
    dos.write_bytes(LINES.replace("\n", "\r\n").encode())
    numbers = []
    for path in (unix, dos):
        result = run_in_process("evaluate", "perplexity", "--model", str(byte_level), "--file", str(path),
                     "--max-length", "32", "--json")
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        numbers.append((data["perplexity"], data["tokens"], data["bytes"]))
    assert numbers[0] == numbers[1]


@pytest.mark.parametrize("suffix, content", [
    (".txt", "one two\r\n\r\nthree four\r\n"),
    (".jsonl", '{"text": "one two"}\r\n{"text": "three four"}\r\n'),
    (".csv", "text\r\none two\r\nthree four\r\n"),
    (".tsv", "text\r\none two\r\n\r\nthree four\r\n"),
])
def test_training_texts_read_with_universal_newlines(tmp_path, suffix, content):
    path = tmp_path / f"train{suffix}"
    path.write_bytes(content.encode())
    assert read_texts(path) == ["one two", "three four"]


def test_a_jsonl_string_may_hold_a_line_separator(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a\u2028b", "label": "x"}\n{"text": "c", "label": "y"}\n',
                    encoding="utf-8")
    assert read_rows(path, "text", "label") == [("a\u2028b", "x"), ("c", "y")]


# --- BLEU exactly as sacrebleu's command line reads the files ---------------------------------
HYPS = ["The cat sat on the mat.", "A dog barked loudly at night.", "It rains today in Paris.",
        "He reads a good book."]
REFS = ["The cat is sitting on the mat.", "A dog barked loud in the night.",
        "Today it is raining in Paris.", "He is reading a nice book."]
BOM = "\ufeff"


def join(lines, newline="\n", end="\n"):
    return newline.join(lines) + end


BLEU_CASES = {
    "plain": (join(HYPS), join(REFS)),
    "bom in the hypothesis": (BOM + join(HYPS), join(REFS)),
    "bom in the reference": (join(HYPS), BOM + join(REFS)),
    "crlf": (join(HYPS, "\r\n", "\r\n"), join(REFS, "\r\n", "\r\n")),
    "crlf hypothesis only": (join(HYPS, "\r\n", "\r\n"), join(REFS)),
    "empty last line": (join(HYPS) + "\n", join(REFS) + "\n"),
    "empty last line with crlf": (join(HYPS, "\r\n", "\r\n") + "\r\n", join(REFS) + "\n"),
    "no final newline": (join(HYPS, end=""), join(REFS)),
    "trailing spaces and tabs": (join([h + "  \t" for h in HYPS]), join([" " + r + " "
                                                                        for r in REFS])),
    "a blank line inside": (join(HYPS[:2] + [""] + HYPS[2:]), join(REFS[:2] + ["x"] + REFS[2:])),
    "a lone carriage return inside a line": (join(["The cat\rsat on the mat."] + HYPS[1:]),
                                             join(REFS)),
    "everything": (BOM + join([h + " " for h in HYPS], "\r\n", "\r\n") + "\r\n",
                   BOM + join(REFS, "\r\n", "") + "\n\n"),
}


def sacrebleu_cli(ref: Path, hyp: Path) -> list[float]:
    command = [str(SACREBLEU)] if SACREBLEU.exists() else [sys.executable, "-m", "sacrebleu"]
    result = subprocess.run([*command, str(ref), "-i", str(hyp), "-m", "bleu", "chrf", "ter",
                             "-b", "-w", "4"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [float(x) for x in json.loads(result.stdout)]


@pytest.mark.parametrize("case", list(BLEU_CASES))
def test_bleu_chrf_ter_equal_the_sacrebleu_command_line(tmp_path, case):
    hyp_text, ref_text = BLEU_CASES[case]
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_bytes(hyp_text.encode("utf-8"))
    ref.write_bytes(ref_text.encode("utf-8"))
    from sacrebleu.utils import smart_open

    for path in (hyp, ref):  # the segments are sacrebleu's own
        with smart_open(str(path)) as f:
            assert read_lines(path) == [line.rstrip() for line in f]
    result = run("evaluate", "bleu", "--hyp", str(hyp), "--ref", str(ref), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    ours = [round(data[m]["score"], 4) for m in ("bleu", "chrf", "ter")]
    assert ours == sacrebleu_cli(ref, hyp)


def test_gzipped_files_are_read_as_sacrebleu_reads_them(tmp_path):
    plain, packed = tmp_path / "hyp.txt", tmp_path / "hyp.txt.gz"
    plain.write_bytes((BOM + join(HYPS, "\r\n")).encode())
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_lines(packed) == read_lines(plain)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(b"not gzip")
    with pytest.raises(WorkbenchError, match="not a readable gzip file"):
        read_lines(broken)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"ok\n\xff\xfe bad\n", "not UTF-8 text"),
])
def test_bad_bleu_files(tmp_path, content, message):
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_bytes(content)
    ref.write_text(join(REFS), encoding="utf-8")
    with pytest.raises(WorkbenchError, match=message):
        read_lines(hyp)
    assert_one_error(run("evaluate", "bleu", "--hyp", str(hyp), "--ref", str(ref)), message)


# --- rows with a missing field ------------------------------------------------------------------
BAD_ROWS = {
    "csv missing label": ("d.csv", "text,label\nthe cat,good\nthe dog\nthe sea,bad\n",
                          "d.csv line 3 has 1 field(s) but the header has 2: a field is missing"),
    "csv missing label after a quoted multi-line text": (
        "d.csv", 'text,label\n"the cat\nsat",good\nthe dog\n', "d.csv line 4 has 1 field(s)"),
    "csv extra field": ("d.csv", "text,label\nthe cat, the dog,good\n",
                        "d.csv line 2 has 3 field(s) but the header has 2: quote a text"),
    "csv empty label": ("d.csv", "text,label\nthe cat,good\nthe dog,\n",
                        "d.csv line 3 has an empty 'label'"),
    "csv with crlf and a blank line": ("d.csv", "text,label\r\nthe cat,good\r\n\r\nthe dog\r\n",
                                       "d.csv line 4 has 1 field(s)"),
    "csv quote left open": ("d.csv", 'text,label\nthe cat,good\n"the dog,bad\nthe sea,bad\n',
                            "d.csv line 3 has 1 field(s) but the header has 2: a field is "
                            "missing (each row needs text, label) (the row runs to line 4: is "
                            "a quote left open?)."),
    "tsv missing label": ("d.tsv", "text\tlabel\nthe cat\tgood\nthe dog\n",
                          "d.tsv line 3 has 1 field(s) but the header has 2"),
    "tsv label column missing": ("d.tsv", "text\tclass\nthe cat\tgood\n",
                                 "d.tsv has no column 'label'"),
    "jsonl text null": ("d.jsonl", '{"text": "a", "label": "x"}\n{"text": null, "label": "y"}\n',
                        "d.jsonl line 2: 'text' is null, not a string"),
    "jsonl text a number": ("d.jsonl", '{"text": 5, "label": "x"}\n',
                            "d.jsonl line 1: 'text' is a number, not a string"),
    "jsonl text a list": ("d.jsonl", '\n{"text": ["a"], "label": "x"}\n',
                          "d.jsonl line 2: 'text' is a list, not a string"),
    "jsonl label null": ("d.jsonl", '{"text": "a", "label": null}\n',
                         "d.jsonl line 1: 'label' is null, not a label"),
    "jsonl label missing": ("d.jsonl", '{"text": "a", "label": "x"}\r\n{"text": "b"}\r\n',
                            "d.jsonl line 2 has no 'label' field"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_row_with_a_missing_or_bad_field_is_refused_with_its_line(tmp_path, case):
    name, content, message = BAD_ROWS[case]
    path = tmp_path / name
    path.write_bytes(content.encode())
    with pytest.raises(WorkbenchError) as error:
        read_rows(path, "text", "label")
    assert str(error.value).startswith(message), str(error.value)


def test_good_rows_still_read(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('\ntext,label\n"a, b",x\n\n"c\nd",1\n  ,y\n', encoding="utf-8")
    assert read_rows(path, "text", "label") == [("a, b", "x"), ("c\nd", "1")]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": true}\n')
    assert read_rows(jsonl, "text", "label") == [("a", "1"), ("b", "True")]


@pytest.mark.parametrize("case", ["csv missing label", "jsonl text null"])
def test_evaluate_classify_refuses_a_bad_row_before_loading(tiny, tmp_path, case):
    name, content, message = BAD_ROWS[case]
    path = tmp_path / name
    path.write_bytes(content.encode())
    assert_one_error(run_in_process("evaluate", "classify", "--model", str(tiny("bert-classifier")),
                         "--file", str(path)), message)


def test_finetune_refuses_a_bad_row_and_writes_nothing(tiny, tmp_path):
    name, content, message = BAD_ROWS["tsv missing label"]
    path = tmp_path / name
    path.write_bytes(content.encode())
    out = tmp_path / "run"
    assert_one_error(run("finetune", "--task", "classify", "--model", str(tiny("bert")),
                         "--train", str(path), "--output", str(out), "--max-steps", "2"),
                     message)
    assert not out.exists()


# --- output folders -----------------------------------------------------------------------------
PAIRS = ("prompt\treference\nthe cat sat on\tthe cat sat on the mat\n"
         "the sea is\tthe sea is blue\nthe dog\tthe dog was tired\n")


def output_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "result.txt").write_text("keep me", encoding="utf-8")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "outputs.tsv").write_text("keep me too", encoding="utf-8")
    return {
        "an existing file": (tmp_path / "result.txt", "is a file: give a folder"),
        "a folder under a file": (tmp_path / "result.txt" / "out", "result.txt is a file"),
        "a folder with earlier outputs": (earlier, "already holds outputs.tsv"),
    }


@pytest.mark.parametrize("case", ["an existing file", "a folder under a file",
                                  "a folder with earlier outputs"])
def test_generate_output_is_checked_before_anything_is_generated(gpt2, tmp_path, case):
    target, message = output_cases(tmp_path)[case]
    before = snapshot(tmp_path)
    with pytest.raises(WorkbenchError, match=message):
        output_folder(target)
    assert snapshot(tmp_path) == before


def test_generate_output_in_a_folder_that_cannot_be_written(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        try:
            (locked / "probe").touch()
            (locked / "probe").unlink()
            if not Path("/sys").is_dir():
                pytest.skip("root writes in any folder, and there is no /sys to try")
            locked = Path("/sys")  # a pseudo file system refuses even root
        except OSError:
            pass
        with pytest.raises(WorkbenchError, match="Cannot write the outputs into"):
            output_folder(locked / "new")
        with pytest.raises(WorkbenchError, match="Cannot write the outputs into"):
            output_folder(locked)
    finally:
        (tmp_path / "locked").chmod(0o755)


@pytest.mark.parametrize("case", ["an existing file", "a folder with earlier outputs"])
def test_evaluate_generate_checks_its_output_first(tiny, tmp_path, case):
    target, message = output_cases(tmp_path)[case]
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(PAIRS, encoding="utf-8")
    before = snapshot(tmp_path)
    result = run_in_process("evaluate", "generate", "--model", str(tiny("gpt2")), "--file", str(pairs),
                 "--no-chat", "--max-new-tokens", "3", "--output", str(target))
    assert_one_error(result, message)
    assert "[1/3]" not in result.stdout  # refused before the first row
    assert snapshot(tmp_path) == before


def test_evaluate_generate_output_on_a_read_only_file_system(tiny, tmp_path):
    if not Path("/sys").is_dir():
        pytest.skip("no /sys")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(PAIRS, encoding="utf-8")
    result = run_in_process("evaluate", "generate", "--model", str(tiny("gpt2")), "--file", str(pairs),
                 "--no-chat", "--max-new-tokens", "3", "--output", "/sys/lmwb-output")
    assert_one_error(result, "Cannot write the outputs into /sys")


def test_evaluate_generate_prints_a_line_a_row(tiny, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_bytes(PAIRS.replace("\n", "\r\n").encode())
    out = tmp_path / "out"
    result = run_in_process("evaluate", "generate", "--model", str(tiny("gpt2")), "--file", str(pairs),
                 "--no-chat", "--max-new-tokens", "3", "--output", str(out))
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert [row.split("]")[0] for row in rows] == ["[1/3", "[2/3", "[3/3"]
    assert (out / "outputs.tsv").is_file() and (out / "result.json").is_file()
    saved = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert saved["references"] == [["the cat sat on the mat", "the sea is blue",
                                     "the dog was tired"]]  # no \r left in them


def test_generate_and_score_reports_each_row(gpt2):
    events = []
    prompts, refs = ["the cat", "the dog", "the sea"], [["a cat", "a dog", "a sea"]]
    result = generate_and_score(gpt2, prompts, refs, SamplingSettings(do_sample=False,
                                                                      max_new_tokens=3),
                                ctx=JobContext(emit=events.append))
    done = [e for e in events if isinstance(e, RowDone)]
    assert [(e.row, e.total) for e in done] == [(1, 3), (2, 3), (3, 3)]
    assert [e.hypothesis for e in done] == result.hypotheses


def test_finetune_output_onto_a_model_folder_is_refused_and_the_model_kept(tiny, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny("bert"), model)
    before = snapshot(model)
    train = labelled_csv(tmp_path / "s.csv")
    assert_one_error(run("finetune", "--task", "classify", "--model", str(tiny("bert")),
                         "--train", str(train), "--output", str(model), "--max-steps", "2"),
                     "holds a model, not a run")
    assert snapshot(model) == before


# --- per-token NLL at its own position -----------------------------------------------------------
def reference_token_nll(model, ids, max_length, stride) -> dict[int, float]:
    """Token position → NLL, by a plain loop over the transformers recipe's windows; each
    token's loss computed by transformers itself with only that token as a label."""
    n = ids.shape[1]
    out, prev_end = {}, 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        trg_len = end - prev_end
        window = ids[:, begin:end]
        for j in range(max(end - begin - trg_len, 1), end - begin):  # the labels not -100
            labels = torch.full_like(window, -100)
            labels[0, j] = window[0, j]
            with torch.no_grad():
                out[begin + j] = float(model(window, labels=labels).loss)
        prev_end = end
        if end == n:
            break
    return out


TEXT_57 = " ".join(WORDS[i % len(WORDS)] for i in range(57))


@pytest.mark.parametrize("max_length, stride", [(16, 16), (16, 8), (16, 5), (16, 15), (10, 10),
                                                (20, 20), (57, 57), (2, 2), (2, 1)])
def test_per_token_nll_is_at_its_own_position(gpt2, max_length, stride):
    ids = gpt2.tokenizer(TEXT_57, return_tensors="pt")["input_ids"]
    assert ids.shape[1] == 57
    expected = reference_token_nll(gpt2.model, ids, max_length, stride)
    result = perplexity(gpt2, TEXT_57, max_length=max_length, stride=stride)
    assert len(result.token_nll) == 56 and result.tokens == len(expected)
    scored = dict(result.scored())
    assert sorted(scored) == sorted(expected)
    for position, nll in expected.items():
        assert scored[position] == pytest.approx(nll, rel=1e-4, abs=1e-5), position
        assert result.token_nll[position - 1] == scored[position]
    assert all(math.isnan(result.token_nll[p - 1]) for p in range(1, 57) if p not in expected)
    assert result.nll_per_token == pytest.approx(sum(expected.values()) / len(expected), rel=1e-5)
    worst = result.worst(5)
    top = sorted(expected.items(), key=lambda item: -item[1])[:5]
    assert [pos for pos, _, _ in worst] == [pos for pos, _ in top]
    assert [text for _, text, _ in worst] == [result.token_texts[pos] for pos, _ in top]
    per_token = result.to_dict(per_token=True)["per_token"]
    assert [(row["position"], row["token"]) for row in per_token] == [
        (pos, result.token_texts[pos]) for pos in sorted(expected)]
    assert all(row["nll"] == pytest.approx(expected[row["position"]], rel=1e-4, abs=1e-5)
               for row in per_token)


def test_stride_equal_to_the_window_on_the_command_line(tiny, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT_57, encoding="utf-8")
    result = run_in_process("evaluate", "perplexity", "--model", str(tiny("gpt2")), "--file", str(text),
                 "--max-length", "16", "--stride", "16", "--per-token", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    positions = [row["position"] for row in data["per_token"]]
    assert data["tokens"] == len(positions) == 53
    assert not {16, 32, 48} & set(positions)  # a later window's first token is not scored
    assert positions == sorted(set(range(1, 57)) - {16, 32, 48})


# --- progress and cancel of long jobs (item 6) ----------------------------------------------------
@pytest.fixture(scope="module")
def long_text() -> str:
    text = " ".join(WORDS[(i * 7) % len(WORDS)] for i in range(48_000))
    assert len(text.encode()) > 200_000
    return text


def test_perplexity_of_a_long_text_reports_every_window(gpt2, long_text):
    events = []
    result = perplexity(gpt2, long_text, 128, 128, JobContext(emit=events.append))
    windows = [e for e in events if isinstance(e, Progress) and "window" in e.message]
    n = len(result.token_ids)
    assert len(windows) == math.ceil((n - 128) / 128) + 1
    assert windows[-1].message == f"Perplexity: window {len(windows)} of {len(windows)}"
    fractions = [e.fraction for e in windows]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_perplexity_cancel_takes_effect_within_one_model_call(gpt2, long_text):
    token = CancelToken()
    calls = []
    hook = gpt2.model.register_forward_pre_hook(lambda module, args: calls.append(1))

    def on_event(event):
        if isinstance(event, Progress) and event.message.startswith("Perplexity: window 5 "):
            token.cancel()

    try:
        with pytest.raises(Cancelled):
            perplexity(gpt2, long_text, 128, 64, JobContext(cancel=token, emit=on_event))
    finally:
        hook.remove()
    assert len(calls) == 5  # the call after the cancel never started

"""The data-file readers' shared rules: UTF-8 with or without a byte-order mark, universal
newlines, one WorkbenchError naming the file and the line (the messages of each kind of bad
file are pinned in tests/test_bad_files.py too)."""

import pytest

from workbench.core.common.data_files import (
    line_of,
    read_lines,
    read_pairs,
    read_records,
    read_rows,
    read_text,
    read_texts,
)
from workbench.core.common.errors import WorkbenchError


@pytest.mark.parametrize("raw", [b"one\ntwo\n", b"\xef\xbb\xbfone\r\ntwo\r\n", b"one\rtwo\r"])
def test_every_reader_drops_the_mark_and_reads_universal_newlines(tmp_path, raw):
    path = tmp_path / "t.txt"
    path.write_bytes(raw)
    assert read_text(path) == "one\ntwo\n"
    tsv = tmp_path / "p.tsv"
    tsv.write_bytes(raw.replace(b"one", b"a\tb").replace(b"two", b"c\td"))
    assert read_pairs(tsv) == (["a", "c"], [["b", "d"]])
    csv = tmp_path / "r.csv"
    csv.write_bytes(raw.replace(b"one", b"text,label").replace(b"two", b"x,y"))
    assert read_rows(csv, "text", "label") == [("x", "y")]
    assert read_texts(csv) == ["x"]


def test_bleu_segments_keep_sacrebleus_rules(tmp_path):
    path = tmp_path / "hyp.txt"
    path.write_bytes(b"\xef\xbb\xbfone\r\ntwo\r\n\n")
    assert read_lines(path) == ["\ufeffone", "two", ""]  # the mark and an empty last line stay


@pytest.mark.parametrize("raw, line", [(b"\xff", 1), (b"a\nb\n\xe9", 3), (b"a\r\nb\r\xe9", 3),
                                       (b"\xef\xbb\xbfa\n\xc3(", 2)])
def test_a_byte_that_is_not_utf8_is_named_with_its_line(tmp_path, raw, line):
    path = tmp_path / "bad.csv"
    path.write_bytes(raw)
    byte = raw[-2] if raw.endswith(b"(") else raw[-1]
    message = f"{path} is not UTF-8 text (the byte 0x{byte:02x} on line {line} cannot be decoded)."
    for read in (read_text, read_lines, read_pairs, lambda p: read_rows(p, "text", "label")):
        with pytest.raises(WorkbenchError) as error:
            read(path)
        assert str(error.value) == message


def test_line_of_counts_each_kind_of_line_break_once():
    assert [line_of(b"a\r\nb\rc\nd", i) for i in (0, 3, 5, 7)] == [1, 2, 3, 4]


def test_files_that_cannot_be_read(tmp_path):
    with pytest.raises(WorkbenchError, match=f"^{tmp_path / 'no.txt'}: no such file.$"):
        read_text(tmp_path / "no.txt")
    with pytest.raises(WorkbenchError, match="^--text-file .* is a folder, not a text file.$"):
        read_text(tmp_path, "--text-file")
    with pytest.raises(WorkbenchError, match="^--prompt-file needs a file name.$"):
        read_text("", "--prompt-file")
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n")
    with pytest.raises(WorkbenchError, match="blank.txt is empty"):
        read_text(blank)
    assert read_text(blank, empty_ok=True) == " \n"


def test_a_limit_on_the_length(tmp_path):
    path = tmp_path / "long.txt"
    path.write_text("é" * 10, encoding="utf-8")
    assert read_text(path, max_chars=10) == "é" * 10
    with pytest.raises(WorkbenchError, match="is longer than"):
        read_text(path, max_chars=9)
    path.write_bytes(b"x" * 1000)  # far longer in bytes than the limit: refused unread
    with pytest.raises(WorkbenchError, match="is longer than"):
        read_text(path, max_chars=9)


def test_a_jsonl_line_nested_too_deeply_is_one_error_in_every_reader(tmp_path):
    """json's decoder gives up with RecursionError, not a JSONDecodeError: still one clear
    message naming the line, for training rows, texts and named records alike."""
    path = tmp_path / "deep.jsonl"
    path.write_text('{"text": "ok", "label": "a"}\n{"text": ' + "[" * 100_000 + "]" * 100_000 +
                    ', "label": "a"}\n', encoding="utf-8")
    for read in (lambda: read_rows(path, "text", "label"), lambda: read_texts(path),
                 lambda: read_records(path, ["text", "label"])):
        with pytest.raises(WorkbenchError, match=r"^deep\.jsonl line 2 is nested too deeply\.$"):
            read()

"""Reading the user's data files: texts, BLEU segments, labelled rows, records of named
fields (multiple-choice items, sentence pairs) and prompt pairs.

One set of rules for every reader:

- UTF-8; a byte-order mark is dropped, and line endings are universal (``\\r\\n`` and a lone
  ``\\r`` read as ``\\n``, as Python's text mode reads them), so a file saved on Windows
  gives the same text. The exception is :func:`read_lines`, which reads BLEU segments
  exactly as sacrebleu's command line does, so that the scores are its scores.
- Every problem is one :class:`WorkbenchError` naming the file, and the line where there
  is one (a byte that is not UTF-8, a row with a missing field, a line that is not JSON).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from workbench.core.common.errors import WorkbenchError

LABELLED_SUFFIXES = (".csv", ".tsv", ".jsonl")
PAIR_HEADER_NAMES = ("prompt", "source", "input", "src")  # a first field that makes a header


# --- bytes and text ---------------------------------------------------------------------------
def _subject(path: Path, what: str | None) -> str:
    """How a message names the file: ``--prompt-file p.txt`` or just ``p.txt``'s path."""
    return f"{what} {path}" if what else str(path)


def read_bytes(path: str | Path, what: str | None = None, limit: int | None = None) -> bytes:
    """The bytes of a file (at most ``limit + 1`` of them when a limit is given), or one
    error: no name, no such file, a folder, or the system's reason."""
    if not str(path).strip():
        raise WorkbenchError(f"{what or 'A file option'} needs a file name.")
    path = Path(path)
    subject = _subject(path, what)
    try:
        with open(path, "rb") as f:
            return f.read() if limit is None else f.read(limit + 1)
    except FileNotFoundError:
        raise WorkbenchError(f"{subject}: no such file.") from None
    except IsADirectoryError:
        raise WorkbenchError(f"{subject} is a folder, not a text file.") from None
    except OSError as exc:
        if path.is_dir():  # some systems refuse a folder with another error
            raise WorkbenchError(f"{subject} is a folder, not a text file.") from None
        raise WorkbenchError(f"Cannot read {subject}: {exc.strerror or exc}.") from None


def line_of(data: bytes, offset: int) -> int:
    """The line (from 1) that holds byte ``offset``, counting ``\\r\\n``, ``\\n`` and a lone
    ``\\r`` as one line break each."""
    before = data[:offset]
    return before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n") + 1


def decode(data: bytes, path: str | Path, what: str | None = None,
           keep_bom: bool = False) -> str:
    """``data`` as UTF-8 text (without its byte-order mark unless ``keep_bom``), or an error
    that names the first byte that cannot be decoded and its line."""
    if not keep_bom:
        data = data.removeprefix(b"\xef\xbb\xbf")  # (utf-8-sig would misplace a bad byte)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WorkbenchError(f"{_subject(Path(path), what)} is not UTF-8 text (the byte "
                             f"0x{data[exc.start]:02x} on line {line_of(data, exc.start)} "
                             "cannot be decoded).") from None


def universal_newlines(text: str) -> str:
    """``\\r\\n`` and a lone ``\\r`` as ``\\n``, as Python's ``open()`` reads text by default:
    a file saved with Windows (or old Mac) line endings gives the same text."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text(path: str | Path, what: str | None = None, max_chars: int | None = None,
              empty_ok: bool = False) -> str:
    """A UTF-8 text file's content with universal newlines and without a byte-order mark.

    ``what`` names the file in messages (a command-line option such as ``--prompt-file``);
    ``max_chars`` refuses longer texts (without reading much more than that); a file of
    only whitespace is refused unless ``empty_ok``."""
    # UTF-8 takes at most 4 bytes a character: a file longer than that is surely too long
    limit = None if max_chars is None else 4 * max_chars + 4
    data = read_bytes(path, what, limit)
    subject = _subject(Path(path), what)
    too_long = WorkbenchError(f"{subject} is longer than {(max_chars or 0) / 2**20:g} MB of "
                              "text, more than any model's context.")
    if limit is not None and len(data) > limit:
        raise too_long
    text = universal_newlines(decode(data, path, what))
    if max_chars is not None and len(text) > max_chars:
        raise too_long
    if not empty_ok and not text.strip():
        raise WorkbenchError(f"{subject} is empty.")
    return text


def read_lines(path: str | Path) -> list[str]:
    """The segments of a hypothesis or reference file, read exactly as sacrebleu's command
    line reads them (``utils.smart_open``: UTF-8 with ``newline="\\n"``, gzip for ``.gz``;
    then ``line.rstrip()``): lines end at ``\\n`` only, a last line without one counts, an
    empty last line (a blank line before the end) is a segment, each segment loses its
    trailing whitespace (so ``\\r`` of Windows line endings too), and a byte-order mark stays
    part of the first segment, as sacrebleu scores it."""
    path = Path(path)
    data = read_bytes(path)
    if path.name.endswith(".gz"):
        import gzip
        import zlib

        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise WorkbenchError(f"{path} is not a readable gzip file ({exc}).") from None
    lines = decode(data, path, keep_bom=True).split("\n")
    if lines[-1] == "":  # the newline that ends the last line starts no segment
        lines.pop()
    if not lines:
        raise WorkbenchError(f"{path} is empty.")
    return [line.rstrip() for line in lines]


# --- training texts and labelled rows -----------------------------------------------------------
def read_texts(path: str | Path, text_column: str = "text") -> list[str]:
    """Training texts: paragraphs of a .txt file, or a text field of .jsonl / .csv / .tsv."""
    path = Path(path)
    if path.suffix.lower() in LABELLED_SUFFIXES:
        return [row[0] for row in read_rows(path, text_column, None)]
    content = read_text(path)  # universal newlines: \r\n\r\n separates paragraphs too
    paragraphs = [p.strip() for p in content.split("\n\n") if p.strip()]
    return paragraphs or [content]


def read_rows(path: str | Path, text_column: str, label_column: str | None
              ) -> list[tuple[str, str | None]]:
    """(text, label) rows of a .csv, .tsv or .jsonl file, with clear messages: a row with a
    missing or an extra field, an empty label, or a JSON text that is not a string is refused
    with its line number. Rows without text are left out."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LABELLED_SUFFIXES:
        raise WorkbenchError(f"{path.name}: labelled data must be .csv, .tsv or .jsonl.")
    content = read_text(path)
    read = _read_jsonl if suffix == ".jsonl" else _read_table
    rows = [(t, lab) for _, t, lab in read(path, content, text_column, label_column)
            if t.strip()]
    if not rows:
        raise WorkbenchError(f"{path.name} has no rows with text.")
    return rows


def _label_value(value: Any) -> str | None:
    """A JSON label as text: a string, a number or a boolean; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and math.isfinite(value):  # bool is an int
        return str(value)
    return None


def json_kind(value: Any) -> str:
    """What a JSON value is, in words, for a message ("a list", "null", "text")."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "text",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _json_lines(path: Path, content: str):
    """(line number, value) of each non-blank line of a JSON Lines text; a line that is not
    JSON, or nested too deeply for the decoder, is one error naming it."""
    # split at newlines only: str.splitlines() would also cut at U+2028 and other
    # separators that a JSON string may hold as they are
    for number, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise WorkbenchError(f"{path.name} line {number} is not JSON: {exc.msg}.") from None
        except RecursionError:
            raise WorkbenchError(f"{path.name} line {number} is nested too deeply.") from None


def _read_jsonl(path: Path, content: str, text_column: str, label_column: str | None
                ) -> list[tuple[int, str, str | None]]:
    rows = []
    for number, record in _json_lines(path, content):
        if not isinstance(record, dict) or text_column not in record:
            raise WorkbenchError(f"{path.name} line {number} has no '{text_column}' field.")
        text = record[text_column]
        if not isinstance(text, str):
            raise WorkbenchError(f"{path.name} line {number}: '{text_column}' is "
                                 f"{json_kind(text)}, not a string.")
        label = None
        if label_column is not None:
            if label_column not in record:
                raise WorkbenchError(f"{path.name} line {number} has no '{label_column}' field.")
            label = _label_value(record[label_column])
            if label is None:
                raise WorkbenchError(f"{path.name} line {number}: '{label_column}' is "
                                     f"{json_kind(record[label_column])}, not a label (a "
                                     "string or a number).")
        rows.append((number, text, label))
    return rows


def _read_table(path: Path, content: str, text_column: str, label_column: str | None
                ) -> list[tuple[int, str, str | None]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    kind, name = ("TSV", "tab") if delimiter == "\t" else ("CSV", "comma")
    line = 1  # where the next record starts
    try:
        columns = next(reader, [])
        while not columns and reader.line_num:  # blank lines before the header
            line = reader.line_num + 1
            columns = next(reader, [])
        for wanted in (text_column, label_column):
            if wanted is not None and wanted not in columns:
                raise WorkbenchError(f"{path.name} has no column '{wanted}' (its columns: "
                                     f"{', '.join(columns) or 'none'}).")
        text_at = columns.index(text_column)
        label_at = None if label_column is None else columns.index(label_column)
        rows = []
        line = reader.line_num + 1
        for fields in reader:
            if fields:  # a blank line is no row
                if len(fields) != len(columns):
                    missing = len(fields) < len(columns)
                    spans = (f" (the row runs to line {reader.line_num}: is a quote left "
                             "open?)" if reader.line_num > line else "")
                    raise WorkbenchError(
                        f"{path.name} line {line} has {len(fields)} field(s) but the header "
                        f"has {len(columns)}: " + (
                            f"a field is missing (each row needs {', '.join(columns)}){spans}."
                            if missing else f"quote a text that holds a {name}{spans}."))
                label = None if label_at is None else fields[label_at]
                if label is not None and not label.strip() and fields[text_at].strip():
                    raise WorkbenchError(f"{path.name} line {line} has an empty "
                                         f"'{label_column}'.")
                rows.append((line, fields[text_at], label))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise WorkbenchError(f"{path.name} line {reader.line_num or line} is not valid "
                             f"{kind}: {exc}.") from None
    return rows


# --- records of named fields (multiple-choice items, sentence pairs) ---------------------
def read_records(path: str | Path, columns: list[str], optional: tuple[str, ...] = ()
                 ) -> list[tuple[int, dict[str, Any]]]:
    """(line, fields) of each record of a ``.jsonl``, ``.csv`` or ``.tsv`` file, with the
    fields ``columns`` (each required) and those of ``optional`` the file has. JSON values
    stay as they are; CSV/TSV values are text. One clear error for a file that is not one of
    these, a line that is not JSON or not an object, a missing field or column, a row with
    too few or too many fields, or a file without records."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LABELLED_SUFFIXES:
        raise WorkbenchError(f"{path.name}: the file must be .jsonl, .csv or .tsv.")
    content = read_text(path)
    if suffix == ".jsonl":
        records = _jsonl_records(path, content, columns, optional)
    else:
        records = _table_records(path, content, columns, optional)
    if not records:
        raise WorkbenchError(f"{path.name} has no records.")
    return records


def _jsonl_records(path: Path, content: str, columns: list[str], optional: tuple[str, ...]
                   ) -> list[tuple[int, dict[str, Any]]]:
    records = []
    for number, record in _json_lines(path, content):
        if not isinstance(record, dict):
            raise WorkbenchError(f"{path.name} line {number} is {json_kind(record)}, not an object "
                                 f"with the fields {', '.join(columns)}.")
        for name in columns:
            if name not in record:
                raise WorkbenchError(f"{path.name} line {number} has no '{name}' field (its "
                                     f"fields: {', '.join(record) or 'none'}).")
        records.append((number, {name: record[name] for name in (*columns, *optional)
                                 if name in record}))
    return records


def _table_records(path: Path, content: str, columns: list[str], optional: tuple[str, ...]
                   ) -> list[tuple[int, dict[str, Any]]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    kind, name = ("TSV", "tab") if delimiter == "\t" else ("CSV", "comma")
    reader = csv.reader(io.StringIO(content, newline=""), delimiter=delimiter)
    line = 1  # where the next record starts
    try:
        header = next(reader, [])
        while not header and reader.line_num:  # blank lines before the header
            line = reader.line_num + 1
            header = next(reader, [])
        for wanted in columns:
            if wanted not in header:
                raise WorkbenchError(f"{path.name} has no column '{wanted}' (its columns: "
                                     f"{', '.join(header) or 'none'}).")
        at = {c: header.index(c) for c in (*columns, *optional) if c in header}
        records = []
        line = reader.line_num + 1
        for fields in reader:
            if fields:  # a blank line is no record
                if len(fields) != len(header):
                    spans = (f" (the row runs to line {reader.line_num}: is a quote left "
                             "open?)" if reader.line_num > line else "")
                    fix = (f"a field is missing (each row needs {', '.join(header)})"
                           if len(fields) < len(header) else f"quote a text that holds a {name}")
                    raise WorkbenchError(f"{path.name} line {line} has {len(fields)} field(s) "
                                         f"but the header has {len(header)}: {fix}{spans}.")
                records.append((line, {c: fields[i] for c, i in at.items()}))
            line = reader.line_num + 1
    except csv.Error as exc:
        raise WorkbenchError(f"{path.name} line {reader.line_num or line} is not valid "
                             f"{kind}: {exc}.") from None
    return records


# --- prompt and reference pairs -------------------------------------------------------------------
def read_pairs(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """Prompts and references (one list per reference column) of a TSV file: a prompt and
    one or more references a line, separated by tabs; a first line whose first field is
    ``prompt``, ``source``, ``input`` or ``src`` is a header."""
    path = Path(path)
    lines = read_text(path).rstrip("\n").split("\n")
    numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    if numbered and numbered[0][1].split("\t")[0].strip().lower() in PAIR_HEADER_NAMES:
        numbered = numbered[1:]
    if not numbered:
        raise WorkbenchError(f"{path.name} has no rows after its header.")
    width = len(numbered[0][1].split("\t"))
    prompts: list[str] = []
    references: list[list[str]] = [[] for _ in range(max(width - 1, 0))]
    for number, line in numbered:
        fields = line.split("\t")
        if len(fields) < 2:
            raise WorkbenchError(f"{path.name} line {number} has no tab: each line needs a "
                                 "prompt, a tab and a reference.")
        if len(fields) != width:
            raise WorkbenchError(f"{path.name} line {number} has {len(fields)} fields but the "
                                 f"first row has {width}: every row needs the same references.")
        prompts.append(fields[0])
        for column, ref in zip(references, fields[1:], strict=True):
            column.append(ref.strip())
    return prompts, references

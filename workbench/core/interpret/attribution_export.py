"""Attributions exported: a CSV of the scores, a self-contained HTML page, and their colours."""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path

from workbench.core.common.errors import WorkbenchError
from workbench.core.interpret.attribution_result import (
    CLASSIFICATION,
    CONTINUATION,
    GENERATED,
    AttributionResult,
)

POSITIVE = (71, 114, 179)  # captum's colours for positive and negative attributions
NEGATIVE = (208, 54, 91)
MAX_TINT = 0.6  # the strongest tint: dark text stays readable on it


def diverging_colour(value: float | None, scale: float) -> tuple[int, int, int]:
    """A light tint for a signed score: blue for positive, red for negative, white for 0
    (and for no value), the strongest at ``|value| = scale``."""
    if value is None or not math.isfinite(value) or scale <= 0:
        return (255, 255, 255)
    share = min(abs(value) / scale, 1.0) * MAX_TINT
    end = POSITIVE if value > 0 else NEGATIVE
    return tuple(round(255 + share * (c - 255)) for c in end)  # type: ignore[return-value]


def scale_of(values: Sequence[float | None]) -> float:
    """The largest absolute value (the colour scale is symmetric around 0)."""
    finite = [abs(v) for v in values if v is not None and math.isfinite(v)]
    return max(finite, default=0.0)


def _same_input(results: Sequence[AttributionResult]) -> None:
    if not results:
        raise WorkbenchError("There is no attribution to export.")
    first = results[0]
    for other in results[1:]:
        if other.token_ids != first.token_ids or other.positions != first.positions:
            raise WorkbenchError("These attributions are of different inputs: export them "
                                 "one at a time.")


def _write(path: str | Path, text: str) -> Path:
    from workbench.core.common.files import cannot_write, write_atomically

    path = Path(path)
    if not path.parent.is_dir():
        raise WorkbenchError(f"Cannot write {path}: the folder {path.parent} does not exist.")
    try:
        return write_atomically(path, text)
    except OSError as exc:
        raise WorkbenchError(cannot_write(path, exc)) from None


def csv_text(results: Sequence[AttributionResult]) -> str:
    """position, token, then one score column per result (the same input)."""
    _same_input(results)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["position", "token"] + [r.column_label() for r in results])
    first = results[0]
    for j, (position, token) in enumerate(zip(first.positions, first.tokens, strict=True)):
        writer.writerow([position, token] + [repr(float(r.scores[j])) for r in results])
    return out.getvalue()


def export_csv(results: Sequence[AttributionResult], path: str | Path) -> Path:
    """Write :func:`csv_text` to ``path`` atomically."""
    return _write(path, csv_text(results))


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #111; }
.text { white-space: pre-wrap; line-height: 1.9; font-family: monospace; font-size: 14px; }
.text span { padding: 1px 0; border-radius: 2px; }
.text .target { font-weight: bold; text-decoration: underline; }
.text .fixed { color: #888; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
td.tok, th.tok { text-align: left; }
code { white-space: pre; background: #eee; }
.legend { display: inline-block; width: 240px; height: 12px; vertical-align: middle;
  background: linear-gradient(to right, rgb%s, #fff, rgb%s); border: 1px solid #999; }
.matrix td { min-width: 2.2em; }
"""


def _cell_token(token: str) -> str:
    """A token in a table cell: its extent shaded, a newline or tab as an escape."""
    shown = token.replace("\n", "\\n").replace("\t", "\\t")
    return f"<code>{html.escape(shown)}</code>"


def _span(token: str, value: float | None, scale: float, css: str = "") -> str:
    r, g, b = diverging_colour(value, scale)
    title = "" if value is None else f" title='{value:+.6g}'"
    shown = html.escape(token.replace("\n", "⏎\n") if token.strip() else
                        (token.replace("\n", "⏎\n") or "∅"))
    klass = f" class='{css}'" if css else ""
    return f"<span{klass} style='background: rgb({r},{g},{b})'{title}>{shown}</span>"


def _text_html(result: AttributionResult, values: Sequence[float | None]) -> str:
    """The input as text, each attributed token tinted by its value; the target after it."""
    scale = scale_of(values)
    by_position = dict(zip(result.positions, values, strict=True))
    tokens = dict(zip(result.positions, result.tokens, strict=True))
    parts = []
    for position in range(max(result.positions, default=-1) + 1):
        if position in by_position:
            parts.append(_span(tokens[position], by_position[position], scale))
    if result.kind == CONTINUATION:
        parts += [_span(t, None, scale, "target") for t in result.outputs]
    elif result.kind == GENERATED:
        parts.append(_span(result.outputs[-1], None, scale, "target"))
    return "<div class='text'>" + "".join(parts) + "</div>"


def html_text(results: Sequence[AttributionResult], title: str = "Input attribution") -> str:
    """A self-contained page (inline CSS, no script, every token escaped): per result its
    settings, the text tinted by the scores, and the matrix of a generated sequence; then one
    table of every result's scores."""
    _same_input(results)
    first = results[0]
    legend = ("<p>Colour: <span class='legend'></span> from −max (red) through 0 (white) to "
              "+max (blue), per method.</p>")
    sections = []
    for r in results:
        facts = [f"<b>{html.escape(r.describe())}</b>", f"model {html.escape(r.model)}",
                 f"log p(target) = {r.target_logprob:.6g}"]
        if r.baseline_logprob is not None:
            facts.append(f"log p(target | baseline) = {r.baseline_logprob:.6g}")
        if r.delta is not None:
            facts.append(f"convergence delta {r.delta:+.3g}")
        body = [f"<h2>{html.escape(r.method_name.capitalize())}</h2>",
                "<p>" + " · ".join(facts) + "</p>", _text_html(r, r.scores)]
        if r.kind == GENERATED and len(r.rows) > 1:
            body.append(_matrix_html(r))
        sections.append("\n".join(body))
    header = "".join(f"<th>{html.escape(r.column_label())}</th>" for r in results)
    rows = []
    for j, (position, token) in enumerate(zip(first.positions, first.tokens, strict=True)):
        cells = "".join(
            f"<td style='background: rgb{diverging_colour(r.scores[j], scale_of(r.scores))}'>"
            f"{r.scores[j]:+.5g}</td>" for r in results)
        rows.append(f"<tr><td>{position}</td><td class='tok'>{_cell_token(token)}</td>{cells}</tr>")
    table = (f"<table><tr><th>position</th><th class='tok'>token</th>{header}</tr>\n"
             + "\n".join(rows) + "</table>")
    kind = {CONTINUATION: "Target", GENERATED: "Generated", CLASSIFICATION: "Label"}[first.kind]
    return ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
            "style-src 'unsafe-inline'\">"
            f"<title>{html.escape(title)}</title><style>{_CSS % (NEGATIVE, POSITIVE)}</style>"
            f"</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
            f"<p>{kind}: {_cell_token(first.target)}</p>\n{legend}\n"
            + "\n".join(sections) + f"\n<h2>Scores</h2>\n{table}\n</body></html>\n")


def _matrix_html(result: AttributionResult) -> str:
    scale = scale_of([v for row in result.rows for v in row])
    head = "".join(f"<th>{_cell_token(t)}</th>" for t in result.tokens)
    lines = []
    for output, row in zip(result.outputs, result.rows, strict=True):
        cells = "".join(
            "<td></td>" if v is None else
            f"<td style='background: rgb{diverging_colour(v, scale)}' title='{v:+.6g}'>"
            f"{v:+.2g}</td>" for v in row)
        lines.append(f"<tr><th class='tok'>{_cell_token(output)}</th>{cells}</tr>")
    return ("<p>Each generated token (row) attributed to the tokens before it (columns):</p>"
            f"<table class='matrix'><tr><th></th>{head}</tr>\n" + "\n".join(lines) + "</table>")


def export_html(results: Sequence[AttributionResult], path: str | Path,
                title: str = "Input attribution") -> Path:
    """Write :func:`html_text` to ``path`` atomically."""
    return _write(path, html_text(results, title))

"""Rendering results for people (aligned tables) and scripts (JSON, CSV).

JSON is strict (RFC 8259): NaN and ±Inf become `null`. CSV follows RFC 4180: a field
holding a comma, a quote, CR or LF is quoted. Both carry every string exactly; text meant
for a terminal (aligned tables, `terminal_text`) shows control characters escaped, so that
a layer name or token from an untrusted file cannot move the cursor or recolour the screen.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np

# C0, DEL and C1 controls (ESC starts terminal escape sequences, and C1's CSI is one by
# itself), the Unicode line and paragraph separators, and lone surrogates, which no
# terminal encoding can carry.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NAMED_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
# In JSON text these can only stand inside strings; `\uXXXX` is their exact escape.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_CSV_SPECIAL = re.compile('[,"\r\n]')
BROKEN_PIPE_STATUS = 141


def number_text(value: Any) -> str:
    """The shortest text that reads back as exactly this value in its own dtype."""
    if isinstance(value, (np.floating, float)):
        if math.isnan(value):
            return "nan"
        return str(value) if isinstance(value, np.floating) else repr(value)
    return str(value)


def terminal_text(text: str) -> str:
    """`text` safe to print to a terminal: control characters as `\\n`, `\\t`, `\\r` or
    `\\xNN`, line separators and lone surrogates as `\\uXXXX`; all else unchanged."""
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def json_value(value: Any) -> Any:
    """Plain Python data for json.dumps: floats exactly (widened), NaN and ±Inf as None."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            return _floats(value)
        return [json_value(v) for v in value.tolist()] if value.ndim else json_value(value.item())
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return value


def _floats(array: np.ndarray) -> Any:
    wide = array.astype(np.float64)
    finite = np.isfinite(wide)
    if finite.all():
        return wide.tolist()
    cells = wide.astype(object)
    cells[~finite] = None
    return cells.tolist()


def to_json(value: Any) -> str:
    """Strict JSON (RFC 8259) of `value`, indented; strings exact, with DEL, C1 controls,
    line separators and lone surrogates written as `\\uXXXX` escapes."""
    text = json.dumps(json_value(value), indent=2, ensure_ascii=False, allow_nan=False)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def aligned(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain aligned text table; numbers are right-aligned, text is terminal-safe."""
    cells = [[terminal_text(str(h)) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    numeric = [
        all(_is_number(row[i]) for row in rows) if rows else False for i in range(len(headers))
    ]
    widths = [max(display_width(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [_pad(cell, widths[i], right=numeric[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def display_width(text: str) -> int:
    """Columns a string takes in a terminal: wide East Asian characters take two,
    combining marks and format characters none."""
    if text.isascii():  # what the loop below counts for every ASCII character: one each
        return len(text)
    width = 0
    for char in text:
        if unicodedata.combining(char) or unicodedata.category(char) in ("Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in "WF" else 1
    return width


def _pad(cell: str, width: int, right: bool) -> str:
    padding = " " * (width - display_width(cell))
    return padding + cell if right else cell + padding


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return terminal_text(number_text(value))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def csv_field(text: str) -> str:
    """One RFC 4180 field: quoted, with quotes doubled, when it holds `,` `"` CR or LF."""
    if _CSV_SPECIAL.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def to_csv(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """RFC 4180 CSV, a header line then one line a row (`\\n`-terminated lines, with no
    final newline); None is an empty field."""
    lines = [_csv_line([str(h) for h in headers])]
    for row in rows:
        lines.append(_csv_line(["" if v is None else number_text(v) for v in row]))
    return "\n".join(lines)


def _csv_line(fields: list[str]) -> str:
    if fields == [""]:
        return '""'  # a lone empty field, which a bare empty line would lose
    return ",".join(csv_field(f) for f in fields)


def vector_text(vector: np.ndarray, separator: str = " ") -> str:
    """A vector as text, each value exact in its dtype."""
    return separator.join(number_text(v) for v in vector)


def silence_stdout(stream: TextIO | None = None) -> None:
    """After a reader closed its end of stdout (`embcli stats m.keras | head -1`): point
    stdout at the null device, so that nothing written later, Python's own flush at exit
    included, fails again. The caller then exits quietly (`BROKEN_PIPE_STATUS`)."""
    stream = stream if stream is not None else sys.stdout
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)

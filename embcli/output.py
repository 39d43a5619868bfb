"""Rendering results for people (aligned tables) and scripts (JSON, CSV)."""

from __future__ import annotations

import csv
import io
import json
import math
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np


def number_text(value: Any) -> str:
    """The shortest text that reads back as exactly this value in its own dtype."""
    if isinstance(value, (np.floating, float)):
        if math.isnan(value):
            return "nan"
        return repr(value) if isinstance(value, float) else str(value)
    return str(value)


def json_value(value: Any) -> Any:
    """Plain Python data for json.dumps: floats exactly (widened), NaN/Inf as JSON can't."""
    if isinstance(value, np.ndarray):
        return (
            [json_value(v) for v in value.tolist()] if value.dtype.kind != "f" else _floats(value)
        )
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return value


def _floats(array: np.ndarray) -> list:
    if array.ndim > 1:
        return [_floats(row) for row in array]
    return array.astype(np.float64).tolist()


def to_json(value: Any) -> str:
    return json.dumps(json_value(value), indent=2, ensure_ascii=False)


def aligned(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain aligned text table; numbers are right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
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
    """Columns a string takes in a terminal: wide East Asian characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(cell: str, width: int, right: bool) -> str:
    padding = " " * (width - display_width(cell))
    return padding + cell if right else cell + padding


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return number_text(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def to_csv(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(headers)
    for row in rows:
        writer.writerow(["" if v is None else number_text(v) for v in row])
    return buffer.getvalue().rstrip("\n")


def vector_text(vector: np.ndarray, separator: str = " ") -> str:
    """A vector as text, each value exact in its dtype."""
    return separator.join(number_text(v) for v in vector)

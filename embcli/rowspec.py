"""Row specifications: `12`, `-1`, `10:20`, `0:100:10`, and comma-separated lists of them."""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from embcli.errors import BadRowSpec

# 18 digits hold every row number an int64 can, and stay far from Python's limit on
# converting long digit strings.
MAX_DIGITS = 18

# ASCII digits only: `\d` would take Arabic-Indic and other Unicode digits too.
_INTEGER = rf"[+-]?[0-9]{{1,{MAX_DIGITS}}}"
_INDEX = re.compile(rf"^{_INTEGER}$")
_SLICE = re.compile(rf"^({_INTEGER})?:({_INTEGER})?(?::({_INTEGER})?)?$")
_LONG_NUMBER = re.compile(rf"[0-9]{{{MAX_DIGITS + 1}}}")


def ascii_integer(text: str, what: str = "number") -> int:
    """An integer written in ASCII digits (at most `MAX_DIGITS`), with an optional sign:
    `int()` would also take `٣` and other Unicode digits, and thousands of digits."""
    text = text.strip()
    if not _INDEX.fullmatch(text):
        if _LONG_NUMBER.search(text):
            raise BadRowSpec(f"a {what} has at most {MAX_DIGITS} digits: {_shown(text)}")
        raise BadRowSpec(f"not a {what}: {_shown(text)}")
    return int(text)


def split_specs(specs: Iterable[str]) -> list[str]:
    """Split each spec on commas and drop empty parts: `["1,2", "5:7"]` -> `["1", "2", "5:7"]`."""
    parts: list[str] = []
    for spec in specs:
        parts.extend(p.strip() for p in spec.split(",") if p.strip())
    return parts


def parse_one(part: str, nrows: int) -> np.ndarray:
    """Resolve one index or slice against a table of `nrows` rows.

    Indices follow Python: `-1` is the last row, and an index outside the table is an
    error. Slices follow Python too, so `0:100` on a 50-row table means rows 0 to 49.
    """
    part = part.strip()
    if _INDEX.fullmatch(part):
        index = int(part)
        resolved = index + nrows if index < 0 else index
        if not 0 <= resolved < nrows:
            raise BadRowSpec(f"row {index} is out of range for a table of {nrows} rows")
        return np.array([resolved], dtype=np.int64)
    match = _SLICE.fullmatch(part)
    if match:
        start, stop, step = (int(g) if g is not None else None for g in match.groups())
        if step == 0:
            raise BadRowSpec(f"slice step cannot be zero: {part!r}")
        picked = range(nrows)[slice(start, stop, step)]
        return np.arange(picked.start, picked.stop, picked.step, dtype=np.int64)
    if _LONG_NUMBER.search(part):
        raise BadRowSpec(f"row numbers have at most {MAX_DIGITS} digits: {_shown(part)}")
    raise BadRowSpec(f"not a row index or slice: {_shown(part)} (use 12, -1, 10:20 or 0:100:10)")


def _shown(part: str) -> str:
    """A part as quoted in a message: escaped, and cut short when long."""
    return repr(part) if len(part) <= 40 else repr(part[:40]) + "..."


def parse_rows(specs: Iterable[str], nrows: int, *, unique: bool = False) -> np.ndarray:
    """Resolve row specs to an array of row indices, in the order given.

    Args:
        specs: indices and slices; each item may hold several, separated by commas.
        nrows: the table's row count.
        unique: refuse a row named twice (as `assign` must).
    """
    parts = split_specs(specs)
    if not parts:
        raise BadRowSpec("no rows given")
    indices = np.concatenate([parse_one(p, nrows) for p in parts])
    return refuse_repeats(indices) if unique else indices


def refuse_repeats(indices: np.ndarray) -> np.ndarray:
    """`indices`, refused when a row is named twice (it would take two values)."""
    values, counts = np.unique(indices, return_counts=True)
    repeated = values[counts > 1]
    if repeated.size:
        shown = ", ".join(str(int(r)) for r in repeated[:10])
        raise BadRowSpec(f"rows given more than once: {shown}")
    return indices

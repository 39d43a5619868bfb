"""What the audits share: block size, progress, table selection, row bytes, the checks on
limits, and the `Problem` that `check` reports."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real

import numpy as np

from embcli.errors import BadArgument
from embcli.formats.base import ModelFile, Table
from embcli.model import find_table, readable_tables

AUDIT_BLOCK_BYTES = 8 * 1024 * 1024

Progress = Callable[[int], None] | None


@dataclass(frozen=True)
class Problem:
    """One finding of `check`: `kind` is nonfinite, max_norm, max_zero_rows, duplicates,
    vocab_size, vocab_duplicates or input_dim."""

    table: str
    kind: str
    count: int
    message: str

    def record(self) -> dict:
        return {
            "table": self.table,
            "kind": self.kind,
            "count": self.count,
            "message": self.message,
        }


def counted(count: int, singular: str, plural: str) -> str:
    """`1 row holds`, `2 rows hold`: a count with the words that agree with it."""
    return f"{count} {singular if count == 1 else plural}"


def report_progress(progress: Progress, rows: int) -> None:
    """Tell `progress`, if any, that `rows` more rows were read."""
    if progress is not None:
        progress(rows)


def audited_tables(model: ModelFile, layer: str | None) -> list[Table]:
    """The table `layer` names, or without it every embedding table."""
    return [find_table(model, layer)] if layer is not None else readable_tables(model)


def row_bytes(block: np.ndarray) -> np.ndarray:
    """Each row's bytes, as a `(rows, bytes_per_row)` uint8 array."""
    block = np.ascontiguousarray(block)
    return block.view(np.uint8).reshape(len(block), -1)


def short_number(value: float) -> str:
    """A float in at most 6 significant digits, for messages."""
    return f"{value:.6g}"


def require_limit(name: str, value: float, *, finite: bool = False) -> float:
    """`value` as a float, or `BadArgument` when it is not a number at least 0 (NaN is
    refused, and so is infinity where `finite`)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise BadArgument(f"{name} must be a number, not {value!r}")
    number = float(value)
    if math.isnan(number) or number < 0 or (finite and math.isinf(number)):
        kind = "a finite number" if finite else "a number"
        raise BadArgument(f"{name} must be {kind} at least 0, not {number!r}")
    return number


def require_count(name: str, value: int) -> int:
    """`value`, or `BadArgument` when it is not a whole number at least 0."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise BadArgument(f"{name} must be a whole number at least 0, not {value!r}")
    return int(value)

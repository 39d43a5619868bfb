"""`diff`: how the tables of two models differ, compared a block of rows at a time."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from embcli.audit.common import (
    AUDIT_BLOCK_BYTES,
    Progress,
    report_progress,
    require_limit,
    row_bytes,
)
from embcli.errors import BadArgument, NoSuchTable
from embcli.formats.base import ModelFile, Table
from embcli.model import find_table, iter_blocks, list_tables


@dataclass
class TableDiff:
    """How one table differs between models A and B.

    `status` is same, changed, dtype_changed, shape_changed, only_in_a or only_in_b.
    Row comparisons (`changed_rows`, `max_abs_diff`, `min_cosine`) are made whenever both
    tables have the same shape; `compared` says whether they were.
    """

    name: str
    status: str
    a: Table | None
    b: Table | None
    compared: bool = False
    changed_rows: list[int] = field(default_factory=list)
    max_abs_diff: float | None = None
    min_cosine: float | None = None

    @property
    def differs(self) -> bool:
        return self.status != "same"

    def record(self) -> dict:
        """The object `diff --json` prints for the table."""
        a, b = self.a, self.b
        return {
            "name": self.name,
            "status": self.status,
            "shape_a": list(a.shape) if a else None,
            "shape_b": list(b.shape) if b else None,
            "dtype_a": a.dtype if a else None,
            "dtype_b": b.dtype if b else None,
            "changed_count": len(self.changed_rows) if self.compared else None,
            "changed_rows": self.changed_rows,
            "max_abs_diff": self.max_abs_diff,
            "min_cosine": self.min_cosine,
        }


def _find_or_none(model: ModelFile, layer: str) -> Table | None:
    try:
        return find_table(model, layer)
    except NoSuchTable:
        return None


class TablePair(NamedTuple):
    """The tables of A and B that share a name; either may be missing."""

    name: str
    a: Table | None
    b: Table | None

    @property
    def comparable(self) -> bool:
        """Whether both exist with the same shape, so that their rows are compared."""
        return self.a is not None and self.b is not None and self.a.shape == self.b.shape


def match_tables(
    model_a: ModelFile, model_b: ModelFile, layer: str | None = None
) -> list[TablePair]:
    """Pairs of tables with the same name: A's tables in order, then those only in B.

    With `layer`, the one pair it names; `NoSuchTable` when neither model has it.
    """
    if layer is not None:
        a, b = _find_or_none(model_a, layer), _find_or_none(model_b, layer)
        if a is not None:
            return [TablePair(a.name, a, b)]
        if b is not None:
            return [TablePair(b.name, a, b)]
        find_table(model_a, layer)
        raise NoSuchTable(f"no table named {layer!r}")  # find_table has raised already
    tables_a = list_tables(model_a)
    tables_b = {t.name: t for t in list_tables(model_b)}
    names_a = {t.name for t in tables_a}
    pairs = [TablePair(t.name, t, tables_b.get(t.name)) for t in tables_a]
    pairs += [TablePair(name, None, t) for name, t in tables_b.items() if name not in names_a]
    return pairs


def compared_tables(pairs: Iterable[TablePair]) -> list[Table]:
    """A's side of the pairs whose rows `diff` compares (for sizing progress reports)."""
    return [pair.a for pair in pairs if pair.comparable and pair.a is not None]


def _native(values: np.ndarray) -> np.ndarray:
    return values.astype(values.dtype.newbyteorder("="), copy=False)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of finite rows; 0 against a zero row, 1 for two zero rows."""
    dot = np.einsum("ij,ij->i", a, b)
    norm_a = np.sqrt(np.einsum("ij,ij->i", a, a))
    norm_b = np.sqrt(np.einsum("ij,ij->i", b, b))
    zero_a, zero_b = norm_a == 0, norm_b == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.clip(dot / (norm_a * norm_b), -1.0, 1.0)
    cosine[zero_a ^ zero_b] = 0.0
    cosine[zero_a & zero_b] = 1.0
    return cosine


def compare_blocks(
    a: np.ndarray, b: np.ndarray, atol: float = 0.0
) -> tuple[np.ndarray, float, float | None]:
    """Rows that differ between two same-shape blocks, the largest |a-b|, and the smallest
    cosine similarity among the differing rows that hold no NaN or Inf.

    A row differs where some |a-b| > atol, or where a value is NaN on one side only. With
    atol 0 and the same dtype on both sides, any difference in bits counts (-0.0 vs 0.0).
    `BadArgument` when atol is NaN, infinite or negative.
    """
    atol = require_limit("atol", atol, finite=True)
    a, b = _native(a), _native(b)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    nan_a, nan_b = np.isnan(a64), np.isnan(b64)
    nan_differs = nan_a ^ nan_b
    with np.errstate(invalid="ignore", over="ignore"):
        delta = np.abs(a64 - b64)
    delta[(a64 == b64) | (nan_a & nan_b) | nan_differs] = 0.0
    changed = nan_differs.any(axis=1) | (delta > atol).any(axis=1)
    if atol == 0 and a.dtype == b.dtype:
        changed |= (row_bytes(a) != row_bytes(b)).any(axis=1)
    rows = np.flatnonzero(changed)
    max_abs = float(delta.max()) if delta.size else 0.0
    finite = rows[np.isfinite(a64[rows]).all(axis=1) & np.isfinite(b64[rows]).all(axis=1)]
    min_cosine = float(_cosines(a64[finite], b64[finite]).min()) if len(finite) else None
    return rows, max_abs, min_cosine


def diff_tables(
    model_a: ModelFile,
    a: Table | None,
    model_b: ModelFile,
    b: Table | None,
    *,
    name: str | None = None,
    atol: float = 0.0,
    block_bytes: int = AUDIT_BLOCK_BYTES,
    progress: Progress = None,
) -> TableDiff:
    """Compare one table of A with one of B, streaming both a block at a time.

    Args:
        a, b: the tables; a missing one (None) makes the result only_in_a or only_in_b.
        name: the name to report, by default the tables' own.
        atol: count a value as changed only when it moved by more than this; 0 counts
            any change of bits. `BadArgument` when NaN, infinite or negative.
        block_bytes: the size of the blocks read, as for `iter_blocks`.
        progress: called with the number of rows after each block compared.
    """
    atol = require_limit("atol", atol, finite=True)
    if name is None:
        known = a if a is not None else b
        if known is None:
            raise BadArgument("diff_tables needs at least one of the two tables")
        name = known.name
    if a is None:
        return TableDiff(name, "only_in_b", a, b)
    if b is None:
        return TableDiff(name, "only_in_a", a, b)
    if a.shape != b.shape:
        return TableDiff(name, "shape_changed", a, b)
    changed: list[np.ndarray] = []
    max_abs: float | None = None
    min_cosine: float | None = None
    blocks = zip(
        iter_blocks(model_a, a, block_bytes=block_bytes),
        iter_blocks(model_b, b, block_bytes=block_bytes),
        strict=True,
    )
    for (start, block_a), (_, block_b) in blocks:
        rows, block_max, block_cosine = compare_blocks(block_a, block_b, atol)
        changed.append(rows + start)
        max_abs = block_max if max_abs is None else max(max_abs, block_max)
        if block_cosine is not None:
            min_cosine = block_cosine if min_cosine is None else min(min_cosine, block_cosine)
        report_progress(progress, len(block_a))
    changed_rows = np.concatenate(changed).tolist() if changed else []
    if (a.dtype, a.quantized) != (b.dtype, b.quantized):
        status = "dtype_changed"
    else:
        status = "changed" if changed_rows else "same"
    return TableDiff(name, status, a, b, True, changed_rows, max_abs, min_cosine)


def diff_pairs(
    model_a: ModelFile,
    model_b: ModelFile,
    pairs: Iterable[TablePair],
    *,
    atol: float = 0.0,
    block_bytes: int = AUDIT_BLOCK_BYTES,
    progress: Progress = None,
) -> list[TableDiff]:
    """`diff_tables` of each pair that `match_tables` found."""
    atol = require_limit("atol", atol, finite=True)
    return [
        diff_tables(
            model_a,
            pair.a,
            model_b,
            pair.b,
            name=pair.name,
            atol=atol,
            block_bytes=block_bytes,
            progress=progress,
        )
        for pair in pairs
    ]


def diff(
    model_a: ModelFile,
    model_b: ModelFile,
    layer: str | None = None,
    *,
    atol: float = 0.0,
    block_bytes: int = AUDIT_BLOCK_BYTES,
    progress: Progress = None,
) -> list[TableDiff]:
    """Compare the tables of two models, matched by name (or the one `layer` names).

    See `diff_tables` for `atol`, `block_bytes` and `progress`.
    """
    pairs = match_tables(model_a, model_b, layer)
    return diff_pairs(
        model_a, model_b, pairs, atol=atol, block_bytes=block_bytes, progress=progress
    )

"""Counts and moments of whole tables: NaN, Inf, zero and duplicate rows, norms, mean, std."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from embcli.audit.common import AUDIT_BLOCK_BYTES, Progress, report_progress, require_limit
from embcli.audit.duplicates import DUPLICATE_HASH_BYTES, DuplicateFinder
from embcli.formats.base import ModelFile, Table
from embcli.model import iter_blocks


@dataclass
class TableStats:
    """What `table_stats` finds in one table.

    Attributes:
        nan_rows, inf_rows: rows holding any NaN / any +-Inf.
        nonfinite_rows: rows holding either.
        zero_rows: rows whose values are all zero.
        duplicate_rows: rows bit-equal to an earlier row.
        norm_min, norm_mean, norm_max: L2 norms of the rows without NaN or Inf.
        mean, std: of every finite value (std with ddof=0).
        over_norm: rows without NaN or Inf whose norm exceeds the `max_norm` asked for.
    """

    table: Table
    nan_rows: int = 0
    inf_rows: int = 0
    nonfinite_rows: int = 0
    zero_rows: int = 0
    duplicate_rows: int = 0
    norm_min: float | None = None
    norm_mean: float | None = None
    norm_max: float | None = None
    mean: float | None = None
    std: float | None = None
    over_norm: int = 0

    def record(self) -> dict:
        """The object `stats --json` prints for the table."""
        table = self.table
        return {
            "name": table.name,
            "class": table.class_name,
            "weight": table.weight,
            "quantized": table.quantized,
            "rows": table.rows,
            "dim": table.dim,
            "dtype": table.dtype,
            "nan_rows": self.nan_rows,
            "inf_rows": self.inf_rows,
            "zero_rows": self.zero_rows,
            "duplicate_rows": self.duplicate_rows,
            "norm_min": self.norm_min,
            "norm_mean": self.norm_mean,
            "norm_max": self.norm_max,
            "mean": self.mean,
            "std": self.std,
        }


@dataclass
class _Moments:
    """Running count, mean and sum of squared deviations (Chan et al.'s pairwise update)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: np.ndarray) -> None:
        count = values.size
        if not count:
            return
        mean = float(values.mean())
        deviations = values - mean
        np.square(deviations, out=deviations)
        self._merge(count, mean, float(deviations.sum()))

    def add_sums(self, count: int, total: float, squares: float) -> None:
        """Add `count` values known by their sum and sum of squares."""
        if count:
            mean = total / count
            self._merge(count, mean, max(0.0, squares - count * mean * mean))

    def _merge(self, count: int, mean: float, m2: float) -> None:
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.count = total


@dataclass
class _StatsAccumulator:
    max_norm: float | None = None
    nan_rows: int = 0
    inf_rows: int = 0
    nonfinite_rows: int = 0
    zero_rows: int = 0
    over_norm: int = 0
    norm_count: int = 0
    norm_sum: float = 0.0
    norm_min: float = float("inf")
    norm_max: float = float("-inf")
    moments: _Moments = field(default_factory=_Moments)

    def add(self, block: np.ndarray) -> None:
        with np.errstate(invalid="ignore", over="ignore"):
            sums = block.sum(axis=1, dtype=np.float64)
            squares = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        bad_rows = ~(np.isfinite(sums) & np.isfinite(squares))
        self.zero_rows += int((squares == 0).sum())
        if bad_rows.any():
            suspect = block[bad_rows].astype(np.float64)
            nan = np.isnan(suspect)
            inf = np.isinf(suspect)
            self.nan_rows += int(nan.any(axis=1).sum())
            self.inf_rows += int(inf.any(axis=1).sum())
            self.nonfinite_rows += int(bad_rows.sum())
            self.moments.add(suspect[~(nan | inf)])
            sums = sums[~bad_rows]
            squares = squares[~bad_rows]
        if not len(squares):
            return
        count = len(squares) * block.shape[1]
        self.moments.add_sums(count, float(sums.sum()), float(squares.sum()))
        norms = np.sqrt(squares)
        self.norm_count += len(norms)
        self.norm_sum += float(norms.sum())
        self.norm_min = min(self.norm_min, float(norms.min()))
        self.norm_max = max(self.norm_max, float(norms.max()))
        if self.max_norm is not None:
            self.over_norm += int((norms > self.max_norm).sum())

    def result(self, table: Table, duplicate_rows: int) -> TableStats:
        normed = self.norm_count > 0
        counted = self.moments.count > 0
        return TableStats(
            table=table,
            nan_rows=self.nan_rows,
            inf_rows=self.inf_rows,
            nonfinite_rows=self.nonfinite_rows,
            zero_rows=self.zero_rows,
            duplicate_rows=duplicate_rows,
            norm_min=self.norm_min if normed else None,
            norm_mean=self.norm_sum / self.norm_count if normed else None,
            norm_max=self.norm_max if normed else None,
            mean=self.moments.mean if counted else None,
            std=float(np.sqrt(self.moments.m2 / self.moments.count)) if counted else None,
            over_norm=self.over_norm,
        )


def table_stats(
    model: ModelFile,
    table: Table,
    *,
    max_norm: float | None = None,
    block_bytes: int = AUDIT_BLOCK_BYTES,
    hash_bytes: int = DUPLICATE_HASH_BYTES,
    progress: Progress = None,
) -> TableStats:
    """Counts and moments of one table, streamed a block at a time.

    Memory holds one block and, for finding duplicates, at most `hash_bytes` of row keys
    (see `embcli.audit.duplicates`): a table of more than about `0.15 * hash_bytes` rows
    is read once more for every that many rows.

    Args:
        max_norm: also count the finite rows whose L2 norm exceeds this (`over_norm`);
            `BadArgument` when NaN or negative.
        block_bytes: the size of the blocks read, as for `iter_blocks`.
        hash_bytes: the memory for duplicate finding's keys.
        progress: called with the number of rows after each block of the first pass.
    """
    if max_norm is not None:
        max_norm = require_limit("max_norm", max_norm)
    accumulator = _StatsAccumulator(max_norm=max_norm)
    duplicates = DuplicateFinder(table, block_bytes=block_bytes, hash_bytes=hash_bytes)
    for _, block in iter_blocks(model, table, block_bytes=block_bytes):
        accumulator.add(block)
        duplicates.add(block)
        report_progress(progress, len(block))
    duplicates.end_pass()
    return accumulator.result(table, duplicates.finish(model, table, block_bytes))


def stats(
    model: ModelFile,
    tables: Iterable[Table],
    *,
    block_bytes: int = AUDIT_BLOCK_BYTES,
    progress: Progress = None,
) -> list[TableStats]:
    """`table_stats` of each table."""
    return [table_stats(model, t, block_bytes=block_bytes, progress=progress) for t in tables]

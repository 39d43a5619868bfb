"""Audits of whole tables, read a bounded block at a time: stats, check, diff, neighbors.

Every function here streams a table through `embcli.model.iter_blocks`, so memory stays
bounded by the block size (plus, where noted, a few bytes per row). Values are the ones
the model computes with: bfloat16 widened, int8 dequantized. Sums are taken in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from embcli.errors import EmbcliError, NoSuchTable
from embcli.formats.base import ModelFile, Table
from embcli.model import find_table, iter_blocks, list_tables, read_rows

AUDIT_BLOCK_BYTES = 8 * 1024 * 1024
DUPLICATE_MEMORY_BLOCKS = 8
METRICS = ("cosine", "dot", "l2")

Progress = Callable[[int], None] | None

_HASH_SEED = np.uint64(0x9E3779B97F4A7C15)
_HASH_MULTIPLIER = np.uint64(0xBF58476D1CE4E5B9)
_HASH_FINALIZER = np.uint64(0x94D049BB133111EB)


class UnusableQuery(EmbcliError):
    "The query row cannot be compared with the other rows"


def _report(progress: Progress, rows: int) -> None:
    if progress is not None:
        progress(rows)


# ---------------------------------------------------------------------------- stats


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


def row_bytes(block: np.ndarray) -> np.ndarray:
    """Each row's bytes, as a `(rows, bytes_per_row)` uint8 array."""
    block = np.ascontiguousarray(block)
    return block.view(np.uint8).reshape(len(block), -1)


def row_hashes(block: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's bytes. Equal rows hash equal; unequal rows almost never do."""
    data = row_bytes(block)
    padding = -data.shape[1] % 8
    if padding:
        data = np.concatenate([data, np.zeros((len(data), padding), np.uint8)], axis=1)
    hashes = np.full(len(data), _HASH_SEED, dtype=np.uint64)
    if data.shape[1] == 0:
        return hashes
    words = np.ascontiguousarray(data).view(np.uint64)
    for column in words.T:
        hashes ^= column
        hashes *= _HASH_MULTIPLIER
        hashes ^= hashes >> np.uint64(29)
    hashes ^= hashes >> np.uint64(32)
    hashes *= _HASH_FINALIZER
    hashes ^= hashes >> np.uint64(29)
    return hashes


def short_hashes(block: np.ndarray) -> np.ndarray:
    """32 bits of each row's hash: 4 bytes a row to find candidate duplicates, which are
    then compared byte for byte, so that the rare equal short hash costs a comparison."""
    return (row_hashes(block) >> np.uint64(32)).astype(np.uint32)


def count_duplicates(
    model: ModelFile, table: Table, hashes: np.ndarray, block_bytes: int = AUDIT_BLOCK_BYTES
) -> int:
    """Rows bit-equal to an earlier row, given every row's hash (sorted here, in place).

    Only hash values that occur more than once are kept. The table then streams by
    again: rows whose hash is one of those are compared byte for byte with the first
    row of their hash group, so hash collisions never count as duplicates. Beyond the
    hashes themselves, memory holds the groups' first rows, at most
    `DUPLICATE_MEMORY_BLOCKS` blocks' worth; more groups take one more pass each share.
    """
    hashes.sort()
    repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    if not len(repeated):
        return 0
    per_pass = max(1, block_bytes * DUPLICATE_MEMORY_BLOCKS // max(1, table.dim * 8))
    return sum(
        _count_pass(model, table, repeated[first : first + per_pass], block_bytes)
        for first in range(0, len(repeated), per_pass)
    )


def _count_pass(model: ModelFile, table: Table, group_hashes: np.ndarray, block_bytes: int) -> int:
    """Duplicates among the rows whose hash is one of `group_hashes` (sorted, unique)."""
    first_rows: np.ndarray | None = None
    known = np.zeros(len(group_hashes), dtype=bool)
    others: dict[int, set[bytes]] = {}
    duplicates = 0
    for _, block in iter_blocks(model, table, block_bytes=block_bytes):
        hashes = short_hashes(block)
        slot = np.minimum(np.searchsorted(group_hashes, hashes), len(group_hashes) - 1)
        hit = group_hashes[slot] == hashes
        if not hit.any():
            continue
        data = row_bytes(block[hit])
        group = slot[hit]
        if first_rows is None:
            first_rows = np.empty((len(group_hashes), data.shape[1]), dtype=np.uint8)
        present, first = np.unique(group, return_index=True)
        fresh = ~known[present]
        first_rows[present[fresh]] = data[first[fresh]]
        known[present[fresh]] = True
        same = (data == first_rows[group]).all(axis=1)
        duplicates += int(same.sum()) - int(fresh.sum())
        for at in np.flatnonzero(~same).tolist():
            pattern = data[at].tobytes()
            seen = others.setdefault(int(group[at]), set())
            duplicates += pattern in seen
            seen.add(pattern)
    return duplicates


def table_stats(
    model: ModelFile,
    table: Table,
    *,
    max_norm: float | None = None,
    block_bytes: int = AUDIT_BLOCK_BYTES,
    progress: Progress = None,
) -> TableStats:
    """Counts and moments of one table, streamed a block at a time.

    Memory holds one block and a 4-byte hash per row (for finding duplicates).

    Args:
        max_norm: also count the finite rows whose L2 norm exceeds this (`over_norm`).
        block_bytes: the size of the blocks read, as for `iter_blocks`.
        progress: called with the number of rows after each block.
    """
    accumulator = _StatsAccumulator(max_norm=max_norm)
    hashes = np.empty(table.rows, dtype=np.uint32)
    for start, block in iter_blocks(model, table, block_bytes=block_bytes):
        accumulator.add(block)
        hashes[start : start + len(block)] = short_hashes(block)
        _report(progress, len(block))
    duplicates = count_duplicates(model, table, hashes, block_bytes)
    return accumulator.result(table, duplicates)


def audited_tables(model: ModelFile, layer: str | None) -> list[Table]:
    """The table `--layer` names, or without it every embedding table."""
    return [find_table(model, layer)] if layer is not None else list_tables(model)


def stats(
    model: ModelFile,
    tables: Iterable[Table],
    *,
    block_bytes: int = AUDIT_BLOCK_BYTES,
    progress: Progress = None,
) -> list[TableStats]:
    """`table_stats` of each table."""
    return [table_stats(model, t, block_bytes=block_bytes, progress=progress) for t in tables]


# ---------------------------------------------------------------------------- check


@dataclass(frozen=True)
class Problem:
    """One finding of `check`: `kind` is nonfinite, max_norm, max_zero_rows or duplicates."""

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


@dataclass
class CheckReport:
    """The tables checked, their stats, and the problems found."""

    tables: list[TableStats]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def rows(self) -> int:
        return sum(s.table.rows for s in self.tables)

    def record(self) -> dict:
        return {
            "ok": self.ok,
            "tables": len(self.tables),
            "rows": self.rows,
            "problems": [p.record() for p in self.problems],
        }


def _rows(count: int, singular: str, plural: str) -> str:
    return f"{count} {singular if count == 1 else plural}"


def short_number(value: float) -> str:
    """A float in at most 6 significant digits, for messages."""
    return f"{value:.6g}"


def table_problems(
    found: TableStats,
    *,
    max_norm: float | None = None,
    max_zero_rows: int | None = None,
    no_duplicates: bool = False,
) -> list[Problem]:
    """What is wrong with one table, given its stats and the user's limits."""
    name = found.table.name
    problems = []
    if found.nonfinite_rows:
        count = found.nonfinite_rows
        problems.append(
            Problem(
                name,
                "nonfinite",
                count,
                f"{name}: {_rows(count, 'row holds', 'rows hold')} NaN or Inf",
            )
        )
    if max_norm is not None and found.over_norm:
        count = found.over_norm
        problems.append(
            Problem(
                name,
                "max_norm",
                count,
                f"{name}: {_rows(count, 'row has', 'rows have')} an L2 norm above "
                f"{short_number(max_norm)} (largest {short_number(found.norm_max or 0.0)})",
            )
        )
    if max_zero_rows is not None and found.zero_rows > max_zero_rows:
        count = found.zero_rows
        problems.append(
            Problem(
                name,
                "max_zero_rows",
                count,
                f"{name}: {_rows(count, 'all-zero row', 'all-zero rows')}, "
                f"more than the {max_zero_rows} allowed",
            )
        )
    if no_duplicates and found.duplicate_rows:
        count = found.duplicate_rows
        problems.append(
            Problem(
                name,
                "duplicates",
                count,
                f"{name}: {_rows(count, 'row duplicates', 'rows duplicate')} an earlier row",
            )
        )
    return problems


def check(
    model: ModelFile,
    tables: Iterable[Table],
    *,
    max_norm: float | None = None,
    max_zero_rows: int | None = None,
    no_duplicates: bool = False,
    block_bytes: int = AUDIT_BLOCK_BYTES,
    progress: Progress = None,
) -> CheckReport:
    """Check tables for NaN/Inf rows and for the limits given."""
    found = [
        table_stats(model, t, max_norm=max_norm, block_bytes=block_bytes, progress=progress)
        for t in tables
    ]
    problems = [
        problem
        for result in found
        for problem in table_problems(
            result, max_norm=max_norm, max_zero_rows=max_zero_rows, no_duplicates=no_duplicates
        )
    ]
    return CheckReport(found, problems)


# ---------------------------------------------------------------------------- diff


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


def match_tables(
    model_a: ModelFile, model_b: ModelFile, layer: str | None = None
) -> list[tuple[str, Table | None, Table | None]]:
    """Pairs of tables with the same name: A's tables in order, then those only in B."""
    if layer is not None:
        a, b = _find_or_none(model_a, layer), _find_or_none(model_b, layer)
        if a is None and b is None:
            find_table(model_a, layer)
        return [((a or b).name, a, b)]
    tables_a = list_tables(model_a)
    tables_b = {t.name: t for t in list_tables(model_b)}
    names_a = {t.name for t in tables_a}
    pairs = [(t.name, t, tables_b.get(t.name)) for t in tables_a]
    pairs += [(name, None, t) for name, t in tables_b.items() if name not in names_a]
    return pairs


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
    """
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
    """Compare one table of A with one of B, streaming both a block at a time."""
    name = name or (a or b).name
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
        _report(progress, len(block_a))
    changed_rows = np.concatenate(changed).tolist() if changed else []
    if (a.dtype, a.quantized) != (b.dtype, b.quantized):
        status = "dtype_changed"
    else:
        status = "changed" if changed_rows else "same"
    return TableDiff(name, status, a, b, True, changed_rows, max_abs, min_cosine)


def diff(
    model_a: ModelFile,
    model_b: ModelFile,
    layer: str | None = None,
    *,
    atol: float = 0.0,
    block_bytes: int = AUDIT_BLOCK_BYTES,
    progress: Progress = None,
) -> list[TableDiff]:
    """Compare the tables of two models, matched by name (or the one `layer` names)."""
    return [
        diff_tables(
            model_a, a, model_b, b, name=name, atol=atol, block_bytes=block_bytes, progress=progress
        )
        for name, a, b in match_tables(model_a, model_b, layer)
    ]


# ---------------------------------------------------------------------------- neighbors


@dataclass(frozen=True)
class Neighbor:
    """A row and its score: cosine similarity, dot product, or L2 distance."""

    index: int
    score: float

    def record(self) -> dict:
        return {"index": self.index, "score": self.score}


def exact_keys(values: np.ndarray, query: np.ndarray, metric: str) -> np.ndarray:
    """Float64 keys where larger is nearer: cosine, dot, or minus the squared L2 distance.

    NaN or Inf where a row holds NaN or Inf. Cosine similarity with an all-zero row is 0.
    """
    values = values.astype(np.float64)
    if metric == "l2":
        difference = values - query
        return -np.einsum("ij,ij->i", difference, difference)
    dots = np.einsum("ij,j->i", values, query)
    if metric == "dot":
        return dots
    norms = np.sqrt(np.einsum("ij,ij->i", values, values))
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.clip(dots / (norms * np.sqrt(query @ query)), -1.0, 1.0)
    cosine[norms == 0] = 0.0
    return cosine


_TINY_SQUARE = 2.0**-60
_LARGEST_SQUARE = float(np.finfo(np.float32).max) / 4


@dataclass(frozen=True)
class _Screen:
    """Float32 keys with a bound on their error, to skip rows that cannot be among the best.

    The float32 dot product and sum of squares of `dim` terms are each within
    `dim * 2**-24 * (|x| |q|)` (resp. `|x|^2`) of the exact value for any order of summation;
    `gamma` doubles that to cover the few roundings after. Rows too small or too large for
    that bound (underflow, overflow, NaN) are not screened but scored exactly.
    """

    query: np.ndarray
    metric: str
    gamma: float

    @classmethod
    def make(cls, query: np.ndarray, metric: str) -> _Screen | None:
        single = query.astype(np.float32)
        gamma = 4.0 * len(query) * 2.0**-24
        square = float(query @ query)
        if (
            gamma > 1e-2
            or not np.array_equal(single, query)
            or not _TINY_SQUARE <= square <= _LARGEST_SQUARE
        ):
            return None
        return cls(single, metric, gamma)

    def bounds(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of each row's exact key (-inf, +inf where unknown)."""
        values = block.astype(np.float32, copy=False)
        with np.errstate(all="ignore"):
            dots = np.einsum("ij,j->i", values, self.query).astype(np.float64)
            squares = np.einsum("ij,ij->i", values, values).astype(np.float64)
            query = self.query.astype(np.float64)
            query_norm = float(np.sqrt(query @ query))
            norms = np.sqrt(squares)
            if self.metric == "dot":
                keys, errors = dots, self.gamma * norms * query_norm
            elif self.metric == "l2":
                keys = -(squares - 2.0 * dots + query_norm * query_norm)
                errors = self.gamma * (norms + query_norm) ** 2
            else:
                keys, errors = dots / (norms * query_norm), np.full(len(dots), 3.0 * self.gamma)
            unsure = ~(np.isfinite(keys) & np.isfinite(squares)) | (squares < _TINY_SQUARE)
            lower = np.where(unsure, -np.inf, keys - errors)
            upper = np.where(unsure, np.inf, keys + errors)
        return lower, upper


def _best(keys: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest keys; among equal keys at the cut, the lowest indices."""
    if len(keys) <= k:
        return keys, indices
    cut = np.partition(keys, len(keys) - k)[len(keys) - k]
    above = np.flatnonzero(keys > cut)
    tied = np.flatnonzero(keys == cut)
    tied = tied[np.argsort(indices[tied], kind="stable")][: k - len(above)]
    chosen = np.concatenate([above, tied])
    return keys[chosen], indices[chosen]


def _kth_largest(values: np.ndarray, k: int) -> float:
    if len(values) < k:
        return -np.inf
    return float(np.partition(values, len(values) - k)[len(values) - k])


def nearest(
    blocks: Iterable[tuple[int, np.ndarray]],
    query: np.ndarray,
    k: int = 10,
    metric: str = "cosine",
    exclude: int | None = None,
    progress: Progress = None,
) -> list[Neighbor]:
    """The k rows nearest `query`, best first, from `(first_row, block)` pairs.

    Keeps a running top-k, so memory holds one block. Float32 blocks are screened in
    float32 with a rigorous error bound; only rows that might be among the best are scored
    in float64, so the result is the same as scoring every row in float64. Rows with NaN
    or Inf are skipped. Ties go to the lower index.

    Args:
        metric: cosine (similarity), dot (product) or l2 (distance: smaller is nearer).
        exclude: a row left out, usually the query's own.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}")
    query = np.asarray(query, dtype=np.float64)
    screen = _Screen.make(query, metric)
    best_keys = np.empty(0, dtype=np.float64)
    best_rows = np.empty(0, dtype=np.int64)
    for start, block in blocks:
        local = exclude - start if exclude is not None else -1
        if screen is not None and block.dtype in (np.float32, np.float16):
            lower, upper = screen.bounds(block)
            if 0 <= local < len(block):
                lower[local] = upper[local] = -np.inf
            floor = _kth_largest(lower, k)
            if len(best_keys) == k:
                floor = max(floor, float(best_keys.min()))
            rows = np.flatnonzero(upper >= floor)
        else:
            rows = np.arange(len(block))
        rows = rows[rows != local]
        keys = exact_keys(block[rows], query, metric)
        finite = np.isfinite(keys)
        keys, rows = _best(keys[finite], rows[finite] + start, k)
        best_keys, best_rows = _best(
            np.concatenate([best_keys, keys]), np.concatenate([best_rows, rows]), k
        )
        _report(progress, len(block))
    order = np.lexsort((best_rows, -best_keys))
    if metric == "l2":
        return [Neighbor(int(best_rows[i]), float(np.sqrt(-best_keys[i] + 0.0))) for i in order]
    return [Neighbor(int(best_rows[i]), float(best_keys[i])) for i in order]


def query_vector(model: ModelFile, table: Table, row: int, metric: str = "cosine") -> np.ndarray:
    """The row's values, refused where no neighbor could be scored against them."""
    vector = read_rows(model, table, np.array([row]))[0].astype(np.float64)
    if not np.isfinite(vector).all():
        raise UnusableQuery(f"row {row} of {table.name} holds NaN or Inf")
    if metric == "cosine" and not vector.any():
        raise UnusableQuery(
            f"row {row} of {table.name} is all zeros; its cosine similarity is undefined",
            remedy="metric_l2",
        )
    return vector


def neighbors(
    model: ModelFile,
    table: Table,
    row: int,
    k: int = 10,
    metric: str = "cosine",
    *,
    block_bytes: int = AUDIT_BLOCK_BYTES,
    progress: Progress = None,
) -> list[Neighbor]:
    """The k rows of `table` nearest row `row` (which is left out), best first."""
    query = query_vector(model, table, row, metric)
    blocks = iter_blocks(model, table, block_bytes=block_bytes)
    return nearest(blocks, query, k, metric, exclude=row, progress=progress)

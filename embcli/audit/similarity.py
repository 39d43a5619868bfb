"""`neighbors`: the rows nearest a query row, exact in float64, screened in float32."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from embcli.audit.common import AUDIT_BLOCK_BYTES, Progress, report_progress
from embcli.errors import BadArgument, EmbcliError, NoVocabulary
from embcli.formats.base import ModelFile, Table
from embcli.model import iter_blocks, read_rows
from embcli.rowspec import parse_rows
from embcli.vocab import Vocabulary, require_vocabulary, table_vocabulary, token_rows

METRICS = ("cosine", "dot", "l2")


class UnusableQuery(EmbcliError):
    "The query row cannot be compared with the other rows"


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


def _check_search(k: int, metric: str) -> None:
    if metric not in METRICS:
        raise BadArgument(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise BadArgument(f"k must be a whole number at least 1, not {k!r}")


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
    _check_search(k, metric)
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
        report_progress(progress, len(block))
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
    """The k rows of `table` nearest row `row` (which is left out), best first.

    Args:
        row: the query's row; negative rows count from the end.
        k: how many neighbors, at most.
        metric: cosine (similarity), dot (product) or l2 (distance: smaller is nearer).
        block_bytes: the size of the blocks read, as for `iter_blocks`.
        progress: called with the number of rows after each block.

    Raises:
        UnusableQuery: the row holds NaN or Inf, or is all zeros for cosine.
        BadRowSpec: the row is outside the table.
        BadArgument: k or metric is not one of those allowed.
    """
    _check_search(k, metric)
    row = query_row(table, row)
    query = query_vector(model, table, row, metric)
    blocks = iter_blocks(model, table, block_bytes=block_bytes)
    return nearest(blocks, query, k, metric, exclude=row, progress=progress)


def query_vocabulary(
    model: ModelFile,
    table: Table,
    token: str | None = None,
    vocab_path: str | None = None,
    vocab_column: str | None = None,
) -> Vocabulary | None:
    """The vocabulary that names the rows of a neighbors query: the file given, else the
    model's own. It is required (`NoVocabulary`) when the query is a token.

    Args:
        token: the token asked about, if the query is one.
        vocab_path, vocab_column: a vocabulary file, as for `embcli.vocab.table_vocabulary`.
    """
    if token is not None:
        return require_vocabulary(model, table, vocab_path, vocab_column)
    return table_vocabulary(model, table, vocab_path, vocab_column)


def query_row(
    table: Table,
    row: int | None = None,
    token: str | None = None,
    vocabulary: Vocabulary | None = None,
) -> int:
    """The row a neighbors query asks about, from 0: `row` (negative counts from the end)
    or the row of `token` in `vocabulary` (from `query_vocabulary`).

    Raises:
        BadArgument: neither or both of `row` and `token` are given.
        BadRowSpec: the row is outside the table.
        NoVocabulary, UnknownToken: the token's row is not known, or beyond the table.
    """
    if (row is None) == (token is None):
        raise BadArgument("give either a row or a token to ask about")
    if token is not None:
        if vocabulary is None:
            raise NoVocabulary(f"no vocabulary is known for {table.name}", remedy="vocab")
        return int(token_rows(vocabulary, table, [token])[0])
    if isinstance(row, bool) or not isinstance(row, (int, np.integer)):
        raise BadArgument(f"a row is a whole number, not {row!r}")
    return int(parse_rows([str(int(row))], table.rows)[0])

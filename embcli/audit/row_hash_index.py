"""Duplicate rows of a table small enough to keep every row's 64-bit hash: one pass over
the table, then a read of only the rows whose hash repeats.

Rows that are bit-equal hash equal, so every duplicate lies among the rows whose hash is
not unique. Those rows are read again by index (for most tables: the duplicates and
nothing else), in hash order, and compared byte for byte, so a hash collision never counts.
Memory: 8 bytes a row for the hashes and as much again while they are sorted
(`INDEX_BYTES_PER_ROW`), plus one block of candidate rows at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from embcli.audit.common import row_bytes
from embcli.formats.base import ModelFile, Table

INDEX_BYTES_PER_ROW = 16
_LOOKUP_ROWS = 1 << 20

RowReader = Callable[[ModelFile, Table, np.ndarray], np.ndarray]


class RowHashIndex:
    """Every row's hash, in row order; `count` then finds the rows bit-equal to an earlier row."""

    def __init__(self, rows: int) -> None:
        self.hashes = np.empty(rows, dtype=np.uint64)
        self.filled = 0
        self.candidate_rows = 0

    @staticmethod
    def fits(rows: int, budget: int) -> bool:
        return rows * INDEX_BYTES_PER_ROW <= budget

    def add(self, hashes: np.ndarray) -> None:
        """The hashes of the next rows, in order."""
        self.hashes[self.filled : self.filled + len(hashes)] = hashes
        self.filled += len(hashes)

    def count(self, model: ModelFile, table: Table, block_rows: int, read_rows: RowReader) -> int:
        """Rows bit-equal to an earlier row, reading only the rows whose hash repeats.

        `read_rows(model, table, indices)` reads rows (decoded as the hashed blocks were).
        """
        candidates = self._candidates()
        self.candidate_rows = len(candidates)
        duplicates = 0
        open_hash: int | None = None
        open_first = np.empty(0, dtype=np.uint8)
        open_others: set[bytes] = set()
        for at in range(0, len(candidates), max(1, block_rows)):
            rows = candidates[at : at + block_rows]
            data = row_bytes(read_rows(model, table, rows))
            keys = self.hashes[rows]
            starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
            stops = [*starts[1:].tolist(), len(rows)]
            for start, stop in zip(starts.tolist(), stops, strict=True):
                key = int(keys[start])
                if key != open_hash:
                    open_hash, open_first, open_others = key, data[start], set()
                    start += 1
                group = data[start:stop]
                same = (group == open_first).all(axis=1)
                duplicates += int(same.sum())
                for index in np.flatnonzero(~same).tolist():
                    pattern = group[index].tobytes()
                    duplicates += pattern in open_others
                    open_others.add(pattern)
            open_first = open_first.copy()
        return duplicates

    def _candidates(self) -> np.ndarray:
        """The rows whose hash another row shares, sorted by hash (then row)."""
        ordered = np.sort(self.hashes)
        repeats = ordered[1:][ordered[1:] == ordered[:-1]]
        del ordered
        if not len(repeats):
            return np.empty(0, dtype=np.int64)
        repeated = np.unique(repeats)
        found = []
        for start in range(0, len(self.hashes), _LOOKUP_ROWS):
            piece = self.hashes[start : start + _LOOKUP_ROWS]
            at = np.minimum(np.searchsorted(repeated, piece), len(repeated) - 1)
            found.append(np.flatnonzero(repeated[at] == piece) + start)
        rows = np.concatenate(found)
        return rows[np.argsort(self.hashes[rows], kind="stable")]

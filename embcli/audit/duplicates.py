"""Rows bit-equal to an earlier row, found in memory that does not grow with the table.

Each row gets a 64-bit hash. The hash space is cut into ranges, one per pass over the
table, each holding few enough rows that a 4-byte key per row (the hash's low 32 bits)
fits `DUPLICATE_HASH_BYTES`. A pass keeps the keys of its range's rows, at most two
copies of each, so that a key seen twice is known to repeat. The rows whose key repeats
are then compared byte for byte (during the next pass, with the first row of each key
kept), so that hash collisions never count as duplicates.

Cost: a table of R rows takes ceil(R / (0.58 * DUPLICATE_HASH_BYTES / 4)) passes, one
per range (one below about 9.8 million rows at 64 MiB, 11 at 100 million), and one more to
compare the last range's candidates (more where a range's candidates' first rows exceed
`DUPLICATE_MEMORY_BLOCKS` blocks, or where a range overflows and is halved); `stats`
makes the first pass anyway. Memory:
`DUPLICATE_HASH_BYTES` for keys and candidates, `DUPLICATE_MEMORY_BLOCKS` blocks for the
candidates' first rows, one block in flight, and the distinct rows that share a key with
another row (for data not crafted to collide, a few thousand per range).

A table of at most `DUPLICATE_HASH_BYTES / 16` rows (about 4.2 million at 64 MiB) is
counted in one pass instead: every row's full hash is kept, and only the rows whose hash
repeats are read again, by index (`embcli.audit.row_hash_index`). Over a URL that is the
difference between fetching the table once and fetching it twice.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from embcli.audit.common import AUDIT_BLOCK_BYTES, row_bytes
from embcli.audit.row_hash_index import RowHashIndex
from embcli.formats.base import ModelFile, Table
from embcli.model import block_rows, iter_blocks, read_rows

DUPLICATE_HASH_BYTES = 64 * 1024 * 1024
"""Memory for the keys of one hash range and the candidates awaiting comparison."""
DUPLICATE_MEMORY_BLOCKS = 8
"""Memory for the first row of each candidate key, in blocks; more take more passes."""

_KEY_BYTES = 4
_KEY_SHARE = 2 / 3  # of DUPLICATE_HASH_BYTES; a range's candidates need at most half as many
_RANGE_FILL = 7 / 8  # of a range's key capacity, the rows it is planned to hold
_MIN_KEYS = 8
_COMPACTION_KEYS = 1 << 18
_HASH_SPACE = 1 << 64
_LOW_32 = np.uint64(0xFFFFFFFF)

_HASH_SEED = np.uint64(0x9E3779B97F4A7C15)
_HASH_MULTIPLIER = np.uint64(0xBF58476D1CE4E5B9)
_HASH_FINALIZER = np.uint64(0x94D049BB133111EB)


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
    """The 32-bit key of each row (the low half of its hash) that candidates are found by."""
    return _keys(row_hashes(block))


def _keys(hashes: np.ndarray) -> np.ndarray:
    return (hashes & _LOW_32).astype(np.uint32)


@dataclass(frozen=True)
class _HashRange:
    """The rows whose 64-bit hash lies in `[low, high)`."""

    low: int = 0
    high: int = _HASH_SPACE

    @classmethod
    def split(cls, parts: int) -> list[_HashRange]:
        bounds = [_HASH_SPACE * i // parts for i in range(parts + 1)]
        return [cls(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i + 1] > bounds[i]]

    def halves(self) -> list[_HashRange]:
        middle = (self.low + self.high) // 2
        return [_HashRange(self.low, middle), _HashRange(middle, self.high)]

    def select(self, hashes: np.ndarray) -> np.ndarray:
        """The hashes in the range."""
        inside = self.mask(hashes)
        return hashes if inside is None else hashes[inside]

    def mask(self, hashes: np.ndarray) -> np.ndarray | None:
        """Which hashes lie in the range; None for all of them."""
        if self.low == 0 and self.high == _HASH_SPACE:
            return None
        inside = hashes >= np.uint64(self.low)
        inside &= hashes <= np.uint64(self.high - 1)
        return inside


class _KeySet:
    """Up to `capacity` keys, at most two copies of each: a key held twice repeats."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys = np.empty(capacity, dtype=np.uint32)
        self.size = 0

    def clear(self) -> None:
        self.size = 0

    def add(self, keys: np.ndarray) -> bool:
        """Add keys; False when they do not fit even with repeats dropped (the set is then
        left in an unspecified state)."""
        while len(keys):
            if self.size == self.capacity:
                self._compact()
                if self.capacity - self.size < max(1, self.capacity // 4):
                    return False
            room = self.capacity - self.size
            self.keys[self.size : self.size + min(room, len(keys))] = keys[:room]
            self.size += min(room, len(keys))
            keys = keys[room:]
        return True

    def repeated(self) -> np.ndarray:
        """The keys added more than once, sorted, in an array of their own (counted first,
        so that no temporary as large as the set is needed)."""
        self._compact()
        held = self.keys[: self.size]
        slices = [
            slice(at, min(at + _COMPACTION_KEYS, self.size - 1))
            for at in range(0, self.size - 1, _COMPACTION_KEYS)
        ]
        count = sum(
            int(np.count_nonzero(held[part] == held[part.start + 1 : part.stop + 1]))
            for part in slices
        )
        found = np.empty(count, dtype=np.uint32)
        filled = 0
        for part in slices:
            piece = held[part][held[part] == held[part.start + 1 : part.stop + 1]]
            found[filled : filled + len(piece)] = piece
            filled += len(piece)
        return found

    def _compact(self) -> None:
        """Sort the keys and keep at most two copies of each, a slice at a time, in place."""
        held = self.keys[: self.size]
        held.sort()
        if self.size <= 2:
            return
        earlier = held[:2].copy()  # the two keys before each slice, as sorted
        write = 2
        for start in range(2, self.size, _COMPACTION_KEYS):
            piece = held[start : start + _COMPACTION_KEYS].copy()
            two_before = np.concatenate([earlier, piece[:-2]])[: len(piece)]
            kept = piece[piece != two_before]
            earlier = np.concatenate([earlier, piece])[-2:]
            held[write : write + len(kept)] = kept
            write += len(kept)
        self.size = write


@dataclass
class _Comparison:
    """Rows whose hash lies in `span` and whose key is one of `keys` (sorted, unique):
    counts those bit-equal to an earlier one, keeping the first row of each key."""

    span: _HashRange
    keys: np.ndarray
    duplicates: int = 0
    first_rows: np.ndarray | None = None
    known: np.ndarray = field(init=False)
    others: dict[int, set[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.known = np.zeros(len(self.keys), dtype=bool)

    def add(self, block: np.ndarray, hashes: np.ndarray) -> None:
        inside = self.span.mask(hashes)
        if inside is not None:
            block, hashes = block[inside], hashes[inside]
        keys = _keys(hashes)
        # Looked up in key order, which keeps the binary searches in cache (several times
        # faster); which row of a key comes first does not change the count.
        order = np.argsort(keys)
        keys = keys[order]
        slot = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        hit = self.keys[slot] == keys
        if not hit.any():
            return
        data = row_bytes(block[order[hit]])
        group = slot[hit]
        if self.first_rows is None:
            self.first_rows = np.empty((len(self.keys), data.shape[1]), dtype=np.uint8)
        first = np.flatnonzero(np.concatenate([[True], group[1:] != group[:-1]]))
        present = group[first]
        fresh = ~self.known[present]
        self.first_rows[present[fresh]] = data[first[fresh]]
        self.known[present[fresh]] = True
        same = (data == self.first_rows[group]).all(axis=1)
        self.duplicates += int(same.sum()) - int(fresh.sum())
        for at in np.flatnonzero(~same).tolist():
            pattern = data[at].tobytes()
            seen = self.others.setdefault(int(group[at]), set())
            self.duplicates += pattern in seen
            seen.add(pattern)


class DuplicateFinder:
    """Counts the rows bit-equal to an earlier row over as many passes as memory requires.

    Feed every block of the table, in order, to `add`, then call `end_pass`; repeat while
    it returns True; `finish` then returns the count (and runs any pass still needed).
    Each pass gathers the keys of one hash range and compares the candidates the previous
    range left. A table whose rows' hashes all fit the budget (`RowHashIndex`) takes one
    pass, and `finish` reads only the rows whose hash repeats.
    """

    def __init__(
        self,
        table: Table,
        *,
        block_bytes: int = AUDIT_BLOCK_BYTES,
        hash_bytes: int = DUPLICATE_HASH_BYTES,
        indexed: bool | None = None,
    ) -> None:
        if indexed is None:
            indexed = RowHashIndex.fits(table.rows, hash_bytes)
        self._index = RowHashIndex(table.rows) if indexed else None
        capacity = max(_MIN_KEYS, int(hash_bytes * _KEY_SHARE) // _KEY_BYTES)
        planned = max(1, int(capacity * _RANGE_FILL))
        self._keys = _KeySet(_MIN_KEYS if indexed else min(capacity, max(_MIN_KEYS, table.rows)))
        parts = 1 if indexed else max(1, math.ceil(table.rows / planned))
        self._ranges = deque(_HashRange.split(parts))
        self._groups_per_comparison = max(
            1, block_bytes * DUPLICATE_MEMORY_BLOCKS // max(1, table.dim * 8)
        )
        self._waiting: deque[_Comparison] = deque()
        self._gathering: _HashRange | None = None
        self._comparing: _Comparison | None = None
        self._overflowed = False
        self.duplicates = 0
        self.passes = 0
        self._counted = False
        if self._index is None:
            self._begin_pass()

    @property
    def done(self) -> bool:
        if self._index is not None:
            return self.passes > 0
        return self._gathering is None and self._comparing is None

    @property
    def candidate_rows(self) -> int:
        """Rows read again by index to be compared (a table whose hashes fit the budget)."""
        return self._index.candidate_rows if self._index is not None else 0

    def add(self, block: np.ndarray) -> None:
        """The next block of the current pass."""
        if self.done:
            return
        hashes = row_hashes(block)
        if self._index is not None:
            self._index.add(hashes)
            return
        if self._gathering is not None and not self._overflowed:
            keys = _keys(self._gathering.select(hashes))
            self._overflowed = not self._keys.add(keys)
        if self._comparing is not None:
            self._comparing.add(block, hashes)

    def end_pass(self) -> bool:
        """Finish the pass; True when another pass over the table is needed."""
        self.passes += 1
        if self._index is not None:
            return False
        if self._comparing is not None:
            self.duplicates += self._comparing.duplicates
        if self._gathering is not None:
            if self._overflowed:
                self._ranges.extendleft(reversed(self._gathering.halves()))
            else:
                repeated = self._keys.repeated()
                step = self._groups_per_comparison
                self._waiting.extend(
                    _Comparison(self._gathering, repeated[at : at + step])
                    for at in range(0, len(repeated), step)
                )
        self._begin_pass()
        return not self.done

    def _begin_pass(self) -> None:
        self._comparing = self._waiting.popleft() if self._waiting else None
        # A new range is gathered only once the last one's candidates are all being
        # compared, so that candidates of one range at most wait in memory.
        gather = self._ranges and not self._waiting
        self._gathering = self._ranges.popleft() if gather else None
        self._keys.clear()
        self._overflowed = False

    def finish(self, model: ModelFile, table: Table, block_bytes: int) -> int:
        """Run the passes still needed over `table` and return the count."""
        while not self.done:
            for _, block in iter_blocks(model, table, block_bytes=block_bytes):
                self.add(block)
            self.end_pass()
        if self._index is not None and not self._counted:
            step = block_rows(table, block_bytes)
            self.duplicates = self._index.count(model, table, step, read_rows)
            self._counted = True
        return self.duplicates


def count_duplicates(
    model: ModelFile,
    table: Table,
    *,
    block_bytes: int = AUDIT_BLOCK_BYTES,
    hash_bytes: int = DUPLICATE_HASH_BYTES,
) -> int:
    """Rows bit-equal to an earlier row of `table`, in bounded memory (see the module).

    Args:
        block_bytes: the size of the blocks read, as for `iter_blocks`.
        hash_bytes: the memory for keys, `DUPLICATE_HASH_BYTES` by default.
    """
    return DuplicateFinder(table, block_bytes=block_bytes, hash_bytes=hash_bytes).finish(
        model, table, block_bytes
    )

"""Rows bit-equal to an earlier row: a hash per row finds candidates, bytes settle them."""

from __future__ import annotations

import numpy as np

from embcli.audit.common import AUDIT_BLOCK_BYTES, row_bytes
from embcli.formats.base import ModelFile, Table
from embcli.model import iter_blocks

DUPLICATE_MEMORY_BLOCKS = 8

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

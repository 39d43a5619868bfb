"""Duplicate rows in bounded memory: the count is exact whatever the hash does (forced
collisions in the range bits, in the key bits, or everywhere), over one pass or many,
and the memory used stays flat however many rows the table has."""

import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embcli import audit
from embcli.audit import duplicates
from embcli.formats.base import ModelFile, Table

REAL_HASHES = duplicates.row_hashes
# Hashes that collide on purpose: all equal; five values spread over the ranges; the
# same few keys in every range; everything in the first range (a range overflows and is
# split again and again).
FORCED_HASHES = {
    "real": REAL_HASHES,
    "zeros": lambda block: np.zeros(len(block), np.uint64),
    "five": lambda block: (REAL_HASHES(block) % np.uint64(5)) * np.uint64(0x3333333333333333),
    "few_keys": lambda block: REAL_HASHES(block) & np.uint64(0xFFFFFFFF00000003),
    "low_range": lambda block: REAL_HASHES(block) & np.uint64(0x00000000FFFFFFFF),
}


class MemoryModel(ModelFile):
    """One in-memory table behind the ModelFile interface."""

    format_name = "memory"

    def __init__(self, values: np.ndarray) -> None:
        super().__init__(Path("memory"))
        self.values = values
        self.table = Table("t", "t", "Embedding", values.shape, values.dtype.name, "t")

    def tables(self, all_weights: bool = False) -> list[Table]:
        return [self.table]

    def weight_info(self, weight):
        return self.values.shape, self.values.dtype

    def read(self, weight, rows):
        return self.values[rows]

    def plan_write(self, output, patches, in_place):
        raise NotImplementedError


def brute_duplicates(values: np.ndarray) -> int:
    seen: set[bytes] = set()
    count = 0
    for row in np.ascontiguousarray(values):
        count += row.tobytes() in seen
        seen.add(row.tobytes())
    return count


def planned_ranges(rows: int, hash_bytes: int) -> int:
    """The ranges the module's docstring promises: rows / (7/8 of 2/3 of the budget's keys)."""
    capacity = max(8, int(hash_bytes * 2 / 3) // 4)
    return max(1, -(-rows // int(capacity * 7 / 8)))


tables = st.tuples(
    st.integers(0, 250),
    st.integers(0, 4),
    st.sampled_from([np.float16, np.float32, np.float64]),
    st.integers(0, 2**32 - 1),
    st.sampled_from([2, 3, 8, 1000]),
)


def make_table(rows: int, dim: int, dtype, seed: int, pool: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, pool, size=(rows, dim)).astype(dtype)
    values[rng.random((rows, dim)) < 0.05] = -0.0
    values[rng.random((rows, dim)) < 0.05] = np.nan
    return values


@settings(max_examples=200, deadline=None)
@given(
    tables,
    st.sampled_from(sorted(FORCED_HASHES)),
    st.integers(1, 300),
    st.sampled_from([1, 12, 40, 100, 400, 10**6]),
)
def test_partitioned_count_is_exact(table, hashing, block_bytes, hash_bytes):
    values = make_table(*table)
    model = MemoryModel(values)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(duplicates, "row_hashes", FORCED_HASHES[hashing])
        finder = audit.DuplicateFinder(model.table, block_bytes=block_bytes, hash_bytes=hash_bytes)
        got = finder.finish(model, model.table, block_bytes)
        stats = audit.table_stats(
            model, model.table, block_bytes=block_bytes, hash_bytes=hash_bytes
        )
    want = brute_duplicates(values)
    assert got == stats.duplicate_rows == want
    assert finder.passes >= planned_ranges(len(values), hash_bytes)


def test_many_ranges_take_one_pass_each_plus_one_to_compare():
    rows = 5000
    values = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    values[rows // 2 :] = values[: rows // 2]  # every row repeated once
    model = MemoryModel(values)
    hash_bytes = 1200  # 200 keys: 175 rows planned a range, so 29 ranges
    finder = audit.DuplicateFinder(model.table, block_bytes=4096, hash_bytes=hash_bytes)
    assert finder.finish(model, model.table, 4096) == rows // 2
    assert planned_ranges(rows, hash_bytes) == 29
    assert finder.passes == 29 + 1
    whole = audit.DuplicateFinder(model.table, indexed=False)
    assert whole.finish(model, model.table, audit.AUDIT_BLOCK_BYTES) == rows // 2
    assert whole.passes == 2
    # 2500 candidate keys, first rows for 2048 of them in 8 blocks of 4096 bytes: two
    # comparison passes
    small_blocks = audit.DuplicateFinder(model.table, block_bytes=4096, indexed=False)
    assert small_blocks.finish(model, model.table, 4096) == rows // 2
    assert small_blocks.passes == 3
    # Within the budget every hash is kept: one pass, then every (repeated) row by index.
    indexed = audit.DuplicateFinder(model.table)
    assert indexed.finish(model, model.table, 4096) == rows // 2
    assert (indexed.passes, indexed.candidate_rows) == (1, rows)


class CountingModel(MemoryModel):
    """A MemoryModel that records which rows each read asked for."""

    def __init__(self, values: np.ndarray) -> None:
        super().__init__(values)
        self.reads: list[object] = []

    def read(self, weight, rows):
        self.reads.append(rows)
        return super().read(weight, rows)


def test_a_table_within_the_budget_is_read_once_then_only_its_repeated_rows():
    values = np.arange(40_000, dtype=np.float32).reshape(10_000, 4)
    values[[10, 5000, 9999]] = values[3]
    values[7000] = values[6]
    model = CountingModel(values)
    found = audit.table_stats(model, model.table, block_bytes=4096)
    assert found.duplicate_rows == 4
    passes = [r for r in model.reads if isinstance(r, slice)]
    by_index = [r for r in model.reads if not isinstance(r, slice)]
    assert sum(r.stop - r.start for r in passes) == 10_000
    assert sorted(np.concatenate(by_index).tolist()) == [3, 6, 10, 5000, 7000, 9999]


def test_the_index_is_kept_only_within_the_budget():
    assert audit.DuplicateFinder(
        Table("t", "t", "Embedding", (4_194_304, 8), "float32", "t")
    )._index
    big = Table("t", "t", "Embedding", (4_194_305, 8), "float32", "t")
    assert audit.DuplicateFinder(big)._index is None


@pytest.mark.parametrize(
    ("rows", "ranges"), [(0, 1), (9_786_708, 1), (9_786_709, 2), (100_000_000, 11)]
)
def test_ranges_at_the_default_budget(rows, ranges):
    """The figures the module's docstring gives for DUPLICATE_HASH_BYTES = 64 MiB."""
    table = Table("t", "t", "Embedding", (rows, 8), "float32", "t")
    finder = audit.DuplicateFinder(table, indexed=False)
    assert audit.DUPLICATE_HASH_BYTES == 64 * 1024 * 1024
    assert 1 + len(finder._ranges) == planned_ranges(rows, audit.DUPLICATE_HASH_BYTES) == ranges
    assert finder._keys.capacity * 4 <= audit.DUPLICATE_HASH_BYTES * 2 / 3


def test_distinct_rows_need_no_comparison_pass():
    values = np.arange(3000, dtype=np.float32).reshape(1000, 3)
    model = MemoryModel(values)
    finder = audit.DuplicateFinder(model.table, hash_bytes=10**6)
    assert finder.finish(model, model.table, audit.AUDIT_BLOCK_BYTES) == 0
    assert finder.passes == 1


def test_memory_stays_flat_in_rows():
    """The old way kept 4 bytes a row (1.6 MB here); the bound is the budget plus what a
    block needs while it is hashed."""
    rows, block_bytes, hash_bytes = 400_000, 32 * 1024, 64 * 1024
    values = np.arange(rows, dtype=np.float32).reshape(rows, 1) % 150_000
    model = MemoryModel(values)
    tracemalloc.start()
    try:
        found = audit.table_stats(
            model, model.table, block_bytes=block_bytes, hash_bytes=hash_bytes
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found.duplicate_rows == rows - 150_000
    assert peak < hash_bytes + 16 * block_bytes < rows * 4 // 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 30), max_size=200), st.integers(8, 40), st.integers(1, 50))
def test_key_set_keeps_two_copies_and_knows_what_repeats(keys, capacity, step):
    held = duplicates._KeySet(capacity)
    fits = all(
        held.add(np.array(keys[at : at + step], np.uint32)) for at in range(0, len(keys), step)
    )
    counts = Counter(keys)
    if fits:
        assert held.repeated().tolist() == sorted(k for k, n in counts.items() if n > 1)
        assert held.size == sum(min(n, 2) for n in counts.values())
    else:
        assert sum(min(n, 2) for n in counts.values()) > capacity * 3 // 4


def test_compaction_crosses_slices(monkeypatch):
    monkeypatch.setattr(duplicates, "_COMPACTION_KEYS", 3)
    held = duplicates._KeySet(64)
    keys = [5, 1, 1, 1, 2, 5, 5, 9, 2, 2, 2, 7, 1, 9]
    assert held.add(np.array(keys, np.uint32))
    held._compact()
    assert held.keys[: held.size].tolist() == [1, 1, 2, 2, 5, 5, 7, 9, 9]
    assert held.repeated().tolist() == [1, 2, 5, 9]


def test_hash_ranges_cover_the_hash_space_once():
    ranges = duplicates._HashRange.split(7)
    assert ranges[0].low == 0 and ranges[-1].high == 2**64
    assert all(a.high == b.low for a, b in zip(ranges, ranges[1:], strict=False))
    edges = np.array([0, 2**63, 2**64 - 1, *(r.low for r in ranges)], np.uint64)
    owners = [
        [r for r in ranges if r.mask(edges) is not None and r.mask(edges)[i]]
        for i in range(len(edges))
    ]
    assert all(len(found) == 1 for found in owners)
    low, high = duplicates._HashRange(4, 9).halves()
    assert (low.low, low.high, high.low, high.high) == (4, 6, 6, 9)

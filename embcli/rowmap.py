"""Rebuilding a table, and everything that follows its rows, from a row map.

A `RowMap` says, for each row of the new table, which old row it takes (or that it is
new). A resize keeps a prefix and appends; a remap moves, drops and adds rows anywhere.
`TablePlan` turns a row map into the new weights of one write: the table itself (int8
tables with their scales), an untied output table `(dim, rows)` of the same layer
(quantized ones with their per-token scales), a Dense head over the vocabulary, and
every optimizer slot of those (new entries zero).
Old rows are copied bit for bit, a bounded block at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from embcli.edit import cast_values, quantize_rows
from embcli.errors import UnsupportedEdit
from embcli.formats.base import Edit, ModelFile, NewWeight, Table
from embcli.init import Init, new_rows, statistics
from embcli.model import BLOCK_BYTES, find_table, iter_blocks, list_tables

REVERSE_EMBEDDINGS = "reverse_embeddings"
REVERSIBLE_EMBEDDING = "ReversibleEmbedding"
NEW_ROW = -1
COPY_BLOCK_BYTES = 8 * 1024 * 1024  # a gathered block may read a few times this


@dataclass(frozen=True)
class RowMap:
    """`sources[j]` is the old row that new row `j` takes, or `NEW_ROW`."""

    sources: np.ndarray

    @classmethod
    def resized(cls, old: int, new: int) -> RowMap:
        kept = np.arange(min(old, new), dtype=np.int64)
        return cls(np.concatenate([kept, np.full(max(new - old, 0), NEW_ROW, dtype=np.int64)]))

    @property
    def rows(self) -> int:
        return len(self.sources)

    @property
    def added(self) -> int:
        return int((self.sources == NEW_ROW).sum())

    def ordinals(self) -> np.ndarray:
        """For each new row, its position among the added rows (meaningless elsewhere)."""
        return np.cumsum(self.sources == NEW_ROW) - 1


@dataclass
class _Follower:
    """A weight whose axis `axis` has the table's rows, and its added entries."""

    weight: str
    shape: tuple[int, ...]
    axis: int
    dtype: np.dtype
    added: np.ndarray | None = None  # stored values of the added rows; None means zeros
    trained: Table | None = None  # the weight as a table, when an optimizer trains it


class TablePlan:
    """The new weights of one table for a row map."""

    def __init__(
        self,
        artifact: ModelFile,
        table: Table,
        init: Init,
        rng: np.random.Generator,
        allow_lossy: bool = False,
    ) -> None:
        if table.quantized is not None and table.codec is None and table.scale is None:
            raise UnsupportedEdit(
                f"{table.name} is {table.quantized}-quantized; embcli cannot change its rows yet"
            )
        self.artifact = artifact
        self.table = table
        self.init = init
        self.rng = rng
        self.allow_lossy = allow_lossy

    def edit(
        self, rows: RowMap, explicit: dict[int, np.ndarray], head: str | None = None
    ) -> tuple[Edit, list[str]]:
        """The weights to write, and their paths. `explicit` gives vectors for some added
        rows, by their position among the added rows; the others follow `init`."""
        added = self._added_rows(rows.added, explicit)
        followers = self._table(added)
        followers += self._mirrors(followers[0])
        followers += self._reverse(rows.added)
        followers += self._output_biases(rows.added)
        if head is not None:
            followers += self._head(head, rows.added)
        for follower in list(followers):
            followers += self._slots(follower)
        self._refuse_unknown_followers(followers)
        edit = Edit()
        for follower in followers:
            edit.weights[follower.weight] = self._new_weight(follower, rows)
        edit.checks.append(self._check(rows, followers[0]))
        return edit, [f.weight for f in followers]

    def _refuse_unknown_followers(self, followers: list[_Follower]) -> None:
        """Refuse when another weight of the layer has the table's row count along an
        axis and embcli does not know that it follows the rows: the model would no
        longer load."""
        moved = {f.weight for f in followers}
        shared = set()
        if self.table.codec is not None:
            codec = self.table.codec.embeddings
            shared = {p.variable.path for p in codec.parts.values() if p.vocab_axis is None}
        for weight in self.artifact.weights_of(self.table):
            shape, _ = self.artifact.weight_info(weight)
            if weight not in moved | shared and self.table.rows in tuple(shape):
                raise UnsupportedEdit(
                    f"{weight} has {self.table.rows} entries along an axis, as "
                    f"{self.table.name} has rows, and embcli does not know how it follows them"
                )

    def _check(self, rows: RowMap, table: _Follower) -> tuple[str, np.ndarray, np.ndarray]:
        """A few rows of the new table, as the written copy must read them back."""
        probe = np.unique([0, rows.rows - 1, *np.flatnonzero(rows.sources == NEW_ROW)[:1]])
        sources = rows.sources[probe]
        expected = np.empty((len(probe), *table.shape[1:]), dtype=table.dtype)
        old = sources != NEW_ROW
        if old.any():
            unique, inverse = np.unique(sources[old], return_inverse=True)
            expected[old] = self.artifact.read(self.table.weight, unique)[inverse]
        if (~old).any():
            assert table.added is not None
            expected[~old] = table.added[rows.ordinals()[probe][~old]]
        return self.table.weight, probe, expected

    def _added_rows(self, count: int, explicit: dict[int, np.ndarray]) -> np.ndarray:
        """The added rows as the model computes with them (float64), before storing."""
        table = self.table
        if len(explicit) >= count:
            values = np.zeros((count, table.dim), dtype=np.float64)
        else:
            found = None
            if self.init.needs_statistics:
                blocks = (block for _, block in iter_blocks(self.artifact, table))
                found = statistics(blocks, table.dim, self.init)
            values = new_rows(self.init, count, table.dim, found, self.rng)
        for position, vector in explicit.items():
            values[position] = vector
        return values

    def _table(self, values: np.ndarray) -> list[_Follower]:
        table = self.table
        shape, dtype = self.artifact.weight_info(table.weight)
        if table.codec is not None:
            from embcli.quantized import encoded_rows

            cast_values(values, np.dtype(np.float32), allow_lossy=self.allow_lossy)
            followers = []
            for weight, stored in encoded_rows(self.artifact, table, values).items():
                part_shape, part_dtype = self.artifact.weight_info(weight)
                followers.append(_Follower(weight, part_shape, 0, part_dtype, stored))
            followers.sort(key=lambda f: f.weight != table.weight)
            return followers
        if table.quantized == "int8" and table.scale is not None:
            cast_values(values, np.dtype(np.float32), allow_lossy=self.allow_lossy)
            quantized, scales = quantize_rows(values)
            scale_shape, scale_dtype = self.artifact.weight_info(table.scale)
            scales = cast_values(scales, scale_dtype, allow_lossy=self.allow_lossy)
            return [
                _Follower(table.weight, shape, 0, dtype, quantized),
                _Follower(table.scale, scale_shape, 0, scale_dtype, scales),
            ]
        stored = cast_values(values, dtype, allow_lossy=self.allow_lossy)
        return [_Follower(table.weight, shape, 0, dtype, stored, table)]

    def _reverse(self, count: int) -> list[_Follower]:
        """An untied output table of the same layer, `(dim, rows)`: its added columns get
        the same init, computed over its own columns."""
        table = self.table
        if table.codec is not None and table.codec.reverse is not None:
            return self._quantized_reverse(count)
        siblings = [
            t
            for t in list_tables(self.artifact, all_weights=True)
            if t.owner == table.owner and t.weight != table.weight
        ]
        reverse = [
            t
            for t in siblings
            if t.shape == (table.dim, table.rows)
            and (table.class_name == REVERSIBLE_EMBEDDING or REVERSE_EMBEDDINGS in t.weight)
        ]
        if not reverse:
            return []
        if table.quantized:
            raise UnsupportedEdit(
                f"{table.name}: a quantized untied output table cannot be changed yet"
            )
        shape, dtype = self.artifact.weight_info(reverse[0].weight)
        columns = cast_values(self._columns_by_init(reverse[0].weight, count), dtype)
        return [_Follower(reverse[0].weight, shape, 1, dtype, columns, reverse[0])]

    def _quantized_reverse(self, count: int) -> list[_Follower]:
        """A quantized untied output table: its added columns get the same init over its
        own columns as Keras computes them, quantized as Keras's `quantize` stores them;
        old columns and their scales are copied as stored."""
        from embcli.quantized import encoded_reverse_columns, iter_reverse_rows

        dim = self.table.dim
        found = None
        if self.init.needs_statistics and count:
            blocks = (block for _, block in iter_reverse_rows(self.artifact, self.table))
            found = statistics(blocks, dim, self.init)
        values = new_rows(self.init, count, dim, found, self.rng)
        cast_values(values, np.dtype(np.float32), allow_lossy=self.allow_lossy)
        followers = []
        for weight, axis, stored in encoded_reverse_columns(self.artifact, self.table, values):
            shape, dtype = self.artifact.weight_info(weight)
            followers.append(_Follower(weight, shape, axis, dtype, stored))
        return followers

    def _output_biases(self, count: int) -> list[_Follower]:
        """A task head's bias over the table's rows (keras-hub's `MaskedLMHead`), which
        the format module names: added entries take the old entries' mean."""
        followers = []
        for weight in self.artifact.output_biases(self.table):
            shape, dtype = self.artifact.weight_info(weight)
            old = self.artifact.read(weight, slice(None)).astype(np.float64)
            bias = cast_values(np.full(count, old.mean() if len(old) else 0.0), dtype)
            trained = replace(self.table, weight=weight, shape=shape, owner=weight, codec=None)
            followers.append(_Follower(weight, shape, 0, dtype, bias, trained))
        return followers

    def _columns_by_init(self, weight: str, count: int) -> np.ndarray:
        """`count` new columns for a `(k, rows)` weight, by `init` over its columns."""
        shape, _ = self.artifact.weight_info(weight)
        found = None
        if self.init.needs_statistics and count:
            found = statistics(self._columns(weight, shape), shape[0], self.init)
        return new_rows(self.init, count, shape[0], found, self.rng).T

    def _columns(self, weight: str, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
        """The columns of a 2-D weight as rows, in blocks; each block reads every row."""
        step = max(1, BLOCK_BYTES // max(1, shape[0] * 4))
        for start in range(0, shape[1], step):
            parts = []
            for first in range(0, shape[0], step):
                block = self.artifact.read(weight, slice(first, min(first + step, shape[0])))
                parts.append(np.asarray(block[:, start : start + step], dtype=np.float64))
            yield np.concatenate(parts).T

    def _head(self, head: str, count: int) -> list[_Follower]:
        """A Dense layer over the vocabulary: kernel `(in, rows)` (added columns by
        `init`) and bias `(rows,)` (added entries: the old mean)."""
        table = self.table
        kernel = find_table(self.artifact, head)
        if kernel.shape[1] != table.rows:
            raise UnsupportedEdit(
                f"the kernel of {head} has shape {kernel.shape}, not (inputs, {table.rows})"
            )
        shape, dtype = self.artifact.weight_info(kernel.weight)
        columns = cast_values(self._columns_by_init(kernel.weight, count), dtype)
        followers = [_Follower(kernel.weight, shape, 1, dtype, columns, kernel)]
        for weight in self.artifact.weights_of(kernel):
            bias_shape, bias_dtype = self.artifact.weight_info(weight)
            if weight == kernel.weight or bias_shape != (table.rows,):
                continue
            old = self.artifact.read(weight, slice(None)).astype(np.float64)
            bias = cast_values(np.full(count, old.mean() if len(old) else 0.0), bias_dtype)
            trained = replace(
                kernel, weight=weight, shape=bias_shape, owner=_sibling(kernel, weight)
            )
            followers.append(_Follower(weight, bias_shape, 0, bias_dtype, bias, trained))
        return followers

    def _mirrors(self, table: _Follower) -> list[_Follower]:
        """Stored copies of the table that must keep its shape (keras-hub 0.20's task
        weights hold the backbone's): their rows move the same way, and added rows are
        the table's. Copies of another shape or dtype are left alone."""
        found = []
        for weight in self.artifact.mirrored_weights(self.table):
            shape, dtype = self.artifact.weight_info(weight)
            if tuple(shape) == tuple(table.shape) and dtype == table.dtype:
                found.append(_Follower(weight, table.shape, table.axis, dtype, table.added))
        return found

    def _slots(self, follower: _Follower) -> list[_Follower]:
        """The optimizer slots of a trained weight: added entries zero."""
        if follower.trained is None:
            return []
        found = []
        for slot in self.artifact.optimizer_slots(follower.trained):
            shape, dtype = self.artifact.weight_info(slot)
            found.append(_Follower(slot, shape, follower.axis, dtype))
        return found

    def _new_weight(self, follower: _Follower, rows: RowMap) -> NewWeight:
        shape = list(follower.shape)
        shape[follower.axis] = rows.rows
        artifact, weight, axis = self.artifact, follower.weight, follower.axis
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * follower.dtype.itemsize
        step = max(1, COPY_BLOCK_BYTES // max(1, row_bytes))
        sources = rows.sources
        old = sources != NEW_ROW
        ordinals = rows.ordinals()
        if follower.added is not None:
            added = follower.added
        else:
            added_shape = list(follower.shape)
            added_shape[axis] = rows.added
            added = np.zeros(added_shape, dtype=follower.dtype)

        def along_rows() -> Iterator[np.ndarray]:
            for start in range(0, rows.rows, step):
                stop = min(start + step, rows.rows)
                block_sources, block_old = sources[start:stop], old[start:stop]
                first = int(block_sources[0])
                if block_old.all() and np.array_equal(
                    block_sources, np.arange(first, first + stop - start)
                ):
                    yield artifact.read(weight, slice(first, first + stop - start))
                    continue
                block = np.empty((stop - start, *shape[1:]), dtype=follower.dtype)
                if block_old.any():
                    block[block_old] = _gather(artifact, weight, block_sources[block_old])
                if (~block_old).any():
                    block[~block_old] = added[ordinals[start:stop][~block_old]]
                yield block

        def along_columns() -> Iterator[np.ndarray]:
            for start in range(0, shape[0], step):
                stop = min(start + step, shape[0])
                stored = artifact.read(weight, slice(start, stop))
                block = np.empty((stop - start, rows.rows), dtype=follower.dtype)
                block[:, old] = stored[:, sources[old]]
                block[:, ~old] = added[start:stop][:, ordinals[~old]]
                yield block

        return NewWeight(tuple(shape), follower.dtype, along_rows if axis == 0 else along_columns)


SPAN_READ_FACTOR = 4


def _gather(artifact: ModelFile, weight: str, sources: np.ndarray) -> np.ndarray:
    """Stored rows `sources` (any order, repeats allowed) of a weight. Rows that lie
    close together are read as the one range that covers them, which is much faster
    than many small reads; scattered rows are read one run at a time."""
    unique, inverse = np.unique(sources, return_inverse=True)
    first, last = int(unique[0]), int(unique[-1])
    if last - first + 1 <= SPAN_READ_FACTOR * len(unique):
        span = artifact.read(weight, slice(first, last + 1))
        return span[unique - first][inverse]
    return artifact.read(weight, unique)[inverse]


def _sibling(table: Table, weight: str) -> str:
    """The owner name of another weight of the same layer (legacy files name slots by it)."""
    leaf = weight.rsplit("/", 1)[-1].removesuffix(":0")
    return f"{table.owner.rsplit('/', 1)[0]}/{leaf}" if "/" in table.owner else table.owner

"""A table's codec together with the stored variables it reads, oriented for the file.

Keras stores a forward table vocabulary-major (`(rows, ...)`) and the untied reverse
table of a `ReversibleEmbedding` transposed (`(dim or packed dim, rows)`, scales and zero
points `(groups, rows)`). `TableCodec` hides the difference: it takes and gives parts in
the file's layout, sliced along each part's `vocab_axis`, and values vocabulary-major.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from embcli.errors import UnsupportedEdit
from embcli.quantization.codecs import GROUP_INDEX, Codec


@dataclass(frozen=True)
class VariableInfo:
    """What a file says about one saved variable, without reading its values.

    `name` is the variable's own name where the format records one (a legacy HDF5
    file's `embeddings_scale:0`, a checkpoint key); Keras 3 files number them instead.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    name: str | None = None


@dataclass(frozen=True)
class StoredPart:
    """One saved variable in the role a codec gives it.

    `vocab_axis` is the axis indexed by token id; None for a part every row shares
    (`g_idx`), which is read whole and never rewritten by a row edit.
    """

    role: str
    variable: VariableInfo
    vocab_axis: int | None


@dataclass(frozen=True)
class TableCodec:
    """The codec of one table (the embeddings or the untied reverse table) and its parts."""

    codec: Codec
    parts: Mapping[str, StoredPart]
    rows: int
    dim: int
    reverse: bool = False

    @property
    def name(self) -> str:
        """The encoding: "float", "int8", "int4" or "int4-grouped"."""
        return self.codec.name

    @property
    def shape(self) -> tuple[int, int]:
        """The table's shape as the model holds it: `(dim, rows)` for a reverse table."""
        return (self.dim, self.rows) if self.reverse else (self.rows, self.dim)

    @property
    def weight(self) -> str:
        """The path of the variable holding the table's values."""
        return self.parts["values"].variable.path

    def select(self, arrays: Mapping[str, np.ndarray], indices: Sequence[int] | np.ndarray | slice):
        """The blocks `decode` takes, cut from whole stored arrays (by role) at `indices`."""
        blocks = {}
        for role, part in self.parts.items():
            array = np.asarray(arrays[role])
            if part.vocab_axis is None:
                blocks[role] = array
            elif isinstance(indices, slice):
                cut = [slice(None)] * array.ndim
                cut[part.vocab_axis] = indices
                blocks[role] = array[tuple(cut)]
            else:
                blocks[role] = np.take(array, np.asarray(indices, dtype=np.int64), part.vocab_axis)
        return blocks

    def _to_vocab_major(self, role: str, block: np.ndarray) -> np.ndarray:
        part = self.parts[role]
        if part.vocab_axis == 1:
            return np.asarray(block).T
        return np.asarray(block)

    def decode(self, blocks: Mapping[str, np.ndarray]) -> np.ndarray:
        """The values of some table rows, `(k, dim)`, exactly as Keras computes them.

        Args:
            blocks: by role, each stored part cut to the wanted rows along its
                `vocab_axis` (whole where that is None), in the file's layout.

        Returns:
            float values, one row per token id, even for the reverse table (whose
            kernel in the model is the transpose).
        """
        missing = [role for role in self.parts if role not in blocks]
        if missing:
            raise UnsupportedEdit(f"the {', '.join(missing)} of the table were not given")
        oriented = {role: self._to_vocab_major(role, blocks[role]) for role in self.parts}
        return self.codec.decode(oriented)

    def encode(self, values: np.ndarray) -> dict[str, np.ndarray]:
        """The stored parts, in the file's layout, of rows that hold `values` `(k, dim)`.

        Each returned array goes to the same rows along its part's `vocab_axis`; parts
        shared by all rows (`g_idx`) are not returned.
        """
        encoded = self.codec.encode(np.asarray(values))
        out = {}
        for role, array in encoded.items():
            out[role] = array.T if self.parts[role].vocab_axis == 1 else array
        return out

    def with_group_index(self, g_idx: np.ndarray) -> TableCodec:
        """This table with its grouped codec checked against (or completed from) `g_idx`."""
        refine = getattr(self.codec, "with_group_index", None)
        if refine is None or GROUP_INDEX not in self.parts:
            return self
        return TableCodec(refine(g_idx), self.parts, self.rows, self.dim, self.reverse)


@dataclass(frozen=True)
class LayerCodecs:
    """The codecs of an embedding layer's tables."""

    embeddings: TableCodec
    reverse: TableCodec | None = None

    @property
    def name(self) -> str:
        """The layer's encoding, shared by both of its tables."""
        return self.embeddings.name

    def tables(self) -> list[TableCodec]:
        """The embeddings table, then the reverse table when untied."""
        return [self.embeddings] + ([self.reverse] if self.reverse is not None else [])

"""Open any supported artifact by its content, and work with its tables.

`open_model(path)` returns a `ModelFile` from the matching format module. The functions
here sit on top of that interface: naming tables uniquely, finding one by `--layer`, and
reading rows as the model computes with them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embcli import locking
from embcli.dtypes import dtype_name, is_bfloat16
from embcli.errors import (
    AmbiguousTable,
    InterruptedEdit,
    NoSuchTable,
    StackedTable,
    UnsupportedEdit,
)
from embcli.formats.base import ModelFile, Table
from embcli.formats.registry import detect
from embcli.guarded import refuse_special_file
from embcli.journal import pending_for, recover_model
from embcli.remote import url_of

BLOCK_BYTES = 32 * 1024 * 1024


def open_model(path: str | os.PathLike, recover_edits: bool = False) -> ModelFile:
    """Open a model artifact read-only. Raises an `EmbcliError` for anything unusable.

    A file that an in-place edit left half done is refused, unless `recover_edits`
    (for commands that write to it anyway) rolls that edit back first.
    """
    url = url_of(path)
    if url is not None:
        return _open_url(url, recover_edits)
    path = Path(path)
    refuse_special_file(path)
    if recover_edits:
        recover_model(path)
    lock = locking.reading(path)
    try:
        refuse_half_edited(path)
        kind = detect(path)
        artifact = kind.opener(path)
        artifact.artifact_kind = kind
        return lock.bind(artifact)
    except BaseException:
        lock.close()
        raise


def _open_url(url: str, recover_edits: bool) -> ModelFile:
    """A model at a URL, read by byte ranges; never edited where it is."""
    from embcli.formats.registry import kind_of
    from embcli.remote import shown_url
    from embcli.remote_open import open_remote, refuse_in_place

    if recover_edits:
        raise UnsupportedEdit(refuse_in_place(url))
    return open_remote(url, lambda probe: kind_of(probe, shown_url(url)))


def refuse_half_edited(path: Path) -> None:
    """Refuse to read a model that a killed in-place edit or commit left half done."""
    for journal, target in pending_for(path):
        raise InterruptedEdit(
            f"a write of {target} was interrupted ({journal.name} records it)",
            remedy="recover",
            subject=str(target),
        )


def list_tables(model: ModelFile, all_weights: bool = False) -> list[Table]:
    """The model's tables, each with a name unique among them.

    A table keeps its layer's own name unless another table shares it; then both are
    named by their qualified `outer/inner` path, or failing that by their weight path.
    """
    tables = model.tables(all_weights=True)
    counts: dict[str, int] = {}
    for table in tables:
        counts[table.name] = counts.get(table.name, 0) + 1
    qualified_counts: dict[str, int] = {}
    for table in tables:
        qualified_counts[table.qualified] = qualified_counts.get(table.qualified, 0) + 1
    named = []
    for table in tables:
        if counts[table.name] > 1:
            unique_qualified = qualified_counts[table.qualified] == 1
            table = table.renamed(table.qualified if unique_qualified else table.weight)
        named.append(table)
    from embcli.quantized import with_codec

    return [with_codec(model, t) for t in named if all_weights or t.is_embedding]


def readable_tables(model: ModelFile) -> list[Table]:
    """The embedding tables whose rows can be read: `list_tables` less stacked ones."""
    return [t for t in list_tables(model) if t.stacked is None]


def refuse_stacked(table: Table) -> None:
    """Refuse row access to a stacked variable, whose rows are not one token each."""
    if table.stacked is not None:
        from embcli.formats.keras_rs import refusal

        raise StackedTable(refusal(table.name, table.stacked))


def _keys(table: Table) -> set[str]:
    keys = {table.name, table.qualified, table.weight, *table.aliases}
    return keys | {"/" + k for k in keys if not k.startswith("/")}


def find_table(model: ModelFile, name: str | None) -> Table:
    """The table `--layer NAME` means: a layer name, `outer/inner` path, or weight path."""
    return select_table(list_tables(model, all_weights=True), name)


def select_table(tables: list[Table], name: str | None) -> Table:
    """`find_table` among tables already listed (with `all_weights`)."""
    embeddings = [t for t in tables if t.is_embedding]
    if name is None:
        if len(embeddings) == 1:
            return embeddings[0]
        if not embeddings:
            raise NoSuchTable("the model holds no embedding table", remedy="any_weight")
        raise AmbiguousTable(
            "the model holds several tables",
            remedy="choose_table",
            detail=": " + ", ".join(t.name for t in embeddings),
        )
    matches = [t for t in tables if name in _keys(t)]
    if len(matches) == 1:
        return matches[0]
    exact = [t for t in matches if t.name == name]
    if len(exact) == 1:
        return exact[0]
    if matches:
        raise AmbiguousTable(
            f"{name!r} names several tables: " + ", ".join(t.qualified for t in matches)
        )
    candidates = ", ".join(t.name for t in (embeddings or tables)) or "none"
    raise NoSuchTable(f"no table named {name!r}; tables: {candidates}")


def decode(
    model: ModelFile, table: Table, stored: np.ndarray, rows: slice | np.ndarray, raw: bool = False
) -> np.ndarray:
    """The values the model computes with, from stored values of `rows`.

    bfloat16 widens to float32 (exactly); int8-quantized tables are divided by their
    per-row scale, as Keras does. `raw` keeps stored integers (int4 codes unpacked to one
    int8 per value). A stacked variable is refused (`StackedTable`).
    """
    refuse_stacked(table)
    if is_bfloat16(stored):
        return stored.astype(np.float32)
    if raw and table.codec is not None:
        from embcli.quantized import raw_values

        return raw_values(table, stored)
    if raw or table.quantized is None:
        return stored
    if table.codec is not None:
        from embcli.quantized import decode_rows

        return decode_rows(model, table, rows)
    if table.quantized != "int8" or table.scale is None:
        raise UnsupportedEdit(
            f"{table.name} is {table.quantized}-quantized and embcli cannot dequantize it",
            remedy="raw",
        )
    scale = model.read(table.scale, rows)
    if is_bfloat16(scale):
        scale = scale.astype(np.float32)
    return stored.astype(np.float32) / scale.astype(np.float32)[:, None]


def read_rows(model: ModelFile, table: Table, indices: np.ndarray, raw: bool = False) -> np.ndarray:
    """Rows in the order given (repeats allowed), decoded as `decode` says."""
    indices = np.asarray(indices, dtype=np.int64)
    unique, inverse = np.unique(indices, return_inverse=True)
    values = decode(model, table, model.read(table.weight, unique), unique, raw)
    return values[inverse]


def block_rows(table: Table, block_bytes: int = BLOCK_BYTES) -> int:
    return max(1, block_bytes // max(1, table.dim * 4))


def iter_blocks(
    model: ModelFile, table: Table, raw: bool = False, block_bytes: int = BLOCK_BYTES
) -> Iterator[tuple[int, np.ndarray]]:
    """`(first_row, values)` over the whole table, a bounded block at a time."""
    step = block_rows(table, block_bytes)
    for start in range(0, table.rows, step):
        window = slice(start, min(start + step, table.rows))
        yield start, decode(model, table, model.read(table.weight, window), window, raw)


def computed_dtype(table: Table, raw: bool = False) -> np.dtype:
    """The dtype `decode` returns for a table."""
    if table.dtype == "bfloat16" or (table.quantized is not None and not raw):
        return np.dtype(np.float32)
    return np.dtype(table.dtype)


@dataclass(frozen=True)
class OutputBias:
    """A bias with one entry per row of a table, such as the output bias of keras-hub's
    `MaskedLMHead` over the vocabulary: `resize` and `remap` move it with the rows.

    Attributes:
        weight: its path or key inside the artifact.
        shape: `(rows,)` as stored.
        dtype: the stored dtype.
    """

    weight: str
    shape: tuple[int, ...]
    dtype: str

    def record(self) -> dict:
        """The `--json` form: `{"weight", "shape", "dtype"}`."""
        return {"weight": self.weight, "shape": list(self.shape), "dtype": self.dtype}


def output_biases(model: ModelFile, table: Table) -> list[OutputBias]:
    """The biases that follow `table`'s rows in an edit, found as the edits find them
    (the format module's `output_biases`); usually none, or one task head's."""
    found = []
    for weight in model.output_biases(table):
        shape, dtype = model.weight_info(weight)
        found.append(OutputBias(weight, tuple(shape), dtype_name(dtype)))
    return found

"""Export tables to files, a bounded block at a time.

An `.npy` export of a table whose stored bytes are already the values the model computes
with (float32 or float16, little-endian, stored contiguously and unfiltered, in an HDF5
file or a stored archive member) writes the `.npy` header and then copies those bytes
file to file, at copy speed; every other export decodes blocks of rows.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from embcli.atomic import check_output, write_new_file
from embcli.errors import BadArgument, MalformedFile
from embcli.formats.base import ModelFile, Table
from embcli.guarded import ByteRange, file_identity, open_regular
from embcli.model import computed_dtype, iter_blocks, refuse_stacked
from embcli.vectors import (
    export_format,
    metadata_path,
    write_metadata_tsv,
    write_npy,
    write_npy_header,
    write_npz,
    write_projector_tsv,
    write_word2vec_binary,
    write_word2vec_text,
)

COPYABLE_DTYPES = ("<f4", "<f2")
COPY_BLOCK_BYTES = 16 * 1024 * 1024
# copy_file_range and sendfile refuse some pairs of files (across file systems on older
# kernels, special file systems); the copy then falls back to the next way.
_FALLBACK_ERRNOS = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


def export_tables(
    model: ModelFile,
    tables: Sequence[Table],
    output: Path,
    *,
    force: bool = False,
    raw: bool = False,
    tokens: Sequence[str] | None = None,
) -> str:
    """Write `tables` to `output` in the format its extension names; returns that format.

    `.npz` takes every table given; the other formats take exactly one. `tokens`, one per
    row, replace row numbers in word2vec files; for `.tsv` they go to a projector metadata
    file beside `output` (see `embcli.vectors.metadata_path`).
    """
    fmt = export_format(output)
    for table in tables:
        refuse_stacked(table)
    if fmt != "npz" and len(tables) != 1:
        raise BadArgument(f"{output.name}: this format holds exactly one table")
    labels = metadata_path(output) if fmt == "tsv" and tokens is not None else None
    if labels is not None:
        check_output(output, force)
        check_output(labels, force)

    def blocks(table: Table):
        return lambda: iter_blocks(model, table, raw=raw)

    def write(temp: Path) -> None:
        if fmt == "npz":
            write_npz(temp, [(t.name, t.shape, computed_dtype(t, raw), blocks(t)) for t in tables])
            return
        table = tables[0]
        if fmt == "npy":
            with open(temp, "wb") as handle:
                write_table_npy(handle, model, table, raw)
        elif fmt == "word2vec-binary":
            with open(temp, "wb") as handle:
                write_word2vec_binary(handle, (table.rows, table.dim), tokens, blocks(table)())
        elif fmt == "tsv":
            with open(temp, "w", encoding="utf-8", newline="\n") as handle:
                write_projector_tsv(handle, blocks(table)())
        else:
            with open(temp, "w", encoding="utf-8", newline="\n") as handle:
                write_word2vec_text(handle, (table.rows, table.dim), tokens, blocks(table)())

    def write_labels(temp: Path) -> None:
        with open(temp, "w", encoding="utf-8", newline="\n") as handle:
            write_metadata_tsv(handle, tokens or [])

    also = [(labels, write_labels)] if labels is not None else []
    write_new_file(output, force, write, also=also)
    return fmt


def write_table_npy(handle, model: ModelFile, table: Table, raw: bool = False) -> bool:
    """Write a table as `.npy` to a binary file handle; returns whether its stored bytes
    were copied file to file (see `copyable_bytes`) rather than decoded a block at a time.
    A copy is made only while the stored bytes' path still names the file the model has
    open."""
    stored = copyable_bytes(model, table, raw)
    if stored is not None:
        with open_regular(stored.path) as source:
            if file_identity(source.fileno()) == stored.identity:
                write_npy_header(handle, table.shape, stored.dtype)
                handle.flush()
                copy_range(source.fileno(), handle.fileno(), stored.offset, stored.size)
                return True
    dtype = computed_dtype(table, raw)
    write_npy(handle, table.shape, dtype, iter_blocks(model, table, raw=raw))
    return False


def copyable_bytes(model: ModelFile, table: Table, raw: bool = False) -> ByteRange | None:
    """Where a table's stored bytes lie when they are exactly its `.npy` payload: the
    values the model computes with (not quantized, not bfloat16), in the dtype the export
    writes, little-endian, whole. None otherwise."""
    if table.quantized is not None or table.dtype not in ("float32", "float16"):
        return None
    dtype = computed_dtype(table, raw)
    stored = model.stored_bytes(table.weight)
    if stored is None or stored.dtype.str != dtype.str or dtype.str not in COPYABLE_DTYPES:
        return None
    if stored.size != table.rows * table.dim * dtype.itemsize:
        return None
    return stored


def copy_range(source: int, target: int, offset: int, size: int) -> None:
    """Append `size` bytes of the file `source` from `offset` to the file `target`, in the
    kernel where it can (copy_file_range, else sendfile), else a block at a time."""
    done = 0
    for step in (_copy_file_range, _sendfile, _block_copy):
        try:
            while done < size:
                count = step(source, target, offset + done, size - done)
                if count == 0:
                    raise MalformedFile(
                        f"the file ended {size - done} bytes short of a table's data"
                    )
                done += count
            return
        except OSError as exc:
            if exc.errno not in _FALLBACK_ERRNOS or step is _block_copy:
                raise


def _copy_file_range(source: int, target: int, offset: int, count: int) -> int:
    if not hasattr(os, "copy_file_range"):
        raise OSError(errno.ENOSYS, "copy_file_range is not available")
    return os.copy_file_range(source, target, count, offset)


def _sendfile(source: int, target: int, offset: int, count: int) -> int:
    return os.sendfile(target, source, offset, count)


def _block_copy(source: int, target: int, offset: int, count: int) -> int:
    block = os.pread(source, min(COPY_BLOCK_BYTES, count), offset)
    view = memoryview(block)
    while view:
        view = view[os.write(target, view) :]
    return len(block)

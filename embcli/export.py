"""Export tables to files, a bounded block at a time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from embcli.atomic import check_output, write_new_file
from embcli.formats.base import ModelFile, Table
from embcli.model import computed_dtype, iter_blocks
from embcli.vectors import (
    export_format,
    metadata_path,
    write_metadata_tsv,
    write_npy,
    write_npz,
    write_projector_tsv,
    write_word2vec_binary,
    write_word2vec_text,
)


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
    if fmt != "npz" and len(tables) != 1:
        raise ValueError("one table for this format")
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
                write_npy(handle, table.shape, computed_dtype(table, raw), blocks(table)())
        elif fmt == "word2vec-binary":
            with open(temp, "wb") as handle:
                write_word2vec_binary(handle, table.shape, tokens, blocks(table)())
        elif fmt == "tsv":
            with open(temp, "w", encoding="utf-8", newline="\n") as handle:
                write_projector_tsv(handle, blocks(table)())
        else:
            with open(temp, "w", encoding="utf-8", newline="\n") as handle:
                write_word2vec_text(handle, table.shape, tokens, blocks(table)())

    def write_labels(temp: Path) -> None:
        with open(temp, "w", encoding="utf-8", newline="\n") as handle:
            write_metadata_tsv(handle, tokens)

    write_new_file(output, force, write)
    if labels is not None:
        try:
            write_new_file(labels, force, write_labels)
        except BaseException:
            output.unlink(missing_ok=True)
            raise
    return fmt

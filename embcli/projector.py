"""A TensorBoard projector log folder, written without TensorFlow or a checkpoint.

The folder holds `projector_config.pbtxt`, which names one `embeddings { ... }` entry per
table, and beside it each table's vectors (`NAME.tsv`, one row a line) and, where its
tokens are known, its labels (`NAME_metadata.tsv`, one token a line). `tensorboard
--logdir FOLDER` then shows every table in its Projector tab. The folder is built whole in
a temporary folder beside it and renamed into place.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from embcli.atomic import temporary_folder
from embcli.durable import fsync_path
from embcli.errors import BadArgument, OutputExists
from embcli.formats.base import ModelFile, Table
from embcli.model import iter_blocks
from embcli.vectors import metadata_path, write_metadata_tsv, write_projector_tsv

CONFIG_FILENAME = "projector_config.pbtxt"
TENSOR_SUFFIX = ".tsv"
_UNSAFE_FILE_CHARACTERS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ProjectorEntry:
    """One table in a projector folder: its name and its files, relative to the folder."""

    tensor_name: str
    tensor_path: str
    metadata_path: str | None
    shape: tuple[int, ...]


def export_projector(
    model: ModelFile,
    tables: Sequence[Table],
    folder: Path,
    *,
    force: bool = False,
    raw: bool = False,
    tokens: Mapping[str, Sequence[str]] | None = None,
) -> list[ProjectorEntry]:
    """Write a TensorBoard projector log folder holding `tables`.

    Args:
        model: the open model the tables belong to.
        tables: the tables to show, each an entry of the projector's config.
        folder: the folder to write; it must not exist unless `force`, which replaces it.
        force: replace an existing `folder` (a file there is never replaced).
        raw: quantized tables' stored integers instead of the values the model uses.
        tokens: per table name, one token a row; those tables get a metadata file.

    Returns:
        The entries written, in the order of `tables`.
    """
    if not tables:
        raise BadArgument("a projector folder needs at least one table")
    folder = folder.absolute()
    if folder.exists() and (not force or not folder.is_dir() or folder.is_symlink()):
        kind = "folder" if folder.is_dir() else "file"
        raise OutputExists(f"{folder} exists", remedy="force" if kind == "folder" else None)
    if not folder.parent.is_dir():
        raise OutputExists(f"{folder.parent} is not a folder")
    tokens = tokens or {}
    entries = _entries(tables, tokens)
    with temporary_folder(folder.parent) as scratch:
        built = scratch / folder.name
        built.mkdir()
        for table, entry in zip(tables, entries, strict=True):
            with open(built / entry.tensor_path, "w", encoding="utf-8", newline="\n") as handle:
                write_projector_tsv(handle, iter_blocks(model, table, raw=raw))
            if entry.metadata_path is not None:
                labels = built / entry.metadata_path
                with open(labels, "w", encoding="utf-8", newline="\n") as handle:
                    write_metadata_tsv(handle, tokens[table.name])
        (built / CONFIG_FILENAME).write_text(projector_config(entries), encoding="utf-8")
        for path in built.iterdir():
            fsync_path(path)
        fsync_path(built)
        _move_into_place(built, folder, scratch)
    return entries


def projector_config(entries: Sequence[ProjectorEntry]) -> str:
    """`projector_config.pbtxt` text (protobuf text format) naming every entry."""
    lines = []
    for entry in entries:
        lines.append("embeddings {")
        lines.append(f"  tensor_name: {_quoted(entry.tensor_name)}")
        lines.append(f"  tensor_path: {_quoted(entry.tensor_path)}")
        if entry.metadata_path is not None:
            lines.append(f"  metadata_path: {_quoted(entry.metadata_path)}")
        lines.extend(f"  tensor_shape: {size}" for size in entry.shape)
        lines.append("}")
    return "\n".join(lines) + "\n"


def _entries(tables: Sequence[Table], tokens: Mapping[str, Sequence[str]]) -> list[ProjectorEntry]:
    taken: set[str] = {CONFIG_FILENAME.lower()}
    entries = []
    for table in tables:
        known = tokens.get(table.name)
        if known is not None and len(known) != table.rows:
            raise BadArgument(f"{table.name}: {len(known)} tokens for {table.rows} rows")
        stem = _UNSAFE_FILE_CHARACTERS.sub("_", table.name).strip("._") or "table"
        candidate, count = stem, 1
        while {f"{candidate}{TENSOR_SUFFIX}".lower(), _labels_name(candidate).lower()} & taken:
            count += 1
            candidate = f"{stem}_{count}"
        tensor, labels = f"{candidate}{TENSOR_SUFFIX}", _labels_name(candidate)
        taken |= {tensor.lower(), labels.lower()}
        entries.append(
            ProjectorEntry(table.name, tensor, labels if known is not None else None, table.shape)
        )
    return entries


def _labels_name(stem: str) -> str:
    return metadata_path(Path(stem + TENSOR_SUFFIX)).name


def _quoted(text: str) -> str:
    """A protobuf text-format string literal: UTF-8, escaped as C escapes."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in "\"'\\":
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _move_into_place(built: Path, target: Path, scratch: Path) -> None:
    """Rename the built folder to `target`, moving an old one aside until it is done."""
    if target.exists():
        retired = scratch / ".previous"
        os.replace(target, retired)
        try:
            os.replace(built, target)
        except BaseException:
            os.replace(retired, target)
            raise
    else:
        os.replace(built, target)
    fsync_path(target.parent)

"""The interface every format module answers, and the HDF5 plumbing most of them share.

A format module opens one artifact and answers three questions: which tables it holds
(`tables`), what a weight's rows are (`read`), and how to write a copy in which some rows
are replaced (`plan_write`, executed by `embcli.atomic`).
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from embcli.dtypes import bfloat16
from embcli.errors import MalformedFile, UnsupportedEdit
from embcli.guarded import H5_ERRORS, ByteRange, DatasetInfo, open_h5

if TYPE_CHECKING:
    from embcli.formats.registry import ArtifactKind

EMBEDDING_SUFFIX = "Embedding"
EMBEDDING_VARIABLE = "embeddings"


@dataclass(frozen=True)
class Table:
    """One 2-D weight, usually an embedding table.

    Attributes:
        name: the name shown and accepted by `--layer`: the layer's own name, or its
            qualified `outer/inner` path where two tables share a name.
        qualified: the names of the enclosing layers and the layer, joined by `/`.
        class_name: the layer's class, when the file tells it.
        shape: `(rows, dim)` as stored.
        dtype: the stored dtype: float32, float16, bfloat16, int8, ...
        weight: the weight's path or key inside the artifact.
        quantized: "int8" or "int4" for quantized Keras Embedding tables.
        scale: for int8 tables, the weight holding the per-row `embeddings_scale`.
        is_embedding: False for 2-D weights listed only by `--all`.
        aliases: other names `--layer` accepts for this table.
        owner: the layer's path or group, which assets and optimizer slots refer to.
        codec: for quantized tables, how the layer stores its rows (an
            `embcli.quantization.LayerCodecs`); `shape` is then the table's shape as
            the model sees it, not the stored one.
        stacked: for a variable that holds several tables padded, sharded and
            interleaved (a keras-rs SparseCore stack), what it is; its rows are not
            one token each, so it is listed but never read or written row by row.
    """

    name: str
    qualified: str
    class_name: str | None
    shape: tuple[int, ...]
    dtype: str
    weight: str
    quantized: str | None = None
    scale: str | None = None
    is_embedding: bool = True
    aliases: tuple[str, ...] = ()
    owner: str = ""
    codec: Any = field(default=None, compare=False, repr=False)
    stacked: Stacked | None = None

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def dim(self) -> int:
        return self.shape[1]

    def renamed(self, name: str) -> Table:
        return replace(self, name=name)


@dataclass(frozen=True)
class Stacked:
    """A variable that holds several tables at once, padded, sharded across devices and
    interleaved row by row, such as a keras-rs `DistributedEmbedding`'s SparseCore stack.

    Attributes:
        layer: the layer that owns it.
        holds: the tables it holds between them, as the config names them (the stack's
            own tables where known, else every table the layer places there).
        role: "table" for the stacked table, "slot" for an optimizer slot of the same
            shape, "unknown" where the file does not tell which.
        variable: the variable's name in the framework (`var:{stack}:table`), if known.
        layout: how the rows are laid out, in a few words.
    """

    layer: str
    holds: tuple[str, ...]
    role: str
    variable: str | None
    layout: str

    def record(self) -> dict:
        return {
            "layer": self.layer,
            "holds": list(self.holds),
            "role": self.role,
            "variable": self.variable,
        }


@dataclass
class FilePlan:
    """One file of a write: copy `source` (or write `content`) to `target`, then patch it.

    Attributes:
        target: the file's final path.
        source: the file to copy, or None when `content` is given.
        content: the whole new file, for small files such as an index.
        patches: `(offset, new_bytes)` pairs, applied to the copy.
        zip_member: when the patches fall inside a stored zip member, where its
            checksums live, so that they can be updated from the changed bytes alone.
        checks: `(weight, rows, expected)` to read back from the written file alone.
        rebuild: writes the whole file itself, for the rare copy that cannot be patched.
    """

    target: Path
    source: Path | None = None
    content: bytes | None = None
    patches: list[tuple[int, bytes]] = field(default_factory=list)
    zip_member: ZipMemberChecksums | None = None
    checks: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)
    rebuild: Callable[[Path], None] | None = None


@dataclass(frozen=True)
class ZipMemberChecksums:
    """Where a stored member's CRC-32 is recorded, for updating it after a patch."""

    data_offset: int
    size: int
    crc: int
    crc_offsets: tuple[int, ...]


@dataclass
class WritePlan:
    """Everything a write produces. `files` are renamed into place in order, last one last.

    `folder` is set when the output is a folder written whole (a new unzipped model).
    `remove` lists files the new output makes obsolete, deleted after the renames.
    """

    output: Path
    files: list[FilePlan]
    folder: Path | None = None
    remove: list[Path] = field(default_factory=list)


@dataclass
class NewWeight:
    """A weight written whole, possibly with a new shape.

    `blocks()` yields consecutive blocks of rows (along the first axis), in order, which
    together cover `shape[0]` rows; values are already in `dtype`, the stored dtype.
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    blocks: Callable[[], Iterator[np.ndarray]]


@dataclass
class Edit:
    """Everything one write changes; whatever it does not name is kept bit for bit.

    Attributes:
        rows: `weight -> (row indices, stored values)`, patched where the rows lie.
        weights: `weight -> NewWeight`, datasets replaced whole (a resize); a weight
            not yet in the file is added.
        config: the model's new config (parsed JSON), replacing the old one.
        assets: `asset path -> new bytes` (relative to the assets folder).
        files: `file name -> new bytes` for small files beside the weights (for
            example a preset's `tokenizer.json` or `task.json`).
        checks: `(weight, sorted rows, expected stored values)` that the written copy
            must read back before it replaces anything.
    """

    rows: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    weights: dict[str, NewWeight] = field(default_factory=dict)
    config: dict | None = None
    assets: dict[str, bytes] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    checks: list[tuple[str, np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def only_rows(self) -> bool:
        return not (self.weights or self.config is not None or self.assets or self.files)


class ModelFile(ABC):
    """An open model artifact. Use as a context manager, or call `close`."""

    format_name: str = "?"
    artifact_kind: ArtifactKind | None = None

    def __init__(self, path: Path) -> None:
        self.path = path

    @abstractmethod
    def tables(self, all_weights: bool = False) -> list[Table]:
        """The embedding tables, or with `all_weights` every 2-D weight."""

    @abstractmethod
    def weight_info(self, weight: str) -> tuple[tuple[int, ...], np.dtype]:
        """A weight's stored shape and numpy dtype (bfloat16 as ml_dtypes.bfloat16)."""

    @abstractmethod
    def read(self, weight: str, rows: slice | np.ndarray) -> np.ndarray:
        """Stored values of some rows of a weight: a slice, or sorted unique indices."""

    def optimizer_slots(self, table: Table) -> list[str]:
        """Weights of the saved optimizer state that hold per-row state for `table`."""
        return []

    def output_biases(self, table: Table) -> list[str]:
        """Weights that hold one bias per row of `table` (a task head over the
        vocabulary) and must follow its rows."""
        return []

    def mirrored_weights(self, table: Table) -> list[str]:
        """Stored copies of `table`'s weight that the model never reads but whose shape
        must follow its rows for the model to load (none in most formats)."""
        return []

    def weights_of(self, table: Table) -> list[str]:
        """Every weight of the layer that owns `table` (its bias, say), in order."""
        return [table.weight]

    reshapes_weights = False
    "Whether `plan_edit` can replace weights with others of another shape."

    @abstractmethod
    def plan_write(
        self, output: Path, patches: dict[str, tuple[np.ndarray, np.ndarray]], in_place: bool
    ) -> WritePlan:
        """How to write a copy at `output` in which `patches[weight] = (rows, values)`.

        Values are already in the weight's stored dtype. With `in_place`, `output` is
        this artifact's own path and only the files that change need rewriting.
        """

    def plan_edit(self, output: Path, edit: Edit, in_place: bool) -> WritePlan:
        """How to write a copy at `output` that makes every change `edit` names.

        Formats that can only patch rows answer row-only edits and refuse the rest.
        """
        if edit.only_rows:
            return self.plan_write(output, edit.rows, in_place)
        raise UnsupportedEdit(f"{self.format_name} files cannot be restructured by embcli")

    def stored_bytes(self, weight: str) -> ByteRange | None:
        """Where a weight's stored bytes lie, whole and in row order, in a file this
        artifact reads in place, so that they can be copied without being decoded; None
        where they do not lie so (compressed, chunked, or in a format that hides them)."""
        return None

    def config(self) -> dict | None:
        """The model's config as parsed JSON data, when the artifact has one."""
        return None

    def layer_config(self, table: Table, config: dict | None = None) -> dict | None:
        """The config entry (the dict inside `config`, by default the model's own) of the
        layer that owns `table`, where the config lists its layers."""
        return None

    def asset(self, name: str) -> bytes | None:
        """An asset file's bytes, e.g. a lookup layer's vocabulary, when present."""
        return None

    def close(self) -> None:
        """Release open files."""

    def __enter__(self) -> ModelFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def numpy_dtype(info: DatasetInfo) -> np.dtype:
    return bfloat16() if info.is_bfloat16 else np.dtype(info.dtype)


def read_dataset(ds: h5py.Dataset, info: DatasetInfo, rows: slice | np.ndarray) -> np.ndarray:
    """Read rows of an HDF5 dataset; index arrays must be sorted and unique."""
    if isinstance(rows, slice):
        data = ds[rows]
    else:
        data = np.empty((len(rows),) + info.shape[1:], dtype=ds.dtype)
        for start, stop, at in contiguous_runs(rows):
            data[at : at + stop - start] = ds[start:stop]
    if info.is_bfloat16:
        data = data.view(bfloat16())
    return data


# Runs of rows this close (in bytes) are read as one span, the gap read and dropped.
SPAN_GAP_BYTES = 64 * 1024


def read_row_spans(
    read_span: Callable[[int, int], bytes],
    info: DatasetInfo,
    dtype: np.dtype,
    rows: np.ndarray,
) -> np.ndarray:
    """Rows of a contiguously stored dataset, read as exact byte spans of its file.

    `read_span(position, length)` reads bytes of the HDF5 file itself; each run of rows
    (runs nearer than `SPAN_GAP_BYTES` joined) is one read of just its bytes, where
    HDF5 would read a 64 KiB sieve buffer around each. Index arrays must be sorted and
    unique.
    """
    assert info.offset is not None
    row_bytes = int(np.prod(info.shape[1:], dtype=np.int64)) * dtype.itemsize
    data = np.empty((len(rows),) + info.shape[1:], dtype=dtype)
    flat = data.reshape(len(rows), -1).view(np.uint8) if len(rows) else data
    runs = list(contiguous_runs(rows))
    while runs:
        first_start, stop, at = runs.pop(0)
        joined = [(first_start, stop, at)]
        while runs and (runs[0][0] - stop) * row_bytes <= SPAN_GAP_BYTES:
            joined.append(runs.pop(0))
            stop = joined[-1][1]
        length = (stop - first_start) * row_bytes
        span = read_span(info.offset + first_start * row_bytes, length)
        if len(span) != length:
            raise MalformedFile(f"{info.path}: its data ends before its declared shape")
        for start, run_stop, run_at in joined:
            begin = (start - first_start) * row_bytes
            end = begin + (run_stop - start) * row_bytes
            rows_here = run_stop - start
            flat[run_at : run_at + rows_here] = np.frombuffer(
                span, dtype=np.uint8, count=end - begin, offset=begin
            ).reshape(rows_here, -1)
    if info.is_bfloat16:
        data = data.view(bfloat16())
    return data


def contiguous_runs(rows: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """`(start, stop, position_in_rows)` for each run of consecutive sorted indices."""
    if len(rows) == 0:
        return
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(rows)]])
    for a, b in zip(starts.tolist(), stops.tolist(), strict=True):
        yield int(rows[a]), int(rows[b - 1]) + 1, a


def row_patches(
    info: DatasetInfo, base_offset: int, rows: np.ndarray, values: np.ndarray
) -> list[tuple[int, bytes]]:
    """Byte patches that write `values` into `rows` of a contiguous dataset."""
    if not info.contiguous or info.offset is None:
        raise UnsupportedEdit(f"{info.path}: only contiguously stored HDF5 datasets can be edited")
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    values = np.ascontiguousarray(values[order])
    row_bytes = int(np.prod(info.shape[1:], dtype=np.int64)) * values.dtype.itemsize
    raw = values.view(np.uint8).reshape(len(rows), -1) if len(rows) else values
    patches = []
    for start, stop, at in contiguous_runs(rows):
        patches.append(
            (base_offset + info.offset + start * row_bytes, raw[at : at + stop - start].tobytes())
        )
    return patches


def slots_by_shape(table: Table, slots: list[str], others: list[str]) -> list[str]:
    """Optimizer slots matched to a table by shape alone: only while no other weight of
    the model shares the table's shape, since the file does not say whose slots they are."""
    if slots and others:
        raise UnsupportedEdit(
            f"cannot tell which optimizer slots belong to {table.name}: "
            f"{len(others)} other weight(s) share its shape {table.shape}"
        )
    return slots


class H5Source:
    """One checked, read-only HDF5 file, opened from a path or a window into an archive."""

    def __init__(
        self,
        path: Path,
        source: Any = None,
        size: int | None = None,
        base_offset: int = 0,
    ) -> None:
        self.path = path
        self.base_offset = base_offset
        size = os.path.getsize(path) if size is None else size
        self.handle, self.index = open_h5(source if source is not None else str(path), size)
        # A window (an archive member, a remote object) reads exact spans of the file.
        self._read_span: Callable[[int, int], bytes] | None = getattr(source, "read_span", None)

    def info(self, dataset: str) -> DatasetInfo:
        try:
            return self.index.datasets[dataset.strip("/")]
        except KeyError:
            raise MalformedFile(f"no dataset {dataset!r} in {self.path}") from None

    def read(self, dataset: str, rows: slice | np.ndarray) -> np.ndarray:
        info = self.info(dataset)
        try:
            ds = self.handle[info.path]
            if (
                self._read_span is not None
                and isinstance(rows, np.ndarray)
                and info.contiguous
                and info.offset is not None
            ):
                return read_row_spans(self._read_span, info, ds.dtype, rows)
            return read_dataset(ds, info, rows)
        except H5_ERRORS as exc:
            raise MalformedFile(f"{info.path}: cannot read ({exc})") from None

    def patches(
        self, dataset: str, rows: np.ndarray, values: np.ndarray
    ) -> list[tuple[int, bytes]]:
        info = self.info(dataset)
        file_dtype = self.handle[info.path].dtype
        if file_dtype.kind != "V" and file_dtype.byteorder == ">":
            values = values.astype(file_dtype)
        return row_patches(info, self.base_offset, rows, values)

    def close(self) -> None:
        self.handle.close()


def vars_index(name: str) -> int:
    """Sort key for a Keras `vars/N` dataset."""
    return int(name) if name.isdigit() else 1 << 30


def snake_to_class(group: str) -> str:
    """`reversible_embedding_2` -> `ReversibleEmbedding`: the class a Keras container
    group name was derived from."""
    base = re.sub(r"_\d+$", "", group)
    return "".join(part[:1].upper() + part[1:] for part in base.split("_"))

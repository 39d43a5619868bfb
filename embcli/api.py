"""The public Python API: `embcli.open`, `embcli.assign`, `embcli.recover`.

Everything the command line does is here, with plain arguments (paths as `str` or
`Path`, rows as ints, lists or slices, values as arrays) and errors that are all
`embcli.EmbcliError`s.

Example:
    >>> import embcli
    >>> with embcli.open("fixtures/k3_functional.keras") as model:
    ...     sorted(model.tables)
    ...     model.read("words", [0, -1]).shape
    ['positions', 'words']
    (2, 8)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embcli.errors import BadArgument, BadRowSpec, BadVectors, ModelClosed
from embcli.formats.base import ModelFile, Table
from embcli.model import (
    OutputBias,
    computed_dtype,
    find_table,
    iter_blocks,
    list_tables,
    open_model,
    output_biases,
    read_rows,
    select_table,
)
from embcli.remote import is_url, shown_url

if TYPE_CHECKING:
    from embcli.pretrained import Coverage
    from embcli.vocab import Vocabulary

PathLike = str | os.PathLike[str]
Rows = int | slice | str | Sequence[int] | np.ndarray
Notify = Callable[[str], None]


def resolve_rows(rows: Rows, nrows: int) -> tuple[np.ndarray, bool]:
    """Row indices for `rows`, and whether a single row (an int) was asked for.

    `rows` is an int, a sequence or array of ints (negatives count from the end), a
    slice, or a row specification such as `"0,5,10:20"`.
    """
    from embcli.rowspec import parse_rows

    if isinstance(rows, bool):
        raise BadArgument(f"rows must be ints or a slice, not {rows!r}")
    if isinstance(rows, (int, np.integer)):
        return _in_range(np.array([int(rows)], dtype=np.int64), nrows), True
    if isinstance(rows, slice):
        try:
            return np.arange(nrows, dtype=np.int64)[rows], False
        except (TypeError, ValueError) as exc:
            raise BadArgument(f"not a usable slice: {rows!r} ({exc})") from None
    if isinstance(rows, str):
        return parse_rows([rows], nrows), False
    try:
        array = np.asarray(rows)
    except (TypeError, ValueError):
        raise BadArgument(f"rows must be ints or a slice, not {type(rows).__name__}") from None
    if array.size == 0:
        return np.zeros(0, dtype=np.int64), False
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise BadArgument("rows must be an int, a slice, or a flat sequence of ints")
    return _in_range(array.astype(np.int64), nrows), False


def _in_range(indices: np.ndarray, nrows: int) -> np.ndarray:
    bad = (indices < -nrows) | (indices >= nrows)
    if bad.any():
        raise BadRowSpec(f"row {int(indices[bad][0])} is out of range for a table of {nrows} rows")
    return np.where(indices < 0, indices + nrows, indices)


class Tables(Mapping[str, Table]):
    """A model's tables by name. Iterating gives each table's unique name; looking one
    up also takes every other name `--layer` accepts (an `outer/inner` path, the
    weight's path in the file)."""

    def __init__(self, model: Model, tables: list[Table]) -> None:
        self._model = model
        self._tables = tables

    def __getitem__(self, name: str) -> Table:
        return self._model.table(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self._model.table(name)
        except Exception:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter([t.name for t in self._tables])

    def __len__(self) -> int:
        return len(self._tables)

    def __repr__(self) -> str:
        return f"Tables({', '.join(t.name for t in self._tables)})"


class Model:
    """An open model artifact. Open it with `embcli.open(path)`; close it, or use it as a
    context manager.

    Attributes:
        path: the path it was opened from (a `Path`), or the URL (the `str` given).
        format: its kind, as `embcli layers` calls it ("keras archive", "legacy h5", ...).
    """

    def __init__(self, artifact: ModelFile, path: Path | str) -> None:
        self._artifact: ModelFile | None = artifact
        self.path = path
        self._shown = shown_url(path) if isinstance(path, str) else str(path)
        self.format = artifact.artifact_kind.name if artifact.artifact_kind else "?"
        self._all: list[Table] | None = None

    def __repr__(self) -> str:
        state = "closed" if self._artifact is None else self.format
        return f"<embcli.Model {self._shown!r} ({state})>"

    @property
    def artifact(self) -> ModelFile:
        """The format module's open artifact, for the library's own functions."""
        if self._artifact is None:
            raise ModelClosed(f"{self._shown} was closed")
        return self._artifact

    @property
    def closed(self) -> bool:
        return self._artifact is None

    def _every_table(self) -> list[Table]:
        if self._all is None:
            self._all = list_tables(self.artifact, all_weights=True)
        return self._all

    @property
    def tables(self) -> Tables:
        """The embedding tables: every layer whose class name ends in `Embedding`."""
        return Tables(self, [t for t in self._every_table() if t.is_embedding])

    @property
    def weights(self) -> Tables:
        """Every 2-D weight, embedding or not."""
        return Tables(self, self._every_table())

    def table(self, name: str | None = None) -> Table:
        """The table `name` names; with no name, the model's only embedding table."""
        if name is not None and not isinstance(name, str):
            raise BadArgument(f"a table name is a str, not {type(name).__name__}")
        return select_table(self._every_table(), name)

    def read(self, name: str | None, rows: Rows, *, raw: bool = False) -> np.ndarray:
        """Rows of a table, as the model computes with them.

        Args:
            name: the table (see `table`).
            rows: an int (gives one vector), a list or array of ints (negatives count
                from the end; repeats allowed), a slice, or a spec such as "0,5,10:20".
            raw: for quantized tables, the stored integers instead of the values.

        Returns:
            float32 or float16 values (bfloat16 widened to float32, quantized tables
            dequantized), one row per index in the order given.
        """
        table = self.table(name)
        indices, single = resolve_rows(rows, table.rows)
        values = read_rows(self.artifact, table, indices, raw=raw)
        return values[0] if single else values

    def iter_blocks(
        self, name: str | None = None, *, raw: bool = False, block_rows: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """`(first_row, values)` over a whole table, a bounded block at a time."""
        table = self.table(name)
        if block_rows is not None and (isinstance(block_rows, bool) or block_rows < 1):
            raise BadArgument(f"block_rows must be a positive int, not {block_rows!r}")
        block_bytes = block_rows * table.dim * 4 if block_rows else None
        artifact = self.artifact
        if block_bytes is None:
            yield from iter_blocks(artifact, table, raw=raw)
        else:
            yield from iter_blocks(artifact, table, raw=raw, block_bytes=block_bytes)

    def output_biases(self, name: str | None = None) -> list[OutputBias]:
        """The biases with one entry per row of a table, which `resize` and `remap` move
        with its rows: a keras-hub `MaskedLMHead`'s output bias over the vocabulary, in a
        task archive or a preset's `task.weights.h5`. Usually none, or one."""
        return output_biases(self.artifact, self.table(name))

    def dtype(self, name: str | None = None, *, raw: bool = False) -> np.dtype:
        """The dtype `read` returns for a table."""
        return computed_dtype(self.table(name), raw)

    def vocabulary(
        self, name: str | None = None, *, path: PathLike | None = None, column: str | None = None
    ) -> list[str] | None:
        """The table's tokens in row order, or None when no vocabulary is known.

        Args:
            name: the table.
            path: a vocabulary file to use instead of the model's own (one token a
                line, or with `column` a TSV with a header row).
        """
        found = self.table_vocabulary(name, path=path, column=column)
        return None if found is None else list(found.tokens)

    def table_vocabulary(
        self, name: str | None = None, *, path: PathLike | None = None, column: str | None = None
    ) -> Vocabulary | None:
        """The table's `Vocabulary` (tokens, where they came from, special rows)."""
        from embcli.vocab import table_vocabulary

        return table_vocabulary(
            self.artifact, self.table(name), _optional_path(path, "path"), column
        )

    def close(self) -> None:
        if self._artifact is not None:
            self._artifact.close()
            self._artifact = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open(path: PathLike) -> Model:  # noqa: A001 - the name users expect: embcli.open
    """Open any model artifact embcli reads, read-only.

    Args:
        path: a `.keras` archive, model folder, `.weights.h5`, sharded `.weights.json`,
            legacy `.h5`, keras-hub preset, TF SavedModel folder or checkpoint prefix;
            or the URL of one of the Keras kinds (`s3://`, `gs://`, `hf://`,
            `http(s)://`), read by byte ranges.

    Example:
        >>> with embcli.open("model.keras") as model:
        ...     vectors = model.read("words", slice(0, 10))
        >>> with embcli.open("s3://bucket/presets/bert_base_en/") as model:
        ...     tokens = model.vocabulary("token_embedding")
    """
    path = _as_model(path, "path")
    return Model(open_model(path), path)


def _optional_path(value: Any, what: str) -> Path | None:
    return None if value is None else _as_path(value, what)


def _as_model(value: Any, what: str) -> Path | str:
    """A model's local path, or the URL a string names, kept as the string it is."""
    if isinstance(value, str) and is_url(value):
        return value
    return _as_path(value, what)


def _as_path(value: Any, what: str) -> Path:
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    raise BadArgument(f"{what} must be a str or a path, not {type(value).__name__}")


@dataclass
class AssignResult:
    """What `assign` wrote.

    Attributes:
        table: the table edited, as it was before the edit.
        rows: how many rows were replaced.
        output: the file or folder written.
        optimizer_slots: the optimizer weights whose rows were zeroed.
        coverage: with `by_token`, how much of the vocabulary the vector file covered.
    """

    table: Table
    rows: int
    output: Path
    optimizer_slots: list[str] = field(default_factory=list)
    coverage: Coverage | None = None


def assign(
    path: PathLike,
    name: str | None = None,
    *,
    rows: Rows | None = None,
    values: Any = None,
    fill: str | None = None,
    key: str | None = None,
    by_token: PathLike | None = None,
    vector_format: str | None = None,
    lowercase: bool = False,
    vocab: PathLike | None = None,
    vocab_column: str | None = None,
    output: PathLike | None = None,
    in_place: bool = False,
    force: bool = False,
    allow_lossy: bool = False,
    allow_nonfinite: bool = False,
    reset_optimizer_rows: bool = False,
    notify: Notify | None = None,
    progress: Callable[[int], None] | None = None,
) -> AssignResult:
    """Write a copy of a model in which some rows of a table hold new vectors; every
    other byte that the edit does not own stays as it was.

    Args:
        path: the model.
        name: the table (may be left out when the model has one).
        rows: the rows to replace (as for `Model.read`); None means every row.
        values: the new vectors, one per row: an array, or a path to a `.npy`, `.npz`
            (see `key`) or `.csv`/`.tsv`/`.txt` file.
        fill: "zeros" instead of `values`.
        by_token: a GloVe/word2vec/fastText/TSV file of token-keyed vectors; each row
            whose token appears in it gets that vector.
        vector_format, lowercase, vocab, vocab_column: how `by_token` is read and
            matched against the table's vocabulary (or the vocabulary file `vocab`).
        output: where to write the copy; or `in_place=True` to replace the model.
        force: replace `output` if it exists.
        allow_lossy, allow_nonfinite: write values that overflow the table's dtype, or
            NaN and Inf.
        reset_optimizer_rows: also zero these rows in the saved optimizer's slots.
        notify: called with each warning or report line (coverage) as text.
        progress: called with bytes of `by_token` read, as it is read.
    """
    from embcli.edit import assign as assign_rows
    from embcli.rowspec import refuse_repeats

    path = _as_model(path, "path")
    if (output is None) == (not in_place):
        raise BadArgument("give exactly one of output and in_place=True")
    target = _as_path(path, "path") if in_place else _as_path(output, "output")
    given = sum(x is not None for x in (values, fill, by_token))
    if given != 1:
        raise BadArgument("give exactly one of values, fill and by_token")
    if by_token is not None and rows is not None:
        raise BadArgument("by_token chooses the rows itself; leave out rows")
    if fill is not None and fill != "zeros":
        raise BadArgument(f"fill must be 'zeros', not {fill!r}")
    coverage = None
    with open_model(path, recover_edits=in_place) as artifact:
        table = find_table(artifact, name)
        if by_token is not None:
            indices, new_values, coverage = _token_vectors(
                artifact, table, _as_path(by_token, "by_token"), vector_format, lowercase,
                vocab, vocab_column, notify, progress, target if not in_place else None, force,
            )  # fmt: skip
        else:
            indices = (
                refuse_repeats(resolve_rows(rows, table.rows)[0])
                if rows is not None
                else np.arange(table.rows, dtype=np.int64)
            )
            new_values = (
                np.zeros((len(indices), table.dim), dtype=np.float32)
                if fill is not None
                else _vectors(values, key, table, len(indices), whole=rows is None)
            )
        result = assign_rows(
            artifact, table, indices, new_values, target, in_place=in_place, force=force,
            allow_lossy=allow_lossy, allow_nonfinite=allow_nonfinite,
            reset_optimizer_rows=reset_optimizer_rows,
        )  # fmt: skip
    return AssignResult(table, result.rows, target, result.optimizer_slots, coverage)


def _vectors(values: Any, key: str | None, table: Table, count: int, whole: bool) -> np.ndarray:
    from embcli.vectors import load_vectors

    if isinstance(values, (str, os.PathLike)):
        source = Path(values)
        array = load_vectors(source, key, dim=table.dim)
        what = source.name
    else:
        try:
            array = np.asarray(values)
        except (TypeError, ValueError) as exc:
            raise BadVectors(f"values cannot be read as an array ({exc})") from None
        what = "the values"
        if array.ndim == 1 and count == 1:
            array = array[None, :]
    if whole and array.ndim == 2 and array.shape[0] != table.rows:
        raise BadVectors(
            f"{what} holds {array.shape[0]} vectors but {table.name} has {table.rows} rows",
            remedy="rows",
        )
    return array


def _token_vectors(
    artifact: ModelFile,
    table: Table,
    source: Path,
    vector_format: str | None,
    lowercase: bool,
    vocab: PathLike | None,
    vocab_column: str | None,
    notify: Notify | None,
    progress: Callable[[int], None] | None,
    output: Path | None,
    force: bool,
) -> tuple[np.ndarray, np.ndarray, Coverage]:
    """The rows whose token has a vector in `source`, those vectors, and the coverage."""
    from embcli.atomic import check_output
    from embcli.edit import output_suffix_problem
    from embcli.errors import UnsupportedEdit
    from embcli.pretrained import vocabulary_vectors
    from embcli.vocab import require_vocabulary

    vocabulary = require_vocabulary(artifact, table, _optional_path(vocab, "vocab"), vocab_column)
    if output is not None:
        check_output(output, force)
        problem = output_suffix_problem(artifact, output)
        if problem:
            raise UnsupportedEdit(problem)
    say = notify or (lambda line: None)
    problem = vocabulary.size_problem(table)
    if problem:
        say(f"warning: {problem}")
    indices, values, coverage = vocabulary_vectors(
        vocabulary, table.rows, source, fmt=vector_format, dim=table.dim,
        lowercase=lowercase, progress=progress,
    )  # fmt: skip
    for line in coverage.lines():
        say(line)
    if not len(indices):
        raise BadVectors(f"no token of the vocabulary of {table.name} appears in {source.name}")
    return indices, values, coverage


def recover(path: PathLike) -> list[str]:
    """Roll back an in-place edit of `path` that was killed half done; returns the names
    of the files restored (none when there was nothing to recover)."""
    from embcli.journal import recover_model

    return recover_model(_as_path(path, "path"))

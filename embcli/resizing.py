"""`embcli.resize`: give a table a new number of rows and keep the whole model in step.

Old rows stay bit for bit. Whatever has the table's row count along an axis changes with
it in the same write: an int8 table's per-row scales, an untied output table
(`reverse_embeddings`, `(dim, rows)`), an output head named by the caller (its kernel's
columns and its bias), every optimizer slot of those weights (new rows zero), the layer's
size in the config (`input_dim`, a keras-hub backbone's `vocabulary_size`), and the
vocabulary wherever the model keeps it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from embcli import atomic
from embcli.api import Notify, PathLike, _as_path, _vectors
from embcli.edit import cast_values, output_suffix_problem, quantize_rows, verify_file
from embcli.errors import BadArgument, BadVectors, UnsupportedEdit
from embcli.formats.base import Edit, FilePlan, ModelFile, NewWeight, Table
from embcli.init import Init, new_rows, parse_init, statistics
from embcli.model import BLOCK_BYTES, find_table, iter_blocks, list_tables, open_model
from embcli.resize_config import size_changes
from embcli.vocab import Vocabulary, require_vocabulary, table_vocabulary
from embcli.vocab_edit import change_vocabulary, vocabulary_file_beside

REVERSE_EMBEDDINGS = "reverse_embeddings"
REVERSIBLE_EMBEDDING = "ReversibleEmbedding"


@dataclass
class ResizeResult:
    """What `resize` wrote; `record()` is the `--json` report."""

    layer: str
    old_rows: int
    new_rows: int
    added_tokens: list[str]
    skipped_tokens: list[str]
    dropped_tokens: int
    init: str
    resized: list[str]
    config: list[dict]
    output: Path
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict:
        return {
            "layer": self.layer,
            "old_rows": self.old_rows,
            "new_rows": self.new_rows,
            "added_tokens": self.added_tokens,
            "skipped_tokens": self.skipped_tokens,
            "dropped_tokens": self.dropped_tokens,
            "init": self.init,
            "resized": self.resized,
            "config": self.config,
            "output": str(self.output),
        }


@dataclass
class _Follower:
    """A weight whose axis `axis` has the table's rows: how to stream its new version."""

    weight: str
    shape: tuple[int, ...]
    axis: int
    dtype: np.dtype
    fill: Callable[[int], np.ndarray] | None = None  # new entries, in the stored dtype
    trained: Table | None = None  # the weight as a table, when an optimizer trains it


def resize(
    path: PathLike,
    name: str | None = None,
    *,
    rows: int | None = None,
    add: int | None = None,
    add_tokens: list[str] | None = None,
    pad_to_multiple: int | None = None,
    init: str = "mean",
    seed: int | None = None,
    values: Any = None,
    key: str | None = None,
    by_token: PathLike | None = None,
    vector_format: str | None = None,
    vocab: PathLike | None = None,
    vocab_column: str | None = None,
    head: str | None = None,
    output: PathLike | None = None,
    in_place: bool = False,
    force: bool = False,
    allow_lossy: bool = False,
    notify: Notify | None = None,
) -> ResizeResult:
    """Write a copy of a model whose table has a new number of rows.

    Args:
        path: the model.
        name: the table (may be left out when the model has one).
        rows: the new row count; or `add` rows; or `add_tokens` (one row each, appended
            to the table's vocabulary; tokens it has already are skipped).
        pad_to_multiple: round the row count up to a multiple of this.
        init: how new rows are filled: "mean", "mean-cov", "zeros" or "normal:STD";
            `seed` makes random draws repeatable.
        values: the new rows' vectors instead (an array or a vector file, see `key`).
        by_token: a GloVe/word2vec/fastText/TSV file; added tokens found in it get
            their vectors there, the rest by `init`.
        vocab, vocab_column: a vocabulary file for the table instead of the model's own;
            the new vocabulary is written beside the output.
        head: a Dense layer over the vocabulary (kernel `(in, rows)` and bias) that
            grows with the table.
        output: where to write the copy; or `in_place=True` to replace the model.
        force: replace `output` if it exists.
        notify: called with each note or report line as text.
    """
    path = _as_path(path, "path")
    if (output is None) == (not in_place):
        raise BadArgument("give exactly one of output and in_place=True")
    target = path if in_place else _as_path(output, "output")
    if sum(x is not None for x in (rows, add, add_tokens)) != 1:
        raise BadArgument("give exactly one of rows, add and add_tokens")
    for label, number in (("rows", rows), ("add", add), ("pad_to_multiple", pad_to_multiple)):
        if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
            raise BadArgument(f"{label} must be an int, not {number!r}")
        if number is not None and number < 1:
            raise BadArgument(f"{label} must be at least 1, not {number}")
    method = parse_init(init)
    say = notify or (lambda line: None)
    with open_model(path, recover_edits=in_place) as artifact:
        if not artifact.reshapes_weights:
            raise UnsupportedEdit(
                f"{artifact.format_name}: its shapes are fixed by the file "
                "(a SavedModel's graph); resize the model it was made from"
            )
        if not in_place:
            atomic.check_output(target, force)
            problem = output_suffix_problem(artifact, target)
            if problem:
                raise UnsupportedEdit(problem)
        table = find_table(artifact, name)
        planner = _Resize(artifact, table, method, np.random.default_rng(seed), allow_lossy)
        vocabulary = (
            require_vocabulary(artifact, table, vocab, vocab_column)
            if add_tokens is not None
            else table_vocabulary(artifact, table, vocab, vocab_column)
        )
        added, skipped = _new_tokens(add_tokens or [], vocabulary, table)
        if skipped:
            say(f"skipped {len(skipped)} token(s) already in the vocabulary: {_shown(skipped)}")
        new_count = rows if rows is not None else table.rows + (add or len(added))
        if pad_to_multiple:
            new_count = math.ceil(new_count / pad_to_multiple) * pad_to_multiple
        if new_count == table.rows and not added:
            raise BadArgument(f"{table.name} has {table.rows} rows already")
        grown = max(new_count - table.rows, 0)
        explicit = _explicit_rows(values, key, by_token, vector_format, added, table, grown, say)
        edit, resized = planner.edit(new_count, explicit, head)
        config_changes: list[dict] = []
        config = artifact.config()
        if config is not None:
            edit.config = copy.deepcopy(config)
            config_changes = size_changes(artifact, table, edit.config, new_count, head)
        dropped = 0
        vocabulary_file = None
        if vocabulary is not None and (added or new_count < len(vocabulary)):
            keep = min(len(vocabulary), new_count)
            dropped = len(vocabulary) - keep
            change = _vocabulary_change(artifact, vocabulary, keep, added, edit.config)
            edit.assets.update(change.assets)
            config_changes += [{"path": p, "old": o, "new": n} for p, o, n in change.config]
            if change.file_text is not None:
                vocabulary_file = (vocabulary_file_beside(target), change.file_text)
            if dropped:
                say(f"dropped {dropped} token(s) from the end of the vocabulary")
        plan = artifact.plan_edit(target, edit, in_place)
        if vocabulary_file is not None:
            plan.files.append(FilePlan(vocabulary_file[0], content=vocabulary_file[1].encode()))
        atomic.execute(plan, verify_file)
    notes = []
    if config is None:
        notes.append(
            f"the file holds no config: build the model with {new_count} rows for "
            f"{table.name} before loading these weights"
        )
    for note in notes:
        say(f"note: {note}")
    return ResizeResult(
        layer=table.name, old_rows=table.rows, new_rows=new_count, added_tokens=added,
        skipped_tokens=skipped, dropped_tokens=dropped, init=str(method), resized=resized,
        config=config_changes, output=target, notes=notes,
    )  # fmt: skip


def _shown(tokens: list[str], limit: int = 10) -> str:
    more = f" and {len(tokens) - limit} more" if len(tokens) > limit else ""
    return ", ".join(repr(t) for t in tokens[:limit]) + more


def _new_tokens(
    tokens: list[str], vocabulary: Vocabulary | None, table: Table
) -> tuple[list[str], list[str]]:
    """The tokens to append (in order, once each) and those the vocabulary has already."""
    if not tokens:
        return [], []
    assert vocabulary is not None
    if len(vocabulary) != table.rows:
        raise UnsupportedEdit(
            f"the vocabulary ({vocabulary.source}) has {len(vocabulary)} tokens but "
            f"{table.name} has {table.rows} rows, so a new token's row is unclear"
        )
    added: list[str] = []
    skipped: list[str] = []
    for token in tokens:
        if not isinstance(token, str):
            raise BadArgument(f"tokens are str, not {type(token).__name__}")
        (skipped if vocabulary.rows_of(token) or token in added else added).append(token)
    return added, skipped


def _explicit_rows(
    values: Any,
    key: str | None,
    by_token: PathLike | None,
    vector_format: str | None,
    added: list[str],
    table: Table,
    grown: int,
    say: Notify,
) -> dict[int, np.ndarray]:
    """New rows whose vectors the caller gave, by position among the new rows."""
    if values is not None and by_token is not None:
        raise BadArgument("give values or by_token, not both")
    if values is not None:
        array = _vectors(values, key, table, grown, whole=False)
        if array.ndim != 2 or array.shape != (grown, table.dim):
            raise BadVectors(
                f"got {array.shape[0] if array.ndim == 2 else 0} vector(s) of "
                f"{array.shape[-1] if array.ndim else 0} values for {grown} new row(s) of "
                f"dim {table.dim}"
            )
        return dict(enumerate(array))
    if by_token is None:
        return {}
    if not added:
        raise BadArgument("by_token fills added tokens; add some tokens")
    from embcli.pretrained import read_token_vectors

    source = _as_path(by_token, "by_token")
    found = read_token_vectors(source, added, fmt=vector_format, dim=table.dim)
    say(f"found {len(found.positions)} of {len(added)} new token(s) in {source.name}")
    return {int(p): v for p, v in zip(found.positions.tolist(), found.vectors, strict=True)}


def _sibling(table: Table, weight: str) -> str:
    """The owner name of another weight of the same layer (legacy files name slots by it)."""
    leaf = weight.rsplit("/", 1)[-1].removesuffix(":0")
    return f"{table.owner.rsplit('/', 1)[0]}/{leaf}" if "/" in table.owner else table.owner


def _vocabulary_change(artifact: ModelFile, vocabulary, keep, added, config):
    asset = None
    if vocabulary.source.startswith("asset:"):
        asset = artifact.asset(vocabulary.source[len("asset:") :])
    return change_vocabulary(vocabulary, keep, added, config, asset)


class _Resize:
    """Plans the new weights of one resize."""

    def __init__(
        self,
        artifact: ModelFile,
        table: Table,
        init: Init,
        rng: np.random.Generator,
        allow_lossy: bool,
    ) -> None:
        self.artifact = artifact
        self.table = table
        self.init = init
        self.rng = rng
        self.allow_lossy = allow_lossy

    def edit(
        self, new_count: int, explicit: dict[int, np.ndarray], head: str | None
    ) -> tuple[Edit, list[str]]:
        table = self.table
        if table.quantized not in (None, "int8") or (table.quantized and table.scale is None):
            raise UnsupportedEdit(
                f"{table.name} is {table.quantized}-quantized; embcli cannot resize it yet"
            )
        grown = max(new_count - table.rows, 0)
        values = self._new_table_rows(grown, explicit)
        followers = self._table_followers(values)
        followers += self._reverse_followers(grown)
        if head is not None:
            followers += self._head_followers(head, grown)
        for follower in list(followers):
            followers += self._slot_followers(follower)
        edit = Edit()
        for follower in followers:
            edit.weights[follower.weight] = self._new_weight(follower, new_count)
        kept = min(table.rows, new_count)
        probe = np.unique(np.array([0, kept - 1] + ([new_count - 1] if grown else [])))
        expected = self.artifact.read(table.weight, probe[probe < kept])
        if grown:
            expected = np.concatenate([expected, followers[0].fill(grown)[-1:]])
        edit.checks.append((table.weight, probe, expected))
        return edit, [f.weight for f in followers]

    def _new_table_rows(self, grown: int, explicit: dict[int, np.ndarray]) -> np.ndarray:
        """The grown rows as the model computes with them (float), before storing."""
        table = self.table
        if len(explicit) >= grown:
            values = np.zeros((grown, table.dim), dtype=np.float64)
        else:
            found = None
            if self.init.needs_statistics:
                blocks = (block for _, block in iter_blocks(self.artifact, table))
                found = statistics(blocks, table.dim, self.init)
            values = new_rows(self.init, grown, table.dim, found, self.rng)
        for position, vector in explicit.items():
            values[position] = vector
        return values

    def _table_followers(self, values: np.ndarray) -> list[_Follower]:
        table = self.table
        shape, dtype = self.artifact.weight_info(table.weight)
        if table.quantized == "int8" and table.scale is not None:
            cast_values(values, np.float32, allow_lossy=self.allow_lossy)
            quantized, scales = quantize_rows(values)
            scale_shape, scale_dtype = self.artifact.weight_info(table.scale)
            scales = cast_values(scales, scale_dtype, allow_lossy=self.allow_lossy)
            return [
                _Follower(table.weight, shape, 0, dtype, lambda n: quantized[:n]),
                _Follower(table.scale, scale_shape, 0, scale_dtype, lambda n: scales[:n]),
            ]
        stored = cast_values(values, dtype, allow_lossy=self.allow_lossy)
        return [_Follower(table.weight, shape, 0, dtype, lambda n: stored[:n], table)]

    def _siblings(self) -> list[Table]:
        return [
            t
            for t in list_tables(self.artifact, all_weights=True)
            if t.owner == self.table.owner and t.weight != self.table.weight
        ]

    def _reverse_followers(self, grown: int) -> list[_Follower]:
        """An untied output table of the same layer, `(dim, rows)`: its new columns get
        the same init, computed over its own columns."""
        table = self.table
        reverse = [
            t
            for t in self._siblings()
            if t.shape == (table.dim, table.rows)
            and (table.class_name == REVERSIBLE_EMBEDDING or REVERSE_EMBEDDINGS in t.weight)
        ]
        if not reverse:
            return []
        if table.quantized:
            raise UnsupportedEdit(
                f"{table.name}: a quantized untied output table cannot be resized yet"
            )
        weight = reverse[0].weight
        shape, dtype = self.artifact.weight_info(weight)
        columns = self._transposed_columns(weight, grown)
        stored = cast_values(columns, dtype, allow_lossy=self.allow_lossy)
        return [_Follower(weight, shape, 1, dtype, lambda n: stored[:, :n], reverse[0])]

    def _transposed_columns(self, weight: str, grown: int) -> np.ndarray:
        """`grown` new columns for a `(dim, rows)` weight, by `init` over its columns."""
        shape, _ = self.artifact.weight_info(weight)
        found = None
        if self.init.needs_statistics and grown:
            found = statistics(self._columns(weight, shape), shape[0], self.init)
        return new_rows(self.init, grown, shape[0], found, self.rng).T

    def _columns(self, weight: str, shape: tuple[int, ...]) -> Iterator[np.ndarray]:
        """The columns of a 2-D weight as rows, in blocks; each block reads every row."""
        step = max(1, BLOCK_BYTES // max(1, shape[0] * 4))
        for start in range(0, shape[1], step):
            rows = []
            for first in range(0, shape[0], step):
                block = self.artifact.read(weight, slice(first, min(first + step, shape[0])))
                rows.append(np.asarray(block[:, start : start + step], dtype=np.float64))
            yield np.concatenate(rows).T

    def _head_followers(self, head: str, grown: int) -> list[_Follower]:
        """A Dense layer over the vocabulary: kernel `(in, rows)` and bias `(rows,)`."""
        table = self.table
        kernel = find_table(self.artifact, head)
        if kernel.shape[1] != table.rows:
            raise UnsupportedEdit(
                f"the kernel of {head} has shape {kernel.shape}, not (inputs, {table.rows})"
            )
        shape, dtype = self.artifact.weight_info(kernel.weight)
        columns = cast_values(self._transposed_columns(kernel.weight, grown), dtype)
        followers = [_Follower(kernel.weight, shape, 1, dtype, lambda n: columns[:, :n], kernel)]
        for weight in self.artifact.weights_of(kernel):
            bias_shape, bias_dtype = self.artifact.weight_info(weight)
            if weight == kernel.weight or bias_shape != (table.rows,):
                continue
            old = self.artifact.read(weight, slice(None)).astype(np.float64)
            bias = cast_values(np.full(grown, old.mean() if len(old) else 0.0), bias_dtype)
            trained = replace(
                kernel, weight=weight, shape=bias_shape, owner=_sibling(kernel, weight)
            )
            followers.append(
                _Follower(weight, bias_shape, 0, bias_dtype, lambda n, b=bias: b[:n], trained)
            )
        return followers

    def _slot_followers(self, follower: _Follower) -> list[_Follower]:
        """The optimizer slots of a trained weight that grows: new entries zero."""
        if follower.trained is None:
            return []
        found = []
        for slot in self.artifact.optimizer_slots(follower.trained):
            shape, dtype = self.artifact.weight_info(slot)
            found.append(_Follower(slot, shape, follower.axis, dtype))
        return found

    def _new_weight(self, follower: _Follower, new_count: int) -> NewWeight:
        shape = list(follower.shape)
        old = shape[follower.axis]
        shape[follower.axis] = new_count
        grown = max(new_count - old, 0)
        artifact, axis = self.artifact, follower.axis
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * follower.dtype.itemsize
        step = max(1, BLOCK_BYTES // max(1, row_bytes))

        def new_entries(count: int) -> np.ndarray:
            if follower.fill is None:
                zeros_shape = list(shape)
                zeros_shape[axis] = count
                return np.zeros(zeros_shape, dtype=follower.dtype)
            return follower.fill(count)

        def blocks() -> Iterator[np.ndarray]:
            if axis == 0:
                kept = min(old, new_count)
                for start in range(0, kept, step):
                    yield artifact.read(follower.weight, slice(start, min(start + step, kept)))
                if grown:
                    yield np.asarray(new_entries(grown)).reshape(grown, *shape[1:])
                return
            extra = np.asarray(new_entries(grown)) if grown else None
            for start in range(0, shape[0], step):
                block = artifact.read(follower.weight, slice(start, min(start + step, shape[0])))
                block = block[:, :new_count]
                if extra is not None:
                    block = np.concatenate([block, extra[start : start + len(block)]], axis=1)
                yield block

        return NewWeight(tuple(shape), follower.dtype, blocks)

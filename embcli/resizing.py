"""`embcli.resize`: give a table a new number of rows and keep the whole model in step.

Old rows stay bit for bit. Whatever has the table's row count along an axis changes with
it in the same write: a quantized table's per-row scales, an untied output table
(`reverse_embeddings`, `(dim, rows)`, quantized or not), an output head named by the
caller (its kernel's columns and its bias), every optimizer slot of those weights (new
rows zero), the layer's size in the config (`input_dim`, a keras-hub backbone's
`vocabulary_size`), and the vocabulary wherever the model keeps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embcli import atomic
from embcli.api import Notify, PathLike, _as_model, _as_path, _optional_path, _vectors
from embcli.edit import check_reshapable_copy, verify_file
from embcli.errors import BadArgument, BadVectors, UnsupportedEdit
from embcli.formats.base import FilePlan, ModelFile, Table
from embcli.guarded.parsing import copy_json
from embcli.init import parse_init
from embcli.model import find_table, open_model, refuse_stacked
from embcli.resize_config import size_changes
from embcli.rowmap import RowMap, TablePlan
from embcli.vocab import TOKENIZER_SOURCE, Vocabulary, require_vocabulary, table_vocabulary
from embcli.vocab_edit import change_vocabulary, vocabulary_file_beside


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
    path = _as_model(path, "path")
    if (output is None) == (not in_place):
        raise BadArgument("give exactly one of output and in_place=True")
    target = _as_path(path, "path") if in_place else _as_path(output, "output")
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
        check_reshapable_copy(artifact, path, target, in_place, force)
        table = find_table(artifact, name)
        refuse_stacked(table)
        planner = TablePlan(artifact, table, method, np.random.default_rng(seed), allow_lossy)
        vocabulary = (
            require_vocabulary(artifact, table, _optional_path(vocab, "vocab"), vocab_column)
            if add_tokens is not None
            else table_vocabulary(artifact, table, _optional_path(vocab, "vocab"), vocab_column)
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
        edit, resized = planner.edit(RowMap.resized(table.rows, new_count), explicit, head)
        config_changes: list[dict] = []
        config = artifact.config()
        if config is not None:
            edit.config = copy_json(config)
            config_changes = size_changes(artifact, table, edit.config, new_count, head)
        dropped = 0
        vocabulary_file = None
        if vocabulary is not None and (added or new_count < len(vocabulary)):
            keep = min(len(vocabulary), new_count)
            dropped = len(vocabulary) - keep
            change = _vocabulary_change(artifact, vocabulary, keep, added, edit.config)
            edit.assets.update(change.assets)
            edit.files.update(getattr(change, "files", {}))
            config_changes += [{"path": p, "old": o, "new": n} for p, o, n in change.config]
            if change.file_text is not None:
                vocabulary_file = (vocabulary_file_beside(target), change.file_text)
            if dropped:
                say(f"dropped {dropped} token(s) from the end of the vocabulary")
        plan = artifact.plan_edit(target, edit, in_place)
        if vocabulary_file is not None:
            plan.files.append(FilePlan(vocabulary_file[0], content=vocabulary_file[1].encode()))
        atomic.execute(plan, verify_file, force=True if in_place else force)
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


def _vocabulary_change(artifact: ModelFile, vocabulary, keep, added, config):
    if vocabulary.source.startswith(TOKENIZER_SOURCE):
        from embcli.tokenizer_edit import change_tokenizer

        return change_tokenizer(artifact, vocabulary, keep, added, config)
    asset = None
    if vocabulary.source.startswith("asset:"):
        asset = artifact.asset(vocabulary.source[len("asset:") :])
    return change_vocabulary(vocabulary, keep, added, config, asset)

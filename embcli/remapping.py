"""`embcli.remap` and `embcli.rename_tokens`: give a table a new vocabulary.

A remap rebuilds the table for a new token list: a token in both keeps its vector bit for
bit at its new row, a new token gets `init` (or its vector from a token-keyed file), and
a token the new list lacks is dropped. Warm starts after a vocabulary change, pruning to
a subset and reordering are all remaps. Everything that follows the table's rows moves
the same way, and the model's vocabulary and sizes become the new ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embcli import atomic
from embcli.api import Notify, PathLike, _as_model, _as_path, _optional_path
from embcli.edit import check_reshapable_copy, verify_file
from embcli.errors import BadArgument, BadVocabulary, UnsupportedEdit
from embcli.formats.base import Edit, FilePlan, ModelFile, Table
from embcli.guarded.parsing import copy_json
from embcli.init import parse_init
from embcli.model import find_table, open_model, refuse_stacked
from embcli.resize_config import size_changes
from embcli.rowmap import NEW_ROW, RowMap, TablePlan
from embcli.token_lists import read_token_list
from embcli.vocab import Vocabulary, require_vocabulary
from embcli.vocab_edit import replace_vocabulary, vocabulary_file_beside

SAMPLE = 10


@dataclass
class RemapResult:
    """What `remap` wrote; `record()` is the `--json` report."""

    layer: str
    old_rows: int
    new_rows: int
    kept: list[str]
    added: list[str]
    dropped: list[str]
    moved: int
    output: Path
    rows: RowMap | None = None
    config: list[dict] = field(default_factory=list)

    @property
    def index_map(self) -> list[tuple[int, int]]:
        """`(old_index, new_index)` for each kept row, in new-row order."""
        if self.rows is None:
            return []
        new = np.flatnonzero(self.rows.sources != NEW_ROW)
        return list(zip(self.rows.sources[new].tolist(), new.tolist(), strict=True))

    def record(self) -> dict:
        return {
            "layer": self.layer,
            "old_rows": self.old_rows,
            "new_rows": self.new_rows,
            "kept": len(self.kept),
            "added": len(self.added),
            "dropped": len(self.dropped),
            "moved": self.moved,
            "samples": {
                "kept": self.kept[:SAMPLE],
                "added": self.added[:SAMPLE],
                "dropped": self.dropped[:SAMPLE],
            },
            "config": self.config,
            "output": str(self.output),
        }


def remap(
    path: PathLike,
    name: str | None = None,
    *,
    to: PathLike | list[str],
    init: str = "mean",
    seed: int | None = None,
    by_token: PathLike | None = None,
    vector_format: str | None = None,
    vocab: PathLike | None = None,
    vocab_column: str | None = None,
    head: str | None = None,
    map_out: PathLike | None = None,
    output: PathLike | None = None,
    in_place: bool = False,
    force: bool = False,
    allow_lossy: bool = False,
    notify: Notify | None = None,
) -> RemapResult:
    """Write a copy of a model whose table holds the rows of a new vocabulary.

    Args:
        path: the model.
        name: the table (may be left out when the model has one).
        to: the new vocabulary in row order: a list of tokens, or a file of one token a
            line (as `embcli vocab -o` writes it). The lookup layer's special rows (mask,
            OOV) are kept in their places when the list leaves them out.
        init, seed: how rows of new tokens are filled (see `embcli.resize`).
        by_token: a GloVe/word2vec/fastText/TSV file; new tokens found there get its
            vectors, the rest follow `init`.
        vocab, vocab_column: the table's vocabulary as a file, instead of the model's own.
        head: a Dense layer over the vocabulary whose kernel columns and bias move too.
        map_out: a file to write `old_index<TAB>new_index` to, a line for each kept row.
        output, in_place, force, allow_lossy, notify: as for `embcli.resize`.
    """
    path = _as_model(path, "path")
    if (output is None) == (not in_place):
        raise BadArgument("give exactly one of output and in_place=True")
    target = _as_path(path, "path") if in_place else _as_path(output, "output")
    method = parse_init(init)
    say = notify or (lambda line: None)
    with open_model(path, recover_edits=in_place) as artifact:
        check_reshapable_copy(artifact, path, target, in_place, force)
        table = find_table(artifact, name)
        refuse_stacked(table)
        vocabulary = require_vocabulary(
            artifact, table, _optional_path(vocab, "vocab"), vocab_column
        )
        tokens = _new_tokens(to, vocabulary)
        rows = _row_map(vocabulary, table, tokens)
        added = [tokens[i] for i in np.flatnonzero(rows.sources == NEW_ROW).tolist()]
        explicit = _token_vectors(by_token, vector_format, added, table, say)
        planner = TablePlan(artifact, table, method, np.random.default_rng(seed), allow_lossy)
        edit, _ = planner.edit(rows, explicit, head)
        vocabulary_file, changes = _vocabulary_edit(
            artifact, table, vocabulary, tokens, rows, head, edit
        )
        plan = artifact.plan_edit(target, edit, in_place)
        if vocabulary_file is not None:
            plan.files.append(FilePlan(vocabulary_file_beside(target), content=vocabulary_file))
        atomic.execute(plan, verify_file, force=True if in_place else force)
    new_rows = np.flatnonzero(rows.sources != NEW_ROW)
    old_rows = rows.sources[new_rows]
    if map_out is not None:
        atomic.write_new_file(_as_path(map_out, "map_out"), True, _index_writer(old_rows, new_rows))
    still_there = np.zeros(len(vocabulary), dtype=bool)
    still_there[old_rows[old_rows < len(vocabulary)]] = True
    dropped = [vocabulary.tokens[i] for i in np.flatnonzero(~still_there).tolist()]
    kept = [tokens[j] for j in new_rows.tolist()]
    return RemapResult(
        layer=table.name, old_rows=table.rows, new_rows=rows.rows, kept=kept, added=added,
        dropped=dropped, moved=int((old_rows != new_rows).sum()), output=target, rows=rows,
        config=changes,
    )  # fmt: skip


def rename_tokens(
    path: PathLike,
    name: str | None = None,
    *,
    renames: dict[str, str],
    output: PathLike | None = None,
    in_place: bool = False,
    force: bool = False,
) -> list[tuple[int, str, str]]:
    """Give some tokens new text where the model keeps its vocabulary; their rows and
    vectors stay. Returns `(row, old, new)` for each token renamed."""
    path = _as_model(path, "path")
    if (output is None) == (not in_place):
        raise BadArgument("give exactly one of output and in_place=True")
    if not renames:
        raise BadArgument("give at least one token to rename")
    target = _as_path(path, "path") if in_place else _as_path(output, "output")
    with open_model(path, recover_edits=in_place) as artifact:
        check_reshapable_copy(artifact, path, target, in_place, force)
        table = find_table(artifact, name)
        refuse_stacked(table)
        vocabulary = require_vocabulary(artifact, table)
        tokens = list(vocabulary.tokens)
        changed = []
        news = list(renames.values())
        for old, new in renames.items():
            rows = vocabulary.rows_of(old)
            if not rows:
                raise BadVocabulary(f"{old!r} is not in the vocabulary ({vocabulary.source})")
            if vocabulary.rows_of(new) or news.count(new) > 1:
                raise BadVocabulary(f"{new!r} is in the vocabulary already")
            for row in rows:
                tokens[row] = new
                changed.append((row, old, new))
        edit = Edit()
        config = artifact.config()
        edit.config = copy_json(config) if config is not None else None
        asset = _asset(artifact, vocabulary)
        change = replace_vocabulary(vocabulary, tokens, edit.config, asset)
        edit.assets.update(change.assets)
        plan = artifact.plan_edit(target, edit, in_place)
        atomic.execute(plan, verify_file, force=True if in_place else force)
    return changed


def _index_writer(old_rows: np.ndarray, new_rows: np.ndarray):
    def write(temp: Path) -> None:
        with open(temp, "w", encoding="ascii") as handle:
            for start in range(0, len(new_rows), 65536):
                pairs = zip(old_rows[start : start + 65536].tolist(),
                            new_rows[start : start + 65536].tolist(), strict=True)  # fmt: skip
                handle.write("".join(f"{old}\t{new}\n" for old, new in pairs))

    return write


def _new_tokens(to: Any, vocabulary: Vocabulary) -> list[str]:
    """The new vocabulary in row order, the special rows put back when it leaves them
    out; refuses a token listed twice."""
    if isinstance(to, (str, Path)) or hasattr(to, "__fspath__"):
        tokens = read_token_list(to)
    elif isinstance(to, (list, tuple)) and all(isinstance(t, str) for t in to):
        tokens = list(to)
    else:
        raise BadArgument("the new vocabulary is a list of str or a file of tokens")
    specials = vocabulary.tokens[: vocabulary.specials]
    if specials and tokens[: len(specials)] != specials and not set(specials) & set(tokens):
        tokens = specials + tokens
    if len(set(tokens)) != len(tokens):
        seen: set[str] = set()
        for position, token in enumerate(tokens):
            if token in seen and position >= len(specials):
                raise BadVocabulary(f"the new vocabulary lists {token!r} twice")
            seen.add(token)
    if not tokens:
        raise BadVocabulary("the new vocabulary holds no tokens")
    return tokens


def _row_map(vocabulary: Vocabulary, table: Table, tokens: list[str]) -> RowMap:
    """Each new row's old row: the same position for the special rows kept in place,
    the token's row otherwise, or NEW_ROW."""
    if len(vocabulary) > table.rows:
        raise UnsupportedEdit(
            f"the vocabulary ({vocabulary.source}) has {len(vocabulary)} tokens but "
            f"{table.name} has only {table.rows} rows"
        )
    specials = vocabulary.tokens[: vocabulary.specials]
    # Each token's first row after the special rows: built from the last row back, so
    # that a repeated token ends up with its first row.
    count, start = len(vocabulary), len(specials)
    rows_back = range(count - 1, start - 1, -1)
    first_row = dict(zip(reversed(vocabulary.tokens[start:count]), rows_back, strict=True))
    for row in range(len(specials) - 1, -1, -1):
        first_row.setdefault(specials[row], row)
    found = [first_row.get(token, NEW_ROW) for token in tokens]
    for position, token in enumerate(tokens[: len(specials)]):
        if token == specials[position]:
            found[position] = position
    return RowMap(np.asarray(found, dtype=np.int64))


def _token_vectors(
    by_token: PathLike | None,
    vector_format: str | None,
    added: list[str],
    table: Table,
    say: Notify,
) -> dict[int, np.ndarray]:
    if by_token is None or not added:
        return {}
    from embcli.pretrained import read_token_vectors

    source = _as_path(by_token, "by_token")
    found = read_token_vectors(source, added, fmt=vector_format, dim=table.dim)
    say(f"found {len(found.positions)} of {len(added)} new token(s) in {source.name}")
    return {int(p): v for p, v in zip(found.positions.tolist(), found.vectors, strict=True)}


def _asset(artifact: ModelFile, vocabulary: Vocabulary) -> bytes | None:
    if vocabulary.source.startswith("asset:"):
        return artifact.asset(vocabulary.source[len("asset:") :])
    return None


def _vocabulary_edit(
    artifact: ModelFile,
    table: Table,
    vocabulary: Vocabulary,
    tokens: list[str],
    rows: RowMap,
    head: str | None,
    edit: Edit,
) -> tuple[bytes | None, list[dict]]:
    """Put the new sizes and vocabulary into `edit`. Returns the bytes of a vocabulary
    file to write beside the output (when the vocabulary came from one) and the config
    values changed."""
    config = artifact.config()
    changes: list[dict] = []
    if config is not None:
        edit.config = copy_json(config)
        if rows.rows != table.rows:
            changes = size_changes(artifact, table, edit.config, rows.rows, head)
    change = replace_vocabulary(vocabulary, tokens, edit.config, _asset(artifact, vocabulary))
    edit.assets.update(change.assets)
    changes += [{"path": p, "old": o, "new": n} for p, o, n in change.config]
    return (change.file_text.encode() if change.file_text is not None else None), changes

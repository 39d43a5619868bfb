"""Where a model's config records a table's row count, changed to a new one.

A Keras layer records it as `input_dim` (`Embedding`, `ReversibleEmbedding`) or
`sequence_length` (`PositionEmbedding`); keras-hub's `TokenAndPositionEmbedding` and its
backbones as `vocabulary_size`, also inside a task's nested backbone config (in a `.keras`
archive's config, or a preset's `task.json`); a `Dense` head over the vocabulary as
`units`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from embcli.errors import UnsupportedEdit
from embcli.formats.base import ModelFile, Table
from embcli.guarded.parsing import holds_containers

SIZE_KEY_BY_CLASS = {"PositionEmbedding": "sequence_length"}
LAYER_SIZE_KEYS = ("input_dim", "vocabulary_size")
BACKBONE_SIZE_KEY = "vocabulary_size"
BACKBONE_SUFFIX = "Backbone"
TOKEN_EMBEDDING_PARENTS = {"TokenAndPositionEmbedding": ("token_embedding", "vocabulary_size")}
HEAD_SIZE_KEY = "units"


def size_changes(
    artifact: ModelFile, table: Table, config: dict, rows: int, head: str | None = None
) -> list[dict]:
    """Set the table's row count to `rows` wherever `config` (a copy) records it.

    Returns `{"path", "old", "new"}` for each value changed. Refuses a config that
    records the count nowhere embcli knows, since the model would not load.
    """
    changes: list[dict] = []
    found = _layer_entry(artifact, table, config)
    if found is not None:
        entry, key = found
        changes.append(_set(config, entry, key, rows))
    else:
        for entry in _backbones(config, table.rows):
            changes.append(_set(config, entry, BACKBONE_SIZE_KEY, rows))
    if not changes:
        raise UnsupportedEdit(
            f"cannot find where the model's config records the {table.rows} rows of "
            f"{table.name}, so the resized model would not load"
        )
    changes += _task_changes(artifact, table.rows, rows)
    if head is not None:
        from embcli.model import find_table

        kernel = find_table(artifact, head)
        head_entry = artifact.layer_config(kernel, config)
        if head_entry is None or head_entry.get(HEAD_SIZE_KEY) != table.rows:
            raise UnsupportedEdit(f"the config of {head} does not record {table.rows} units")
        changes.append(_set(config, head_entry, HEAD_SIZE_KEY, rows))
    return changes


def _layer_entry(artifact: ModelFile, table: Table, config: dict) -> tuple[dict, str] | None:
    entry = artifact.layer_config(table, config)
    if entry is not None:
        class_name = _class_of(config, entry)
        keys = [SIZE_KEY_BY_CLASS[class_name]] if class_name in SIZE_KEY_BY_CLASS else []
        for key in keys + list(LAYER_SIZE_KEYS):
            if entry.get(key) == table.rows:
                return entry, key
        return None
    parent, _, attribute = table.owner.rpartition("/")
    if not parent:
        return None
    entry = artifact.layer_config(replace(table, owner=parent), config)
    if entry is None:
        return None
    known = TOKEN_EMBEDDING_PARENTS.get(_class_of(config, entry) or "")
    if known and known[0] == attribute and entry.get(known[1]) == table.rows:
        return entry, known[1]
    return None


def _class_of(config: Any, entry: dict) -> str | None:
    """The class name of the config object whose `config` is `entry`."""
    for holder in _dicts(config):
        if holder.get("config") is entry and isinstance(holder.get("class_name"), str):
            return holder["class_name"]
    return None


def _backbones(config: dict, rows: int) -> list[dict]:
    """keras-hub backbone configs (constructor arguments) whose vocabulary has `rows`."""
    found = []
    for holder in _dicts(config):
        inner = holder.get("config")
        class_name = holder.get("class_name")
        if (
            isinstance(class_name, str)
            and class_name.endswith(BACKBONE_SUFFIX)
            and isinstance(inner, dict)
            and inner.get(BACKBONE_SIZE_KEY) == rows
        ):
            found.append(inner)
    return found


def _task_changes(artifact: ModelFile, old: int, rows: int) -> list[dict]:
    """The backbone sizes a keras-hub preset's `task.json` records too: the preset writes
    it with `config.json`'s new backbone (see `embcli.formats.preset`); listed here for
    the report only, as `task.json:<path>`."""
    find = getattr(artifact, "task_config", None)
    task = find() if callable(find) else None
    if not isinstance(task, dict):
        return []
    return [
        {"path": f"task.json:{_path_of(task, entry)}/{BACKBONE_SIZE_KEY}", "old": old, "new": rows}
        for entry in _backbones(task, old)
    ]


def _dicts(value: Any):
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list) and holds_containers(item):
            stack.extend(item)


def _set(config: dict, entry: dict, key: str, rows: int) -> dict:
    change = {"path": _path_of(config, entry) + f"/{key}", "old": entry[key], "new": rows}
    entry[key] = rows
    return change


def _path_of(root: Any, target: dict) -> str:
    """The `/`-joined keys and indices that lead from `root` to `target`."""
    stack: list[tuple[str, Any]] = [("", root)]
    while stack:
        path, item = stack.pop()
        if item is target:
            return path
        if isinstance(item, dict):
            stack.extend((f"{path}/{k}", v) for k, v in item.items())
        elif isinstance(item, list) and holds_containers(item):
            stack.extend((f"{path}/{i}", v) for i, v in enumerate(item))
    return ""

"""Changing a vocabulary where the model keeps it, so that it stays in step with its
table: a lookup layer's inline `vocabulary` in the config, its asset file, or a
vocabulary file the user gave.

Tokens keep Keras's row order: the kept tokens first (the special rows among them), then
the new ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embcli.config_graph import INTEGER_LOOKUP, LOOKUP_CLASSES
from embcli.errors import BadVocabulary, UnsupportedEdit
from embcli.guarded.parsing import holds_containers
from embcli.token_lists import token_list_text
from embcli.vocabulary import TOKENIZER_SOURCE, Vocabulary

CONFIG_SOURCE = "config:"
ASSET_SOURCE = "asset:"
FILE_SOURCE = "file:"
SIZE_KEYS = ("vocabulary_size",)


@dataclass
class VocabularyChange:
    """Where a new vocabulary goes.

    Attributes:
        assets: asset path -> new bytes.
        file_text: the new contents of a user's vocabulary file, one token a line.
        config: `(path, old, new)` for each config value changed (in the config given).
    """

    assets: dict[str, bytes] = field(default_factory=dict)
    file_text: str | None = None
    config: list[tuple[str, Any, Any]] = field(default_factory=list)


def change_vocabulary(
    vocabulary: Vocabulary,
    keep: int,
    added: list[str],
    config: dict | None,
    asset: bytes | None = None,
) -> VocabularyChange:
    """Keep the first `keep` rows' tokens and append `added`, wherever `vocabulary` lives.

    Args:
        vocabulary: the table's vocabulary as embcli found it.
        keep: how many rows (from the start) keep their tokens.
        added: the new tokens, in row order after the kept ones.
        config: a copy of the model's config, changed here in place.
        asset: the current bytes of the asset the vocabulary came from, if it did.
    """
    if keep < vocabulary.specials:
        raise UnsupportedEdit(f"the first {vocabulary.specials} rows hold the special tokens")
    return replace_vocabulary(vocabulary, vocabulary.tokens[:keep] + list(added), config, asset)


def replace_vocabulary(
    vocabulary: Vocabulary, tokens: list[str], config: dict | None, asset: bytes | None = None
) -> VocabularyChange:
    """Make `tokens` (one a row, special rows included) the vocabulary, wherever
    `vocabulary` lives. The special rows must stay where the lookup layer puts them."""
    change = VocabularyChange()
    if vocabulary.source.startswith(TOKENIZER_SOURCE):
        raise UnsupportedEdit(
            f"{vocabulary.source[len(TOKENIZER_SOURCE) :]} is a keras-hub tokenizer's "
            "vocabulary, whose merges, pieces and special tokens depend on its order: embcli "
            "can append tokens to it (resize) but not reorder, drop or rename them"
        )
    if vocabulary.source.startswith(FILE_SOURCE):
        change.file_text = token_list_text(tokens)
        return change
    specials = vocabulary.tokens[: vocabulary.specials]
    if tokens[: len(specials)] != specials:
        raise UnsupportedEdit(
            f"the first {len(specials)} rows must hold the lookup layer's special tokens "
            f"({', '.join(repr(t) for t in specials)})"
        )
    layer = _lookup_layer(config, vocabulary.layer) if config is not None else None
    if layer is None:
        raise UnsupportedEdit(f"cannot find where the model keeps {vocabulary.source}")
    path, entry = layer
    if vocabulary.source.startswith(CONFIG_SOURCE):
        inline = entry["config"]["vocabulary"]
        stored = _values(tokens[_offset(inline, vocabulary) :], entry)
        change.config.append((f"{path}/config/vocabulary", len(inline), len(stored)))
        entry["config"]["vocabulary"] = stored
    elif vocabulary.source.startswith(ASSET_SOURCE):
        if asset is None:
            raise UnsupportedEdit(f"cannot read {vocabulary.source}")
        name = vocabulary.source[len(ASSET_SOURCE) :]
        try:
            lines = asset.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            raise BadVocabulary(f"assets/{name} is not UTF-8 text") from None
        stored = _values(tokens[_offset(lines, vocabulary) :], entry)
        change.assets[name] = "\n".join(str(v) for v in stored).encode()
    else:
        raise UnsupportedEdit(f"cannot change a vocabulary from {vocabulary.source}")
    size = len(tokens)
    inner = entry["config"]
    for key in SIZE_KEYS:
        if isinstance(inner.get(key), int) and inner[key] != size:
            change.config.append((f"{path}/config/{key}", inner[key], size))
            inner[key] = size
    limit = inner.get("max_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit < size:
        change.config.append((f"{path}/config/max_tokens", limit, size))
        inner["max_tokens"] = size
    return change


def _offset(values: list, vocabulary: Vocabulary) -> int:
    """How many special rows the stored list leaves out (Keras stores them, or not)."""
    specials = vocabulary.tokens[: vocabulary.specials]
    stored = [str(v) if v is not None else "" for v in values[: vocabulary.specials]]
    return 0 if stored == specials else vocabulary.specials


def _values(added: list[str], entry: dict) -> list:
    if entry.get("class_name") != INTEGER_LOOKUP:
        return list(added)
    try:
        return [int(token) for token in added]
    except ValueError:
        raise BadVocabulary("an IntegerLookup vocabulary takes only integers") from None


_NESTED = (dict, list)  # what a layer can be inside; a vocabulary's strings are not walked


def _lookup_layer(config: Any, name: str | None) -> tuple[str, dict] | None:
    """The lookup layer named `name` anywhere in a config, with its path."""
    if name is None:
        return None
    found: list[tuple[str, dict]] = []
    stack: list[tuple[str, Any]] = [("", config)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            inner = value.get("config")
            if (
                value.get("class_name") in LOOKUP_CLASSES
                and isinstance(inner, dict)
                and inner.get("name") == name
            ):
                found.append((path, value))
            stack.extend((f"{path}/{k}", v) for k, v in value.items() if isinstance(v, _NESTED))
        elif isinstance(value, list) and holds_containers(value):
            stack.extend((f"{path}/{i}", v) for i, v in enumerate(value) if isinstance(v, _NESTED))
    return found[0] if len(found) == 1 else None


def vocabulary_file_beside(output: Path) -> Path:
    """Where a resized model's vocabulary file goes: `new.vocab.txt` beside `new.keras`."""
    stem = output.name.split(".", 1)[0] if not output.is_dir() else output.name
    return output.with_name(f"{stem}.vocab.txt")

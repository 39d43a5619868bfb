"""New tokens written into a keras-hub model's tokenizer, so that they get the new rows.

The vocabulary file (WordPiece lines, a byte-pair map, SentencePiece USER_DEFINED pieces,
a Hugging Face `tokenizer.json`) gets the tokens appended, taking ids n, n+1, ... And
every serialized config of the tokenizer (a preset's `tokenizer.json`, `preprocessor.json`
and `task.json`; a `.keras` archive's `config.json`) lists them where keras-hub needs it
to keep them whole when it tokenizes text: a byte-pair tokenizer's `unsplittable_tokens`,
a WordPiece tokenizer's `special_tokens` (with `special_tokens_in_strings` where the token
would otherwise be split or lowercased). SentencePiece matches USER_DEFINED pieces whole
by itself.
"""

from __future__ import annotations

import copy
import json
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from embcli.errors import UnsupportedEdit
from embcli.formats.base import ModelFile
from embcli.tokenizer_assets import ASSETS_DIR, PRESET, TokenizerFiles
from embcli.tokenizers import BYTE_PAIR, WORDPIECE, append_tokens
from embcli.vocab import Vocabulary

TOKENIZER_SUFFIX = "Tokenizer"
KERAS_HUB_REGISTERED = "keras_hub>"
UNSPLITTABLE_KEY = "unsplittable_tokens"
SPECIAL_TOKENS_KEY = "special_tokens"
SPECIALS_IN_STRINGS_KEY = "special_tokens_in_strings"
LOWERCASE_KEY = "lowercase"
# The preset files that may hold a serialized tokenizer config, and how keras-hub
# indents them.
PRESET_CONFIG_FILES = ("tokenizer.json", "preprocessor.json", "task.json")
PRESET_JSON_INDENT = 4
_WORDPIECE_SPLITS = re.compile(r"\s")


@dataclass
class TokenizerChange:
    """Where the new tokens go; read by `embcli.resize` as a vocabulary change.

    Attributes:
        assets: asset path (relative to `assets/`) -> new bytes.
        files: preset file name -> new bytes (`tokenizer.json`, `task.json`, ...).
        config: `(path, old, new)` for each value changed: in the model config given,
            or `file:path` in a preset's JSON file.
        file_text: unused here (tokenizers are never written beside the model).
    """

    assets: dict[str, bytes] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    config: list[tuple[str, Any, Any]] = field(default_factory=list)
    file_text: str | None = None


def change_tokenizer(
    artifact: ModelFile,
    vocabulary: Vocabulary,
    keep: int,
    added: Sequence[str],
    config: dict | None,
) -> TokenizerChange:
    """Append `added` to the tokenizer `vocabulary` came from, wherever the model keeps it.

    Args:
        artifact: the open model (a preset, a `.keras` archive or folder).
        vocabulary: the table's vocabulary, as `embcli.vocab.tokenizer_vocabulary` found it.
        keep: how many rows keep their tokens; a tokenizer keeps them all.
        added: the new tokens, in row order.
        config: a copy of the model's config, changed here in place (an archive's
            serialized tokenizer lives there).

    Raises:
        UnsupportedEdit: tokens would be dropped, or the tokenizer cannot be found again.
        BadArgument: a token cannot be added (empty, already there, ...).
    """
    asset = vocabulary.asset
    tokenizer = vocabulary.tokenizer
    if keep < len(vocabulary):
        raise UnsupportedEdit(
            f"embcli cannot drop tokens from a tokenizer's vocabulary ({vocabulary.source})"
        )
    find = getattr(artifact, "tokenizer_files", None)
    source = find() if callable(find) else None
    if asset is None or tokenizer is None or not isinstance(source, TokenizerFiles):
        raise UnsupportedEdit(f"cannot find the tokenizer of {vocabulary.source} again")
    change = TokenizerChange()
    if not added:
        return change
    new = append_tokens(asset.kind, source.files[asset.name], list(added), asset.name)
    prefix = f"{ASSETS_DIR}/"
    if asset.name.startswith(prefix):
        change.assets[asset.name[len(prefix) :]] = new
    else:
        change.files[asset.name] = new
    if source.layout == PRESET:
        for name in PRESET_CONFIG_FILES:
            if name == asset.name or name not in source.files:
                continue
            document = json.loads(source.files[name])
            edited = copy.deepcopy(document)
            paths = _list_tokens(edited, asset.kind, added)
            if paths:
                change.files[name] = json.dumps(edited, indent=PRESET_JSON_INDENT).encode()
                change.config += [(f"{name}:{p}", _at(document, p), _at(edited, p)) for p in paths]
    elif config is not None:
        before = copy.deepcopy(config)
        for path in _list_tokens(config, asset.kind, added):
            change.config.append((path, _at(before, path), _at(config, path)))
    return change


def _list_tokens(document: Any, kind: str, added: Sequence[str]) -> list[str]:
    """List `added` in every keras-hub tokenizer config inside `document`, in place, as
    `kind` needs it; the paths of the values changed."""
    changed: list[str] = []
    for path, inner in _tokenizer_configs(document):
        if kind == BYTE_PAIR:
            current = inner.get(UNSPLITTABLE_KEY)
            if isinstance(current, list):
                inner[UNSPLITTABLE_KEY] = current + [t for t in added if t not in current]
                changed.append(f"{path}/{UNSPLITTABLE_KEY}")
        elif kind == WORDPIECE:
            current = inner.get(SPECIAL_TOKENS_KEY)
            listed = current if isinstance(current, list) else []
            inner[SPECIAL_TOKENS_KEY] = listed + [t for t in added if t not in listed]
            changed.append(f"{path}/{SPECIAL_TOKENS_KEY}")
            lowercase = inner.get(LOWERCASE_KEY) is True
            if any(_wordpiece_splits(t, lowercase) for t in added) and not inner.get(
                SPECIALS_IN_STRINGS_KEY
            ):
                inner[SPECIALS_IN_STRINGS_KEY] = True
                changed.append(f"{path}/{SPECIALS_IN_STRINGS_KEY}")
    return changed


def _wordpiece_splits(token: str, lowercase: bool) -> bool:
    """Whether WordPiece's pre-tokenizer would not keep `token` as one word: it splits
    on whitespace and punctuation and, with `lowercase`, lowercases."""
    if lowercase and token != token.lower():
        return True
    return bool(_WORDPIECE_SPLITS.search(token)) or any(
        unicodedata.category(c).startswith("P") or (c.isascii() and not c.isalnum()) for c in token
    )


def _tokenizer_configs(document: Any) -> Iterator[tuple[str, dict]]:
    """`(path, config)` of every serialized keras-hub tokenizer in a JSON document."""
    stack: list[tuple[str, Any]] = [("", document)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, list):
            stack.extend((f"{path}/{i}", v) for i, v in enumerate(node))
        elif isinstance(node, dict):
            name = node.get("class_name")
            registered = node.get("registered_name")
            inner = node.get("config")
            if (
                isinstance(name, str)
                and name.endswith(TOKENIZER_SUFFIX)
                and isinstance(registered, str)
                and registered.startswith(KERAS_HUB_REGISTERED)
                and isinstance(inner, dict)
            ):
                yield f"{path}/config", inner
            stack.extend((f"{path}/{k}", v) for k, v in node.items())


def _at(document: Any, path: str) -> Any:
    node = document
    for part in path.strip("/").split("/"):
        node = node[int(part)] if isinstance(node, list) else node.get(part)
    return node

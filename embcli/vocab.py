"""Vocabularies: which word each row of a table stands for.

A table's vocabulary comes from a `TextVectorization`, `StringLookup` or `IntegerLookup`
layer that feeds it in the same model, from the model's keras-hub tokenizer (a preset's
`tokenizer.json` and `assets/tokenizer/...`, a `.keras` archive's tokenizer assets), or
from a file the user gives (one token a line, a TSV column, or a tokenizer's own file:
`vocab.json`, `tokenizer.json`, `tokenizer.model`, `*.spm`). The rows are laid out
the way Keras's `IndexLookup` lays them out: the mask token first (when the layer has one
and returns integer ids), then `num_oov_indices` OOV tokens, then the vocabulary proper.

The config is read as data only; a lookup layer's vocabulary is either inline in it or in
the archive's assets (`assets/<group>/vocabulary.txt`).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embcli.errors import BadVocabulary, NoVocabulary, UnknownToken
from embcli.formats.base import ModelFile, Table
from embcli.formats.naming import LAYERS_CONTAINER, TF_KERAS_LAYERS_CONTAINER, groups_from_config

if TYPE_CHECKING:
    from embcli.tokenizer_assets import VocabularyAsset
    from embcli.tokenizers import TokenizerVocabulary

TEXT_VECTORIZATION = "TextVectorization"
STRING_LOOKUP = "StringLookup"
INTEGER_LOOKUP = "IntegerLookup"
LOOKUP_CLASSES = (TEXT_VECTORIZATION, STRING_LOOKUP, INTEGER_LOOKUP)
VOCABULARY_ASSET = "vocabulary.txt"
TEXT_VECTORIZATION_INNER = "_lookup_layer"
TEXT_VECTORIZATION_SPECIALS = ("", "[UNK]", 1)
DEFAULT_OOV = {STRING_LOOKUP: "[UNK]", INTEGER_LOOKUP: -1}
INPUT_LAYER = "InputLayer"
# Layers whose output holds the same token ids as their input, only rearranged.
ID_PRESERVING_CLASSES = frozenset(
    {
        "Reshape",
        "Flatten",
        "Permute",
        "RepeatVector",
        "Cropping1D",
        "ZeroPadding1D",
        "Concatenate",
        "Identity",
    }
)
MAX_VOCABULARY_FILE = 1 << 31
TOKENIZER_SOURCE = "tokenizer:"


class Vocabulary:
    """The tokens of a table, in row order.

    Attributes:
        tokens: one token per row, as text (IntegerLookup ids as decimal strings).
        source: where it came from: `config:<layer>`, `asset:<path>` or `file:<path>`.
        specials: how many leading rows hold the mask and OOV tokens.
        layer: the name of the lookup layer it came from, if any.
    """

    def __init__(
        self,
        tokens: Sequence[str],
        source: str,
        specials: int = 0,
        layer: str | None = None,
        tokenizer: TokenizerVocabulary | None = None,
        asset: VocabularyAsset | None = None,
    ) -> None:
        self.tokens = list(tokens)
        self.source = source
        self.specials = specials
        self.layer = layer
        self.tokenizer = tokenizer
        self.asset = asset

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self.tokens)} tokens from {self.source})"

    @cached_property
    def _rows(self) -> dict[str, list[int]]:
        rows: dict[str, list[int]] = {}
        for row, token in enumerate(self.tokens):
            rows.setdefault(token, []).append(row)
        return rows

    def rows_of(self, token: str) -> list[int]:
        """Every row that holds `token` (several for repeated OOV tokens); [] if none."""
        return self._rows.get(token, [])

    def row_of(self, token: str) -> int:
        """The row of `token`: the first row that holds it, or for a tokenizer's
        vocabulary the id the tokenizer gives it (a repeated token's last row). Raises
        UnknownToken if no row does."""
        rows = self._rows.get(token)
        if not rows:
            raise UnknownToken(f"{token!r} is not in the vocabulary ({self.source})")
        if self.tokenizer is not None:
            return self.tokenizer.ids.get(token, rows[-1])
        return rows[0]

    def token_at(self, row: int) -> str | None:
        return self.tokens[row] if 0 <= row < len(self.tokens) else None

    def size_problem(self, table: Table) -> str | None:
        """A warning when the vocabulary and the table disagree on the number of rows."""
        if len(self.tokens) == table.rows:
            return None
        return (
            f"{table.name}: the vocabulary ({self.source}) has {len(self.tokens)} "
            f"tokens but the table has {table.rows} rows"
        )


# Vocabulary files given by the user ----------------------------------------------------


def load_vocabulary_file(path: str | Path, column: str | None = None) -> Vocabulary:
    """Tokens from a file: one per line, or with `column` a TSV with a header row.

    Only line breaks end a line (`\\n`, `\\r\\n`); blank lines at the end are dropped.
    A tokenizer's own file is read as its format says, told by its name and content:
    a JSON token -> id map (`vocab.json`), a Hugging Face `tokenizer.json` (or a keras-hub
    preset's, whose vocabulary is under `assets/` beside it), a SentencePiece model
    (`tokenizer.model`, `*.spm`).
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_VOCABULARY_FILE:
            raise BadVocabulary(f"{path}: larger than {MAX_VOCABULARY_FILE} bytes")
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadVocabulary(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadVocabulary(f"{path}: is a folder, not a vocabulary file") from None
    if column is None:
        from embcli.tokenizer_vocab import read_tokenizer_file

        tokenizer = read_tokenizer_file(path, data)
        if tokenizer is not None:
            return Vocabulary(tokenizer.tokens, f"file:{path}", tokenizer=tokenizer)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadVocabulary(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    while lines and lines[-1] == "":
        lines.pop()
    if column is not None:
        lines = _tsv_column(path, lines, column)
    if not lines:
        raise BadVocabulary(f"{path}: holds no tokens")
    return Vocabulary(lines, f"file:{path}")


def _tsv_column(path: Path, lines: list[str], column: str) -> list[str]:
    if not lines:
        raise BadVocabulary(f"{path}: empty; expected a header row naming {column!r}")
    header = lines[0].split("\t")
    if column not in header:
        raise BadVocabulary(f"{path}: no column {column!r}; columns: {', '.join(header)}")
    at = header.index(column)
    tokens = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) <= at:
            raise BadVocabulary(f"{path}, line {number}: no {column!r} field")
        tokens.append(fields[at])
    return tokens


# Vocabularies from the model's own lookup layers ---------------------------------------


@dataclass
class _Layer:
    """A layer of a model config, with what is needed to follow the graph."""

    name: str
    class_name: str
    config: dict
    group: str | None
    container: _Container
    raw: dict
    index: int
    inner: _Container | None = None

    @property
    def is_lookup(self) -> bool:
        return self.class_name in LOOKUP_CLASSES

    @property
    def is_model(self) -> bool:
        return self.inner is not None


@dataclass
class _Container:
    """The layer list of a (possibly nested) Functional or Sequential model."""

    sequential: bool
    config: dict
    owner: _Layer | None
    layers: list[_Layer] = field(default_factory=list)
    names: dict[str, _Layer] = field(default_factory=dict)

    def add(self, layer: _Layer) -> None:
        self.layers.append(layer)
        self.names.setdefault(layer.name, layer)

    def by_name(self, name: str) -> _Layer | None:
        return self.names.get(name)


def _layer_list(raw: Any) -> list | None:
    if not isinstance(raw, dict):
        return None
    inner = raw.get("config")
    if isinstance(inner, dict) and isinstance(inner.get("layers"), list):
        return inner["layers"]
    return None


_GRAPHS: weakref.WeakKeyDictionary[ModelFile, tuple[int, _ModelGraph]] = weakref.WeakKeyDictionary()


def _graph_of(model: ModelFile, config: dict) -> _ModelGraph:
    """The model's config graph, walked once per open model, not once per table."""
    known = _GRAPHS.get(model)
    if known is None or known[0] != id(config):
        known = (id(config), _ModelGraph(config))
        _GRAPHS[model] = known
    return known[1]


class _ModelGraph:
    """Every layer of a config, by container, with weights-file group paths."""

    def __init__(self, config: dict) -> None:
        groups = {id(entry.config): group for group, entry in groups_from_config(config).items()}
        self.layers: list[_Layer] = []
        self.root = self._container(config, None, groups)

    def _container(self, raw: dict, owner: _Layer | None, groups: dict) -> _Container:
        container = _Container(raw.get("class_name") == "Sequential", raw, owner)
        for index, item in enumerate(_layer_list(raw) or []):
            if not isinstance(item, dict):
                continue
            inner = item.get("config")
            class_name = item.get("class_name")
            if not isinstance(inner, dict) or not isinstance(class_name, str):
                continue
            name = inner.get("name", item.get("name"))
            if not isinstance(name, str):
                continue
            layer = _Layer(name, class_name, inner, groups.get(id(inner)), container, item, index)
            container.add(layer)
            self.layers.append(layer)
            if _layer_list(item) is not None:
                layer.inner = self._container(item, layer, groups)
        return container

    def lookups(self) -> list[_Layer]:
        return [layer for layer in self.layers if layer.is_lookup]

    def find(self, table: Table) -> tuple[_Layer | None, bool]:
        """The config layer that owns `table`, and whether it is that exact layer (False
        when only an enclosing layer is known, e.g. a keras-hub composite)."""
        by_group = {layer.group: layer for layer in self.layers if layer.group}
        for exact, group in enumerate(_parents(_keras3_group(table.owner))):
            if group in by_group:
                return by_group[group], exact == 0
        parts = tuple(table.qualified.split("/"))
        for exact, end in enumerate(range(len(parts), 0, -1)):
            matches = [layer for layer in self.layers if self._path(layer) == parts[:end]]
            if len(matches) == 1:
                return matches[0], exact == 0
        named = [layer for layer in self.layers if layer.name == table.name]
        if len(named) == 1:
            return named[0], True
        return None, False

    def _path(self, layer: _Layer) -> tuple[str, ...]:
        names = [layer.name]
        owner = layer.container.owner
        while owner is not None:
            names.append(owner.name)
            owner = owner.container.owner
        return tuple(reversed(names))

    def feeders(self, layer: _Layer) -> tuple[list[_Layer], bool]:
        """The lookup layers whose ids reach `layer`'s input, and whether the walk was
        conclusive (every path ended at a lookup layer or at one of the model's inputs)."""
        found: list[_Layer] = []
        conclusive = True
        seen: set[int] = set()
        stack = list(self._inputs_of(layer))
        while stack:
            source = stack.pop()
            if source is None:
                conclusive = False
                continue
            if id(source) in seen:
                continue
            seen.add(id(source))
            if source.is_lookup:
                found.append(source)
            elif source.class_name == INPUT_LAYER:
                stack.extend(self._outer_inputs(source.container))
            elif source.is_model:
                stack.extend(self._outputs_of(source))
            elif source.class_name in ID_PRESERVING_CLASSES:
                stack.extend(self._inputs_of(source))
            else:
                conclusive = False
        return found, conclusive

    def _inputs_of(self, layer: _Layer) -> list[_Layer | None]:
        container = layer.container
        if container.sequential:
            before = [other for other in container.layers if other.index < layer.index]
            if before:
                return [before[-1]]
            return self._outer_inputs(container)
        names = list(_history_names(layer.raw.get("inbound_nodes")))
        if not names:
            return [None] if "inbound_nodes" not in layer.raw else self._outer_inputs(container)
        return [container.by_name(name) for name in names]

    def _outer_inputs(self, container: _Container) -> list[_Layer | None]:
        """What feeds a container: the enclosing model layer's inputs; none at the top."""
        if container.owner is None:
            return []
        return self._inputs_of(container.owner)

    def _outputs_of(self, model: _Layer) -> list[_Layer | None]:
        inner = model.inner
        if inner is None or not inner.layers:
            return [None]
        if inner.sequential:
            return [inner.layers[-1]]
        names = list(_history_names(inner.config.get("config", {}).get("output_layers")))
        return [inner.by_name(name) for name in names] or [None]


def _history_names(nodes: Any) -> Iterator[str]:
    """Layer names referenced by Keras 3 `keras_history` entries or by the legacy
    `[name, node_index, tensor_index, ...]` lists, anywhere inside `nodes`."""
    stack = [nodes]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            history = item.get("keras_history")
            if isinstance(history, list) and history and isinstance(history[0], str):
                yield history[0]
                continue
            stack.extend(item.values())
        elif isinstance(item, list):
            if (
                len(item) >= 3
                and isinstance(item[0], str)
                and isinstance(item[1], int)
                and isinstance(item[2], int)
            ):
                yield item[0]
                continue
            stack.extend(reversed(item))


def _keras3_group(owner: str) -> str:
    return "/".join(
        LAYERS_CONTAINER if part == TF_KERAS_LAYERS_CONTAINER else part for part in owner.split("/")
    )


def _parents(group: str) -> Iterator[str]:
    parts = group.split("/")
    for end in range(len(parts), 0, -1):
        if parts[end - 1] not in (LAYERS_CONTAINER, TF_KERAS_LAYERS_CONTAINER):
            yield "/".join(parts[:end])


@dataclass(frozen=True)
class _LookupRules:
    mask: Any
    oov: Any
    num_oov: int
    integer: bool

    @property
    def oov_start(self) -> int:
        return 1 if self.mask is not None else 0

    @property
    def specials(self) -> list:
        return [self.mask] * self.oov_start + [self.oov] * self.num_oov


def _rules(layer: _Layer) -> _LookupRules | None:
    """How a lookup layer lays out its rows, or None when it does not output ids."""
    config = layer.config
    if config.get("output_mode", "int") != "int" or config.get("invert", False):
        return None
    if layer.class_name == TEXT_VECTORIZATION:
        return _LookupRules(*TEXT_VECTORIZATION_SPECIALS, False)
    integer = layer.class_name == INTEGER_LOOKUP
    num_oov = config.get("num_oov_indices", 1)
    if not isinstance(num_oov, int) or isinstance(num_oov, bool) or num_oov < 0:
        return None
    mask: Any = config.get("mask_token")
    oov: Any = config.get("oov_token", DEFAULT_OOV[layer.class_name])
    if integer:
        mask = _as_int(mask)
        oov = _as_int(oov)
    return _LookupRules(mask, oov, num_oov, integer)


def _as_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _layer_vocabulary(model: ModelFile, layer: _Layer) -> Vocabulary | None:
    rules = _rules(layer)
    if rules is None:
        return None
    inline = layer.config.get("vocabulary")
    if isinstance(inline, list):
        values, source = inline, f"config:{layer.name}"
    else:
        found = _asset_vocabulary(model, layer, rules)
        if found is None:
            return None
        values, source = found
    if rules.integer:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            return None
    elif not all(map(isinstance, values, repeat(str))):
        return None
    specials = rules.specials
    start = len(specials)
    tokens = values[start:] if list(values[:start]) == specials else values
    texts = [str(t) for t in tokens] if rules.integer else list(tokens)  # str: checked above
    return Vocabulary([_text(t) for t in specials] + texts, source, start, layer.name)


def _text(token: Any) -> str:
    return str(token) if token is not None else ""


def _asset_vocabulary(
    model: ModelFile, layer: _Layer, rules: _LookupRules
) -> tuple[list, str] | None:
    if layer.group is None:
        return None
    groups = [layer.group]
    if layer.class_name == TEXT_VECTORIZATION:
        groups.append(f"{layer.group}/{TEXT_VECTORIZATION_INNER}")
    groups += [g.replace(LAYERS_CONTAINER, TF_KERAS_LAYERS_CONTAINER) for g in groups]
    for group in groups:
        name = f"{group}/{VOCABULARY_ASSET}"
        data = model.asset(name)
        if data is None:
            continue
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise BadVocabulary(f"assets/{name} is not UTF-8 text") from None
        while lines and lines[-1] == "":
            lines.pop()
        if rules.integer:
            try:
                values: list = [int(line) for line in lines]
            except ValueError:
                raise BadVocabulary(f"assets/{name} holds a line that is not an integer") from None
        else:
            values = lines
        return values, f"asset:{name}"
    return None


def find_vocabulary(model: ModelFile, table: Table) -> Vocabulary | None:
    """The vocabulary of the lookup layer that feeds `table`, if the model has one.

    The lookup layer is found by following the config's graph back from the table's layer
    through layers that keep token ids as they are. When the graph does not tell, a
    model with exactly one lookup layer whose size matches the table's rows is used.
    """
    if not table.is_embedding:
        return None
    config = model.config()
    lookups: list[_Layer] = []
    if isinstance(config, dict):
        graph = _graph_of(model, config)
        lookups = [layer for layer in graph.lookups() if _rules(layer) is not None]
    if not lookups:
        return tokenizer_vocabulary(model, table)
    layer, exact = graph.find(table)
    feeders: list[_Layer] = []
    conclusive = False
    if layer is not None:
        feeders, conclusive = graph.feeders(layer)
        feeders = [f for f in feeders if _rules(f) is not None]
    if len(feeders) == 1:
        vocabulary = _layer_vocabulary(model, feeders[0])
        if vocabulary is not None and (exact or len(vocabulary) == table.rows):
            return vocabulary
        return None
    if feeders or conclusive or len(lookups) != 1:
        return None
    vocabulary = _layer_vocabulary(model, lookups[0])
    if vocabulary is not None and len(vocabulary) == table.rows:
        return vocabulary
    return None


def tokenizer_vocabulary(model: ModelFile, table: Table) -> Vocabulary | None:
    """The vocabulary of a keras-hub model's tokenizer, for the table it indexes (see
    `embcli.tokenizer_vocab.model_tokenizer`)."""
    if not callable(getattr(model, "tokenizer_files", None)):
        return None  # no tokenizer files to look at (and their modules stay unimported)
    from embcli.tokenizer_vocab import model_tokenizer

    found = model_tokenizer(model, table)
    if found is None:
        return None
    tokenizer, asset = found
    return Vocabulary(
        tokenizer.tokens, f"{TOKENIZER_SOURCE}{asset.name}", tokenizer=tokenizer, asset=asset
    )


def table_vocabulary(
    model: ModelFile, table: Table, path: str | Path | None = None, column: str | None = None
) -> Vocabulary | None:
    """The vocabulary to use for `table`: the file given, else the model's own."""
    if path is not None:
        return load_vocabulary_file(path, column)
    return find_vocabulary(model, table)


def require_vocabulary(
    model: ModelFile, table: Table, path: str | Path | None = None, column: str | None = None
) -> Vocabulary:
    """`table_vocabulary`, or a `NoVocabulary` error when none is known."""
    vocabulary = table_vocabulary(model, table, path, column)
    if vocabulary is None:
        raise NoVocabulary(f"no vocabulary is known for {table.name}", remedy="vocab")
    return vocabulary


def token_rows(
    vocabulary: Vocabulary, table: Table, tokens: Sequence[str], lowercase: bool = False
) -> np.ndarray:
    """The row of each token in `table`, in order; `UnknownToken` for a token that the
    vocabulary lacks or that lies beyond the table's rows."""
    found = []
    for word in tokens:
        index = vocabulary.row_of(word.lower() if lowercase else word)
        if index >= table.rows:
            raise UnknownToken(
                f"{word!r} is row {index} of the vocabulary, beyond the "
                f"{table.rows} rows of {table.name}"
            )
        found.append(index)
    return np.asarray(found, dtype=np.int64)

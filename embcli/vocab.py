"""Vocabularies: which word each row of a table stands for.

A table's vocabulary comes from a `TextVectorization`, `StringLookup` or `IntegerLookup`
layer that feeds it in the same model (`embcli.config_graph` follows the config's graph,
`embcli.lookup_vocab` reads the layer's vocabulary), from the model's keras-hub tokenizer
(a preset's `tokenizer.json` and `assets/tokenizer/...`, a `.keras` archive's tokenizer
assets), or from a file the user gives (`embcli.vocab_files`). The `Vocabulary` type is
in `embcli.vocabulary`; it and `load_vocabulary_file` are importable from here too.
"""

from __future__ import annotations

from pathlib import Path

from embcli.config_graph import ConfigLayer, graph_of
from embcli.errors import NoVocabulary
from embcli.formats.base import ModelFile, Table
from embcli.lookup_vocab import layer_vocabulary, lookup_rules
from embcli.vocab_files import load_vocabulary_file
from embcli.vocabulary import TOKENIZER_SOURCE, Vocabulary, token_rows

__all__ = [
    "TOKENIZER_SOURCE",
    "Vocabulary",
    "find_vocabulary",
    "load_vocabulary_file",
    "require_vocabulary",
    "table_vocabulary",
    "token_rows",
    "tokenizer_vocabulary",
]


def find_vocabulary(model: ModelFile, table: Table) -> Vocabulary | None:
    """The vocabulary of the lookup layer that feeds `table`, if the model has one.

    The lookup layer is found by following the config's graph back from the table's layer
    through layers that keep token ids as they are. When the graph does not tell, a
    model with exactly one lookup layer whose size matches the table's rows is used.
    """
    if not table.is_embedding:
        return None
    config = model.config()
    lookups: list[ConfigLayer] = []
    if isinstance(config, dict):
        graph = graph_of(model, config)
        lookups = [layer for layer in graph.lookups() if lookup_rules(layer) is not None]
    if not lookups:
        return tokenizer_vocabulary(model, table)
    layer, exact = graph.find(table)
    feeders: list[ConfigLayer] = []
    conclusive = False
    if layer is not None:
        feeders, conclusive = graph.feeders(layer)
        feeders = [f for f in feeders if lookup_rules(f) is not None]
    if len(feeders) == 1:
        vocabulary = layer_vocabulary(model, feeders[0])
        if vocabulary is not None and (exact or len(vocabulary) == table.rows):
            return vocabulary
        return None
    if feeders or conclusive or len(lookups) != 1:
        return None
    vocabulary = layer_vocabulary(model, lookups[0])
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

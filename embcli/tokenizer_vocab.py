"""A model's tokenizer vocabulary, and tokenizer files given as vocabulary files.

keras-hub keeps a model's tokenizer beside its weights (a preset's `tokenizer.json` and
`assets/tokenizer/...`, a `.keras` archive's tokenizer assets); the format module says
where (`tokenizer_files()`), `embcli.tokenizer_assets` finds the vocabulary file and
`embcli.tokenizers` reads it. `embcli.vocab` wraps the result as a `Vocabulary`.
"""

from __future__ import annotations

import json
from pathlib import Path

from embcli.errors import BadVocabulary, NoVocabulary
from embcli.formats.base import ModelFile, Table
from embcli.tokenizer_assets import (
    PRESET,
    TokenizerFiles,
    VocabularyAsset,
    backbone_vocabulary_size,
    find_vocabulary_asset,
    read_asset,
)
from embcli.tokenizers import (
    BYTE_PAIR,
    HF_TOKENIZER_JSON,
    SENTENCEPIECE,
    TokenizerVocabulary,
    read_vocabulary,
)

# Names under which a model keeps the table its tokenizer indexes, where several tables
# have the vocabulary's rows.
TOKEN_TABLE_NAMES = ("token_embedding", "word_embed", "embed_tokens")
SENTENCEPIECE_SUFFIXES = (".spm", ".model")
KERAS_HUB_TOKENIZER_CONFIG = "tokenizer.json"


def model_tokenizer(
    model: ModelFile, table: Table
) -> tuple[TokenizerVocabulary, VocabularyAsset] | None:
    """A keras-hub model's tokenizer vocabulary and where it is, for the table it indexes:
    the one whose rows are the backbone's `vocabulary_size` (the token embedding, where
    another table has as many rows); None for any other table or model.

    Raises:
        BadVocabulary: the tokenizer's files do not parse.
    """
    found = getattr(model, "tokenizer_files", None)
    source = found() if callable(found) else None
    if not isinstance(source, TokenizerFiles):
        return None
    size = backbone_vocabulary_size(source.config)
    if size is None or table.rows != size or not _is_token_table(model, table, size):
        return None
    try:
        asset = find_vocabulary_asset(source)
    except NoVocabulary:
        return None
    return read_asset(asset, source.files), asset


def _is_token_table(model: ModelFile, table: Table, size: int) -> bool:
    from embcli.model import list_tables

    same = [t for t in list_tables(model) if t.rows == size]
    if len(same) <= 1:
        return True
    named = [t for t in same if t.name.split("/")[-1] in TOKEN_TABLE_NAMES]
    return len(named) == 1 and named[0].weight == table.weight


def read_tokenizer_file(path: Path, data: bytes) -> TokenizerVocabulary | None:
    """A tokenizer file's vocabulary, told by its name and content, or None for a plain
    one-token-a-line file: a SentencePiece model (`*.spm`, `*.model`), a Hugging Face
    `tokenizer.json`, a keras-hub preset's `tokenizer.json` (its vocabulary is read from
    `assets/` beside it) or a byte-pair token -> id map (`vocab.json`).

    Raises:
        BadVocabulary: the file does not parse as the kind it is.
    """
    if path.suffix.lower() in SENTENCEPIECE_SUFFIXES:
        return read_vocabulary(SENTENCEPIECE, data, str(path))
    if path.suffix.lower() != ".json":
        return None
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadVocabulary(f"{path}: not valid JSON") from None
    if not isinstance(document, dict):
        raise BadVocabulary(f"{path}: not a JSON object")
    if "model" in document:
        return read_vocabulary(HF_TOKENIZER_JSON, data, str(path))
    if "class_name" in document and "config" in document:
        return _preset_tokenizer_beside(path, data)
    return read_vocabulary(BYTE_PAIR, data, str(path))


def _preset_tokenizer_beside(path: Path, data: bytes) -> TokenizerVocabulary:
    """The vocabulary a keras-hub `tokenizer.json` names, under `assets/` beside it."""
    from embcli.formats.side_files import folder_tokenizer_files

    files = dict(folder_tokenizer_files(path.parent).items())
    files[KERAS_HUB_TOKENIZER_CONFIG] = data
    try:
        return read_asset(find_vocabulary_asset(TokenizerFiles(files, PRESET, None)), files)
    except NoVocabulary as exc:
        raise BadVocabulary(f"{path}: {exc}") from None

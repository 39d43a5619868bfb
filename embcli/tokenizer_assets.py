"""Which vocabulary file a keras-hub preset folder or a `.keras` archive holds.

A keras-hub preset has `tokenizer.json`, the tokenizer's serialized config (class name and
constructor arguments, the vocabulary left out), and the vocabulary itself under
`assets/<config file stem>/`: `vocabulary.txt` (WordPiece), `vocabulary.json` +
`merges.txt` (byte-pair) or `vocabulary.spm` (SentencePiece). A `.keras` archive of a task
keeps the same files under the tokenizer's layer path, e.g.
`assets/preprocessor/tokenizer/vocabulary.json`.

These are pure functions over asset names and a mapping of names to bytes, so that each
format module can feed them from a folder, a zip archive or a remote store.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from embcli.errors import BadVocabulary, NoVocabulary
from embcli.guarded.parsing import holds_containers
from embcli.tokenizers import (
    BYTE_PAIR,
    HF_MODEL_KEY,
    HF_TOKENIZER_JSON,
    SENTENCEPIECE,
    WORDPIECE,
    TokenizerVocabulary,
    read_vocabulary,
)

TOKENIZER_CONFIG_FILE = "tokenizer.json"
ASSETS_DIR = "assets"
MERGES_FILE = "merges.txt"
# keras-hub's asset file for each kind, in the order they are looked for.
KERAS_HUB_VOCABULARY_FILES = (
    ("vocabulary.spm", SENTENCEPIECE),
    ("vocabulary.json", BYTE_PAIR),
    ("vocabulary.txt", WORDPIECE),
)
# Only a directory named like this may hold a WordPiece `vocabulary.txt`: Keras lookup
# layers (StringLookup, TextVectorization) write their own `vocabulary.txt` assets.
TOKENIZER_DIR_MARK = "tokenizer"
# Tokenizer config arguments that name special tokens (Llama 3's, Hugging Face's).
SPECIAL_TOKEN_ARGUMENTS = (
    "bos_token",
    "eos_token",
    "pad_token",
    "unk_token",
    "mask_token",
    "cls_token",
    "sep_token",
)
SPECIAL_TOKEN_LIST_ARGUMENTS = ("special_tokens", "misc_special_tokens", "unsplittable_tokens")
MAX_CONFIG_BYTES = 1 << 26
PRESET = "preset"
ARCHIVE = "archive"
BACKBONE_SUFFIX = "Backbone"
BACKBONE_SIZE_KEY = "vocabulary_size"


@dataclass(frozen=True)
class TokenizerFiles:
    """The files a model's tokenizer may be read from.

    Attributes:
        files: file name -> bytes (read when looked up), relative to the preset folder
            or the archive's root: `tokenizer.json`, `assets/...`, `config.json`.
        layout: `PRESET` (a `tokenizer.json` names the assets) or `ARCHIVE` (assets
            under the tokenizer's layer path, found by name).
        config: the model's config, where the backbone's `vocabulary_size` is.
    """

    files: Mapping[str, bytes]
    layout: str
    config: dict | None


@dataclass(frozen=True)
class VocabularyAsset:
    """Where a tokenizer's vocabulary is, and what kind it is.

    Attributes:
        kind: the file format (see `embcli.tokenizers.KINDS`).
        name: the vocabulary file's name in the mapping it was found in.
        tokenizer_class: the keras-hub class named by the config, if known.
        merges: the byte-pair merges file beside it, if any.
        special_tokens: further special tokens that the config names.
    """

    kind: str
    name: str
    tokenizer_class: str | None = None
    merges: str | None = None
    special_tokens: tuple[str, ...] = ()


def preset_vocabulary_asset(
    files: Mapping[str, bytes], config_name: str = TOKENIZER_CONFIG_FILE
) -> VocabularyAsset:
    """The vocabulary file of a keras-hub preset (or a Hugging Face `tokenizer.json`).

    Args:
        files: the preset's files by their path relative to the preset folder; only
            `config_name` and names under `assets/` are looked up.
        config_name: the tokenizer config file.

    Raises:
        NoVocabulary: the preset has no tokenizer config or no vocabulary file.
        BadVocabulary: the config cannot be read.
    """
    if config_name not in files:
        raise NoVocabulary(f"the preset has no {config_name}")
    config = _json_object(files[config_name], config_name)
    if HF_MODEL_KEY in config:
        return VocabularyAsset(HF_TOKENIZER_JSON, config_name)
    class_name = config.get("class_name")
    arguments = config.get("config")
    if not isinstance(class_name, str) or not isinstance(arguments, dict):
        raise BadVocabulary(f"{config_name} is not a keras-hub tokenizer config")
    stem = arguments.get("config_file", config_name)
    if not isinstance(stem, str) or not _is_plain_name(stem):
        raise BadVocabulary(f"{config_name}: config_file {stem!r} is not a plain file name")
    directory = f"{ASSETS_DIR}/{stem.split('.')[0]}"
    names = set(_names_under(files, directory))
    asset = _asset_in(directory, names, class_name, named_by_config=True)
    if asset is None:
        raise NoVocabulary(f"{class_name} in {config_name} has no vocabulary under {directory}/")
    return _with_specials(asset, arguments)


def archive_vocabulary_assets(
    names: Iterable[str], config: bytes | None = None
) -> list[VocabularyAsset]:
    """Every tokenizer vocabulary among a `.keras` archive's members, by directory.

    Args:
        names: the archive's member names.
        config: the archive's `config.json`, if the tokenizer's class should be named.
    """
    directories: dict[str, set[str]] = {}
    for name in names:
        if name.startswith(ASSETS_DIR + "/") and "/" in name[len(ASSETS_DIR) + 1 :]:
            directory, base = name.rsplit("/", 1)
            directories.setdefault(directory, set()).add(name)
    classes = _tokenizer_classes(config) if config is not None else []
    class_name = classes[0] if len(classes) == 1 else None
    found = []
    for directory in sorted(directories):
        asset = _asset_in(directory, directories[directory], class_name)
        if asset is not None:
            found.append(asset)
    return found


def archive_vocabulary_asset(names: Iterable[str], config: bytes | None = None) -> VocabularyAsset:
    """The one tokenizer vocabulary of a `.keras` archive.

    Raises:
        NoVocabulary: the archive holds none, or more than one.
    """
    found = archive_vocabulary_assets(names, config)
    if not found:
        raise NoVocabulary("the archive holds no tokenizer vocabulary")
    if len(found) > 1:
        listed = ", ".join(asset.name for asset in found)
        raise NoVocabulary(f"the archive holds {len(found)} tokenizer vocabularies: {listed}")
    return found[0]


def read_asset(asset: VocabularyAsset, files: Mapping[str, bytes]) -> TokenizerVocabulary:
    """Read the vocabulary that `asset` points at; config-named specials are marked too.

    Raises:
        NoVocabulary: the file is missing from `files`.
        BadVocabulary: it cannot be parsed.
    """
    if asset.name not in files:
        raise NoVocabulary(f"{asset.name} is missing")
    vocabulary = read_vocabulary(asset.kind, files[asset.name], asset.name)
    named = {vocabulary.ids[t] for t in asset.special_tokens if t in vocabulary.ids}
    if named <= vocabulary.special_ids:
        return vocabulary
    return TokenizerVocabulary(
        vocabulary.tokens, vocabulary.special_ids | named, vocabulary.kind, vocabulary.source
    )


def read_preset_vocabulary(files: Mapping[str, bytes]) -> TokenizerVocabulary:
    """The tokens of a keras-hub preset's tokenizer, in id order."""
    return read_asset(preset_vocabulary_asset(files), files)


def find_vocabulary_asset(source: TokenizerFiles) -> VocabularyAsset:
    """The vocabulary file of a preset's or an archive's tokenizer.

    Raises:
        NoVocabulary: there is none (or, in an archive, more than one).
        BadVocabulary: the tokenizer config cannot be read.
    """
    if source.layout == PRESET:
        return preset_vocabulary_asset(source.files)
    config = source.files.get("config.json") if "config.json" in source.files else None
    return archive_vocabulary_asset(list(source.files), config)


def backbone_vocabulary_size(config: Any) -> int | None:
    """The `vocabulary_size` of the keras-hub backbone a config is or nests (a task's
    `backbone`), when every backbone config in it agrees on one."""
    sizes: set[int] = set()
    stack: list[Any] = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            if holds_containers(node):
                stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
            inner = node.get("config")
            name = node.get("class_name")
            if isinstance(name, str) and name.endswith(BACKBONE_SUFFIX) and isinstance(inner, dict):
                size = inner.get(BACKBONE_SIZE_KEY)
                if isinstance(size, int) and not isinstance(size, bool) and size > 0:
                    sizes.add(size)
    return sizes.pop() if len(sizes) == 1 else None


def _asset_in(
    directory: str, names: set[str], class_name: str | None, named_by_config: bool = False
) -> VocabularyAsset | None:
    for base, kind in KERAS_HUB_VOCABULARY_FILES:
        name = f"{directory}/{base}"
        if name not in names:
            continue
        unmarked = TOKENIZER_DIR_MARK not in directory.rsplit("/", 1)[-1]
        if kind == WORDPIECE and unmarked and not named_by_config:
            continue
        merges = f"{directory}/{MERGES_FILE}"
        return VocabularyAsset(
            kind, name, class_name, merges if kind == BYTE_PAIR and merges in names else None
        )
    return None


def _names_under(files: Mapping[str, bytes], directory: str) -> Iterable[str]:
    for base, _ in KERAS_HUB_VOCABULARY_FILES + ((MERGES_FILE, ""),):
        name = f"{directory}/{base}"
        if name in files:
            yield name


def _with_specials(asset: VocabularyAsset, arguments: Mapping[str, Any]) -> VocabularyAsset:
    named: list[str] = []
    for key in SPECIAL_TOKEN_ARGUMENTS:
        value = arguments.get(key)
        if isinstance(value, str) and value:
            named.append(value)
    for key in SPECIAL_TOKEN_LIST_ARGUMENTS:
        values = arguments.get(key)
        if isinstance(values, list):
            named.extend(v for v in values if isinstance(v, str) and v)
    if not named:
        return asset
    return VocabularyAsset(
        asset.kind, asset.name, asset.tokenizer_class, asset.merges, tuple(dict.fromkeys(named))
    )


def _tokenizer_classes(config: bytes) -> list[str]:
    """keras-hub tokenizer classes named anywhere in an archive's config.json."""
    document = _json_object(config, "config.json")
    classes: list[str] = []
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            name = node.get("class_name")
            registered = node.get("registered_name")
            if (
                isinstance(name, str)
                and name.endswith("Tokenizer")
                and isinstance(registered, str)
                and registered.startswith("keras_hub>")
                and name not in classes
            ):
                classes.append(name)
            stack.extend(node.values())
        elif isinstance(node, list) and holds_containers(node):
            stack.extend(node)
    return classes


def _json_object(data: bytes, source: str) -> dict[str, Any]:
    if len(data) > MAX_CONFIG_BYTES:
        raise BadVocabulary(f"{source} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        document = json.loads(bytes(data).decode("utf-8"))
    except RecursionError:
        raise BadVocabulary(f"{source} is nested too deeply") from None
    except ValueError as error:
        raise BadVocabulary(f"{source} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise BadVocabulary(f"{source} is not a JSON object")
    return document


def _is_plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")

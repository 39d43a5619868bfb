"""Tokenizer vocabularies read from their files' bytes: which token each table row is.

Four formats are read, and each can be written back with tokens appended:

- WordPiece `vocabulary.txt` (keras-hub) or `vocab.txt` (Hugging Face): one token a line,
  the line number is the id.
- Byte-pair `vocabulary.json` (keras-hub) or `vocab.json` (Hugging Face): a JSON object
  from token to id; the ids must be exactly 0..n-1.
- SentencePiece `vocabulary.spm` (keras-hub) or `tokenizer.model`: see
  `embcli.sentencepiece_model`.
- Hugging Face `tokenizer.json`: `model.vocab` (a token -> id map, or for Unigram a list of
  `[piece, score]` pairs in id order) together with `added_tokens`.

Nothing here runs tokenizer or model code; files are only parsed. Which file of a
keras-hub preset or `.keras` archive to read is found by `embcli.tokenizer_assets`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from embcli.errors import BadArgument, BadVocabulary
from embcli.sentencepiece_model import (
    SPECIAL_PIECE_TYPES,
    append_user_defined,
    check_new_tokens,
    parse_pieces,
)

WORDPIECE = "wordpiece"
BYTE_PAIR = "bpe"
SENTENCEPIECE = "sentencepiece"
HF_TOKENIZER_JSON = "hf_tokenizer_json"
KINDS = (WORDPIECE, BYTE_PAIR, SENTENCEPIECE, HF_TOKENIZER_JSON)

# File names that tell the format on their own.
KIND_BY_FILE_NAME = {
    "vocabulary.txt": WORDPIECE,
    "vocab.txt": WORDPIECE,
    "vocabulary.json": BYTE_PAIR,
    "vocab.json": BYTE_PAIR,
    "vocabulary.spm": SENTENCEPIECE,
    "tokenizer.model": SENTENCEPIECE,
    "spiece.model": SENTENCEPIECE,
    "tokenizer.json": HF_TOKENIZER_JSON,
}

MAX_VOCABULARY_BYTES = 1 << 31
# Marker tokens by their spelling in text vocabularies: `[CLS]`, `<s>`, `<|endoftext|>`.
SPECIAL_SPELLING = re.compile(r"\[[A-Z][A-Z0-9_]*\]|<\|[^|\s]+\|>|</?[A-Za-z][A-Za-z0-9_]*>")
HF_MODEL_KEY = "model"
HF_VOCAB_KEY = "vocab"
HF_ADDED_TOKENS_KEY = "added_tokens"


@dataclass(frozen=True)
class TokenizerVocabulary:
    """A tokenizer's tokens in id (table row) order.

    Attributes:
        tokens: one token per id.
        special_ids: ids of marker tokens (padding, unknown, start/end, mask, ...).
        kind: the file format, one of `KINDS`.
        source: the file it was read from.
        ids: token -> id; a repeated token maps to its last row.
    """

    tokens: list[str]
    special_ids: frozenset[int]
    kind: str
    source: str = ""
    ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A repeated line of a vocab.txt maps to its last row, as Hugging Face reads it.
        object.__setattr__(self, "ids", {token: row for row, token in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    def special_tokens(self) -> dict[str, int]:
        """Each special token with its id."""
        return {self.tokens[i]: i for i in sorted(self.special_ids)}


def kind_of_file(name: str) -> str | None:
    """The format a vocabulary file's base name stands for, or None if it tells none."""
    return KIND_BY_FILE_NAME.get(name.rsplit("/", 1)[-1])


def read_vocabulary_file(name: str, data: bytes) -> TokenizerVocabulary:
    """Parse a vocabulary file whose base name tells its format (`vocab.txt`, ...).

    Raises:
        BadVocabulary: the name tells no format, or the bytes do not fit it.
    """
    kind = kind_of_file(name)
    if kind is None:
        known = ", ".join(sorted(KIND_BY_FILE_NAME))
        raise BadVocabulary(f"{name}: the file name tells no vocabulary format (known: {known})")
    return read_vocabulary(kind, data, name)


def read_vocabulary(kind: str, data: bytes, source: str = "") -> TokenizerVocabulary:
    """Parse one vocabulary file of the given format.

    Args:
        kind: one of `KINDS`.
        data: the file's bytes.
        source: how to name the file in error messages.

    Raises:
        BadVocabulary: the bytes are not a well-formed vocabulary of that kind.
    """
    readers = {
        WORDPIECE: read_wordpiece,
        BYTE_PAIR: read_byte_pair,
        SENTENCEPIECE: read_sentencepiece,
        HF_TOKENIZER_JSON: read_hf_tokenizer_json,
    }
    if kind not in readers:
        raise BadVocabulary(f"unknown vocabulary kind {kind!r}; known: {', '.join(KINDS)}")
    return readers[kind](data, source)


def read_wordpiece(data: bytes, source: str = "") -> TokenizerVocabulary:
    """One token a line (`\\n`, `\\r\\n` or `\\r`); a final line ending adds no token.

    Lines are kept as they are, spaces and a byte order mark included, as Python's
    universal-newline reading and Hugging Face give them (keras-hub also strips trailing
    whitespace from each line).
    """
    tokens = _lines(_text(data, source or "vocabulary.txt"))
    if not tokens:
        raise BadVocabulary(f"{source or 'the vocabulary'} holds no tokens")
    return TokenizerVocabulary(tokens, _specials_by_spelling(tokens), WORDPIECE, source)


def read_byte_pair(data: bytes, source: str = "") -> TokenizerVocabulary:
    """A JSON object token -> id whose ids are exactly 0..n-1."""
    name = source or "vocabulary.json"
    mapping = _json(data, name)
    ids = _token_ids(mapping, name)
    tokens = _rows_from_ids(ids, {}, name)
    return TokenizerVocabulary(tokens, _specials_by_spelling(tokens), BYTE_PAIR, source)


def read_sentencepiece(data: bytes, source: str = "") -> TokenizerVocabulary:
    """A serialized SentencePiece `ModelProto`; UNKNOWN and CONTROL pieces are special."""
    pieces = parse_pieces(data, source or "SentencePiece model")
    specials = frozenset(i for i, piece in enumerate(pieces) if piece.type in SPECIAL_PIECE_TYPES)
    return TokenizerVocabulary([p.text for p in pieces], specials, SENTENCEPIECE, source)


def read_hf_tokenizer_json(data: bytes, source: str = "") -> TokenizerVocabulary:
    """A Hugging Face `tokenizer.json`: `model.vocab` and `added_tokens` together."""
    name = source or "tokenizer.json"
    document = _json(data, name)
    model = document.get(HF_MODEL_KEY)
    if model is None and "class_name" in document and "config" in document:
        raise BadVocabulary(
            f"{name} is a keras-hub tokenizer config; the vocabulary is a file under assets/"
        )
    if not isinstance(model, dict) or HF_VOCAB_KEY not in model:
        raise BadVocabulary(f"{name} has no model.vocab; it is not a Hugging Face tokenizer")
    vocab = model[HF_VOCAB_KEY]
    if isinstance(vocab, dict):
        ids = _token_ids(vocab, name)
    elif isinstance(vocab, list):
        ids = _unigram_ids(vocab, name)
    else:
        raise BadVocabulary(f"{name}: model.vocab is neither a map nor a list")
    added, specials = _added_tokens(document.get(HF_ADDED_TOKENS_KEY, []), name)
    tokens = _rows_from_ids(ids, added, name)
    return TokenizerVocabulary(tokens, frozenset(specials), HF_TOKENIZER_JSON, source)


def append_tokens(kind: str, data: bytes, tokens: Sequence[str], source: str = "") -> bytes:
    """The vocabulary file with `tokens` added at the end, taking ids n, n+1, ...

    WordPiece gets new lines; a byte-pair map gets new entries; a SentencePiece model gets
    new USER_DEFINED pieces (every existing byte kept); a Hugging Face `tokenizer.json`
    gets new non-special `added_tokens`.

    Raises:
        BadVocabulary: `data` is not a well-formed vocabulary of that kind.
        BadArgument: a token is empty, repeats, is already there, or (WordPiece) holds a
            line break.
    """
    writers = {
        WORDPIECE: append_wordpiece,
        BYTE_PAIR: append_byte_pair,
        SENTENCEPIECE: append_user_defined,
        HF_TOKENIZER_JSON: append_hf_tokenizer_json,
    }
    if kind not in writers:
        raise BadVocabulary(f"unknown vocabulary kind {kind!r}; known: {', '.join(KINDS)}")
    return writers[kind](data, tokens, source)


def append_wordpiece(data: bytes, tokens: Sequence[str], source: str = "") -> bytes:
    """`data` with one line per new token; a missing final line ending is added first."""
    vocabulary = read_wordpiece(data, source)
    check_new_tokens(tokens, set(vocabulary.tokens))
    _refuse_line_breaks(tokens)
    newline = b"\r\n" if b"\r\n" in data else b"\n"
    head = data if data.endswith((b"\n", b"\r")) else data + newline
    return head + b"".join(token.encode("utf-8") + newline for token in tokens)


def append_byte_pair(data: bytes, tokens: Sequence[str], source: str = "") -> bytes:
    """`data` with `"token": id` entries inserted before the object's closing brace."""
    vocabulary = read_byte_pair(data, source)
    check_new_tokens(tokens, set(vocabulary.tokens))
    text = _text(data, source or "vocabulary.json")
    body = text.rstrip()
    tail = text[len(body) :]
    first = len(vocabulary)
    entries = ", ".join(
        f"{json.dumps(token, ensure_ascii=False)}: {first + offset}"
        for offset, token in enumerate(tokens)
    )
    if not entries:
        return data
    inside = body[:-1].rstrip()
    separator = "" if inside.endswith("{") else ", "
    return (inside + separator + entries + "}" + tail).encode("utf-8")


def append_hf_tokenizer_json(data: bytes, tokens: Sequence[str], source: str = "") -> bytes:
    """The document with a non-special `added_tokens` entry for each new token."""
    vocabulary = read_hf_tokenizer_json(data, source)
    check_new_tokens(tokens, set(vocabulary.tokens))
    document = json.loads(data)
    added = document.setdefault(HF_ADDED_TOKENS_KEY, [])
    for offset, token in enumerate(tokens):
        added.append(
            {
                "id": len(vocabulary) + offset,
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": True,
                "special": False,
            }
        )
    return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")


def _text(data: bytes, source: str) -> str:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadVocabulary(f"{source}: expected bytes, got {type(data).__name__}")
    if len(data) > MAX_VOCABULARY_BYTES:
        raise BadVocabulary(f"{source} is larger than {MAX_VOCABULARY_BYTES} bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadVocabulary(f"{source} is not UTF-8 text (byte {error.start})") from None
    return text


def _lines(text: str) -> list[str]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _refuse_line_breaks(tokens: Iterable[str]) -> None:
    for token in tokens:
        if "\n" in token or "\r" in token:
            raise BadArgument(f"cannot add {token!r}: a WordPiece token cannot hold a line break")


def _json(data: bytes, source: str) -> dict[str, Any]:
    text = _text(data, source)
    try:
        document = json.loads(text)
    except RecursionError:
        raise BadVocabulary(f"{source} is nested too deeply") from None
    except ValueError as error:
        raise BadVocabulary(f"{source} is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise BadVocabulary(f"{source} is not a JSON object")
    return document


def _token_ids(mapping: Mapping[str, Any], source: str) -> dict[str, int]:
    ids: dict[str, int] = {}
    for token, value in mapping.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadVocabulary(f"{source}: the id of {token!r} is not an integer: {value!r}")
        ids[token] = value
    return ids


def _unigram_ids(entries: list[Any], source: str) -> dict[str, int]:
    ids: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if not (isinstance(entry, list) and entry and isinstance(entry[0], str)):
            raise BadVocabulary(f"{source}: model.vocab[{index}] is not a [piece, score] pair")
        if entry[0] in ids:
            raise BadVocabulary(f"{source}: piece {entry[0]!r} appears twice in model.vocab")
        ids[entry[0]] = index
    return ids


def _added_tokens(entries: Any, source: str) -> tuple[dict[str, int], set[int]]:
    if not isinstance(entries, list):
        raise BadVocabulary(f"{source}: added_tokens is not a list")
    added: dict[str, int] = {}
    specials: set[int] = set()
    for index, entry in enumerate(entries):
        content = entry.get("content") if isinstance(entry, dict) else None
        number = entry.get("id") if isinstance(entry, dict) else None
        if not isinstance(content, str) or isinstance(number, bool) or not isinstance(number, int):
            raise BadVocabulary(f"{source}: added_tokens[{index}] needs a content and an id")
        if content in added and added[content] != number:
            raise BadVocabulary(f"{source}: added token {content!r} has two ids")
        added[content] = number
        if entry.get("special") is True:
            specials.add(number)
    return added, specials


def _rows_from_ids(ids: dict[str, int], added: dict[str, int], source: str) -> list[str]:
    """Tokens by id; every id from 0 to the largest must be held by exactly one token."""
    by_id: dict[int, str] = {}
    for token, number in list(ids.items()) + list(added.items()):
        if number < 0:
            raise BadVocabulary(f"{source}: token {token!r} has negative id {number}")
        held = by_id.get(number)
        if held is not None and held != token:
            raise BadVocabulary(f"{source}: id {number} is given to {held!r} and to {token!r}")
        by_id[number] = token
    if not by_id:
        raise BadVocabulary(f"{source} holds no tokens")
    size = max(by_id) + 1
    if size != len(by_id):
        missing = _first_missing(by_id)
        shown = ", ".join(str(i) for i in missing)
        raise BadVocabulary(
            f"{source}: ids are not 0..{size - 1} without gaps; "
            f"{size - len(by_id)} missing, first: {shown}"
        )
    return [by_id[i] for i in range(size)]


def _first_missing(by_id: Mapping[int, str], limit: int = 5) -> list[int]:
    missing: list[int] = []
    expected = 0
    for number in sorted(by_id):
        while expected < number and len(missing) < limit:
            missing.append(expected)
            expected += 1
        if len(missing) == limit:
            break
        expected = number + 1
    return missing


def _specials_by_spelling(tokens: Sequence[str]) -> frozenset[int]:
    return frozenset(i for i, token in enumerate(tokens) if SPECIAL_SPELLING.fullmatch(token))

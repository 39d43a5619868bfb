"""SentencePiece models (`vocabulary.spm`, `tokenizer.model`) read from their bytes.

A model file is a serialized `ModelProto` (sentencepiece_model.proto). Only its field 1,
the repeated `pieces`, matters here: each piece's `piece` (field 1, string), `score`
(field 2, float) and `type` (field 3, enum). The piece at position i is token id i.
The protobuf wire format is walked by hand, so neither protobuf nor sentencepiece is
imported, and nothing in the file is ever run.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from embcli.errors import BadArgument, BadVocabulary

MODEL_PIECES_FIELD = 1
PIECE_TEXT_FIELD = 1
PIECE_SCORE_FIELD = 2
PIECE_TYPE_FIELD = 3

WIRE_VARINT = 0
WIRE_FIXED64 = 1
WIRE_LENGTH_DELIMITED = 2
WIRE_FIXED32 = 5

MAX_VARINT_BYTES = 10
MAX_MODEL_BYTES = 1 << 31


class PieceType(IntEnum):
    """`ModelProto.SentencePiece.Type`."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# Pieces a tokenizer never produces from text: they stand for markers, not text.
SPECIAL_PIECE_TYPES = frozenset({PieceType.UNKNOWN, PieceType.CONTROL})


@dataclass(frozen=True)
class Piece:
    """One entry of the model's vocabulary."""

    text: str
    score: float
    type: PieceType


def parse_pieces(data: bytes, source: str = "SentencePiece model") -> list[Piece]:
    """The model's pieces in id order.

    Args:
        data: the serialized `ModelProto`.
        source: how to name the file in error messages.

    Returns:
        One `Piece` per token id.

    Raises:
        BadVocabulary: the bytes are not a well-formed model with at least one piece, or
            a piece repeats.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadVocabulary(f"{source}: expected bytes, got {type(data).__name__}")
    if len(data) > MAX_MODEL_BYTES:
        raise BadVocabulary(f"{source} is larger than {MAX_MODEL_BYTES} bytes")
    view = memoryview(data)
    pieces: list[Piece] = []
    for field, wire, start, end in _fields(view, 0, len(view), source):
        if field == MODEL_PIECES_FIELD:
            if wire != WIRE_LENGTH_DELIMITED:
                raise BadVocabulary(f"{source}: piece {len(pieces)} is not a message")
            pieces.append(_parse_piece(view, start, end, source, len(pieces)))
    if not pieces:
        raise BadVocabulary(f"{source} holds no pieces; it is not a SentencePiece model")
    seen: dict[str, int] = {}
    for index, piece in enumerate(pieces):
        if piece.text in seen:
            raise BadVocabulary(
                f"{source}: piece {piece.text!r} appears as ids {seen[piece.text]} and {index}"
            )
        seen[piece.text] = index
    return pieces


def append_user_defined(data: bytes, tokens: Sequence[str], source: str = "") -> bytes:
    """The model with `tokens` appended as USER_DEFINED pieces (score 0), ids n, n+1, ...

    Every byte of `data` is kept as it is: new `pieces` entries are added at the end of
    the message, which protobuf readers append to the repeated field in order.

    Raises:
        BadVocabulary: `data` is not a well-formed model.
        BadArgument: a token is empty, repeats, or is already a piece.
    """
    existing = {piece.text for piece in parse_pieces(data, source or "SentencePiece model")}
    check_new_tokens(tokens, existing)
    extra = bytearray()
    for token in tokens:
        message = (
            _length_delimited(PIECE_TEXT_FIELD, token.encode("utf-8"))
            + _tag(PIECE_SCORE_FIELD, WIRE_FIXED32)
            + struct.pack("<f", 0.0)
            + _tag(PIECE_TYPE_FIELD, WIRE_VARINT)
            + _varint(PieceType.USER_DEFINED)
        )
        extra += _length_delimited(MODEL_PIECES_FIELD, message)
    return bytes(data) + bytes(extra)


def check_new_tokens(tokens: Sequence[str], existing: set[str] | frozenset[str]) -> None:
    """Refuse tokens that are empty, not text, repeated, or already in the vocabulary."""
    if isinstance(tokens, str):
        raise BadArgument("tokens must be a list of strings, not one string")
    seen: set[str] = set()
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise BadArgument(f"cannot add {token!r}: a token must be a non-empty string")
        try:
            token.encode("utf-8")
        except UnicodeEncodeError:
            raise BadArgument(f"cannot add {token!r}: it is not valid Unicode text") from None
        if token in existing:
            raise BadArgument(f"cannot add {token!r}: it is already in the vocabulary")
        if token in seen:
            raise BadArgument(f"cannot add {token!r} twice")
        seen.add(token)


def _parse_piece(view: memoryview, start: int, end: int, source: str, index: int) -> Piece:
    text: str | None = None
    score = 0.0
    kind = PieceType.NORMAL
    for field, wire, value_start, value_end in _fields(view, start, end, source):
        if field == PIECE_TEXT_FIELD and wire == WIRE_LENGTH_DELIMITED:
            try:
                text = bytes(view[value_start:value_end]).decode("utf-8")
            except UnicodeDecodeError:
                raise BadVocabulary(f"{source}: piece {index} is not valid UTF-8") from None
        elif field == PIECE_SCORE_FIELD and wire == WIRE_FIXED32:
            (score,) = struct.unpack("<f", view[value_start:value_end])
        elif field == PIECE_TYPE_FIELD and wire == WIRE_VARINT:
            number = _read_varint(view, value_start, value_end, source)[0]
            try:
                kind = PieceType(number)
            except ValueError:
                raise BadVocabulary(f"{source}: piece {index} has unknown type {number}") from None
        elif field in (PIECE_TEXT_FIELD, PIECE_SCORE_FIELD, PIECE_TYPE_FIELD):
            raise BadVocabulary(f"{source}: piece {index} has field {field} of the wrong kind")
    if text is None:
        raise BadVocabulary(f"{source}: piece {index} has no text")
    return Piece(text, score, kind)


def _fields(view: memoryview, start: int, end: int, source: str):
    """(field number, wire type, value start, value end) for each field in view[start:end].

    For a varint the value span is the varint's own bytes.
    """
    position = start
    while position < end:
        tag, position = _read_varint(view, position, end, source)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise BadVocabulary(f"{source}: field number 0 at byte {position}")
        if wire == WIRE_VARINT:
            value_start = position
            position = _read_varint(view, position, end, source)[1]
        elif wire == WIRE_FIXED64:
            value_start, position = position, position + 8
        elif wire == WIRE_FIXED32:
            value_start, position = position, position + 4
        elif wire == WIRE_LENGTH_DELIMITED:
            length, value_start = _read_varint(view, position, end, source)
            position = value_start + length
        else:
            raise BadVocabulary(f"{source}: unsupported wire type {wire} at byte {position}")
        if position > end:
            raise BadVocabulary(f"{source} is truncated: a field runs past its end")
        yield field, wire, value_start, position


def _read_varint(view: memoryview, position: int, end: int, source: str) -> tuple[int, int]:
    value = 0
    for shift in range(0, 7 * MAX_VARINT_BYTES, 7):
        if position >= end:
            raise BadVocabulary(f"{source} is truncated inside a number")
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
    raise BadVocabulary(f"{source}: a number is longer than {MAX_VARINT_BYTES} bytes")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _tag(field, WIRE_LENGTH_DELIMITED) + _varint(len(payload)) + payload

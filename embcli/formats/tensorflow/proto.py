"""Protobuf messages read as plain data, without their generated classes: enough of the
wire format to read `keras_metadata.pb`, which no TensorFlow package describes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embcli.errors import MalformedFile, UnsafeFile
from embcli.formats.tensorflow.paths import check_regular
from embcli.guarded import parse_json

MAX_METADATA_BYTES = 256 * 1024 * 1024

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5
VARINT_MAX_SHIFT = 63

SAVED_METADATA_NODES = 1
NODE_ID, NODE_PATH, METADATA = 2, 3, 5


def proto_fields(data: bytes, what: str) -> Iterator[tuple[int, int | bytes]]:
    """`(field number, value)` of a serialized protobuf message, read as plain data.

    Varints come as ints and length-delimited fields as bytes; fixed-width fields are
    skipped. `what` names the message in errors.
    """
    position = 0
    while position < len(data):
        tag, position = _varint(data, position, what)
        number, wire = tag >> 3, tag & 7
        value: int | bytes
        if wire == VARINT:
            value, position = _varint(data, position, what)
        elif wire == LENGTH_DELIMITED:
            size, position = _varint(data, position, what)
            if position + size > len(data):
                raise MalformedFile(f"{what}: truncated")
            value, position = data[position : position + size], position + size
        elif wire in (FIXED64, FIXED32):
            position += 8 if wire == FIXED64 else 4
            continue
        else:
            raise MalformedFile(f"{what}: not a protobuf message")
        yield number, value
    if position != len(data):
        raise MalformedFile(f"{what}: truncated")


def _varint(data: bytes, position: int, what: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > VARINT_MAX_SHIFT:
            raise MalformedFile(f"{what}: truncated")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


@dataclass(frozen=True)
class KerasLayer:
    """A layer named in `keras_metadata.pb`."""

    node: int
    path: str
    name: str
    class_name: str | None
    metadata: dict[str, Any]


def read_keras_metadata(path: Path) -> dict[int, KerasLayer]:
    """Layers of a tf_keras SavedModel by object-graph node id, from `keras_metadata.pb`:
    a `SavedMetadata` of `SavedObject(node_id=2, node_path=3, identifier=4, metadata=5)`.

    Raises:
        UnsafeFile: the file is a link, not a regular file, or unreasonably large.
        MalformedFile: the file is not such a message.
    """
    check_regular(path)
    if path.stat().st_size > MAX_METADATA_BYTES:
        raise UnsafeFile(f"{path}: larger than {MAX_METADATA_BYTES} bytes")
    layers: dict[int, KerasLayer] = {}
    for number, entry in proto_fields(path.read_bytes(), path.name):
        if number != SAVED_METADATA_NODES or not isinstance(entry, bytes):
            continue
        fields = dict(proto_fields(entry, path.name))
        node = fields.get(NODE_ID, 0)
        node_path = fields.get(NODE_PATH, b"")
        text = fields.get(METADATA, b"")
        if (
            not isinstance(node, int)
            or not isinstance(node_path, bytes)
            or not isinstance(text, bytes)
        ):
            raise MalformedFile(f"{path.name}: malformed node")
        metadata = parse_json(text, f"{path.name} node {node}") if text else {}
        if not isinstance(metadata, dict):
            continue
        name = metadata.get("name")
        class_name = metadata.get("class_name")
        layers[node] = KerasLayer(
            node,
            node_path.decode("utf-8", "replace"),
            name if isinstance(name, str) else node_path.decode("utf-8", "replace"),
            class_name if isinstance(class_name, str) else None,
            metadata,
        )
    return layers

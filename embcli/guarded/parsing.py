"""JSON from model files, parsed as data only and bounded before it is parsed."""

from __future__ import annotations

import json
from typing import Any

from embcli.errors import MalformedFile, UnsafeFile

# Keras configs are rarely above a few MB; the largest seen in practice (keras-hub
# presets, lookup layers holding their vocabulary inline) stay well under this.
MAX_JSON_BYTES = 64 * 1024 * 1024
# Every JSON object or array costs Python some 60 to 250 bytes however few bytes of text
# it takes (`{}` is two), so their number is bounded apart from the text's size.
MAX_JSON_CONTAINERS = 1_000_000


def parse_json(text: bytes | str, what: str) -> Any:
    """Parse JSON as data only, with a readable error.

    Refuses, before parsing, text longer than `MAX_JSON_BYTES` and text that could hold
    more than `MAX_JSON_CONTAINERS` objects and arrays, so that what parsing builds stays
    within a small multiple of the text's size.
    """
    if len(text) > MAX_JSON_BYTES:
        raise UnsafeFile(f"{what} is larger than {MAX_JSON_BYTES} bytes")
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    containers = data.count(b"{") + data.count(b"[")
    if containers > MAX_JSON_CONTAINERS:
        raise UnsafeFile(f"{what} holds more than {MAX_JSON_CONTAINERS} JSON objects and arrays")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedFile(f"{what} is not valid JSON ({exc})") from None


def copy_json(value: Any) -> Any:
    """A copy of parsed JSON that an edit may change: every object and array copied,
    strings and numbers shared (they cannot change), as `copy.deepcopy` copies it but
    without its bookkeeping for each of a vocabulary's million strings. Anything that
    is not plain JSON data is deep-copied."""
    kind = type(value)
    if kind is dict:
        return {key: copy_json(item) for key, item in value.items()}
    if kind is list:
        if set(map(type, value)) <= _SCALARS:
            return list(value)
        return [item if type(item) in _SCALARS else copy_json(item) for item in value]
    if kind in _SCALARS:
        return value
    import copy

    return copy.deepcopy(value)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def holds_containers(values: list) -> bool:
    """Whether a JSON array holds an object or an array: told by its items' types at C
    speed, so that a walk of a config steps over a vocabulary's million strings."""
    return any(issubclass(kind, (dict, list)) for kind in set(map(type, values)))

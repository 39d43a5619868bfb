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

"""Keras's encodings of embedding tables: float, int8, int4 per channel, int4 in groups.

`detect_codecs` decides from a layer's saved variables and config which encoding it
uses; each table's `TableCodec` then decodes stored rows to the values Keras computes
with and encodes new rows exactly as Keras's `quantize` would store them.
"""

from embcli.quantization.codecs import (
    GROUP_INDEX,
    SCALE,
    VALUES,
    ZERO,
    AbsMax,
    Codec,
    FloatCodec,
    Int4Codec,
    Int4GroupedCodec,
    Int8Codec,
    pack_nibbles,
    unpack_nibbles,
)
from embcli.quantization.detect import detect_codecs
from embcli.quantization.policy import ENCODINGS, Policy, read_policy, read_quantization_config
from embcli.quantization.tables import LayerCodecs, StoredPart, TableCodec, VariableInfo

__all__ = [
    "AbsMax",
    "ENCODINGS",
    "GROUP_INDEX",
    "SCALE",
    "VALUES",
    "ZERO",
    "Codec",
    "FloatCodec",
    "Int4Codec",
    "Int4GroupedCodec",
    "Int8Codec",
    "LayerCodecs",
    "Policy",
    "StoredPart",
    "TableCodec",
    "VariableInfo",
    "detect_codecs",
    "pack_nibbles",
    "read_policy",
    "read_quantization_config",
    "unpack_nibbles",
]

"""Keras's encodings of embedding tables: float, int8, int4 per channel, int4 in groups.

`detect_codecs` decides from a layer's saved variables and config which encoding it
uses; each table's `TableCodec` then decodes stored rows to the values Keras computes
with and encodes new rows exactly as Keras's `quantize` would store them::

    layer = detect_codecs(variables, class_name=..., config=layer_config)
    for table in layer.tables():                  # embeddings, then an untied reverse
        blocks = {role: read(part, rows) for role, part in table.parts.items()}
        values = table.decode(blocks)             # (len(rows), dim) float32
        table = table.with_group_index(blocks["g_idx"]) if "g_idx" in blocks else table
        for role, array in table.encode(new_values).items():
            write(table.parts[role], rows, array)

where `read`/`write` cut or patch a part's variable at `rows` along `part.vocab_axis`
(the whole variable where that is None).
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

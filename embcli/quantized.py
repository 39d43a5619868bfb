"""Quantized tables: which codec a table's layer uses, decided from the file's evidence
(`embcli.quantization.detect_codecs`), and reading and writing rows through it.

Any format that can list a layer's weights (`ModelFile.weights_of`) and its config
(`ModelFile.layer_config`) gets int8 and int4 tables, per channel or grouped, read as
Keras computes them and written as Keras quantizes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from embcli.dtypes import dtype_name
from embcli.errors import EmbcliError, UnsupportedEdit
from embcli.formats.base import ModelFile, Table

QUANTIZED_STORAGE = ("int8", "uint8")
FLOAT = "float"
PACKED_INT4 = ("int4", "int4-grouped")
BACKBONE_SUFFIX = "Backbone"
# Bytes of a reverse table read at once: a band of its stored rows, a block of tokens.
REVERSE_BAND_BYTES = 16 * 1024 * 1024
REVERSE_BLOCK_BYTES = 16 * 1024 * 1024


def with_codec(model: ModelFile, table: Table) -> Table:
    """`table` with its codec, its encoding in `quantized` and its logical shape, when
    its values are stored quantized and the evidence decides how; as it was otherwise."""
    if not table.is_embedding or table.dtype not in QUANTIZED_STORAGE:
        return table
    from embcli.quantization import VariableInfo, detect_codecs

    weights = model.weights_of(table)
    if table.weight not in weights:
        return table
    variables = []
    for weight in weights:
        shape, dtype = model.weight_info(weight)
        variables.append(VariableInfo(weight, tuple(shape), dtype_name(dtype)))
    config = model.layer_config(table)
    try:
        layer = detect_codecs(
            variables,
            class_name=table.class_name,
            config=config,
            policy=_backbone_policy(model.config()),
            layer_path=table.qualified,
        )
    except EmbcliError:
        return table
    codec = layer.embeddings
    if codec.name == FLOAT or codec.weight != table.weight:
        return table
    scale = codec.parts.get("scale")
    return replace(
        table,
        shape=codec.shape,
        quantized=codec.name,
        scale=scale.variable.path if scale is not None else None,
        codec=layer,
    )


def _backbone_policy(config: Any) -> Any:
    """A keras-hub backbone's `dtype` (a `DTypePolicyMap` once quantized), which covers
    its layers from outside their own configs."""
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            inner = item.get("config")
            name = item.get("class_name")
            if isinstance(name, str) and name.endswith(BACKBONE_SUFFIX) and isinstance(inner, dict):
                return inner.get("dtype")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _part(model: ModelFile, part, rows: slice | np.ndarray) -> np.ndarray:
    if part.vocab_axis is None:
        return model.read(part.variable.path, slice(None))
    if part.vocab_axis != 0:
        raise UnsupportedEdit("rows of a table stored along its other axis are read whole")
    return model.read(part.variable.path, rows)


def decode_rows(model: ModelFile, table: Table, rows: slice | np.ndarray) -> np.ndarray:
    """The values of `rows` (a slice, or sorted unique indices) as Keras computes them."""
    codec = table.codec.embeddings
    blocks = {role: _part(model, part, rows) for role, part in codec.parts.items()}
    if "g_idx" in blocks:
        codec = codec.with_group_index(blocks["g_idx"])
    return codec.decode(blocks)


def raw_values(table: Table, stored: np.ndarray) -> np.ndarray:
    """Stored integers of a quantized table, one per value: int4 codes packed two to a
    byte are unpacked to int8, so the rows have the table's logical width."""
    codec = table.codec.embeddings if table.codec is not None else None
    if codec is None or codec.name not in PACKED_INT4:
        return stored
    from embcli.quantization.codecs import unpack_nibbles

    return unpack_nibbles(np.asarray(stored), table.dim)


def encode_rows(
    model: ModelFile, table: Table, rows: np.ndarray, values: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Patches `{weight: (rows, stored values)}` that store `values` at `rows`."""
    codec = table.codec.embeddings
    if "g_idx" in codec.parts:
        codec = codec.with_group_index(_part(model, codec.parts["g_idx"], slice(None)))
    patches = {}
    for role, array in codec.encode(np.asarray(values, dtype=np.float32)).items():
        part = codec.parts[role]
        if part.vocab_axis != 0:
            raise UnsupportedEdit(f"{table.name}: its {role} is stored along the other axis")
        patches[part.variable.path] = (rows, np.ascontiguousarray(array))
    return patches


def encoded_rows(model: ModelFile, table: Table, values: np.ndarray) -> dict[str, np.ndarray]:
    """New rows' stored parts by weight path, for rows added to a quantized table."""
    patches = encode_rows(model, table, np.zeros(0, dtype=np.int64), values)
    return {weight: stored for weight, (_, stored) in patches.items()}


def reverse_codec(model: ModelFile, table: Table) -> Any:
    """The `TableCodec` of a quantized table's untied output table (`reverse_embeddings`,
    `(dim, rows)` in the model), checked against the layer's group index where it has one.

    Raises:
        UnsupportedEdit: the table's layer has no quantized untied output table, or one
            of its stored parts is shared by every token (no axis of token ids), so a
            new token's column could not be stored without changing old ones.
    """
    if table.codec is None or table.codec.reverse is None:
        raise UnsupportedEdit(f"{table.name} has no quantized untied output table")
    codec = table.codec.reverse
    for role, part in codec.parts.items():
        if part.vocab_axis is None and role != "g_idx":
            raise UnsupportedEdit(
                f"{table.name}: the {role} of its output table is one for every token, so "
                "quantizing new tokens' columns would change the old columns' values"
            )
    if "g_idx" in codec.parts:
        codec = codec.with_group_index(_part(model, codec.parts["g_idx"], slice(None)))
    return codec


def _token_columns(model: ModelFile, part, tokens: slice) -> np.ndarray:
    """A reverse part cut to `tokens` along its token axis, in the file's layout; a
    2-D part (tokens along axis 1) is read a bounded band of its rows at a time."""
    if part.vocab_axis is None:
        return model.read(part.variable.path, slice(None))
    if part.vocab_axis == 0:
        return model.read(part.variable.path, tokens)
    height = part.variable.shape[0]
    width = max(1, part.variable.shape[1])
    band = max(1, REVERSE_BAND_BYTES // (width * 4))
    pieces = [
        np.asarray(model.read(part.variable.path, slice(first, min(first + band, height))))[
            :, tokens
        ]
        for first in range(0, height, band)
    ]
    return np.concatenate(pieces, axis=0)


def iter_reverse_rows(
    model: ModelFile, table: Table, block_bytes: int = REVERSE_BLOCK_BYTES
) -> Iterator[tuple[int, np.ndarray]]:
    """`(first_token, values)` over a quantized untied output table, token-major: row `i`
    of `values` is column `first_token + i` of `reverse_embeddings` as Keras dequantizes
    it (`(k, dim)` float32), a bounded block of tokens at a time."""
    codec = reverse_codec(model, table)
    step = max(1, block_bytes // max(1, codec.dim * 4))
    for start in range(0, codec.rows, step):
        tokens = slice(start, min(start + step, codec.rows))
        blocks = {role: _token_columns(model, part, tokens) for role, part in codec.parts.items()}
        yield start, codec.decode(blocks)


def encoded_reverse_columns(
    model: ModelFile, table: Table, values: np.ndarray
) -> list[tuple[str, int, np.ndarray]]:
    """New tokens' columns of a quantized untied output table, as Keras's `quantize`
    stores them: `(weight, token axis, stored values)` for each part that has a token
    axis. `values` holds one row per new token, `(k, dim)`, as the model computes.

    Every Keras layout of this table (int8 and int4 with one scale per token, int4 in
    groups along `dim` with a scale and zero point per group and token) quantizes each
    token's column on its own, so old columns keep their stored values and scales.
    """
    codec = reverse_codec(model, table)
    try:
        encoded = codec.encode(np.asarray(values, dtype=np.float32))
    except UnsupportedEdit as error:
        raise UnsupportedEdit(f"{table.name}: its output table: {error}") from error
    return [
        (codec.parts[role].variable.path, codec.parts[role].vocab_axis, np.ascontiguousarray(array))
        for role, array in encoded.items()
    ]

"""Quantized tables: which codec a table's layer uses, decided from the file's evidence
(`embcli.quantization.detect_codecs`), and reading and writing rows through it.

Any format that can list a layer's weights (`ModelFile.weights_of`) and its config
(`ModelFile.layer_config`) gets int8 and int4 tables, per channel or grouped, read as
Keras computes them and written as Keras quantizes.
"""

from __future__ import annotations

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

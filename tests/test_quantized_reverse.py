"""Resize and remap of a quantized untied `ReversibleEmbedding` (int8, int4 per channel,
int4 in groups; a plain Keras layer and a keras-hub Llama backbone's), against Keras:

- Keras reloads the copy, with the new `input_dim`, and computes from it exactly the
  table and reverse table embcli reads;
- old rows, old columns of the reverse table and their scales are stored as they were;
- new tokens' columns (and rows) are byte for byte what Keras's own `quantize` stores
  for the float values the init gave them;
- logits (`layer(x, reverse=True)`) keep their old columns and follow the new ones.
"""

from __future__ import annotations

import io
import json
import zipfile

import h5py
import numpy as np
import pytest
from conftest import FIXTURES

import embcli
from embcli.init import new_rows, parse_init, statistics
from embcli.model import find_table, open_model
from embcli.quantized import iter_reverse_rows

pytestmark = pytest.mark.keras

QUANT = FIXTURES / "quant"
MANIFEST = json.loads((QUANT / "manifest.json").read_text())
EXPECTED = dict(np.load(QUANT / "expected.npz"))
UNTIED = sorted(name for name, entry in MANIFEST.items() if len(entry["tables"]) > 1)
ADDED = 3


def stored(path) -> dict[str, np.ndarray]:
    """Every dataset of the archive's weights file, by path."""
    with zipfile.ZipFile(path) as archive:
        weights = archive.read("model.weights.h5")
    found: dict[str, np.ndarray] = {}
    with h5py.File(io.BytesIO(weights), "r") as handle:
        handle.visititems(
            lambda name, item: (
                found.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
            )
        )
    return found


def embcli_tables(path, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """The table and the reverse table (token-major) as embcli reads them."""
    with open_model(path) as model:
        table = find_table(model, layer)
        reverse = np.concatenate([block for _, block in iter_reverse_rows(model, table)])
    with embcli.open(path) as model:
        return model.read(layer, slice(None)), reverse


def keras_layer(path, layer: str):
    import keras
    import keras_hub  # noqa: F401  (registers the Llama backbone)

    model = keras.models.load_model(path, safe_mode=False)
    for found in model._flatten_layers(include_self=False, recursive=True):
        if found.name == layer:
            return found
    raise KeyError(layer)


def keras_reverse(layer) -> np.ndarray:
    """Keras's dequantization of the reverse table, token-major."""
    from keras import ops, quantizers
    from keras.src.quantizers.quantizers import dequantize_with_sz_map

    kernel, scale = layer.reverse_embeddings, layer.reverse_embeddings_scale
    if layer.quantization_mode == "int4":
        kernel = quantizers.unpack_int4(kernel, layer.output_dim, axis=0)
        if hasattr(layer, "reverse_embeddings_zero"):
            values = dequantize_with_sz_map(
                ops.cast(kernel, layer.compute_dtype),
                scale,
                layer.reverse_embeddings_zero,
                layer.g_idx,
                group_axis=0,
            )
            return np.asarray(ops.convert_to_numpy(values)).T
    return np.asarray(ops.convert_to_numpy(ops.divide(ops.cast(kernel, "float32"), scale))).T


def keras_quantized(entry: dict, rows: np.ndarray, columns: np.ndarray) -> dict[str, np.ndarray]:
    """What Keras's `quantize` stores for a float untied `ReversibleEmbedding` holding
    `rows` `(k, dim)` and reverse columns `columns` `(k, dim)`, quantized as the fixture
    was, by variable name."""
    import keras
    from keras.quantizers import Int4QuantizationConfig

    count, dim = rows.shape
    layer = keras.layers.ReversibleEmbedding(count, dim, tie_weights=False)
    layer.build()
    layer._embeddings.assign(rows.astype(np.float32))
    layer.reverse_embeddings.assign(columns.T.astype(np.float32))
    block = entry["block_size"]
    if entry["quantization_mode"] == "int8":
        layer.quantize("int8")
    else:
        layer.quantize("int4", config=Int4QuantizationConfig(block_size=block))
    return {v.name: np.asarray(v.numpy()) for v in layer.weights}


VARIABLE_NAMES = {
    "int8": ["embeddings", "embeddings_scale", "reverse_embeddings", "reverse_embeddings_scale"],
    "int4": ["embeddings", "embeddings_scale", "reverse_embeddings", "reverse_embeddings_scale"],
    "int4-grouped": [
        "embeddings",
        "embeddings_scale",
        "embeddings_zero",
        "g_idx",
        "reverse_embeddings",
        "reverse_embeddings_scale",
        "reverse_embeddings_zero",
    ],
}
# The token axis of each saved variable; None: shared by every token.
TOKEN_AXIS = {
    "embeddings": 0,
    "embeddings_scale": 0,
    "embeddings_zero": 0,
    "g_idx": None,
    "reverse_embeddings": 1,
    "reverse_embeddings_scale": -1,
    "reverse_embeddings_zero": 1,
}


def by_name(entry: dict, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = VARIABLE_NAMES[entry["encoding"]]
    paths = [v["path"] for v in entry["variables"]]
    return {name: arrays[path] for name, path in zip(names, paths, strict=True)}


def same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    actual, expected = np.ascontiguousarray(actual), np.ascontiguousarray(expected)
    assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape)
    np.testing.assert_array_equal(actual.view(np.uint8), expected.view(np.uint8))


def mean_of(values: np.ndarray, count: int) -> np.ndarray:
    """The rows embcli's default init ("mean") gives `count` new tokens."""
    init = parse_init("mean")
    found = statistics([values.astype(np.float32)], values.shape[1], init)
    return new_rows(init, count, values.shape[1], found, np.random.default_rng(0))


def check_against_keras(entry, source, output, sources: np.ndarray, x: np.ndarray) -> None:
    """`sources[j]`: the old token new token `j` takes, or -1 for a new one."""
    layer_name = entry["layer"]
    rows_key, reverse_key = (t["expected"] for t in entry["tables"])
    old_rows, old_reverse = EXPECTED[rows_key], EXPECTED[reverse_key]
    kept, new = sources >= 0, sources < 0
    count = int(new.sum())

    table, reverse = embcli_tables(output, layer_name)
    assert table.shape == reverse.shape == (len(sources), old_rows.shape[1])
    np.testing.assert_array_equal(table[kept], old_rows[sources[kept]])
    np.testing.assert_array_equal(reverse[kept], old_reverse[sources[kept]])

    layer = keras_layer(output, layer_name)
    assert layer.input_dim == len(sources)
    np.testing.assert_array_equal(np.asarray(layer(np.arange(len(sources)))), table)
    np.testing.assert_array_equal(keras_reverse(layer), reverse)

    before, after = by_name(entry, stored(source)), by_name(entry, stored(output))
    fresh = (
        keras_quantized(entry, mean_of(old_rows, count), mean_of(old_reverse, count))
        if count
        else {}
    )
    for name, axis in TOKEN_AXIS.items():
        if name not in after:
            continue
        if axis is None:
            same_bits(after[name], before[name])
            continue
        taken = np.take(after[name], np.flatnonzero(kept), axis=axis)
        same_bits(taken, np.take(before[name], sources[kept], axis=axis))
        if count:
            same_bits(np.take(after[name], np.flatnonzero(new), axis=axis), fresh[name])

    logits = np.asarray(layer(x, reverse=True))
    original = np.asarray(keras_layer(source, layer_name)(x, reverse=True))
    np.testing.assert_allclose(logits[:, kept], original[:, sources[kept]], rtol=1e-6, atol=1e-6)
    # Keras quantizes the inputs too (int8 per row) before the product.
    np.testing.assert_allclose(logits, x @ reverse.T, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", UNTIED)
def test_resize_requantizes_new_columns_as_keras(tmp_path, name):
    entry = MANIFEST[name]
    rows = entry["tables"][0]["shape"][0]
    output = tmp_path / "r.keras"
    result = embcli.resize(QUANT / name, entry["layer"], add=ADDED, output=output)
    assert result.new_rows == rows + ADDED
    x = np.random.default_rng(5).normal(size=(4, entry["tables"][0]["shape"][1]))
    sources = np.concatenate([np.arange(rows), np.full(ADDED, -1)])
    check_against_keras(entry, QUANT / name, output, sources, x.astype(np.float32))


@pytest.mark.parametrize("name", UNTIED)
def test_shrinking_keeps_the_first_columns(tmp_path, name):
    entry = MANIFEST[name]
    output = tmp_path / "s.keras"
    embcli.resize(QUANT / name, entry["layer"], rows=7, output=output)
    x = np.random.default_rng(6).normal(size=(3, entry["tables"][0]["shape"][1]))
    check_against_keras(entry, QUANT / name, output, np.arange(7), x.astype(np.float32))


@pytest.mark.parametrize("name", UNTIED)
def test_remap_moves_drops_and_adds_columns_as_keras(tmp_path, name):
    entry = MANIFEST[name]
    rows = entry["tables"][0]["shape"][0]
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("".join(f"t{i}\n" for i in range(rows)))
    order = ["t3", "t0", "new-a", "t11", "t5", "new-b", "t7"]
    output = tmp_path / "m.keras"
    embcli.remap(QUANT / name, entry["layer"], to=order, vocab=vocabulary, output=output)
    sources = np.array([int(t[1:]) if t.startswith("t") else -1 for t in order])
    x = np.random.default_rng(7).normal(size=(4, entry["tables"][0]["shape"][1]))
    check_against_keras(entry, QUANT / name, output, sources, x.astype(np.float32))

"""The codecs against Keras itself: every table Keras 3 quantizes, saved with
`model.save`, must decode bit for bit to what the layer computes, and float rows must
encode to the bytes Keras's own `quantize` stores."""

from __future__ import annotations

import io
import json
import zipfile

import h5py
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from embcli.quantization import (
    Int4Codec,
    Int4GroupedCodec,
    Int8Codec,
    VariableInfo,
    detect_codecs,
)
from embcli.quantization.codecs import canonical_group_index, group_count, numpy_dtype

pytestmark = pytest.mark.keras

ROWS = 13
# (name, quantize mode, Int4QuantizationConfig block_size or "none" for no config)
MODES = [
    ("int8", "int8", "none"),
    ("int4-default", "int4", "none"),
    ("int4-per-channel", "int4", -1),
    ("int4-per-channel-none", "int4", None),
    ("int4-block4", "int4", 4),
    ("int4-block3", "int4", 3),
    ("int4-block2", "int4", 2),  # at dim 9: as many groups as packed bytes
]
ENCODING_OF = {
    "int8": "int8",
    "int4-default": "int4-grouped",
    "int4-per-channel": "int4",
    "int4-per-channel-none": "int4",
    "int4-block4": "int4-grouped",
    "int4-block3": "int4-grouped",
    "int4-block2": "int4-grouped",
}
# (name, layer factory arguments)
LAYERS = [
    ("embedding", {}),
    ("reversible-tied", {"tie_weights": True}),
    ("reversible-untied", {"tie_weights": False}),
]


def float_values(rows: int, dim: int, seed: int = 0) -> np.ndarray:
    """Random rows plus the awkward ones: zeros, a constant, one spike, tiny values."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, dim)).astype(np.float32)
    values[0] = 0.0
    values[1] = 0.25
    values[2] = 0.0
    values[2, dim // 2] = -3.5
    values[3] *= np.float32(1e-6)
    values[4] = np.abs(values[4]) + 1
    return values


def layer_class(spec: dict):
    import keras

    if "tie_weights" in spec:
        return keras.layers.ReversibleEmbedding
    return keras.layers.Embedding


def build_layer(spec: dict, values: np.ndarray, reverse: np.ndarray | None, dtype="float32"):
    import keras

    layer = layer_class(spec)(values.shape[0], values.shape[1], dtype=dtype, **spec)
    inputs = keras.Input((2,), dtype="int32")
    model = keras.Model(inputs, layer(inputs))
    layer._embeddings.assign(values)
    if reverse is not None and not spec.get("tie_weights", True):
        layer.reverse_embeddings.assign(reverse)
    return model, layer


def quantize(model, mode: str, block):
    from keras.quantizers import Int4QuantizationConfig

    if block == "none":
        model.quantize(mode)
    else:
        model.quantize(config=Int4QuantizationConfig(block_size=block))


def saved_layer(path):
    """The layer's config and its variables (infos and arrays) as the archive holds them."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        weights = archive.read("model.weights.h5")
    layers = [
        entry for entry in config["config"]["layers"] if entry["class_name"].endswith("Embedding")
    ]
    (entry,) = layers
    with h5py.File(io.BytesIO(weights), "r") as handle:
        (group,) = [name for name in handle["layers"] if name.endswith("embedding")]
        stored = handle["layers"][group]["vars"]
        keys = sorted(stored, key=int)
        infos, arrays = [], {}
        for key in keys:
            dataset = stored[key]
            half = dataset.attrs.get("dtype") == "bfloat16"
            info = VariableInfo(
                f"layers/{group}/vars/{key}",
                dataset.shape,
                "bfloat16" if half else dataset.dtype.name,
            )
            infos.append(info)
            arrays[info.path] = dataset[()].view(ml_dtypes.bfloat16) if half else dataset[()]
    return entry, infos, arrays


def part_arrays(table, arrays):
    return {role: arrays[part.variable.path] for role, part in table.parts.items()}


def assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    actual, expected = np.ascontiguousarray(actual), np.ascontiguousarray(expected)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual.view(np.uint8), expected.view(np.uint8))


def keras_reverse_values(layer) -> np.ndarray:
    """Keras's own dequantization of an untied reverse table, `(dim, rows)`."""
    from keras import ops, quantizers
    from keras.src.quantizers.quantizers import dequantize_with_sz_map

    kernel = layer.reverse_embeddings
    scale = layer.reverse_embeddings_scale
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
            return ops.convert_to_numpy(values)
    return ops.convert_to_numpy(ops.divide(ops.cast(kernel, layer.compute_dtype), scale))


def quantized_case(tmp_path, spec, mode, block, dim, dtype="float32"):
    values = float_values(ROWS, dim)
    reverse = float_values(ROWS, dim, seed=1).T.copy()
    model, layer = build_layer(spec, values, reverse, dtype)
    quantize(model, mode, block)
    path = tmp_path / "m.keras"
    model.save(path)
    entry, infos, arrays = saved_layer(path)
    codecs = detect_codecs(infos, class_name=entry["class_name"], config=entry["config"])
    return values, reverse, layer, codecs, arrays


@pytest.mark.parametrize("layer_name, spec", LAYERS, ids=[n for n, _ in LAYERS])
@pytest.mark.parametrize("mode_name, mode, block", MODES, ids=[n for n, *_ in MODES])
@pytest.mark.parametrize("dim", [9, 130])
def test_decode_and_encode_match_keras(tmp_path, layer_name, spec, mode_name, mode, block, dim):
    values, reverse, layer, codecs, arrays = quantized_case(tmp_path, spec, mode, block, dim)
    assert codecs.name == ENCODING_OF[mode_name]
    assert (codecs.reverse is not None) == (spec.get("tie_weights") is False)
    table = codecs.embeddings
    assert table.shape == (ROWS, dim)

    computed = np.asarray(layer(np.arange(ROWS)[:, None]))[:, 0, :]
    decoded = table.decode(part_arrays(table, arrays))
    assert_same_bits(decoded, computed)

    some = [4, 0, 11]
    picked = table.decode(table.select(part_arrays(table, arrays), some))
    assert_same_bits(picked, computed[some])
    sliced = table.decode(table.select(part_arrays(table, arrays), slice(2, 7)))
    assert_same_bits(sliced, computed[2:7])

    encoded = table.encode(values)
    for role, array in encoded.items():
        assert_same_bits(array, arrays[table.parts[role].variable.path])

    if codecs.reverse is not None:
        back = codecs.reverse
        assert back.shape == (dim, ROWS)
        stored = part_arrays(back, arrays)
        assert_same_bits(back.decode(stored), keras_reverse_values(layer).T)
        assert_same_bits(
            back.decode(back.select(stored, some)), keras_reverse_values(layer).T[some]
        )
        for role, array in back.encode(reverse.T).items():
            assert_same_bits(array, arrays[back.parts[role].variable.path])


@pytest.mark.parametrize("dtype", ["bfloat16", "mixed_bfloat16", "float16", "mixed_float16"])
@pytest.mark.parametrize("mode_name, mode, block", MODES, ids=[n for n, *_ in MODES])
def test_half_precision_policies_match_keras(tmp_path, dtype, mode_name, mode, block):
    """Keras autocasts scales to the compute dtype and quantizes in the variable dtype."""
    if mode == "int8" and dtype.endswith("float16") and "bfloat" not in dtype:
        pytest.skip("Keras refuses int8 with a float16 compute dtype")
    spec = {"tie_weights": False}
    values, reverse, layer, codecs, arrays = quantized_case(tmp_path, spec, mode, block, 9, dtype)
    held = numpy_dtype(layer.variable_dtype)
    table, back = codecs.embeddings, codecs.reverse
    computed = np.asarray(layer(np.arange(ROWS)[:, None]))[:, 0, :].astype(np.float32)
    assert_same_bits(table.decode(part_arrays(table, arrays)), computed)
    for role, array in table.encode(values.astype(held)).items():
        assert_same_bits(array, arrays[table.parts[role].variable.path])
    for role, array in back.encode(reverse.T.astype(held)).items():
        assert_same_bits(array, arrays[back.parts[role].variable.path])


@pytest.mark.parametrize("mode_name, mode, block", MODES, ids=[n for n, *_ in MODES])
def test_float_rows_requantized_in_place_match_a_fresh_quantize(tmp_path, mode_name, mode, block):
    """Rows encoded one at a time equal the rows of a table quantized whole."""
    values, _, _, codecs, arrays = quantized_case(tmp_path, {}, mode, block, 9)
    table = codecs.embeddings
    for row in (0, 5, ROWS - 1):
        encoded = table.encode(values[row : row + 1])
        for role, array in encoded.items():
            stored = arrays[table.parts[role].variable.path]
            assert_same_bits(array[0], stored[row])


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_keras_hub_backbone_is_read_through_its_policy_map(tmp_path, mode):
    """A keras-hub Llama keeps its untied token embedding's policy in the backbone's
    DTypePolicyMap, keyed by layer path; int8 must not be taken for int4."""
    import keras_hub

    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=ROWS,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=8,
        intermediate_dim=16,
    )
    backbone.quantize(mode)
    layer = backbone.token_embedding
    backbone.save(tmp_path / "llama.keras")
    with zipfile.ZipFile(tmp_path / "llama.keras") as archive:
        config = json.loads(archive.read("config.json"))["config"]
        weights = archive.read("model.weights.h5")
    with h5py.File(io.BytesIO(weights), "r") as handle:
        stored = handle["layers/reversible_embedding/vars"]
        keys = sorted(stored, key=int)
        infos = [VariableInfo(f"vars/{k}", stored[k].shape, stored[k].dtype.name) for k in keys]
        arrays = {f"vars/{k}": stored[k][()] for k in keys}
    codecs = detect_codecs(
        infos, class_name="ReversibleEmbedding", policy=config["dtype"], layer_path=layer.path
    )
    assert codecs.name == {"int8": "int8", "int4": "int4-grouped"}[mode]
    assert codecs.reverse is not None
    table, back = codecs.embeddings, codecs.reverse
    computed = np.asarray(layer(np.arange(ROWS)[:, None]))[:, 0, :]
    assert_same_bits(table.decode(part_arrays(table, arrays)), computed)
    assert_same_bits(back.decode(part_arrays(back, arrays)), keras_reverse_values(layer).T)


awkward = st.one_of(
    st.floats(-1e6, 1e6, width=32, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1e-30, -1e-38, 3.0e38, 1.0, -1.0]),
)
float_tables = hnp.arrays(
    np.float32, st.tuples(st.integers(1, 5), st.integers(1, 19)), elements=awkward
)


@settings(max_examples=60, deadline=None)
@given(float_tables)
def test_per_row_encodings_equal_keras_quantizers(values):
    from keras import quantizers

    quantized, scale = quantizers.abs_max_quantize(values, axis=-1, to_numpy=True)
    mine = Int8Codec(values.shape[1]).encode(values)
    assert_same_bits(mine["values"], np.asarray(quantized))
    assert_same_bits(mine["scale"], np.asarray(scale)[:, 0])

    quantized, scale = quantizers.abs_max_quantize(
        values, axis=-1, value_range=(-8, 7), dtype="int8", to_numpy=True
    )
    packed, _, _ = quantizers.pack_int4(quantized, axis=-1)
    mine = Int4Codec(values.shape[1]).encode(values)
    assert_same_bits(mine["values"], np.asarray(packed))
    assert_same_bits(mine["scale"], np.asarray(scale)[:, 0])


@settings(max_examples=60, deadline=None)
@given(float_tables, st.integers(1, 9))
def test_grouped_encoding_equals_keras_quantizer(values, block):
    from keras import quantizers

    quantized, scale, zero = quantizers.abs_max_quantize_grouped_with_zero_point(
        values.T, block_size=block, value_range=(-8, 7), dtype="int8", to_numpy=True
    )
    packed, _, _ = quantizers.pack_int4(np.asarray(quantized).T, axis=-1)
    dim = values.shape[1]
    mine = Int4GroupedCodec(dim, group_count(dim, block), block).encode(values)
    assert_same_bits(mine["values"], np.asarray(packed))
    assert_same_bits(mine["scale"], np.asarray(scale).T)
    assert_same_bits(mine["zero"], np.asarray(zero).T)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.int8, st.tuples(st.integers(1, 5), st.integers(1, 10))),
    st.integers(0, 1),
    st.integers(1, 6),
    st.data(),
)
def test_decoding_equals_keras_for_any_stored_bytes(packed, odd, block, data):
    from keras import ops, quantizers
    from keras.src.quantizers.quantizers import dequantize_with_sz_map

    rows, dim = packed.shape[0], 2 * packed.shape[1] - odd
    groups = group_count(dim, block)
    positive = st.floats(2.0**-20, 2.0**20, width=32)
    scale = data.draw(hnp.arrays(np.float32, (rows, groups), elements=positive))
    zero = data.draw(hnp.arrays(np.int8, (rows, groups), elements=st.integers(-8, 7)))
    g_idx = canonical_group_index(dim, block)
    unpacked = ops.cast(quantizers.unpack_int4(packed, dim, axis=-1), "float32")
    expected = dequantize_with_sz_map(unpacked, scale, zero, g_idx, group_axis=-1)
    blocks = {"values": packed, "scale": scale, "zero": zero, "g_idx": g_idx}
    mine = Int4GroupedCodec(dim, groups, block).decode(blocks)
    assert_same_bits(mine, ops.convert_to_numpy(expected))

    per_row = ops.divide(unpacked, ops.expand_dims(scale[:, 0], -1))
    mine = Int4Codec(dim).decode({"values": packed, "scale": scale[:, 0]})
    assert_same_bits(mine, ops.convert_to_numpy(per_row))


@pytest.mark.parametrize("layer_name, spec", LAYERS[:2], ids=[n for n, _ in LAYERS[:2]])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_a_custom_weight_quantizer_in_the_config_is_reproduced(tmp_path, layer_name, spec, mode):
    from keras.quantizers import AbsMaxQuantizer, Int4QuantizationConfig, Int8QuantizationConfig

    if mode == "int8":
        quantizer = AbsMaxQuantizer(axis=-1, value_range=(-100, 100), epsilon=1e-3)
        config = Int8QuantizationConfig(weight_quantizer=quantizer)
    else:
        quantizer = AbsMaxQuantizer(axis=-1, value_range=(-8, 7), epsilon=1e-4)
        config = Int4QuantizationConfig(weight_quantizer=quantizer, block_size=-1)
    values = float_values(ROWS, 9)
    model, layer = build_layer(spec, values, None)
    model.quantize(config=config)
    model.save(tmp_path / "m.keras")
    entry, infos, arrays = saved_layer(tmp_path / "m.keras")
    codecs = detect_codecs(infos, class_name=entry["class_name"], config=entry["config"])
    table = codecs.embeddings
    assert table.codec.quantizer.epsilon == quantizer.epsilon
    computed = np.asarray(layer(np.arange(ROWS)[:, None]))[:, 0, :]
    assert_same_bits(table.decode(part_arrays(table, arrays)), computed)
    for role, array in table.encode(values).items():
        assert_same_bits(array, arrays[table.parts[role].variable.path])

"""The codecs and their detection without Keras: nibble packing, exact round trips,
and which encoding a layer's evidence names (or why it is refused)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from embcli.errors import BadVectors, EmbcliError, MalformedFile, NonFiniteValues, UnsupportedEdit
from embcli.quantization import (
    AbsMax,
    FloatCodec,
    Int4Codec,
    Int4GroupedCodec,
    Int8Codec,
    Policy,
    VariableInfo,
    detect_codecs,
    pack_nibbles,
    read_policy,
    read_quantization_config,
    unpack_nibbles,
)
from embcli.quantization.codecs import (
    block_size_from_group_index,
    canonical_group_index,
    group_count,
)
from embcli.quantization.policy import Requested

shapes = st.tuples(st.integers(1, 6), st.integers(1, 17))


@given(hnp.arrays(np.int8, shapes, elements=st.integers(-8, 7)))
def test_nibbles_unpack_to_what_was_packed(values):
    packed = pack_nibbles(values)
    assert packed.dtype == np.int8
    assert packed.shape == (values.shape[0], (values.shape[1] + 1) // 2)
    np.testing.assert_array_equal(unpack_nibbles(packed, values.shape[1]), values)


@given(hnp.arrays(np.int8, shapes))
def test_any_bytes_repack_to_themselves(packed):
    dim = 2 * packed.shape[1]
    np.testing.assert_array_equal(pack_nibbles(unpack_nibbles(packed, dim)), packed)


def test_nibble_order_is_keras_documented_example():
    """keras.quantizers.pack_int4's docstring: the first value goes to the low nibble."""
    values = np.array([[-3, 7, 2], [-8, 1, 0]], dtype=np.int8)
    np.testing.assert_array_equal(pack_nibbles(values), [[125, 2], [24, 0]])
    np.testing.assert_array_equal(unpack_nibbles(np.array([[125, 2], [24, 0]], np.int8), 3), values)


def test_unpacking_refuses_non_byte_storage():
    with pytest.raises(MalformedFile):
        unpack_nibbles(np.zeros((2, 2), np.float32), 4)


def _power(exponent: int) -> np.float32:
    return np.float32(2.0**exponent)


@st.composite
def symmetric_rows(draw, peak: int, lowest: int):
    """Rows of integers times a power of two whose largest magnitude is `peak`: such
    rows quantize with a scale that is exactly a power of two, so they round-trip.
    Below `lowest` the epsilon Keras adds to the peak stops vanishing in float32."""
    rows, dim = draw(shapes)
    ints = draw(hnp.arrays(np.int64, (rows, dim), elements=st.integers(-peak, peak)))
    at = draw(st.lists(st.integers(0, dim - 1), min_size=rows, max_size=rows))
    signs = draw(st.lists(st.sampled_from([-1, 1]), min_size=rows, max_size=rows))
    for row in range(rows):
        ints[row, at[row]] = signs[row] * peak
    exponents = draw(st.lists(st.integers(lowest, 4), min_size=rows, max_size=rows))
    scale = np.array([_power(e) for e in exponents], dtype=np.float32)[:, None]
    return ints.astype(np.float32) * scale


@given(symmetric_rows(127, -4))
def test_int8_rows_that_are_exact_round_trip(values):
    codec = Int8Codec(values.shape[1])
    assert codec.decode(codec.encode(values)).tobytes() == values.tobytes()


@given(symmetric_rows(7, -1))
def test_int4_rows_that_are_exact_round_trip(values):
    codec = Int4Codec(values.shape[1])
    assert codec.decode(codec.encode(values)).tobytes() == values.tobytes()


@st.composite
def grouped_rows(draw):
    """Rows whose every group (zero padding included) spans exactly 15 steps of a power
    of two from a multiple of it in [-15, 0]: the grouped quantizer stores them exactly."""
    rows = draw(st.integers(1, 4))
    block = draw(st.integers(2, 6))
    dim = draw(st.integers(1, 20))
    groups = group_count(dim, block)
    steps = np.zeros((rows, dim), dtype=np.int64)
    for row in range(rows):
        for group in range(groups):
            start, stop = group * block, min(dim, (group + 1) * block)
            padded = stop - start < block
            offsets = draw(
                st.lists(st.integers(0, 15), min_size=stop - start, max_size=stop - start)
            )
            if stop - start >= 2:
                offsets[0], offsets[-1] = 0, 15
                low = draw(st.integers(-15, 0))
            else:
                low = draw(st.sampled_from([0, -15]))
                offsets[0] = 15 if low == 0 else 0
                assert padded
            steps[row, start:stop] = np.asarray(offsets) + low
    exponent = draw(st.integers(-2, 4))
    return steps.astype(np.float32) * _power(exponent), block


def grouped_codec(dim: int, block: int) -> Int4GroupedCodec:
    return Int4GroupedCodec(dim, group_count(dim, block), block)


@given(grouped_rows())
def test_int4_grouped_rows_that_are_exact_round_trip(case):
    values, block = case
    codec = grouped_codec(values.shape[1], block)
    stored = codec.encode(values)
    stored["g_idx"] = canonical_group_index(values.shape[1], block)
    assert codec.decode(stored).tobytes() == values.tobytes()


finite_rows = hnp.arrays(
    np.float32,
    shapes,
    elements=st.floats(-1e4, 1e4, width=32, allow_nan=False, allow_infinity=False),
)


@given(finite_rows)
def test_int8_error_is_within_half_a_step(values):
    codec = Int8Codec(values.shape[1])
    stored = codec.encode(values)
    step = 1 / stored["scale"].astype(np.float64)[:, None]
    error = np.abs(codec.decode(stored).astype(np.float64) - values)
    assert np.all(error <= step / 2 * (1 + 1e-5) + 1e-6)


@given(finite_rows, st.integers(1, 8))
def test_int4_grouped_error_is_within_half_a_step_where_a_group_spans_zero(values, block):
    dim = values.shape[1]
    codec = grouped_codec(dim, block)
    stored = codec.encode(values)
    columns = canonical_group_index(dim, block).astype(int)
    stored["g_idx"] = canonical_group_index(dim, block)
    step = stored["scale"].astype(np.float64)[:, columns]
    error = np.abs(codec.decode(stored).astype(np.float64) - values)
    padded = np.zeros((values.shape[0], group_count(dim, block) * block), np.float32)
    padded[:, :dim] = values
    groups = padded.reshape(values.shape[0], -1, block)
    spans_zero = ((groups.min(axis=2) <= 0) & (groups.max(axis=2) >= 0))[:, columns]
    bound = step / 2 * (1 + 1e-5) + 1e-6
    assert np.all((error <= bound) | ~spans_zero)


def test_int4_groups_that_miss_zero_saturate_as_in_keras():
    """The zero point is clipped to [-8, 7], so a group far from zero is not kept."""
    codec = grouped_codec(2, 2)
    stored = codec.encode(np.array([[10.0, 11.0]], np.float32))
    stored["g_idx"] = canonical_group_index(2, 2)
    decoded = codec.decode(stored)
    assert np.all(decoded < 2)


def test_float_codec_widens_bfloat16_and_keeps_the_rest():
    import ml_dtypes

    half = np.array([[1.5, -2.0]], dtype=ml_dtypes.bfloat16)
    assert FloatCodec(2, "bfloat16").decode({"values": half}).dtype == np.float32
    same = np.array([[1.5, -2.0]], dtype=np.float16)
    assert FloatCodec(2, "float16").decode({"values": same}) is same


def test_wrong_width_is_refused():
    with pytest.raises(UnsupportedEdit):
        Int8Codec(4).encode(np.zeros((2, 3), np.float32))


def test_block_size_is_read_from_a_canonical_group_index():
    assert block_size_from_group_index(canonical_group_index(10, 4)) == 4
    with pytest.raises(UnsupportedEdit):
        block_size_from_group_index(canonical_group_index(7, 128))  # one group
    with pytest.raises(UnsupportedEdit):
        block_size_from_group_index(np.array([0, 1, 0, 1], np.float32))


def test_grouped_codec_without_a_block_size_learns_it_or_refuses():
    codec = Int4GroupedCodec(10, 3)
    with pytest.raises(UnsupportedEdit):
        codec.encode(np.zeros((1, 10), np.float32))
    assert codec.with_group_index(canonical_group_index(10, 4)).block_size == 4
    with pytest.raises(UnsupportedEdit):
        Int4GroupedCodec(10, 3, 4).with_group_index(canonical_group_index(10, 5))


@pytest.mark.parametrize("g_idx", [[0, 0, 5], [0, -1, 0], [0, np.nan, 0], [0, 0]])
def test_group_index_outside_the_groups_is_malformed(g_idx):
    codec = Int4GroupedCodec(3, 2, 2)
    blocks = {
        "values": np.zeros((1, 2), np.int8),
        "scale": np.ones((1, 2), np.float32),
        "zero": np.zeros((1, 2), np.int8),
        "g_idx": np.asarray(g_idx, np.float32),
    }
    with pytest.raises(MalformedFile):
        codec.decode(blocks)


# Detection --------------------------------------------------------------------------


def infos(*specs) -> list[VariableInfo]:
    return [VariableInfo(f"vars/{i}", shape, dtype) for i, (shape, dtype) in enumerate(specs)]


def policy(mode: str, source: str | None = "float32") -> dict:
    name = "Int4DTypePolicy" if "/" in mode else "QuantizedDTypePolicy"
    return {
        "module": "keras.dtype_policies",
        "class_name": name,
        "config": {"mode": mode, "source_name": source},
    }


def config(dtype, rows=10, dim=7, **extra) -> dict:
    return {"dtype": dtype, "input_dim": rows, "output_dim": dim, **extra}


INT8_UNTIED = infos(((10, 7), "int8"), ((10,), "float32"), ((7, 10), "int8"), ((10,), "float32"))
INT4_UNTIED = infos(((10, 4), "int8"), ((10,), "float32"), ((4, 10), "int8"), ((10,), "float32"))
GROUPED_UNTIED = infos(
    ((10, 4), "int8"),
    ((10, 2), "float32"),
    ((10, 2), "int8"),
    ((7,), "float32"),
    ((4, 10), "int8"),
    ((2, 10), "float32"),
    ((2, 10), "float32"),
)


def test_untied_int8_reversible_embedding_is_int8():
    """The case the old guess reported as int4."""
    found = detect_codecs(
        INT8_UNTIED, class_name="ReversibleEmbedding", config=config(policy("int8"))
    )
    assert found.name == "int8"
    assert found.reverse is not None and found.reverse.shape == (7, 10)
    assert found.reverse.parts["values"].vocab_axis == 1
    assert found.reverse.parts["scale"].vocab_axis == 0


def test_int8_and_int4_per_channel_with_the_same_bytes_are_told_apart_by_config():
    tied = infos(((10, 4), "int8"), ((10,), "float32"))
    assert detect_codecs(tied, config=config(policy("int8"), dim=4)).name == "int8"
    assert detect_codecs(tied, config=config(policy("int4/-1"), dim=7)).name == "int4"
    assert detect_codecs(tied, config=config(policy("int4"), dim=8)).name == "int4"
    assert detect_codecs(tied, config={"input_dim": 10, "output_dim": 4}).name == "int8"
    assert detect_codecs(tied, config={"input_dim": 10, "output_dim": 7}).name == "int4"
    with pytest.raises(UnsupportedEdit, match="int4 .dim 7. and int4 .dim 8. and int8"):
        detect_codecs(tied)


def test_grouped_layout_is_recognised_by_structure_alone():
    found = detect_codecs(GROUPED_UNTIED)
    assert found.name == "int4-grouped"
    assert found.embeddings.codec.block_size is None
    assert found.reverse is not None
    assert found.reverse.parts["g_idx"].variable.path == "vars/3"
    assert found.reverse.parts["zero"].vocab_axis == 1


def test_grouped_block_size_comes_from_the_policy():
    found = detect_codecs(GROUPED_UNTIED, config=config(policy("int4/4")))
    assert found.embeddings.codec.block_size == 4
    with pytest.raises(UnsupportedEdit):
        detect_codecs(GROUPED_UNTIED, config=config(policy("int4/2")))  # 4 groups, not 2


def test_keras_hub_policy_map_is_looked_up_by_layer_path():
    mapped = {
        "class_name": "DTypePolicyMap",
        "config": {
            "default_policy": None,
            "policy_map": {
                "token_embedding": policy("int8", None),
                "transformer_layer_.*/dense": policy("int4/128", None),
            },
        },
    }
    found = detect_codecs(
        INT8_UNTIED, class_name="ReversibleEmbedding", policy=mapped, layer_path="token_embedding"
    )
    assert found.name == "int8"
    assert found.embeddings.codec.compute_dtype == "float32"  # the stored scale's dtype
    assert read_policy(mapped, "transformer_layer_3/dense") == Policy("int4-grouped", 128)
    assert read_policy(mapped, "elsewhere") == Policy("float")
    assert read_policy(mapped) is None
    with pytest.raises(UnsupportedEdit, match="do not fit the float"):
        detect_codecs(INT8_UNTIED, policy=mapped, layer_path="elsewhere")


def test_several_matching_patterns_are_refused():
    mapped = {
        "class_name": "DTypePolicyMap",
        "config": {"policy_map": {"a.*": policy("int8"), ".*b": policy("int8")}},
    }
    with pytest.raises(UnsupportedEdit, match="several"):
        read_policy(mapped, "ab")


@pytest.mark.parametrize(
    "entry, expected",
    [
        ("float32", Policy("float", None, "float32")),
        ("mixed_bfloat16", Policy("float", None, "bfloat16")),
        ("int8_from_mixed_bfloat16", Policy("int8", None, "bfloat16")),
        ("int4_from_float32", Policy("int4", None, "float32")),
        ("int4/64_from_float32", Policy("int4-grouped", 64, "float32")),
        ("int4/-1_from_bfloat16", Policy("int4", None, "bfloat16")),
        (
            {"class_name": "QuantizedDTypePolicy", "config": {"name": "int8_from_float32"}},
            Policy("int8", None, "float32"),
        ),
        (
            {"class_name": "DTypePolicy", "config": {"name": "bfloat16"}},
            Policy("float", None, "bfloat16"),
        ),
        (
            {"class_name": "Policy", "config": {"name": "mixed_float16"}},
            Policy("float", None, "float16"),
        ),
        ({"class_name": "MyPolicy", "config": {}}, None),
        (None, None),
    ],
)
def test_policies_are_read_in_every_spelling(entry, expected):
    assert read_policy(entry) == expected


@pytest.mark.parametrize(
    "entry",
    [
        "gptq/4/128_from_float32",
        "float8_from_float32",
        "int4/0_from_float32",
        "int4/x_from_float32",
        "float33",
        {"class_name": "QuantizedDTypePolicy"},
        {"class_name": "DTypePolicyMap", "config": {"policy_map": []}},
        ["int8"],
        {"class_name": "QuantizedDTypePolicy", "config": {"mode": 8}},
    ],
)
def test_policies_embcli_cannot_read_are_refused(entry):
    with pytest.raises(UnsupportedEdit):
        read_policy(entry, "emb")


def test_contradictions_are_refused():
    int8 = infos(((10, 7), "int8"), ((10,), "float32"))
    with pytest.raises(UnsupportedEdit):
        detect_codecs(int8, config=config("float32"))
    with pytest.raises(UnsupportedEdit):
        detect_codecs(int8, config=config(policy("int8"), rows=11))
    with pytest.raises(UnsupportedEdit):
        detect_codecs(int8, config=config(policy("int8")), dims=(10, 8))
    with pytest.raises(UnsupportedEdit, match="disagree"):
        detect_codecs(
            int8,
            config=config(policy("int8")),
            policy={
                "class_name": "DTypePolicyMap",
                "config": {"policy_map": {"e": policy("int4")}},
            },
            layer_path="e",
        )
    with pytest.raises(UnsupportedEdit):
        detect_codecs(INT8_UNTIED, class_name="Embedding", config=config(policy("int8")))


def test_tie_weights_in_config_decides_the_reverse_table():
    with pytest.raises(UnsupportedEdit):
        detect_codecs(INT4_UNTIED, config=config(policy("int4/-1"), tie_weights=True))
    found = detect_codecs(INT4_UNTIED, config=config(policy("int4/-1"), tie_weights=False))
    assert found.reverse is not None and found.reverse.name == "int4"


def test_float_tables_and_their_reverse():
    found = detect_codecs(infos(((10, 7), "float32"), ((7, 10), "float32")))
    assert found.name == "float" and found.reverse is not None
    assert (
        detect_codecs(
            infos(
                ((10, 7), "bfloat16"),
            )
        ).embeddings.codec.dtype
        == "bfloat16"
    )


def test_named_variables_are_matched_by_name_in_any_order():
    named = [
        VariableInfo("w/3", (10,), "float32", "emb/reverse_embeddings_scale:0"),
        VariableInfo("w/0", (10, 7), "int8", "emb/embeddings:0"),
        VariableInfo("w/2", (7, 10), "int8", "emb/reverse_embeddings:0"),
        VariableInfo("w/1", (10,), "float32", "emb/embeddings_scale:0"),
    ]
    found = detect_codecs(named, config=config(policy("int8")))
    assert found.embeddings.parts["scale"].variable.path == "w/1"
    assert found.reverse is not None and found.reverse.parts["scale"].variable.path == "w/3"


variable_infos = st.lists(
    st.builds(
        VariableInfo,
        st.text(max_size=3),
        st.lists(st.integers(0, 12), min_size=0, max_size=3).map(tuple),
        st.sampled_from(["int8", "uint8", "float32", "bfloat16", "float64", "int32", "void16"]),
        st.one_of(st.none(), st.sampled_from(["embeddings", "g_idx", "embeddings_scale"])),
    ),
    max_size=8,
)
policy_entries = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.sampled_from(["int8_from_float32", "int4/4_from_float32", "int4_from_bfloat16"]),
    st.builds(policy, st.sampled_from(["int8", "int4", "int4/2", "int4/-1", "awq"])),
    st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text())),
)


@pytest.mark.parametrize(
    "codec", [Int8Codec(3), Int4Codec(3), Int4GroupedCodec(3, 2, 2)], ids=lambda c: c.name
)
def test_quantized_tables_refuse_what_they_cannot_hold(codec):
    with pytest.raises(NonFiniteValues):
        codec.encode(np.array([[1.0, np.nan, 0.0]], np.float32))
    with pytest.raises(NonFiniteValues):
        codec.encode(np.array([[1e39, 0.0, 0.0]], np.float64))  # inf once held as float32
    with pytest.raises(BadVectors):
        codec.encode(np.array([["a", "b", "c"]]))
    assert all(len(array) == 0 for array in codec.encode(np.zeros((0, 3), np.float32)).values())


@pytest.mark.parametrize(
    "codec", [Int8Codec(3), Int4Codec(3), Int4GroupedCodec(3, 2, 2)], ids=lambda c: c.name
)
def test_new_rows_are_held_in_the_variable_dtype_first(codec):
    """A float layer holding float64 rows holds them as float32, so quantize sees those."""
    wide = np.array([[0.1, -0.7, 1 / 3]], np.float64)
    for role, array in codec.encode(wide).items():
        assert array.tobytes() == codec.encode(wide.astype(np.float32))[role].tobytes()


def quantization_config(class_name: str, **config) -> dict:
    return {"module": "keras.quantizers", "class_name": class_name, "config": config}


def abs_max(**config) -> dict:
    return {"module": "keras.quantizers", "class_name": "AbsMaxQuantizer", "config": config}


@pytest.mark.parametrize(
    "entry, expected",
    [
        (None, None),
        (
            quantization_config("Int8QuantizationConfig", weight_quantizer=None),
            Requested("int8", None, AbsMax((-127, 127)), False),
        ),
        (
            quantization_config("Int4QuantizationConfig", weight_quantizer=None, block_size=128),
            Requested("int4-grouped", 128, None, False),
        ),
        (
            quantization_config("Int4QuantizationConfig", weight_quantizer=None),
            Requested("int4", None, AbsMax((-8, 7)), False),
        ),
        (
            quantization_config(
                "Int8QuantizationConfig",
                weight_quantizer=abs_max(value_range=[-100, 100], epsilon=0.001, axis=[-1]),
            ),
            Requested("int8", None, AbsMax((-100, 100), 0.001), True),
        ),
        (
            quantization_config(
                "Int8QuantizationConfig",
                weight_quantizer=abs_max(value_range=[-100, 100], axis=[0]),
            ),
            Requested("int8", None, None, True),
        ),
        (
            quantization_config("Int8QuantizationConfig", weight_quantizer={"class_name": "Mine"}),
            Requested("int8", None, None, True),
        ),
    ],
)
def test_quantization_configs_are_read_as_keras_reads_them(entry, expected):
    assert read_quantization_config(entry) == expected


@pytest.mark.parametrize(
    "entry",
    [
        quantization_config("Float8QuantizationConfig"),
        quantization_config("GPTQConfig", weight_bits=4),
        quantization_config("Int4QuantizationConfig", block_size=0),
        quantization_config("Int4QuantizationConfig", block_size=8, weight_quantizer=abs_max()),
        {"class_name": "Int8QuantizationConfig"},
        "int8",
    ],
)
def test_quantization_configs_embcli_cannot_follow_are_refused(entry):
    with pytest.raises(UnsupportedEdit):
        read_quantization_config(entry)


def test_quantization_config_and_policy_must_agree():
    per_channel = quantization_config("Int4QuantizationConfig", block_size=-1)
    grouped = quantization_config("Int4QuantizationConfig", block_size=2)
    with pytest.raises(UnsupportedEdit, match="disagree"):
        detect_codecs(INT4_UNTIED, config=config(policy("int8"), quantization_config=per_channel))
    with pytest.raises(UnsupportedEdit, match="disagree"):
        detect_codecs(GROUPED_UNTIED, config=config(policy("int4/4"), quantization_config=grouped))
    with pytest.raises(UnsupportedEdit, match="do not fit"):  # 4 groups of 2, not 2
        detect_codecs(GROUPED_UNTIED, config={"quantization_config": grouped})
    fours = quantization_config("Int4QuantizationConfig", block_size=4)
    found = detect_codecs(GROUPED_UNTIED, config={"quantization_config": fours})
    assert found.embeddings.codec.block_size == 4


def test_rows_of_an_unknown_quantizer_decode_but_are_not_rewritten():
    mine = quantization_config("Int8QuantizationConfig", weight_quantizer={"class_name": "Mine"})
    found = detect_codecs(INT8_UNTIED, config=config(policy("int8"), quantization_config=mine))
    stored = {"values": np.ones((1, 7), np.int8), "scale": np.full(1, 2, np.float32)}
    assert np.all(found.embeddings.codec.decode(stored) == 0.5)
    with pytest.raises(UnsupportedEdit, match="cannot reproduce"):
        found.embeddings.encode(np.zeros((1, 7), np.float32))
    assert found.reverse is not None
    with pytest.raises(UnsupportedEdit, match="cannot reproduce"):
        found.reverse.encode(np.zeros((1, 7), np.float32))
    plain = detect_codecs(INT8_UNTIED, config=config(policy("int8")))
    assert plain.reverse is not None and plain.reverse.encode(np.zeros((1, 7), np.float32))


quantization_entries = st.one_of(
    st.none(),
    st.text(max_size=5),
    st.builds(
        lambda name, block, quantizer: {
            "class_name": name,
            "config": {"block_size": block, "weight_quantizer": quantizer},
        },
        st.sampled_from(["Int8QuantizationConfig", "Int4QuantizationConfig", "GPTQConfig"]),
        st.one_of(st.none(), st.integers(-3, 9), st.text(max_size=2), st.booleans()),
        st.one_of(
            st.none(),
            st.builds(
                lambda bounds, epsilon, axis: abs_max(
                    value_range=bounds, epsilon=epsilon, axis=axis
                ),
                st.one_of(st.lists(st.integers(-200, 200), max_size=3), st.text(max_size=2)),
                st.one_of(st.floats(), st.integers(), st.none()),
                st.one_of(st.none(), st.integers(-2, 2), st.lists(st.integers(-2, 2))),
            ),
        ),
    ),
)


known_layouts = st.sampled_from(
    [INT8_UNTIED, INT8_UNTIED[:2], INT4_UNTIED, GROUPED_UNTIED, GROUPED_UNTIED[:4]]
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(variable_infos, known_layouts),
    policy_entries,
    quantization_entries,
    st.one_of(st.none(), st.integers(-2, 12), st.booleans()),
    st.one_of(st.none(), st.booleans(), st.text(max_size=2)),
)
def test_any_evidence_gives_codecs_or_a_library_error(variables, entry, requested, dim, tie):
    try:
        found = detect_codecs(
            variables,
            class_name="ReversibleEmbedding",
            config={
                "dtype": entry,
                "quantization_config": requested,
                "output_dim": dim,
                "tie_weights": tie,
            },
            layer_path="emb",
        )
    except EmbcliError:
        return
    for table in found.tables():
        assert table.rows >= 0 and table.dim >= 1
        assert math.prod(table.shape) == table.rows * table.dim
        rows = min(table.rows, 2)
        try:
            encoded = table.encode(np.zeros((rows, table.dim), np.float32))
        except UnsupportedEdit:
            continue
        for role, array in encoded.items():
            expected = list(table.parts[role].variable.shape)
            expected[table.parts[role].vocab_axis or 0] = rows
            assert list(array.shape) == expected


def test_table_codec_orients_reverse_parts_and_names_missing_ones():
    found = detect_codecs(INT8_UNTIED, config=config(policy("int8")))
    back = found.reverse
    assert back is not None and back.weight == "vars/2"
    stored = {"values": np.arange(70, dtype=np.int8).reshape(7, 10), "scale": np.full(10, 2.0)}
    stored["scale"] = stored["scale"].astype(np.float32)
    picked = back.decode(back.select(stored, [9, 0]))
    np.testing.assert_array_equal(picked, stored["values"][:, [9, 0]].T / np.float32(2))
    np.testing.assert_array_equal(back.decode(back.select(stored, slice(0, 10, 9))), picked[::-1])
    with pytest.raises(UnsupportedEdit, match="scale"):
        back.decode({"values": stored["values"]})
    encoded = back.encode(np.ones((3, 7), np.float32))
    assert encoded["values"].shape == (7, 3) and encoded["scale"].shape == (3,)

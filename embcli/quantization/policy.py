"""What a saved layer's config says about its tables: the dtype policy (a name, a
serialized policy, or a `DTypePolicyMap` entry found by layer path, as Keras looks it up)
and the `quantization_config` that `quantize` recorded."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embcli.errors import UnsupportedEdit
from embcli.quantization.codecs import INT4_DEFAULT, INT8_DEFAULT, KERAS_EPSILON, AbsMax

FLOAT = "float"
INT8 = "int8"
INT4 = "int4"
INT4_GROUPED = "int4-grouped"
ENCODINGS = (FLOAT, INT8, INT4, INT4_GROUPED)

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
_MIXED_COMPUTE = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
# tf.keras and Keras 2 call their mixed-precision policy class `Policy`.
_FLOAT_POLICY_CLASSES = ("DTypePolicy", "FloatDTypePolicy", "Policy")
_QUANTIZED_POLICY_CLASSES = (
    "QuantizedDTypePolicy",
    "Int4DTypePolicy",
    "QuantizedFloat8DTypePolicy",
    "GPTQDTypePolicy",
    "AWQDTypePolicy",
)
POLICY_MAP_CLASS = "DTypePolicyMap"
INT8_CONFIG_CLASS = "Int8QuantizationConfig"
INT4_CONFIG_CLASS = "Int4QuantizationConfig"
ABS_MAX_CLASS = "AbsMaxQuantizer"
_ROW_AXES = (None, -1, 1, [-1], [1])
PER_CHANNEL_BLOCK = -1
_FROM = "_from_"


@dataclass(frozen=True)
class Policy:
    """A dtype policy as far as tables care: its encoding and compute dtype.

    `block_size` is the int4 block (None for per channel); `compute_dtype` is None where
    the file leaves it to the loading program's global policy.
    """

    encoding: str
    block_size: int | None = None
    compute_dtype: str | None = None


def _compute_dtype(source: Any) -> str | None:
    if not isinstance(source, str):
        return None
    return _MIXED_COMPUTE.get(source, source if source in FLOAT_DTYPES else None)


def _quantized_policy(mode: Any, source: Any) -> Policy:
    if not isinstance(mode, str):
        raise UnsupportedEdit("the layer's quantized dtype policy names no mode")
    compute = _compute_dtype(source)
    if mode == INT8:
        return Policy(INT8, None, compute)
    if mode == INT4:
        return Policy(INT4, None, compute)
    base, _, block = mode.partition("/")
    if base == INT4 and re.fullmatch(r"-1|[1-9][0-9]*", block):
        size = int(block)
        if size == PER_CHANNEL_BLOCK:
            return Policy(INT4, None, compute)
        return Policy(INT4_GROUPED, size, compute)
    raise UnsupportedEdit(f"the layer is {mode}-quantized; embcli reads int8 and int4 tables")


def _policy_from_name(name: Any) -> Policy | None:
    if name is None:
        return Policy(FLOAT)
    if not isinstance(name, str):
        raise UnsupportedEdit("the layer's dtype policy is not a name")
    if _FROM in name:
        mode, source = name.split(_FROM, 1)
        return _quantized_policy(mode, source)
    compute = _compute_dtype(name)
    if compute is None:
        raise UnsupportedEdit(f"the layer's dtype policy {name!r} is not one Keras defines")
    return Policy(FLOAT, None, compute)


def _lookup_policy_map(config: Any, layer_path: str | None) -> Policy | None:
    if not isinstance(config, Mapping):
        raise UnsupportedEdit("the dtype policy map has no config")
    entries = config.get("policy_map")
    if not isinstance(entries, Mapping):
        raise UnsupportedEdit("the dtype policy map holds no policies")
    if layer_path is None:
        return None
    if layer_path in entries:
        return read_policy(entries[layer_path])
    matches = []
    for key, entry in entries.items():
        try:
            if isinstance(key, str) and re.fullmatch(key, layer_path):
                matches.append(entry)
        except re.error:
            continue
    if len(matches) > 1:
        raise UnsupportedEdit(f"several dtype policies match the layer {layer_path!r}")
    if matches:
        return read_policy(matches[0])
    default = config.get("default_policy")
    return Policy(FLOAT) if default is None else read_policy(default)


def read_policy(entry: Any, layer_path: str | None = None) -> Policy | None:
    """What a serialized dtype policy says about a layer's tables.

    Args:
        entry: a config's `dtype`: a name ("float32", "int8_from_float32",
            "int4/128_from_bfloat16") or a serialized policy dict, including
            `DTypePolicyMap`, looked up by `layer_path` as Keras does (exact key, then
            the one key that matches as a regular expression, then the default).
        layer_path: the layer's path (`Layer.path`), needed for a policy map.

    Returns:
        The policy, or None where the entry gives no evidence (no entry; a map without
        a path to look up; a policy class Keras does not define, which leaves the
        decision to the saved variables).

    Raises:
        UnsupportedEdit: the policy is one embcli cannot read tables of, or is malformed.
    """
    if entry is None:
        return None
    if isinstance(entry, str):
        return _policy_from_name(entry)
    if not isinstance(entry, Mapping):
        raise UnsupportedEdit("the layer's dtype policy is neither a name nor a config")
    class_name, config = entry.get("class_name"), entry.get("config")
    if class_name == POLICY_MAP_CLASS:
        return _lookup_policy_map(config, layer_path)
    if not isinstance(config, Mapping):
        raise UnsupportedEdit(f"the dtype policy {class_name!r} has no config")
    if class_name in _FLOAT_POLICY_CLASSES:
        return _policy_from_name(config.get("name"))
    if class_name in _QUANTIZED_POLICY_CLASSES:
        if "mode" in config:
            return _quantized_policy(config.get("mode"), config.get("source_name"))
        return _policy_from_name(config.get("name"))
    return None


@dataclass(frozen=True)
class Requested:
    """What a layer's `quantization_config` asked `quantize` for.

    `quantizer` is the weight quantizer's parameters; None where the config names one
    embcli cannot reproduce (new rows are then refused). `custom` says one was named.
    """

    encoding: str
    block_size: int | None
    quantizer: AbsMax | None
    custom: bool


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _abs_max(entry: Any) -> AbsMax | None:
    """A serialized `AbsMaxQuantizer` that quantizes along the row, or None."""
    if not isinstance(entry, Mapping) or entry.get("class_name") != ABS_MAX_CLASS:
        return None
    config = entry.get("config")
    if not isinstance(config, Mapping):
        return None
    bounds = config.get("value_range")
    epsilon = config.get("epsilon", KERAS_EPSILON)
    if (
        not isinstance(bounds, (list, tuple))
        or len(bounds) != 2
        or not all(_int(b) for b in bounds)
        or not -128 <= bounds[0] <= bounds[1] <= 127
        or not isinstance(epsilon, (int, float))
        or isinstance(epsilon, bool)
        or not 0 <= epsilon < float("inf")
        or config.get("output_dtype", "int8") != "int8"
        or config.get("axis") not in _ROW_AXES
    ):
        return None
    return AbsMax((bounds[0], bounds[1]), float(epsilon))


def read_quantization_config(entry: Any) -> Requested | None:
    """What a layer config's `quantization_config` says, as Keras reads it back.

    Raises:
        UnsupportedEdit: it names a scheme other than int8 or int4, or is malformed.
    """
    if entry is None:
        return None
    if not isinstance(entry, Mapping) or not isinstance(entry.get("config"), Mapping):
        raise UnsupportedEdit("the layer's quantization config is malformed")
    class_name, config = entry.get("class_name"), entry["config"]
    if class_name not in (INT8_CONFIG_CLASS, INT4_CONFIG_CLASS):
        raise UnsupportedEdit(f"the layer was quantized with {class_name!r}, not int8 or int4")
    named = config.get("weight_quantizer")
    custom = named is not None
    if class_name == INT8_CONFIG_CLASS:
        return Requested(INT8, None, _abs_max(named) if custom else INT8_DEFAULT, custom)
    block = config.get("block_size")
    if block is None or block == PER_CHANNEL_BLOCK:
        return Requested(INT4, None, _abs_max(named) if custom else INT4_DEFAULT, custom)
    if not _int(block) or block <= 0 or custom:
        raise UnsupportedEdit("the layer's int4 quantization config is not one Keras writes")
    return Requested(INT4_GROUPED, block, None, False)


def with_request(known: Policy | None, requested: Requested | None) -> Policy | None:
    """The policy, checked against the quantization config (whose block size Keras
    prefers when it builds the layer)."""
    if requested is None:
        return known
    if known is None:
        return Policy(requested.encoding, requested.block_size)
    if (known.encoding, known.block_size) != (requested.encoding, requested.block_size):
        raise UnsupportedEdit("the layer's dtype policy and quantization config disagree")
    return known


def combine_policies(own: Policy | None, outer: Policy | None) -> Policy | None:
    """The layer's own policy and one from an enclosing policy map, which must agree."""
    if own is None or outer is None:
        return own or outer
    if (own.encoding, own.block_size) != (outer.encoding, outer.block_size):
        raise UnsupportedEdit("the layer's config and its model's policy map disagree")
    return own if own.compute_dtype is not None else outer

"""Which codec a saved embedding layer uses, decided from evidence only.

Evidence is the layer's dtype policy (its own config's `dtype`, or an enclosing
`DTypePolicyMap` such as a keras-hub backbone's, keyed by layer path), its config's sizes
and `tie_weights`, and the saved variables' names, shapes and dtypes. Every encoding
Keras could have written is tried against that evidence; exactly one must fit. When none
or several fit, the table is refused with `UnsupportedEdit` rather than guessed: int8 and
int4 per channel, for one, are told apart only by the policy or by the table's width.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from embcli.errors import UnsupportedEdit
from embcli.quantization.codecs import (
    GROUP_INDEX,
    SCALE,
    VALUES,
    ZERO,
    Codec,
    FloatCodec,
    Int4Codec,
    Int4GroupedCodec,
    Int8Codec,
    group_count,
    packed_width,
)
from embcli.quantization.tables import LayerCodecs, StoredPart, TableCodec, VariableInfo

FLOAT = "float"
INT8 = "int8"
INT4 = "int4"
INT4_GROUPED = "int4-grouped"
ENCODINGS = (FLOAT, INT8, INT4, INT4_GROUPED)

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
_MIXED_COMPUTE = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
_FLOAT_POLICY_CLASSES = ("DTypePolicy", "FloatDTypePolicy")
_QUANTIZED_POLICY_CLASSES = (
    "QuantizedDTypePolicy",
    "Int4DTypePolicy",
    "QuantizedFloat8DTypePolicy",
    "GPTQDTypePolicy",
    "AWQDTypePolicy",
)
POLICY_MAP_CLASS = "DTypePolicyMap"
PER_CHANNEL_BLOCK = -1
_FROM = "_from_"

# Keras's variable names, by (table, role), for formats that record names.
_KERAS_NAMES = {
    (False, VALUES): "embeddings",
    (False, SCALE): "embeddings_scale",
    (False, ZERO): "embeddings_zero",
    (False, GROUP_INDEX): "g_idx",
    (True, VALUES): "reverse_embeddings",
    (True, SCALE): "reverse_embeddings_scale",
    (True, ZERO): "reverse_embeddings_zero",
}


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
        a path to look up).

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
    raise UnsupportedEdit(f"the dtype policy class {class_name!r} is not one Keras defines")


def _combine(own: Policy | None, outer: Policy | None) -> Policy | None:
    if own is None or outer is None:
        return own or outer
    if (own.encoding, own.block_size) != (outer.encoding, outer.block_size):
        raise UnsupportedEdit("the layer's config and its model's policy map disagree")
    return own if own.compute_dtype is not None else outer


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _is_float(info: VariableInfo) -> bool:
    return info.dtype in FLOAT_DTYPES


def _is_int8(info: VariableInfo) -> bool:
    return info.dtype == "int8"


@dataclass(frozen=True)
class _Candidate:
    encoding: str
    tied: bool
    dim: int
    block_size: int | None


def _short_name(name: str | None) -> str | None:
    if name is None:
        return None
    return name.rsplit("/", 1)[-1].split(":", 1)[0]


def _arrange(
    variables: Sequence[VariableInfo], roles: list[tuple[bool, str]]
) -> list[VariableInfo] | None:
    """The variables in the order of `roles`: by name where every one has a name,
    otherwise by position (the order Keras saves them in)."""
    if len(variables) != len(roles):
        return None
    names = [_short_name(v.name) for v in variables]
    if all(names):
        by_name = dict(zip(names, variables, strict=True))
        wanted = [_KERAS_NAMES[role] for role in roles]
        return [by_name[name] for name in wanted] if set(wanted) == set(by_name) else None
    return list(variables)


def _roles(encoding: str, tied: bool) -> list[tuple[bool, str]]:
    own = {
        FLOAT: [VALUES],
        INT8: [VALUES, SCALE],
        INT4: [VALUES, SCALE],
        INT4_GROUPED: [VALUES, SCALE, ZERO, GROUP_INDEX],
    }[encoding]
    reverse = [] if tied else [role for role in own if role != GROUP_INDEX]
    return [(False, role) for role in own] + [(True, role) for role in reverse]


def _fits(info: VariableInfo, shape: tuple[int, ...], kind: str) -> bool:
    if info.shape != shape:
        return False
    return _is_int8(info) if kind == "int8" else _is_float(info)


def _match(
    candidate: _Candidate, variables: Sequence[VariableInfo], rows: int
) -> dict[tuple[bool, str], VariableInfo] | None:
    """The variables by (reverse, role) if they are what `candidate` saves."""
    roles = _roles(candidate.encoding, candidate.tied)
    ordered = _arrange(variables, roles)
    if ordered is None:
        return None
    dim, encoding = candidate.dim, candidate.encoding
    width = dim if encoding in (FLOAT, INT8) else packed_width(dim)
    value_kind = "float" if encoding == FLOAT else "int8"
    groups = 0
    if encoding == INT4_GROUPED:
        scale = ordered[1]
        if len(scale.shape) != 2 or scale.shape[0] != rows:
            return None
        groups = scale.shape[1]
        if candidate.block_size is not None and groups != group_count(dim, candidate.block_size):
            return None
    expected = {
        (False, VALUES): ((rows, width), value_kind),
        (False, SCALE): ((rows, groups) if groups else (rows,), "float"),
        (False, ZERO): ((rows, groups), "int8"),
        (False, GROUP_INDEX): ((dim,), "float"),
        (True, VALUES): ((width, rows), value_kind),
        (True, SCALE): ((groups, rows) if groups else (rows,), "float"),
        (True, ZERO): ((groups, rows), "float"),
    }
    for role, info in zip(roles, ordered, strict=True):
        shape, kind = expected[role]
        if not _fits(info, shape, kind):
            return None
    return dict(zip(roles, ordered, strict=True))


def _values_variable(variables: Sequence[VariableInfo]) -> VariableInfo | None:
    """The embeddings: the one named so where names are recorded, else the first."""
    names = [_short_name(v.name) for v in variables]
    if variables and all(names):
        named = [v for v, name in zip(variables, names, strict=True) if name == "embeddings"]
        return named[0] if len(named) == 1 else None
    return variables[0] if variables else None


def _dims_to_try(
    encoding: str, first: VariableInfo, variables: Sequence[VariableInfo]
) -> list[int]:
    if len(first.shape) != 2:
        return []
    if encoding in (FLOAT, INT8):
        dims = [first.shape[1]]
    elif encoding == INT4_GROUPED:
        dims = sorted({v.shape[0] for v in variables if len(v.shape) == 1 and _is_float(v)})
    else:
        dims = [2 * first.shape[1] - 1, 2 * first.shape[1]]
    return [dim for dim in dims if dim > 0]


def _codec(
    candidate: _Candidate,
    parts: Mapping[str, VariableInfo],
    policy: Policy | None,
    reverse: bool,
) -> Codec:
    compute = policy.compute_dtype if policy is not None else None
    values = parts[VALUES]
    if candidate.encoding == FLOAT:
        return FloatCodec(candidate.dim, values.dtype)
    scale = parts[SCALE]
    compute = compute or scale.dtype
    if candidate.encoding == INT8:
        return Int8Codec(candidate.dim, scale.dtype, compute)
    if candidate.encoding == INT4:
        return Int4Codec(candidate.dim, scale.dtype, compute)
    groups = scale.shape[0] if reverse else scale.shape[1]
    return Int4GroupedCodec(
        candidate.dim, groups, candidate.block_size, scale.dtype, parts[ZERO].dtype, compute
    )


def _table(
    candidate: _Candidate,
    matched: Mapping[tuple[bool, str], VariableInfo],
    reverse: bool,
    rows: int,
    policy: Policy | None,
) -> TableCodec:
    infos = {role: info for (is_reverse, role), info in matched.items() if is_reverse == reverse}
    if reverse:
        infos[GROUP_INDEX] = matched.get((False, GROUP_INDEX))  # type: ignore[assignment]
        infos = {role: info for role, info in infos.items() if info is not None}
    parts = {}
    for role, info in infos.items():
        if role == GROUP_INDEX:
            axis = None
        elif reverse and len(info.shape) == 2:
            axis = 1
        else:
            axis = 0
        parts[role] = StoredPart(role, info, axis)
    codec = _codec(candidate, infos, policy, reverse)
    return TableCodec(codec, parts, rows, candidate.dim, reverse)


def detect_codecs(
    variables: Sequence[VariableInfo],
    *,
    class_name: str | None = None,
    config: Mapping[str, Any] | None = None,
    policy: Any = None,
    layer_path: str | None = None,
    dims: tuple[int, int] | None = None,
) -> LayerCodecs:
    """The codecs of an embedding layer's tables, from evidence only.

    Args:
        variables: the layer's own saved variables, in the order Keras saved them
            (`vars/0`, `vars/1`, ...).
        class_name: the layer's class, where known ("Embedding",
            "ReversibleEmbedding"); only a `ReversibleEmbedding` can hold a reverse table.
        config: the layer's config, where the file has one (`dtype`, `input_dim`,
            `output_dim`, `tie_weights` are read).
        policy: a policy covering the layer from outside its config, such as a keras-hub
            backbone's `dtype` (a `DTypePolicyMap`), looked up by `layer_path`.
        layer_path: the layer's `Layer.path`, the key of policy maps.
        dims: `(rows, dim)` where known from elsewhere (a backbone's `vocabulary_size`
            and `hidden_dim`).

    Returns:
        The codec of the embeddings and, for an untied `ReversibleEmbedding`, of the
        reverse table.

    Raises:
        UnsupportedEdit: the evidence fits no encoding, or more than one.
    """
    config = config if isinstance(config, Mapping) else {}
    known = _combine(read_policy(config.get("dtype"), layer_path), read_policy(policy, layer_path))
    rows_hint, dim_hint = (
        _int_or_none(config.get("input_dim")),
        _int_or_none(config.get("output_dim")),
    )
    if dims is not None:
        if (rows_hint, dim_hint) not in ((None, None), tuple(dims)):
            raise UnsupportedEdit("the layer's config and the given sizes disagree")
        rows_hint, dim_hint = dims
    first = _values_variable(variables)
    if first is None or len(first.shape) != 2:
        raise UnsupportedEdit("the layer holds no table")
    rows = first.shape[0]
    if rows_hint is not None and rows != rows_hint:
        raise UnsupportedEdit("the layer's table does not have the rows its config gives")
    ties = [True, False]
    tie_weights = config.get("tie_weights")
    if isinstance(tie_weights, bool):
        ties = [tie_weights]
    elif class_name is not None and not class_name.endswith("ReversibleEmbedding"):
        ties = [True]
    encodings = [known.encoding] if known is not None else list(ENCODINGS)
    block_size = known.block_size if known is not None else None
    found = []
    for encoding in encodings:
        for dim in _dims_to_try(encoding, first, variables):
            if dim_hint is not None and dim != dim_hint:
                continue
            for tied in ties:
                candidate = _Candidate(encoding, tied, dim, block_size)
                matched = _match(candidate, variables, rows)
                if matched is not None:
                    found.append((candidate, matched))
    if not found:
        said = f"its {known.encoding} dtype policy" if known is not None else "any encoding"
        raise UnsupportedEdit(f"the layer's saved weights do not fit {said}")
    if len(found) > 1:
        kinds = sorted({f"{c.encoding} (dim {c.dim})" for c, _ in found})
        raise UnsupportedEdit(
            f"the layer's saved weights fit {' and '.join(kinds)}; its config would tell"
        )
    candidate, matched = found[0]
    embeddings = _table(candidate, matched, False, rows, known)
    reverse = None if candidate.tied else _table(candidate, matched, True, rows, known)
    return LayerCodecs(embeddings, reverse)

"""Which codec a saved embedding layer uses, decided from evidence only.

Evidence is the layer's dtype policy (its own config's `dtype`, or an enclosing
`DTypePolicyMap` such as a keras-hub backbone's, keyed by layer path), its
`quantization_config`, its config's sizes and `tie_weights`, and the saved variables'
names, shapes and dtypes. Every encoding
Keras could have written is tried against that evidence; exactly one must fit. When none
or several fit, the table is refused with `UnsupportedEdit` rather than guessed: int8 and
int4 per channel, for one, are told apart only by the policy or by the table's width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from embcli.errors import UnsupportedEdit
from embcli.quantization.codecs import (
    GROUP_INDEX,
    INT4_DEFAULT,
    INT8_DEFAULT,
    SCALE,
    VALUES,
    ZERO,
    AbsMax,
    Codec,
    FloatCodec,
    Int4Codec,
    Int4GroupedCodec,
    Int8Codec,
    group_count,
    packed_width,
)
from embcli.quantization.policy import (
    ENCODINGS,
    FLOAT,
    FLOAT_DTYPES,
    INT4,
    INT4_GROUPED,
    INT8,
    Policy,
    Requested,
    combine_policies,
    read_policy,
    read_quantization_config,
    with_request,
)
from embcli.quantization.tables import LayerCodecs, StoredPart, TableCodec, VariableInfo

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
    requested: Requested | None,
    reverse: bool,
) -> Codec:
    compute = policy.compute_dtype if policy is not None else None
    # Keras quantizes the reverse table with its own default unless a weight quantizer
    # is named, and then with that one along the wrong axis; such rows are refused.
    if requested is None or (reverse and not requested.custom):
        quantizer: AbsMax | None = INT8_DEFAULT if candidate.encoding == INT8 else INT4_DEFAULT
    else:
        quantizer = None if reverse else requested.quantizer
    values = parts[VALUES]
    if candidate.encoding == FLOAT:
        return FloatCodec(candidate.dim, values.dtype)
    scale = parts[SCALE]
    compute = compute or scale.dtype
    if candidate.encoding == INT8:
        return Int8Codec(candidate.dim, scale.dtype, compute, quantizer)
    if candidate.encoding == INT4:
        return Int4Codec(candidate.dim, scale.dtype, compute, quantizer)
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
    requested: Requested | None,
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
    codec = _codec(candidate, infos, policy, requested, reverse)
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
        config: the layer's config, where the file has one (`dtype`,
            `quantization_config`, `input_dim`, `output_dim`, `tie_weights` are read).
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
    known = combine_policies(
        read_policy(config.get("dtype"), layer_path), read_policy(policy, layer_path)
    )
    requested = read_quantization_config(config.get("quantization_config"))
    known = with_request(known, requested)
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
        said = f"the {known.encoding} its config names" if known is not None else "any encoding"
        raise UnsupportedEdit(f"the layer's saved weights do not fit {said}")
    if len(found) > 1:
        kinds = sorted({f"{c.encoding} (dim {c.dim})" for c, _ in found})
        raise UnsupportedEdit(
            f"the layer's saved weights fit {' and '.join(kinds)}; its config would tell"
        )
    candidate, matched = found[0]
    embeddings = _table(candidate, matched, False, rows, known, requested)
    reverse = None if candidate.tied else _table(candidate, matched, True, rows, known, requested)
    return LayerCodecs(embeddings, reverse)

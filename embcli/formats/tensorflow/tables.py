"""Naming a TensorFlow artifact's 2-D variables as tables, and telling their classes.

A layer's name and class come from `keras_metadata.pb` where a tf_keras SavedModel has one.
Elsewhere no file records a class, and a table is called an `Embedding` only on evidence
that only a Keras `Embedding` (or a subclass) leaves:

- in a checkpoint, a layer of a Keras model (an object-graph edge `layer_with_weights-N`
  in tf_keras, an entry of the model's `_operations` or `_layers` in Keras 3) whose one
  variable is its `embeddings` (Keras 3: `_embeddings`) attribute, created under the name
  `<layer>/embeddings`;
- in a SavedModel, a variable named `<layer>/embeddings` that a function gathers rows from.

A Dense kernel is neither, nor is a bare `tf.Variable`, nor keras-hub's `PositionEmbedding`
(whose `embeddings` variable is sliced, not gathered, and held as `position_embeddings`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from embcli.formats.base import EMBEDDING_SUFFIX, EMBEDDING_VARIABLE, Table
from embcli.formats.tensorflow.proto import KerasLayer
from embcli.formats.tensorflow.variables import (
    OBJECT_GRAPH_KEY,
    Parents,
    Variable,
    is_optimizer_key,
    natural,
    short_key,
)

METADATA_ROOT = "root"
QUANTIZED_SCALE_SUFFIX = "_scale"
INT8 = "int8"
EMBEDDING_CLASS = "Embedding"
PRIVATE = "_"
# How a Keras Embedding holds its table: tf_keras as `embeddings`, Keras 3 `_embeddings`.
EMBEDDING_ATTRIBUTES = frozenset({EMBEDDING_VARIABLE, PRIVATE + EMBEDDING_VARIABLE})
# How a Keras model holds its layers: tf_keras `layer_with_weights-N`, Keras 3 in lists.
KERAS_LAYER_EDGE = re.compile(r"layer_with_weights-\d+")
KERAS_LAYER_LISTS = frozenset({"_operations", "_layers"})


@dataclass
class Evidence:
    """What an artifact says about its variables beyond their keys.

    Attributes:
        parents: the object graph's edges, by child node id.
        layers: tf_keras layers from `keras_metadata.pb`, by node id.
        gathered: node ids of variables that a SavedModel function gathers rows from.
        in_saved_model: whether the variables belong to a SavedModel.
    """

    parents: Parents = field(default_factory=dict)
    layers: dict[int, KerasLayer] = field(default_factory=dict)
    gathered: set[int] = field(default_factory=set)
    in_saved_model: bool = False

    @cached_property
    def layer_paths(self) -> dict[str, KerasLayer]:
        return {layer.path: layer for layer in self.layers.values()}


def build_tables(
    variables: dict[str, Variable], slot_of: dict[str, str], evidence: Evidence
) -> list[Table]:
    """Every 2-D numeric variable that is not optimizer state, as a table, in key order."""
    held = {v.node for v in variables.values() if v.node is not None}
    variables_of: dict[int, set[int]] = {}
    for node in held:
        for parent, _ in evidence.parents.get(node, []):
            variables_of.setdefault(parent, set()).add(node)
    tables = []
    for variable in variables.values():
        key = variable.key
        if (
            len(variable.shape) != 2
            or not variable.numeric
            or key in slot_of
            or is_optimizer_key(key)
            or key == OBJECT_GRAPH_KEY
            or variable.alias_of is not None
        ):
            continue
        name, qualified, class_name, local, owner = _describe(variable, evidence)
        keys = [key, *variable.aliases]
        gathered = any(
            variables[k].node in evidence.gathered for k in keys if variables[k].node is not None
        )
        if class_name is None and _is_keras_embedding(variable, variables_of, evidence, gathered):
            class_name = EMBEDDING_CLASS
        by_name = local == EMBEDDING_VARIABLE or gathered
        if class_name is not None:
            is_embedding = class_name.endswith(EMBEDDING_SUFFIX) and by_name
        else:
            is_embedding = by_name
        names = {short_key(k) for k in keys} | set(variable.aliases)
        scale = _int8_scale(variable, variables) if is_embedding else None
        tables.append(
            Table(
                name=name,
                qualified=qualified,
                class_name=class_name,
                shape=(variable.shape[0], variable.shape[1]),
                dtype=variable.dtype.name,
                weight=key,
                quantized=INT8 if scale else None,
                scale=scale,
                is_embedding=is_embedding,
                aliases=tuple(sorted(names - {key})),
                owner=owner,
            )
        )
    return sorted(tables, key=lambda t: (natural(t.owner), natural(t.weight)))


def _describe(variable: Variable, evidence: Evidence) -> tuple[str, str, str | None, str, str]:
    """`(name, qualified, class, variable name, owner)` of a variable."""
    short = short_key(variable.key)
    layer, local = _layer_of(variable, evidence)
    if layer is not None:
        names = []
        parts = layer.path.split(".")
        for end in range(2, len(parts) + 1):
            enclosing = evidence.layer_paths.get(".".join(parts[:end]))
            if enclosing is not None:
                names.append(enclosing.name)
        owner = "/".join(parts[1:])
        return layer.name, "/".join(names) or layer.name, layer.class_name, local, owner
    parts = variable.full_name.split("/") if variable.full_name else short.split("/")
    local = variable.local_name
    if len(parts) >= 2 and (local.isdigit() or local.removeprefix(PRIVATE) == parts[-1]):
        owner = short.rsplit("/", 1)[0] if "/" in short else ""
        return parts[-2], "/".join(parts[:-1]), None, parts[-1], owner
    return short, short, None, local, short.rsplit("/", 1)[0] if "/" in short else ""


def _layer_of(variable: Variable, evidence: Evidence) -> tuple[KerasLayer | None, str]:
    """The shallowest `keras_metadata.pb` layer that holds the variable, and its edge name."""
    if variable.node is None or not evidence.layers:
        return None, ""
    candidates = [
        (evidence.layers[parent], local)
        for parent, local in evidence.parents.get(variable.node, [])
        if parent in evidence.layers and not local.isdigit()
    ]
    if not candidates:
        return None, ""
    return min(candidates, key=lambda c: (c[0].path.count("."), c[0].path))


def _is_keras_embedding(
    variable: Variable, variables_of: dict[int, set[int]], evidence: Evidence, gathered: bool
) -> bool:
    """Whether the artifact shows the variable to be a Keras `Embedding`'s table.

    `variables_of` maps an object-graph node to the nodes of the variables it holds.
    """
    parts = variable.full_name.split("/")
    if len(parts) < 2 or parts[-1] != EMBEDDING_VARIABLE:
        return False
    if evidence.in_saved_model:
        return gathered
    if variable.node is None:
        return False
    holders = [
        p for p, edge in evidence.parents.get(variable.node, []) if edge in EMBEDDING_ATTRIBUTES
    ]
    if len(holders) != 1:
        return False
    layer = holders[0]
    in_keras_model = any(
        KERAS_LAYER_EDGE.fullmatch(edge)
        or (
            edge.isdigit()
            and any(e in KERAS_LAYER_LISTS for _, e in evidence.parents.get(parent, []))
        )
        for parent, edge in evidence.parents.get(layer, [])
    )
    return in_keras_model and variables_of.get(layer) == {variable.node}


def _int8_scale(variable: Variable, variables: dict[str, Variable]) -> str | None:
    """The key of a Keras int8 Embedding's per-row `embeddings_scale`, if it has one."""
    if variable.dtype.name != INT8 or not variable.full_name.endswith(EMBEDDING_VARIABLE):
        return None
    wanted = variable.full_name + QUANTIZED_SCALE_SUFFIX
    scales = [
        v.key
        for v in variables.values()
        if v.full_name == wanted
        and v.alias_of is None
        and v.shape == variable.shape[:1]
        and v.dtype.is_floating
    ]
    return scales[0] if len(scales) == 1 else None

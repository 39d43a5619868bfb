"""A checkpoint's entries and what its object graph says of them: which node holds each
variable, which optimizer slot holds state for which variable, and which entries of a
Keras 3 export are two copies of one variable."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from embcli.errors import MalformedFile

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VALUE_ATTRIBUTE = "VARIABLE_VALUE"
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
SLOT_MARKER = "/.OPTIMIZER_SLOT/"
OPTIMIZER_ROOT = "optimizer"
# Where a Keras 3 optimizer tracks the model's own variables, which are not its state.
OPTIMIZER_TRAINABLES = "_trainable_variables"
ALL_VARIABLES_ROOT = "_all_variables"
# A tf_keras optimizer names a slot `Adam/m/<the variable's own name>`.
SLOT_NAME_DEPTH = 2
# A Keras 3 optimizer names one `adam/<the variable's path, "/" made "_">_<slot>`.
FLAT_SEPARATOR = "_"

Parents = dict[int, list[tuple[int, str]]]


def short_key(key: str) -> str:
    """A checkpoint key without its `/.ATTRIBUTES/VARIABLE_VALUE` tail."""
    return key.removesuffix(VALUE_SUFFIX)


def natural(text: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key that puts `layer-2` before `layer-10`."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)
    )


def root_of(key: str) -> str:
    return key.split("/", 1)[0]


def is_optimizer_key(key: str) -> bool:
    """Whether a key holds optimizer state: it lies below an `optimizer` object (at the
    root, or a Keras 3 model's own), other than the model variables it tracks."""
    if SLOT_MARKER in key:
        return True
    parts = key.split("/")
    for position, part in enumerate(parts[:-1]):
        if part == OPTIMIZER_ROOT:
            return parts[position + 1] != OPTIMIZER_TRAINABLES
    return False


@dataclass
class Variable:
    """One checkpoint entry, with what the object graph says of it.

    Attributes:
        key: the entry's checkpoint key.
        shape: its stored shape.
        dtype: its TensorFlow dtype.
        node: the object-graph node that holds it, when the graph names one.
        full_name: the variable's own name, as it was created (`layer/embeddings`).
        aliases: keys of other entries that hold the same variable.
        alias_of: for the second copy of a variable, the key of the first.
    """

    key: str
    shape: tuple[int, ...]
    dtype: Any
    node: int | None = None
    full_name: str = ""
    aliases: list[str] = field(default_factory=list)
    alias_of: str | None = None

    @property
    def local_name(self) -> str:
        return short_key(self.key).rsplit("/", 1)[-1]

    @property
    def numeric(self) -> bool:
        return bool(self.dtype.is_floating or (self.dtype.is_integer and not self.dtype.is_bool))


def read_object_graph(data: bytes, variables: dict[str, Variable], what: str) -> Any:
    """Parse a checkpoint's object graph and record each variable's node and full name.

    Raises:
        MalformedFile: the graph cannot be parsed.
    """
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    try:
        graph.ParseFromString(data)
    except (DecodeError, TypeError) as exc:
        raise MalformedFile(f"{what}: malformed object graph ({exc})") from None
    for node_id, node in enumerate(graph.nodes):
        for attribute in node.attributes:
            variable = variables.get(attribute.checkpoint_key)
            if attribute.name == VALUE_ATTRIBUTE and variable is not None:
                variable.node = node_id
                variable.full_name = attribute.full_name
    return graph


def parents_of(graph: Any) -> Parents:
    """For each node id, the `(parent id, edge name)` of every edge that leads to it."""
    parents: Parents = {}
    if graph is None:
        return parents
    for node_id, node in enumerate(graph.nodes):
        for child in node.children:
            parents.setdefault(child.node_id, []).append((node_id, child.local_name))
    return parents


def find_slots(variables: dict[str, Variable], graph: Any) -> dict[str, str]:
    """Map each optimizer slot's key to the key of the variable it holds state for.

    The object graph's slot records say so where the optimizer made them; otherwise the
    legacy `.OPTIMIZER_SLOT` keys, the new optimizers' `Adam/m/<name>` variable names, or
    (for graphless checkpoints) a `variable/slot` key do. A slot must have its variable's
    shape.
    """
    slot_of: dict[str, str] = {}
    by_node = {v.node: v.key for v in variables.values() if v.node is not None}
    if graph is not None:
        for node in graph.nodes:
            for slot in node.slot_variables:
                original = by_node.get(slot.original_variable_node_id)
                key = by_node.get(slot.slot_variable_node_id)
                if original and key:
                    slot_of[key] = original
    names: dict[str, list[str]] = {}
    for variable in variables.values():
        if variable.full_name and not is_optimizer_key(variable.key):
            names.setdefault(variable.full_name, []).append(variable.key)
    flat_names = {name.replace("/", FLAT_SEPARATOR): keys for name, keys in names.items()}
    for variable in variables.values():
        key = variable.key
        if key in slot_of:
            continue
        if SLOT_MARKER in key:
            original = key.split(SLOT_MARKER, 1)[0] + VALUE_SUFFIX
            if original in variables:
                slot_of[key] = original
        elif is_optimizer_key(key) and variable.full_name.count("/") >= SLOT_NAME_DEPTH:
            owner = variable.full_name.split("/", SLOT_NAME_DEPTH)[SLOT_NAME_DEPTH]
            if len(names.get(owner, ())) == 1:
                slot_of[key] = names[owner][0]
        elif is_optimizer_key(key) and "/" in variable.full_name:
            original = _flat_owner(variable.full_name.split("/", 1)[1], flat_names)
            if original is not None:
                slot_of[key] = original
        elif graph is None and "/" in key:
            original = key.rsplit("/", 1)[0]
            if original in variables:
                slot_of[key] = original
    return {
        slot: original
        for slot, original in slot_of.items()
        if variables[slot].shape == variables[original].shape
    }


def _flat_owner(slot_name: str, flat_names: dict[str, list[str]]) -> str | None:
    """The one variable whose flattened name begins a Keras 3 slot's name, if one does."""
    owners = [
        flat_names[slot_name[:cut]]
        for cut, character in enumerate(slot_name[:-1])
        if character == FLAT_SEPARATOR and slot_name[:cut] in flat_names
    ]
    if len(owners) == 1 and len(owners[0]) == 1:
        return owners[0][0]
    return None


def pair_copies(
    variables: dict[str, Variable], gathered: set[int], digest: Callable[[str], bytes]
) -> None:
    """Treat a Keras 3 export's `_all_variables/M` copy and the `variables/N` entry of the
    same variable as one: same variable name, shape and dtype (and, where a name is
    not unique, the same values, compared by `digest(key)`)."""
    groups: dict[tuple[str, tuple[int, ...], Any], list[Variable]] = {}
    for variable in variables.values():
        if variable.full_name and variable.node is not None:
            identity = (variable.full_name, variable.shape, variable.dtype)
            groups.setdefault(identity, []).append(variable)
    for members in groups.values():
        copies = [v for v in members if root_of(v.key) == ALL_VARIABLES_ROOT]
        originals = [
            v
            for v in members
            if root_of(v.key) != ALL_VARIABLES_ROOT and not is_optimizer_key(v.key)
        ]
        if not copies or not originals:
            continue
        if len(copies) == 1 and len(originals) == 1:
            pairs = [(originals[0], copies[0])]
        else:
            digests = {v.key: digest(v.key) for v in copies + originals}
            pairs = []
            for original in originals:
                match = [c for c in copies if digests[c.key] == digests[original.key]]
                if len(match) == 1:
                    pairs.append((original, match[0]))
                    copies.remove(match[0])
        for original, copy in pairs:
            if copy.node in gathered and original.node not in gathered:
                original, copy = copy, original
            original.aliases.append(copy.key)
            copy.aliases.append(original.key)
            copy.alias_of = original.key

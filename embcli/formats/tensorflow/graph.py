"""What the functions of `saved_model.pb` do with its variables, read as data: the graph
is a program and is never loaded or run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embcli.errors import MalformedFile
from embcli.formats.tensorflow.paths import check_regular

RESOURCE_GATHER_OPS = frozenset({"ResourceGather", "ResourceGatherNd"})
VALUE_GATHER_OPS = frozenset({"GatherV2", "Gather", "GatherNd"})
READ_VARIABLE_OP = "ReadVariableOp"
FORWARDING_OPS = frozenset({"Identity"})
CALL_OPS = frozenset({"StatefulPartitionedCall", "PartitionedCall"})
CALLEE_ATTRIBUTE = "f"
CONTROL_INPUT_PREFIX = "^"

MAX_FORWARDING = 64


def read_saved_model(path: Path) -> Any:
    """The `SavedModel` message of a `saved_model.pb`, parsed and nothing more.

    Raises:
        MalformedFile: the file is not a SavedModel.
    """
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    check_regular(path)
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(path.read_bytes())
    except (DecodeError, ValueError) as exc:
        raise MalformedFile(f"{path}: not a SavedModel ({exc})") from None
    return saved


def gathered_nodes(saved_model: Any) -> set[int]:
    """Object-graph node ids of the variables that some function gathers rows from.

    A `ResourceGather` on a variable handle, or a `GatherV2` on a `ReadVariableOp` of one,
    marks the handle's function argument; calls pass the mark to their callers' arguments;
    a concrete function's captured arguments are bound to object-graph nodes.
    """
    found: set[int] = set()
    for meta_graph in saved_model.meta_graphs:
        functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
        marked: dict[str, set[int]] = {name: set() for name in functions}
        changed = True
        while changed:
            changed = False
            for name, function in functions.items():
                before = len(marked[name])
                marked[name] |= _gathered_arguments(function, marked)
                changed = changed or len(marked[name]) != before
        graph = meta_graph.object_graph_def
        for name, concrete in graph.concrete_functions.items():
            function = functions.get(name)
            if function is None:
                continue
            bound = list(concrete.bound_inputs)
            first_bound = len(function.signature.input_arg) - len(bound)
            for argument in marked[name]:
                if argument >= first_bound >= 0:
                    found.add(bound[argument - first_bound])
    return found


def _gathered_arguments(function: Any, marked: dict[str, set[int]]) -> set[int]:
    """Positions of `function`'s arguments that it, or a function it calls, gathers from."""
    arguments = {arg.name: i for i, arg in enumerate(function.signature.input_arg)}
    nodes = {node.name: node for node in function.node_def}

    def node_of(reference: str) -> Any:
        return nodes.get(reference.split(":", 1)[0])

    def argument_of(reference: str) -> int | None:
        for _ in range(MAX_FORWARDING):
            if reference in arguments:
                return arguments[reference]
            node = node_of(reference)
            if node is None or node.op not in FORWARDING_OPS or not node.input:
                return None
            reference = node.input[0]
        return None

    found: set[int] = set()
    for node in function.node_def:
        sources: list[str] = []
        if node.op in RESOURCE_GATHER_OPS and node.input:
            sources.append(node.input[0])
        elif node.op in VALUE_GATHER_OPS and node.input:
            read = node_of(node.input[0])
            if read is not None and read.op == READ_VARIABLE_OP and read.input:
                sources.append(read.input[0])
        callee = node.op
        if node.op in CALL_OPS and CALLEE_ATTRIBUTE in node.attr:
            callee = node.attr[CALLEE_ATTRIBUTE].func.name
        for argument in marked.get(callee, ()):
            data_inputs = [i for i in node.input if not i.startswith(CONTROL_INPUT_PREFIX)]
            if argument < len(data_inputs):
                sources.append(data_inputs[argument])
        for source in sources:
            position = argument_of(source)
            if position is not None:
                found.add(position)
    return found

"""TensorFlow SavedModel folders and checkpoints. The only module that imports TensorFlow,
and only when such an artifact is opened.

Variables are read with TensorFlow's checkpoint reader alone: a SavedModel's graph is a
program and is never loaded or run. Its protobufs are parsed as data to name the tables:

- `keras_metadata.pb` (tf_keras `model.save("dir")`) tells each layer's name and class;
- the checkpoint's object graph tells a variable's `layer/variable` name;
- in a Keras 3 `model.export()`, whose keys are positional, a variable that a function of
  `saved_model.pb` gathers rows from is a table. Such an export stores each variable twice,
  under `variables/N` and `_all_variables/M`; both keys are one table and edited together.

A write rebuilds the checkpoint with TensorFlow's own `SaveV2` op from every tensor the
reader returns, the edited rows replaced, then compares every tensor of the result with its
source. A SavedModel's `fingerprint.pb` is recomputed by TensorFlow's fingerprinting code
from the written folder, so it agrees with what TensorFlow computes for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embcli.errors import (
    MalformedFile,
    MissingDependency,
    UnsafeFile,
    UnsupportedEdit,
    UnsupportedFormat,
    VerificationFailed,
)
from embcli.formats.base import (
    EMBEDDING_SUFFIX,
    EMBEDDING_VARIABLE,
    FilePlan,
    ModelFile,
    Table,
    WritePlan,
)
from embcli.guarded import parse_json

INSTALL_HINT = (
    "reading TensorFlow SavedModels and checkpoints needs TensorFlow: "
    "pip install 'embcli[tensorflow]'"
)

SAVED_MODEL_FILENAME = "saved_model.pb"
KERAS_METADATA_FILENAME = "keras_metadata.pb"
FINGERPRINT_FILENAME = "fingerprint.pb"
VARIABLES_DIRNAME = "variables"
VARIABLES_FILENAME = "variables"
ASSETS_DIRNAME = "assets"
CHECKPOINT_STATE_FILENAME = "checkpoint"
INDEX_SUFFIX = ".index"
DATA_INFIX = ".data-"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VALUE_ATTRIBUTE = "VARIABLE_VALUE"
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
SLOT_MARKER = "/.OPTIMIZER_SLOT/"
OPTIMIZER_ROOT = "optimizer"
ALL_VARIABLES_ROOT = "_all_variables"
QUANTIZED_SCALE_SUFFIX = "_scale"
METADATA_ROOT = "root"

RESOURCE_GATHER_OPS = frozenset({"ResourceGather", "ResourceGatherNd"})
VALUE_GATHER_OPS = frozenset({"GatherV2", "Gather", "GatherNd"})
READ_VARIABLE_OP = "ReadVariableOp"
FORWARDING_OPS = frozenset({"Identity"})
CALL_OPS = frozenset({"StatefulPartitionedCall", "PartitionedCall"})
CALLEE_ATTRIBUTE = "f"

MAX_STATE_BYTES = 1 << 20
MAX_METADATA_BYTES = 256 * 1024 * 1024
MAX_ASSET_BYTES = 1 << 31
WRITE_BATCH_BYTES = 256 * 1024 * 1024
MAX_FORWARDING = 64


def import_tensorflow() -> Any:
    """TensorFlow, imported on first use with its start-up chatter kept off stderr."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None:
        return sys.modules["tensorflow"]
    try:
        with _quiet_stderr():
            import tensorflow as tf  # noqa: PLC0415
    except ImportError:
        raise MissingDependency(INSTALL_HINT) from None
    return tf


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def open_tensorflow(path: Path, kind: str) -> ModelFile:
    """Open a SavedModel folder (or its `saved_model.pb`) or a checkpoint, named by its
    prefix, its `.index` or data file, its folder, or the folder's `checkpoint` file."""
    tf = import_tensorflow()
    if kind == "savedmodel":
        folder = path.parent if path.name == SAVED_MODEL_FILENAME and path.is_file() else path
        _check_tree(folder)
        return TensorFlowFile(
            tf, folder / VARIABLES_DIRNAME / VARIABLES_FILENAME, saved_model=folder
        )
    if kind != "checkpoint":
        raise UnsupportedFormat(f"{path}: not a TensorFlow artifact")
    state_folder = None
    if path.is_dir() or path.name == CHECKPOINT_STATE_FILENAME:
        state_folder = path if path.is_dir() else path.parent
        prefix = _prefix_from_state(tf, state_folder)
    else:
        prefix = checkpoint_prefix(path)
    return TensorFlowFile(tf, prefix, state_folder=state_folder)


def checkpoint_prefix(path: Path) -> Path:
    """The prefix a checkpoint path names: `ckpt` for `ckpt`, `ckpt.index` or a data file."""
    name = path.name
    if name.endswith(INDEX_SUFFIX):
        return path.with_name(name[: -len(INDEX_SUFFIX)])
    if DATA_INFIX in name:
        return path.with_name(name.rpartition(DATA_INFIX)[0])
    return path


def _prefix_from_state(tf: Any, folder: Path) -> Path:
    from google.protobuf import text_format
    from tensorflow.python.training import checkpoint_state_pb2

    state_path = folder / CHECKPOINT_STATE_FILENAME
    _check_regular(state_path)
    if state_path.stat().st_size > MAX_STATE_BYTES:
        raise UnsafeFile(f"{state_path}: too large for a checkpoint state file")
    state = checkpoint_state_pb2.CheckpointState()
    try:
        text_format.Parse(state_path.read_text(encoding="utf-8"), state)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise MalformedFile(f"{state_path}: not a checkpoint state file ({exc})") from None
    if not state.model_checkpoint_path:
        raise MalformedFile(f"{state_path}: names no checkpoint")
    named = Path(state.model_checkpoint_path)
    prefix = named if named.is_absolute() else folder / named
    if prefix.absolute().parent.resolve() != folder.absolute().resolve():
        raise UnsafeFile(
            f"{state_path}: names a checkpoint outside its folder; give the checkpoint's prefix"
        )
    return prefix


def _check_regular(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        raise UnsupportedFormat(f"{path}: no such file") from None
    if stat.S_ISLNK(mode):
        raise UnsafeFile(f"{path}: symbolic links are refused")
    if not stat.S_ISREG(mode):
        raise UnsafeFile(f"{path}: not a regular file")


def _check_tree(folder: Path) -> None:
    """Refuse a SavedModel folder that links or points outside itself."""
    if folder.is_symlink():
        raise UnsafeFile(f"{folder}: symbolic links are refused")
    for current, dirs, files in os.walk(folder):
        for name in dirs + files:
            entry = Path(current) / name
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise UnsafeFile(f"{entry}: symbolic links are refused")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UnsafeFile(f"{entry}: not a regular file")


def data_files(prefix: Path) -> list[Path]:
    """A checkpoint's data shards, as they lie beside its index."""
    start = prefix.name + DATA_INFIX
    try:
        entries = sorted(prefix.parent.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.name.startswith(start)]


def _short_key(key: str) -> str:
    return key.removesuffix(VALUE_SUFFIX)


def _natural(text: str) -> tuple:
    """Sort key that puts `layer-2` before `layer-10`."""
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)
    )


def _root_of(key: str) -> str:
    return key.split("/", 1)[0]


def _is_optimizer_key(key: str) -> bool:
    return _root_of(key) == OPTIMIZER_ROOT or SLOT_MARKER in key


def _proto_fields(data: bytes, what: str) -> Iterator[tuple[int, int | bytes]]:
    """`(field number, value)` of a serialized protobuf message, read as plain data."""
    position = 0
    while position < len(data):
        tag, position = _varint(data, position, what)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, position = _varint(data, position, what)
        elif wire == 2:
            size, position = _varint(data, position, what)
            if position + size > len(data):
                raise MalformedFile(f"{what}: truncated")
            value, position = data[position : position + size], position + size
        elif wire in (1, 5):
            position += 8 if wire == 1 else 4
            continue
        else:
            raise MalformedFile(f"{what}: not a protobuf message")
        yield number, value
    if position != len(data):
        raise MalformedFile(f"{what}: truncated")


def _varint(data: bytes, position: int, what: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise MalformedFile(f"{what}: truncated")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


@dataclass(frozen=True)
class _Layer:
    """A layer named in `keras_metadata.pb`."""

    node: int
    path: str
    name: str
    class_name: str | None
    metadata: dict


def read_keras_metadata(path: Path) -> dict[int, _Layer]:
    """Layers of a tf_keras SavedModel by object-graph node id, from `keras_metadata.pb`:
    a `SavedMetadata` of `SavedObject(node_id=2, node_path=3, identifier=4, metadata=5)`."""
    _check_regular(path)
    if path.stat().st_size > MAX_METADATA_BYTES:
        raise UnsafeFile(f"{path}: larger than {MAX_METADATA_BYTES} bytes")
    layers: dict[int, _Layer] = {}
    for number, entry in _proto_fields(path.read_bytes(), path.name):
        if number != 1 or not isinstance(entry, bytes):
            continue
        fields = dict(_proto_fields(entry, path.name))
        node, node_path, text = fields.get(2, 0), fields.get(3, b""), fields.get(5, b"")
        if (
            not isinstance(node, int)
            or not isinstance(node_path, bytes)
            or not isinstance(text, bytes)
        ):
            raise MalformedFile(f"{path.name}: malformed node")
        metadata = parse_json(text, f"{path.name} node {node}") if text else {}
        if not isinstance(metadata, dict):
            continue
        name = metadata.get("name")
        class_name = metadata.get("class_name")
        layers[node] = _Layer(
            node,
            node_path.decode("utf-8", "replace"),
            name if isinstance(name, str) else node_path.decode("utf-8", "replace"),
            class_name if isinstance(class_name, str) else None,
            metadata,
        )
    return layers


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
            data_inputs = [i for i in node.input if not i.startswith("^")]
            if argument < len(data_inputs):
                sources.append(data_inputs[argument])
        for source in sources:
            argument = argument_of(source)
            if argument is not None:
                found.add(argument)
    return found


@dataclass
class _Variable:
    """One checkpoint entry, with what the object graph says of it."""

    key: str
    shape: tuple[int, ...]
    dtype: Any
    node: int | None = None
    full_name: str = ""
    aliases: list[str] = field(default_factory=list)
    alias_of: str | None = None

    @property
    def local_name(self) -> str:
        return _short_key(self.key).rsplit("/", 1)[-1]

    @property
    def numeric(self) -> bool:
        return bool(self.dtype.is_floating or (self.dtype.is_integer and not self.dtype.is_bool))


class TensorFlowFile(ModelFile):
    """A TensorFlow checkpoint, alone or as the variables of a SavedModel folder."""

    def __init__(
        self,
        tf: Any,
        prefix: Path,
        saved_model: Path | None = None,
        state_folder: Path | None = None,
    ) -> None:
        super().__init__(saved_model or prefix)
        self._tf = tf
        self.prefix = prefix
        self.saved_model = saved_model
        self.state_folder = state_folder
        self.format_name = "tensorflow savedmodel" if saved_model else "tensorflow checkpoint"
        index = Path(f"{prefix}{INDEX_SUFFIX}")
        _check_regular(index)
        shards = data_files(prefix)
        for shard in shards:
            _check_regular(shard)
        self._reader = _load_reader(tf, prefix)
        try:
            shapes = self._reader.get_variable_to_shape_map()
            dtypes = self._reader.get_variable_to_dtype_map()
        except Exception as exc:
            raise MalformedFile(f"{index}: unreadable checkpoint index ({exc})") from None
        self._variables = {
            key: _Variable(key, tuple(int(n) for n in shapes[key]), dtypes[key]) for key in shapes
        }
        self._check_sizes(sum(s.stat().st_size for s in shards), index)
        self._cache: tuple[str, np.ndarray] | None = None
        self._layers: dict[int, _Layer] = {}
        self._layer_paths: dict[str, _Layer] = {}
        self._gathered: set[int] = set()
        self._parents: dict[int, list[tuple[int, str]]] = {}
        self._slot_of: dict[str, str] = {}
        graph = self._object_graph()
        if saved_model is not None:
            self._read_saved_model(saved_model)
        self._find_slots(graph)
        self._pair_copies()
        self._tables = self._build_tables()

    def _check_sizes(self, stored: int, index: Path) -> None:
        for variable in self._variables.values():
            if variable.numeric or variable.dtype.is_bool:
                size = int(np.prod(variable.shape, dtype=np.float64)) * variable.dtype.size
                if size > stored:
                    raise MalformedFile(
                        f"{index}: {variable.key} declares {size} bytes, "
                        f"more than the {stored} its data files hold"
                    )

    def _object_graph(self) -> Any:
        if OBJECT_GRAPH_KEY not in self._variables:
            return None
        from google.protobuf.message import DecodeError
        from tensorflow.core.protobuf import trackable_object_graph_pb2

        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        try:
            graph.ParseFromString(self._tensor(OBJECT_GRAPH_KEY))
        except (DecodeError, TypeError) as exc:
            raise MalformedFile(f"{self.prefix}: malformed object graph ({exc})") from None
        for node_id, node in enumerate(graph.nodes):
            for child in node.children:
                self._parents.setdefault(child.node_id, []).append((node_id, child.local_name))
            for attribute in node.attributes:
                variable = self._variables.get(attribute.checkpoint_key)
                if attribute.name == VALUE_ATTRIBUTE and variable is not None:
                    variable.node = node_id
                    variable.full_name = attribute.full_name
        return graph

    def _read_saved_model(self, folder: Path) -> None:
        from google.protobuf.message import DecodeError
        from tensorflow.core.protobuf import saved_model_pb2

        path = folder / SAVED_MODEL_FILENAME
        _check_regular(path)
        saved = saved_model_pb2.SavedModel()
        try:
            saved.ParseFromString(path.read_bytes())
        except (DecodeError, ValueError) as exc:
            raise MalformedFile(f"{path}: not a SavedModel ({exc})") from None
        self._gathered = gathered_nodes(saved)
        metadata = folder / KERAS_METADATA_FILENAME
        if metadata.exists():
            self._layers = read_keras_metadata(metadata)
            self._layer_paths = {layer.path: layer for layer in self._layers.values()}

    def _find_slots(self, graph: Any) -> None:
        """Map each optimizer slot's key to the key of the variable it holds state for."""
        by_node = {v.node: v.key for v in self._variables.values() if v.node is not None}
        if graph is not None:
            for node in graph.nodes:
                for slot in node.slot_variables:
                    original = by_node.get(slot.original_variable_node_id)
                    key = by_node.get(slot.slot_variable_node_id)
                    if original and key:
                        self._slot_of[key] = original
        names: dict[str, list[str]] = {}
        for variable in self._variables.values():
            if variable.full_name and not _is_optimizer_key(variable.key):
                names.setdefault(variable.full_name, []).append(variable.key)
        for variable in self._variables.values():
            key = variable.key
            if key in self._slot_of:
                continue
            if SLOT_MARKER in key:
                original = key.split(SLOT_MARKER, 1)[0] + VALUE_SUFFIX
                if original in self._variables:
                    self._slot_of[key] = original
            elif _root_of(key) == OPTIMIZER_ROOT and variable.full_name.count("/") >= 2:
                owner = variable.full_name.split("/", 2)[2]
                if len(names.get(owner, ())) == 1:
                    self._slot_of[key] = names[owner][0]
            elif graph is None and "/" in key:
                original = key.rsplit("/", 1)[0]
                if original in self._variables:
                    self._slot_of[key] = original
        self._slot_of = {
            slot: original
            for slot, original in self._slot_of.items()
            if self._variables[slot].shape == self._variables[original].shape
        }

    def _pair_copies(self) -> None:
        """Treat a Keras 3 export's `_all_variables/M` copy and the `variables/N` entry of the
        same variable as one: same variable name, shape and dtype (and, where a name is
        not unique, the same values)."""
        groups: dict[tuple, list[_Variable]] = {}
        for variable in self._variables.values():
            if variable.full_name and variable.node is not None:
                identity = (variable.full_name, variable.shape, variable.dtype)
                groups.setdefault(identity, []).append(variable)
        for members in groups.values():
            copies = [v for v in members if _root_of(v.key) == ALL_VARIABLES_ROOT]
            originals = [
                v
                for v in members
                if _root_of(v.key) != ALL_VARIABLES_ROOT and not _is_optimizer_key(v.key)
            ]
            if not copies or not originals:
                continue
            if len(copies) == 1 and len(originals) == 1:
                pairs = [(originals[0], copies[0])]
            else:
                digests = {v.key: self._digest(v.key) for v in copies + originals}
                pairs = []
                for original in originals:
                    match = [c for c in copies if digests[c.key] == digests[original.key]]
                    if len(match) == 1:
                        pairs.append((original, match[0]))
                        copies.remove(match[0])
            for original, copy in pairs:
                if copy.node in self._gathered and original.node not in self._gathered:
                    original, copy = copy, original
                original.aliases.append(copy.key)
                copy.aliases.append(original.key)
                copy.alias_of = original.key

    def _digest(self, key: str) -> bytes:
        return hashlib.blake2b(np.ascontiguousarray(self._tensor(key)).tobytes()).digest()

    def _describe(self, variable: _Variable) -> tuple[str, str, str | None, str, str]:
        """`(name, qualified, class, variable name, owner)` of a variable."""
        short = _short_key(variable.key)
        layer, local = self._layer_of(variable)
        if layer is not None:
            names = []
            parts = layer.path.split(".")
            for end in range(2, len(parts) + 1):
                enclosing = self._layer_paths.get(".".join(parts[:end]))
                if enclosing is not None:
                    names.append(enclosing.name)
            owner = "/".join(parts[1:])
            return layer.name, "/".join(names) or layer.name, layer.class_name, local, owner
        parts = variable.full_name.split("/") if variable.full_name else short.split("/")
        local = variable.local_name
        if len(parts) >= 2 and (local.isdigit() or local == parts[-1]):
            owner = short.rsplit("/", 1)[0] if "/" in short else ""
            return parts[-2], "/".join(parts[:-1]), None, parts[-1], owner
        return short, short, None, local, short.rsplit("/", 1)[0] if "/" in short else ""

    def _layer_of(self, variable: _Variable) -> tuple[_Layer | None, str]:
        if variable.node is None or not self._layers:
            return None, ""
        candidates = [
            (self._layers[parent], local)
            for parent, local in self._parents.get(variable.node, [])
            if parent in self._layers and not local.isdigit()
        ]
        if not candidates:
            return None, ""
        return min(candidates, key=lambda c: (c[0].path.count("."), c[0].path))

    def _build_tables(self) -> list[Table]:
        tables = []
        for variable in self._variables.values():
            key = variable.key
            if (
                len(variable.shape) != 2
                or not variable.numeric
                or key in self._slot_of
                or _is_optimizer_key(key)
                or key == OBJECT_GRAPH_KEY
            ):
                continue
            if variable.alias_of is not None:
                continue
            name, qualified, class_name, local, owner = self._describe(variable)
            keys = [key, *variable.aliases]
            gathered = any(
                self._variables[k].node in self._gathered
                for k in keys
                if self._variables[k].node is not None
            )
            by_name = local == EMBEDDING_VARIABLE or gathered
            if class_name is not None:
                is_embedding = class_name.endswith(EMBEDDING_SUFFIX) and by_name
            else:
                is_embedding = by_name
            names = {_short_key(k) for k in keys} | set(variable.aliases)
            scale = self._int8_scale(variable) if is_embedding else None
            tables.append(
                Table(
                    name=name,
                    qualified=qualified,
                    class_name=class_name,
                    shape=(variable.shape[0], variable.shape[1]),
                    dtype=variable.dtype.name,
                    weight=key,
                    quantized="int8" if scale else None,
                    scale=scale,
                    is_embedding=is_embedding,
                    aliases=tuple(sorted(names - {key})),
                    owner=owner,
                )
            )
        return sorted(tables, key=lambda t: (_natural(t.owner), _natural(t.weight)))

    def _int8_scale(self, variable: _Variable) -> str | None:
        """The key of a Keras int8 Embedding's per-row `embeddings_scale`, if it has one."""
        if variable.dtype != self._tf.int8 or not variable.full_name.endswith(EMBEDDING_VARIABLE):
            return None
        wanted = variable.full_name + QUANTIZED_SCALE_SUFFIX
        scales = [
            v.key
            for v in self._variables.values()
            if v.full_name == wanted
            and v.alias_of is None
            and v.shape == variable.shape[:1]
            and v.dtype.is_floating
        ]
        return scales[0] if len(scales) == 1 else None

    def tables(self, all_weights: bool = False) -> list[Table]:
        return [t for t in self._tables if all_weights or t.is_embedding]

    def _variable(self, weight: str) -> _Variable:
        variable = self._variables.get(weight) or self._variables.get(weight + VALUE_SUFFIX)
        if variable is None:
            raise MalformedFile(f"no variable {weight!r} in {self.prefix}")
        return variable

    def weight_info(self, weight: str) -> tuple[tuple[int, ...], np.dtype]:
        variable = self._variable(weight)
        return variable.shape, np.dtype(variable.dtype.as_numpy_dtype)

    def _tensor(self, key: str) -> Any:
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        self._cache = None
        try:
            value = self._reader.get_tensor(key)
        except Exception as exc:
            raise MalformedFile(f"{self.prefix}: cannot read {key} ({exc})") from None
        self._cache = (key, value)
        return value

    def read(self, weight: str, rows: slice | np.ndarray) -> np.ndarray:
        variable = self._variable(weight)
        if not variable.numeric:
            raise UnsupportedEdit(f"{variable.key} holds {variable.dtype.name}, not numbers")
        data = self._tensor(variable.key)
        if isinstance(rows, slice):
            return np.array(data[rows])
        return data[np.asarray(rows, dtype=np.int64)]

    def optimizer_slots(self, table: Table) -> list[str]:
        keys = {table.weight, *self._variable(table.weight).aliases}
        return sorted(slot for slot, original in self._slot_of.items() if original in keys)

    def config(self) -> dict | None:
        for layer in self._layers.values():
            if layer.path == METADATA_ROOT and isinstance(layer.metadata.get("config"), dict):
                return {"class_name": layer.class_name, "config": layer.metadata["config"]}
        return None

    def asset(self, name: str) -> bytes | None:
        if self.saved_model is None:
            return None
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts:
            return None
        path = self.saved_model / ASSETS_DIRNAME / name
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_ASSET_BYTES:
            return None
        return path.read_bytes()

    def close(self) -> None:
        self._cache = None
        self._reader = None

    def plan_write(self, output, patches, in_place) -> WritePlan:
        edits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for weight, (rows, values) in patches.items():
            variable = self._variable(weight)
            for key in (variable.key, *variable.aliases):
                edits[key] = (np.asarray(rows, dtype=np.int64), values)
        for variable in self._variables.values():
            if not (
                variable.numeric or variable.dtype.is_bool or variable.dtype == self._tf.string
            ):
                raise UnsupportedEdit(
                    f"{variable.key}: embcli cannot rewrite {variable.dtype.name} entries"
                )
        if self.saved_model is not None:
            return self._plan_saved_model(self.saved_model if in_place else Path(output), edits)
        if self.state_folder is not None and not in_place:
            return self._plan_state_folder(Path(output), edits)
        target = self.prefix if in_place else checkpoint_prefix(Path(output))
        return self._plan_prefix(target, edits)

    def _plan_saved_model(self, output: Path, edits: dict) -> WritePlan:
        source = self.saved_model
        bundle = {Path(f"{self.prefix}{INDEX_SUFFIX}"), *data_files(self.prefix)}
        files: list[FilePlan] = []
        empty: list[Path] = []
        for current, dirs, names in os.walk(source):
            here = Path(current)
            if not dirs and not names and here != source:
                empty.append(here.relative_to(source))
            for name in sorted(names):
                path = here / name
                if path in bundle or path == source / FINGERPRINT_FILENAME:
                    continue
                files.append(FilePlan(output / path.relative_to(source), source=path))
        prefix = output / VARIABLES_DIRNAME / VARIABLES_FILENAME

        def make_folders(temp_prefix: Path) -> None:
            root = temp_prefix.parent.parent
            for folder in empty:
                (root / folder).mkdir(parents=True, exist_ok=True)

        files.extend(self._bundle_plans(prefix, edits, before=make_folders))
        fingerprint = source / FINGERPRINT_FILENAME
        if fingerprint.is_file():
            files.append(
                FilePlan(
                    output / FINGERPRINT_FILENAME,
                    source=fingerprint,
                    rebuild=self._write_fingerprint,
                )
            )
        return WritePlan(output, files, folder=output)

    def _plan_state_folder(self, output: Path, edits: dict) -> WritePlan:
        name = self.prefix.name
        files = self._bundle_plans(output / name, edits)
        files.append(FilePlan(output / CHECKPOINT_STATE_FILENAME, content=_state_text(name)))
        return WritePlan(output, files, folder=output)

    def _plan_prefix(self, target: Path, edits: dict) -> WritePlan:
        files = self._bundle_plans(target, edits)
        state = target.parent / CHECKPOINT_STATE_FILENAME
        if (self.prefix.parent / CHECKPOINT_STATE_FILENAME).is_file() and not state.exists():
            files.append(FilePlan(state, content=_state_text(target.name)))
        stale = []
        if Path(f"{target}{INDEX_SUFFIX}").exists():
            written = {item.target.absolute() for item in files}
            stale = [p for p in data_files(target) if p.absolute() not in written]
        return WritePlan(target, files, remove=stale)

    def _batches(self) -> list[list[str]]:
        batches: list[list[str]] = [[]]
        size = 0
        for key in sorted(self._variables):
            variable = self._variables[key]
            nbytes = int(np.prod(variable.shape)) * variable.dtype.size if variable.numeric else 0
            if batches[-1] and size + nbytes > WRITE_BATCH_BYTES:
                batches.append([])
                size = 0
            batches[-1].append(key)
            size += nbytes
        return batches

    def _bundle_plans(
        self, prefix: Path, edits: dict, before: Callable[[Path], None] | None = None
    ) -> list[FilePlan]:
        """The data shards and index of a rewritten checkpoint at `prefix`. The first plan
        writes them all (and reads them back); the others only take their place."""
        batches = self._batches()
        count = len(batches)
        shards = [Path(f"{prefix}{DATA_INFIX}{i:05d}-of-{count:05d}") for i in range(count)]
        old_shards = data_files(self.prefix)

        def write(temp: Path) -> None:
            temp_prefix = checkpoint_prefix(temp)
            if before is not None:
                before(temp_prefix)
            self._write_bundle(temp_prefix, edits, batches)

        plans = [FilePlan(shards[0], source=old_shards[0] if old_shards else None, rebuild=write)]
        plans += [FilePlan(shard, rebuild=_written_already) for shard in shards[1:]]
        checks = [(key, rows, values) for key, (rows, values) in edits.items()]
        plans.append(
            FilePlan(
                Path(f"{prefix}{INDEX_SUFFIX}"),
                source=Path(f"{self.prefix}{INDEX_SUFFIX}"),
                rebuild=_written_already,
                checks=checks,
            )
        )
        return plans

    def _edited(self, key: str, edits: dict) -> Any:
        value = self._tensor(key)
        if key in edits:
            rows, values = edits[key]
            value = np.array(value)
            value[rows] = values
        return value

    def _write_bundle(self, prefix: Path, edits: dict, batches: list[list[str]]) -> None:
        tf = self._tf
        if len(batches) == 1:
            self._save(prefix, batches[0], edits)
        else:
            scratch = prefix.parent / f"{prefix.name}_temp"
            parts = [scratch / f"part-{i:05d}-of-{len(batches):05d}" for i in range(len(batches))]
            for part, keys in zip(parts, batches, strict=True):
                self._save(part, keys, edits)
            try:
                tf.raw_ops.MergeV2Checkpoints(
                    checkpoint_prefixes=[str(p) for p in parts],
                    destination_prefix=str(prefix),
                    delete_old_dirs=True,
                )
            except tf.errors.OpError as exc:
                raise VerificationFailed(
                    f"TensorFlow could not merge the checkpoint: {exc.message}"
                ) from None
            shutil.rmtree(scratch, ignore_errors=True)
        self._verify_bundle(prefix, edits)

    def _save(self, prefix: Path, keys: list[str], edits: dict) -> None:
        tf = self._tf
        tensors = [
            tf.constant(self._edited(key, edits), dtype=self._variables[key].dtype) for key in keys
        ]
        self._cache = None
        try:
            tf.raw_ops.SaveV2(
                prefix=str(prefix),
                tensor_names=keys,
                shape_and_slices=[""] * len(keys),
                tensors=tensors,
            )
        except tf.errors.OpError as exc:
            raise VerificationFailed(
                f"TensorFlow could not write the checkpoint: {exc.message}"
            ) from None

    def _verify_bundle(self, prefix: Path, edits: dict) -> None:
        """Read every tensor of the written checkpoint back and compare it with its source."""
        written = _load_reader(self._tf, prefix)
        shapes = written.get_variable_to_shape_map()
        dtypes = written.get_variable_to_dtype_map()
        if set(shapes) != set(self._variables):
            raise VerificationFailed(f"{prefix.name}: the written checkpoint lacks some entries")
        for key, variable in sorted(self._variables.items()):
            if tuple(shapes[key]) != variable.shape or dtypes[key] != variable.dtype:
                raise VerificationFailed(f"{key}: written with another shape or dtype")
            expected = self._edited(key, edits)
            try:
                got = written.get_tensor(key)
            except Exception as exc:
                raise VerificationFailed(
                    f"{key}: the written checkpoint cannot be read ({exc})"
                ) from None
            if variable.numeric or variable.dtype.is_bool:
                same = _same_bits(np.asarray(got), np.asarray(expected))
            else:
                same = np.array_equal(
                    np.asarray(got, dtype=object), np.asarray(expected, dtype=object)
                )
            if not same:
                raise VerificationFailed(
                    f"{key}: the written checkpoint does not read back as intended"
                )

    def _write_fingerprint(self, temp: Path) -> None:
        try:
            from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting
        except ImportError:
            raise UnsupportedEdit(
                "this TensorFlow cannot recompute the SavedModel's fingerprint.pb"
            ) from None
        try:
            temp.write_bytes(fingerprinting.CreateFingerprintDef(str(temp.parent)))
        except fingerprinting.FingerprintException as exc:
            raise VerificationFailed(f"TensorFlow could not fingerprint the copy: {exc}") from None


def _written_already(temp: Path) -> None:
    if not temp.is_file():
        raise VerificationFailed(f"{temp.name} was not written")


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _state_text(name: str) -> bytes:
    from google.protobuf import text_format
    from tensorflow.python.training import checkpoint_state_pb2

    state = checkpoint_state_pb2.CheckpointState(
        model_checkpoint_path=name, all_model_checkpoint_paths=[name]
    )
    return text_format.MessageToString(state).encode("utf-8")


def _load_reader(tf: Any, prefix: Path) -> Any:
    try:
        return tf.train.load_checkpoint(str(prefix))
    except Exception as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise MalformedFile(f"{prefix}: not a readable TensorFlow checkpoint ({message})") from None

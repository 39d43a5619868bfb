"""Opening a SavedModel folder or a checkpoint, reading its tables' rows, and planning the
writes of an edited copy. Variables are read with TensorFlow's checkpoint reader alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embcli.errors import MalformedFile, ModelClosed, UnsupportedEdit, UnsupportedFormat
from embcli.formats.base import Edit, ModelFile, NewWeight, Table, WritePlan
from embcli.formats.tensorflow import runtime
from embcli.formats.tensorflow.graph import gathered_nodes, read_saved_model
from embcli.formats.tensorflow.paths import (
    ASSETS_DIRNAME,
    CHECKPOINT_STATE_FILENAME,
    KERAS_METADATA_FILENAME,
    SAVED_MODEL_FILENAME,
    VARIABLES_DIRNAME,
    VARIABLES_FILENAME,
    check_regular,
    check_tree,
    checkpoint_prefix,
    data_files,
    index_file,
    prefix_from_state,
)
from embcli.formats.tensorflow.proto import read_keras_metadata
from embcli.formats.tensorflow.tables import METADATA_ROOT, Evidence, build_tables
from embcli.formats.tensorflow.variables import (
    OBJECT_GRAPH_KEY,
    VALUE_SUFFIX,
    Variable,
    find_slots,
    pair_copies,
    parents_of,
    read_object_graph,
)
from embcli.formats.tensorflow.writer import BundleWriter, RowEdits, digest, load_reader

SAVEDMODEL_KIND = "savedmodel"
CHECKPOINT_KIND = "checkpoint"
MAX_ASSET_BYTES = 1 << 31
STRING = "string"


def open_tensorflow(path: Path, kind: str) -> ModelFile:
    """Open a TensorFlow artifact.

    Args:
        path: a SavedModel folder (or its `saved_model.pb`), or a checkpoint named by its
            prefix, its `.index` or data file, its folder, or the folder's `checkpoint` file.
        kind: "savedmodel" or "checkpoint".

    Raises:
        MissingDependency: TensorFlow is not installed.
        UnsupportedFormat: `kind` is neither, or a file is missing.
        UnsafeFile, MalformedFile: the artifact links outside itself or is damaged.
    """
    tf = runtime.import_tensorflow()
    if kind == SAVEDMODEL_KIND:
        folder = path.parent if path.name == SAVED_MODEL_FILENAME and path.is_file() else path
        check_tree(folder)
        return TensorFlowFile(
            tf, folder / VARIABLES_DIRNAME / VARIABLES_FILENAME, saved_model=folder
        )
    if kind != CHECKPOINT_KIND:
        raise UnsupportedFormat(f"{path}: not a TensorFlow artifact")
    state_folder = None
    if path.is_dir() or path.name == CHECKPOINT_STATE_FILENAME:
        state_folder = path if path.is_dir() else path.parent
        prefix = prefix_from_state(state_folder)
    else:
        prefix = checkpoint_prefix(path)
    return TensorFlowFile(tf, prefix, state_folder=state_folder)


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
        self.reshapes_weights = saved_model is None
        index = index_file(prefix)
        check_regular(index)
        shards = data_files(prefix)
        for shard in shards:
            check_regular(shard)
        self._reader: Any = load_reader(tf, prefix)
        try:
            shapes = self._reader.get_variable_to_shape_map()
            dtypes = self._reader.get_variable_to_dtype_map()
        except Exception as exc:
            raise MalformedFile(f"{index}: unreadable checkpoint index ({exc})") from None
        self._variables = {
            key: Variable(key, tuple(int(n) for n in shapes[key]), dtypes[key]) for key in shapes
        }
        self._check_sizes(sum(s.stat().st_size for s in shards), index)
        self._cache: tuple[str, np.ndarray] | None = None
        graph = None
        if OBJECT_GRAPH_KEY in self._variables:
            graph = read_object_graph(
                self._tensor(OBJECT_GRAPH_KEY), self._variables, str(self.prefix)
            )
        evidence = Evidence(parents=parents_of(graph))
        if saved_model is not None:
            evidence.in_saved_model = True
            evidence.gathered = gathered_nodes(read_saved_model(saved_model / SAVED_MODEL_FILENAME))
            metadata = saved_model / KERAS_METADATA_FILENAME
            if metadata.exists():
                evidence.layers = read_keras_metadata(metadata)
        self._layers = evidence.layers
        self._slot_of = find_slots(self._variables, graph)
        pair_copies(self._variables, evidence.gathered, lambda key: digest(self._tensor(key)))
        self._tables = build_tables(self._variables, self._slot_of, evidence)

    def _check_sizes(self, stored: int, index: Path) -> None:
        for variable in self._variables.values():
            if variable.numeric or variable.dtype.is_bool:
                size = int(np.prod(variable.shape, dtype=np.float64)) * variable.dtype.size
                if size > stored:
                    raise MalformedFile(
                        f"{index}: {variable.key} declares {size} bytes, "
                        f"more than the {stored} its data files hold"
                    )

    def tables(self, all_weights: bool = False) -> list[Table]:
        return [t for t in self._tables if all_weights or t.is_embedding]

    def _variable(self, weight: str) -> Variable:
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
        if self._reader is None:
            raise ModelClosed(f"{self.prefix} was read after it was closed")
        try:
            value = self._reader.get_tensor(key)
        except Exception as exc:
            raise MalformedFile(f"{self.prefix}: cannot read {key} ({exc})") from None
        self._cache = (key, value)
        return value

    def _release(self) -> None:
        self._cache = None

    def read(self, weight: str, rows: slice | np.ndarray) -> np.ndarray:
        variable = self._variable(weight)
        if not variable.numeric:
            raise UnsupportedEdit(f"{variable.key} holds {variable.dtype.name}, not numbers")
        data = self._tensor(variable.key)
        if isinstance(rows, slice):
            return np.array(data[rows])
        return np.asarray(data[np.asarray(rows, dtype=np.int64)])

    def optimizer_slots(self, table: Table) -> list[str]:
        keys = {table.weight, *self._variable(table.weight).aliases}
        return sorted(slot for slot, original in self._slot_of.items() if original in keys)

    def config(self) -> dict[str, Any] | None:
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

    def plan_write(
        self, output: Path, patches: dict[str, tuple[np.ndarray, np.ndarray]], in_place: bool
    ) -> WritePlan:
        return self.plan_edit(output, Edit(rows=dict(patches)), in_place)

    def plan_edit(self, output: Path, edit: Edit, in_place: bool) -> WritePlan:
        """How to write a copy at `output` that makes every change `edit` names.

        A checkpoint takes new rows and whole new tensors (of the entries it holds, in
        their dtype, in any shape: a resized table and its optimizer slots). A SavedModel
        takes new rows alone, as its graph fixes every shape.

        Raises:
            UnsupportedEdit: the edit changes what this artifact cannot change, or the
                checkpoint holds entries of a dtype embcli cannot rewrite.
            BadArgument: a new tensor does not agree with itself or its entry.
        """
        if self.saved_model is not None and not edit.only_rows:
            raise UnsupportedEdit(
                f"{self.saved_model}: a SavedModel's graph fixes its shapes and config; "
                "only rows of its tables can be replaced"
            )
        if edit.config is not None or edit.assets or edit.files:
            raise UnsupportedEdit(
                f"{self.prefix}: a checkpoint holds weights alone; it has no config, "
                "assets or side files to replace"
            )
        rows, weights = self._row_edits(edit.rows), self._weight_edits(edit.weights)
        for variable in self._variables.values():
            if not (variable.numeric or variable.dtype.is_bool or variable.dtype.name == STRING):
                raise UnsupportedEdit(
                    f"{variable.key}: embcli cannot rewrite {variable.dtype.name} entries"
                )
        writer = BundleWriter(
            self._tf, self.prefix, self._variables, self._tensor, self._release, rows, weights
        )
        if self.saved_model is not None:
            return writer.plan_saved_model(
                self.saved_model, self.saved_model if in_place else Path(output)
            )
        if self.state_folder is not None and not in_place:
            return writer.plan_state_folder(Path(output), self.prefix.name)
        target = self.prefix if in_place else checkpoint_prefix(Path(output))
        has_state = (self.prefix.parent / CHECKPOINT_STATE_FILENAME).is_file()
        return writer.plan_prefix(target, has_state)

    def _row_edits(self, patches: dict[str, tuple[np.ndarray, np.ndarray]]) -> RowEdits:
        """Row patches by checkpoint key, each applied to every copy of its variable."""
        edits: RowEdits = {}
        for weight, (rows, values) in patches.items():
            variable = self._variable(weight)
            for key in (variable.key, *variable.aliases):
                edits[key] = (np.asarray(rows, dtype=np.int64), values)
        return edits

    def _weight_edits(self, weights: dict[str, NewWeight]) -> dict[str, NewWeight]:
        """New whole tensors by checkpoint key, each given to every copy of its variable."""
        edits: dict[str, NewWeight] = {}
        for weight, new in weights.items():
            variable = self._variables.get(weight) or self._variables.get(weight + VALUE_SUFFIX)
            if variable is None:
                raise UnsupportedEdit(
                    f"{self.prefix}: no entry {weight!r}; a checkpoint's object graph names "
                    "every entry, so embcli cannot add one"
                )
            for key in (variable.key, *variable.aliases):
                edits[key] = new
        return edits

"""Legacy HDF5 models and weights: Keras 2, tf.keras, tf_keras, and Keras 3's legacy writer.

A full model keeps its config in the root attribute `model_config` and its weights under
`model_weights/<layer>/`; a weights-only file has the same tree at its root. Each layer
group lists its weights, in order, in the attribute `weight_names` (Keras 2 names end in
`:0`). A nested model's weights sit under the outer layer's group, named by the inner
layer: `model_weights/tower/inner_emb/embeddings:0`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from embcli.errors import MalformedFile, UnsupportedEdit
from embcli.formats.base import (
    EMBEDDING_SUFFIX,
    EMBEDDING_VARIABLE,
    Edit,
    FilePlan,
    H5Source,
    ModelFile,
    Table,
    WritePlan,
    numpy_dtype,
    slots_by_shape,
)
from embcli.formats.naming import walk_config_layers
from embcli.formats.registry import ArtifactKind, Probe
from embcli.guarded import ByteRange, dataset_bytes, parse_json, read_attr_list, read_attr_text

MODEL_WEIGHTS_GROUP = "model_weights"
OPTIMIZER_WEIGHTS_GROUP = "optimizer_weights"
MODEL_CONFIG_ATTRIBUTE = "model_config"
LAYER_NAMES_ATTRIBUTE = "layer_names"
WEIGHT_NAMES_ATTRIBUTE = "weight_names"
SCALE_VARIABLE = "embeddings_scale"
KERAS_EMBEDDING_CLASS = "Embedding"


def variable_name(weight_name: str) -> str:
    """`word_emb/embeddings:0` -> `word_emb/embeddings`."""
    return weight_name[:-2] if weight_name.endswith(":0") else weight_name


class LegacyH5File(ModelFile):
    """A legacy Keras HDF5 model or weights file."""

    format_name = "legacy h5"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._source = H5Source(path)
        try:
            self._read_layout()
        except BaseException:
            self._source.close()
            raise

    def _read_layout(self) -> None:
        handle = self._source.handle
        config_text = read_attr_text(handle, MODEL_CONFIG_ATTRIBUTE)
        self._config = (
            parse_json(config_text, f"{self.path}: model_config") if config_text else None
        )
        if self._config is not None and not isinstance(self._config, dict):
            raise MalformedFile(f"{self.path}: model_config is not a JSON object")
        self._base = MODEL_WEIGHTS_GROUP if MODEL_WEIGHTS_GROUP in self._source.index.groups else ""
        root = handle[self._base] if self._base else handle
        layer_names = read_attr_list(root, LAYER_NAMES_ATTRIBUTE)
        if layer_names is None:
            raise MalformedFile(f"{self.path}: no {LAYER_NAMES_ATTRIBUTE} attribute")
        self._layers: list[tuple[str, list[str]]] = []
        for layer in layer_names:
            group_path = self._join(layer)
            if group_path not in self._source.index.groups:
                raise MalformedFile(f"{self.path}: layer group {layer!r} is missing")
            weights = read_attr_list(handle[group_path], WEIGHT_NAMES_ATTRIBUTE) or []
            for weight in weights:
                if self._join(layer, weight) not in self._source.index.datasets:
                    raise MalformedFile(f"{self.path}: weight {layer}/{weight} is missing")
            self._layers.append((layer, weights))
        self._classes: dict[tuple[str, ...], str] = {}
        for entry in walk_config_layers(self._config) if self._config else []:
            self._classes[entry.path] = entry.class_name

    def _join(self, *parts: str) -> str:
        return "/".join(p for p in (self._base, *parts) if p)

    def config(self) -> dict | None:
        return self._config

    def _class_of(self, path: tuple[str, ...]) -> str | None:
        if path in self._classes:
            return self._classes[path]
        matches = {cls for p, cls in self._classes.items() if p[-1] == path[-1]}
        return matches.pop() if len(matches) == 1 else None

    def tables(self, all_weights: bool = False) -> list[Table]:
        found = []
        index = self._source.index.datasets
        for layer, weights in self._layers:
            by_owner: dict[tuple[str, ...], list[str]] = {}
            for weight in weights:
                parts = tuple(variable_name(weight).split("/"))
                owner = parts[:-1] if len(parts) > 1 else (layer,)
                if layer in owner and owner[0] != layer:
                    # Keras 3's writer prefixes the model's name: `bench/words/embeddings`
                    owner = owner[owner.index(layer) :]
                by_owner.setdefault(owner, []).append(weight)
            for owner, owner_weights in by_owner.items():
                found.extend(self._owner_tables(layer, owner, owner_weights, index, all_weights))
        return found

    def _owner_tables(self, layer, owner, weights, index, all_weights) -> list[Table]:
        infos = {w: index[self._join(layer, w)] for w in weights}
        inner_path = owner if owner[0] == layer else (layer, *owner)
        class_name = self._class_of(inner_path)
        leaf = lambda w: variable_name(w).rsplit("/", 1)[-1]  # noqa: E731
        if class_name == KERAS_EMBEDDING_CLASS:
            for weight in weights:
                if leaf(weight) == EMBEDDING_VARIABLE and len(infos[weight].shape) != 2:
                    raise MalformedFile(
                        f"{infos[weight].path}: an Embedding table has 2 dimensions, "
                        f"not {len(infos[weight].shape)}"
                    )
        matrices = [w for w in weights if len(infos[w].shape) == 2]
        if not matrices:
            return []
        named = [w for w in matrices if leaf(w) == EMBEDDING_VARIABLE]
        primary = named[0] if named else matrices[0]
        is_embedding = class_name.endswith(EMBEDDING_SUFFIX) if class_name else primary in named
        name = inner_path[-1]
        qualified = "/".join(dict.fromkeys(inner_path))
        found = []
        for weight in [primary] + [w for w in matrices if w != primary]:
            is_primary = weight == primary and is_embedding
            if not is_primary and not all_weights:
                continue
            info = infos[weight]
            quantized = scale = None
            if is_primary and info.dtype == "int8":
                scales = [w for w in weights if leaf(w) == SCALE_VARIABLE]
                quantized = "int8" if scales else "int4"
                scale = self._join(layer, scales[0]) if scales else None
            suffix = "" if weight == primary else f":{leaf(weight)}"
            found.append(
                Table(
                    name=name + suffix,
                    qualified=qualified + suffix,
                    class_name=class_name,
                    shape=(info.shape[0], info.shape[1]),
                    dtype=info.dtype,
                    weight=info.path,
                    quantized=quantized,
                    scale=scale,
                    is_embedding=is_primary,
                    aliases=(variable_name(weight),),
                    owner=variable_name(weight),
                )
            )
        return found

    def weight_info(self, weight: str) -> tuple[tuple[int, ...], np.dtype]:
        info = self._source.info(weight)
        return info.shape, numpy_dtype(info)

    def read(self, weight: str, rows: slice | np.ndarray) -> np.ndarray:
        return self._source.read(weight, rows)

    def stored_bytes(self, weight: str) -> ByteRange | None:
        source = self._source
        return dataset_bytes(source.handle, source.info(weight), source.path, source.base_offset)

    def optimizer_slots(self, table: Table) -> list[str]:
        datasets = self._source.index.datasets
        candidates = [
            path
            for path, info in datasets.items()
            if path.startswith(OPTIMIZER_WEIGHTS_GROUP + "/") and info.shape == table.shape
        ]
        by_name = [p for p in candidates if _names_variable(p, table.owner)]
        if by_name:
            return sorted(by_name)
        others = [
            path
            for path, info in datasets.items()
            if not path.startswith(OPTIMIZER_WEIGHTS_GROUP + "/")
            and path != table.weight
            and info.shape == table.shape
        ]
        return slots_by_shape(table, sorted(candidates), others)

    def plan_write(self, output, patches, in_place) -> WritePlan:
        edits: list[tuple[int, bytes]] = []
        checks = []
        for weight, (rows, values) in patches.items():
            edits.extend(self._source.patches(weight, rows, values))
            checks.append((weight, rows, values))
        return WritePlan(output, [FilePlan(output, self.path, patches=edits, checks=checks)])

    def plan_edit(self, output: Path, edit: Edit, in_place: bool) -> WritePlan:
        if edit.only_rows:
            return self.plan_write(output, edit.rows, in_place)
        if edit.rows or edit.assets or edit.files:
            raise UnsupportedEdit("a legacy HDF5 file keeps only weights and its config")
        attributes = None
        if edit.config is not None:
            attributes = {MODEL_CONFIG_ATTRIBUTE: json.dumps(edit.config)}
        source = self._source

        def write(target: Path) -> None:
            from embcli.formats.h5rewrite import rewrite_h5

            rewrite_h5(source.handle, target, edit.weights, attributes)

        plan = FilePlan(output, self.path, checks=edit.checks, rebuild=write)
        return WritePlan(output, [plan])

    reshapes_weights = True

    def weights_of(self, table: Table) -> list[str]:
        owner = table.owner.rsplit("/", 1)[0]
        for layer, weights in self._layers:
            paths = [self._join(layer, w) for w in weights]
            if table.weight in paths:
                return [
                    path
                    for path, weight in zip(paths, weights, strict=True)
                    if variable_name(weight).rsplit("/", 1)[0] == owner
                ]
        return [table.weight]

    def layer_config(self, table: Table, config: dict | None = None) -> dict | None:
        config = self._config if config is None else config
        if config is None:
            return None
        wanted = tuple(table.qualified.split("/"))
        layers = walk_config_layers(config)
        exact = [entry for entry in layers if tuple(dict.fromkeys(entry.path)) == wanted]
        named = [entry for entry in layers if entry.path[-1] == wanted[-1]]
        found = exact or (named if len(named) == 1 else [])
        return found[0].config if found else None

    def close(self) -> None:
        self._source.close()


def _names_variable(slot: str, variable: str) -> bool:
    """Whether an optimizer slot's path names a variable: tf_keras writes
    `Adam/m/word_emb/embeddings:0`, Keras 3 `adam/word_emb_embeddings_momentum`."""
    if f"/{variable}:" in f"/{slot}" or f"/{variable}/" in f"/{slot}/":
        return True
    leaf = slot.rsplit("/", 1)[-1]
    return leaf.startswith(variable.replace("/", "_") + "_")


LEGACY_ROOT_MARKERS = frozenset(
    {
        MODEL_WEIGHTS_GROUP,
        LAYER_NAMES_ATTRIBUTE,
        MODEL_CONFIG_ATTRIBUTE,
        "keras_version",
    }
)


def _is_legacy(probe: Probe) -> bool:
    return probe.is_hdf5 and bool(probe.h5_root_names & LEGACY_ROOT_MARKERS)


KINDS = [ArtifactKind("legacy h5", 40, _is_legacy, LegacyH5File)]

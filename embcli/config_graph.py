"""A model's config as a graph of layers: which layer feeds which, through nested
Functional and Sequential models, with each layer's group in the weights file. Used to
find the lookup layer (`TextVectorization`, `StringLookup`, `IntegerLookup`) whose ids
reach an embedding table. The config is read as data only.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from embcli.formats.base import ModelFile, Table
from embcli.formats.naming import LAYERS_CONTAINER, TF_KERAS_LAYERS_CONTAINER, groups_from_config

TEXT_VECTORIZATION = "TextVectorization"
STRING_LOOKUP = "StringLookup"
INTEGER_LOOKUP = "IntegerLookup"
LOOKUP_CLASSES = (TEXT_VECTORIZATION, STRING_LOOKUP, INTEGER_LOOKUP)
INPUT_LAYER = "InputLayer"
# Layers whose output holds the same token ids as their input, only rearranged.
ID_PRESERVING_CLASSES = frozenset(
    {
        "Reshape",
        "Flatten",
        "Permute",
        "RepeatVector",
        "Cropping1D",
        "ZeroPadding1D",
        "Concatenate",
        "Identity",
    }
)


@dataclass
class ConfigLayer:
    """A layer of a model config, with what is needed to follow the graph."""

    name: str
    class_name: str
    config: dict
    group: str | None
    container: Container
    raw: dict
    index: int
    inner: Container | None = None

    @property
    def is_lookup(self) -> bool:
        return self.class_name in LOOKUP_CLASSES

    @property
    def is_model(self) -> bool:
        return self.inner is not None


@dataclass
class Container:
    """The layer list of a (possibly nested) Functional or Sequential model."""

    sequential: bool
    config: dict
    owner: ConfigLayer | None
    layers: list[ConfigLayer] = field(default_factory=list)
    names: dict[str, ConfigLayer] = field(default_factory=dict)

    def add(self, layer: ConfigLayer) -> None:
        self.layers.append(layer)
        self.names.setdefault(layer.name, layer)

    def by_name(self, name: str) -> ConfigLayer | None:
        return self.names.get(name)


def _layer_list(raw: Any) -> list | None:
    if not isinstance(raw, dict):
        return None
    inner = raw.get("config")
    if isinstance(inner, dict) and isinstance(inner.get("layers"), list):
        return inner["layers"]
    return None


_GRAPHS: weakref.WeakKeyDictionary[ModelFile, tuple[int, ModelGraph]] = weakref.WeakKeyDictionary()


def graph_of(model: ModelFile, config: dict) -> ModelGraph:
    """The model's config graph, walked once per open model, not once per table."""
    known = _GRAPHS.get(model)
    if known is None or known[0] != id(config):
        known = (id(config), ModelGraph(config))
        _GRAPHS[model] = known
    return known[1]


class ModelGraph:
    """Every layer of a config, by container, with weights-file group paths."""

    def __init__(self, config: dict) -> None:
        groups = {id(entry.config): group for group, entry in groups_from_config(config).items()}
        self.layers: list[ConfigLayer] = []
        self.root = self._container(config, None, groups)

    def _container(self, raw: dict, owner: ConfigLayer | None, groups: dict) -> Container:
        container = Container(raw.get("class_name") == "Sequential", raw, owner)
        for index, item in enumerate(_layer_list(raw) or []):
            if not isinstance(item, dict):
                continue
            inner = item.get("config")
            class_name = item.get("class_name")
            if not isinstance(inner, dict) or not isinstance(class_name, str):
                continue
            name = inner.get("name", item.get("name"))
            if not isinstance(name, str):
                continue
            layer = ConfigLayer(
                name, class_name, inner, groups.get(id(inner)), container, item, index
            )
            container.add(layer)
            self.layers.append(layer)
            if _layer_list(item) is not None:
                layer.inner = self._container(item, layer, groups)
        return container

    def lookups(self) -> list[ConfigLayer]:
        return [layer for layer in self.layers if layer.is_lookup]

    def find(self, table: Table) -> tuple[ConfigLayer | None, bool]:
        """The config layer that owns `table`, and whether it is that exact layer (False
        when only an enclosing layer is known, e.g. a keras-hub composite)."""
        by_group = {layer.group: layer for layer in self.layers if layer.group}
        for exact, group in enumerate(_parents(_keras3_group(table.owner))):
            if group in by_group:
                return by_group[group], exact == 0
        parts = tuple(table.qualified.split("/"))
        for exact, end in enumerate(range(len(parts), 0, -1)):
            matches = [layer for layer in self.layers if self._path(layer) == parts[:end]]
            if len(matches) == 1:
                return matches[0], exact == 0
        named = [layer for layer in self.layers if layer.name == table.name]
        if len(named) == 1:
            return named[0], True
        return None, False

    def _path(self, layer: ConfigLayer) -> tuple[str, ...]:
        names = [layer.name]
        owner = layer.container.owner
        while owner is not None:
            names.append(owner.name)
            owner = owner.container.owner
        return tuple(reversed(names))

    def feeders(self, layer: ConfigLayer) -> tuple[list[ConfigLayer], bool]:
        """The lookup layers whose ids reach `layer`'s input, and whether the walk was
        conclusive (every path ended at a lookup layer or at one of the model's inputs)."""
        found: list[ConfigLayer] = []
        conclusive = True
        seen: set[int] = set()
        stack = list(self._inputs_of(layer))
        while stack:
            source = stack.pop()
            if source is None:
                conclusive = False
                continue
            if id(source) in seen:
                continue
            seen.add(id(source))
            if source.is_lookup:
                found.append(source)
            elif source.class_name == INPUT_LAYER:
                stack.extend(self._outer_inputs(source.container))
            elif source.is_model:
                stack.extend(self._outputs_of(source))
            elif source.class_name in ID_PRESERVING_CLASSES:
                stack.extend(self._inputs_of(source))
            else:
                conclusive = False
        return found, conclusive

    def _inputs_of(self, layer: ConfigLayer) -> list[ConfigLayer | None]:
        container = layer.container
        if container.sequential:
            before = [other for other in container.layers if other.index < layer.index]
            if before:
                return [before[-1]]
            return self._outer_inputs(container)
        names = list(_history_names(layer.raw.get("inbound_nodes")))
        if not names:
            return [None] if "inbound_nodes" not in layer.raw else self._outer_inputs(container)
        return [container.by_name(name) for name in names]

    def _outer_inputs(self, container: Container) -> list[ConfigLayer | None]:
        """What feeds a container: the enclosing model layer's inputs; none at the top."""
        if container.owner is None:
            return []
        return self._inputs_of(container.owner)

    def _outputs_of(self, model: ConfigLayer) -> list[ConfigLayer | None]:
        inner = model.inner
        if inner is None or not inner.layers:
            return [None]
        if inner.sequential:
            return [inner.layers[-1]]
        names = list(_history_names(inner.config.get("config", {}).get("output_layers")))
        return [inner.by_name(name) for name in names] or [None]


def _history_names(nodes: Any) -> Iterator[str]:
    """Layer names referenced by Keras 3 `keras_history` entries or by the legacy
    `[name, node_index, tensor_index, ...]` lists, anywhere inside `nodes`."""
    stack = [nodes]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            history = item.get("keras_history")
            if isinstance(history, list) and history and isinstance(history[0], str):
                yield history[0]
                continue
            stack.extend(item.values())
        elif isinstance(item, list):
            if (
                len(item) >= 3
                and isinstance(item[0], str)
                and isinstance(item[1], int)
                and isinstance(item[2], int)
            ):
                yield item[0]
                continue
            stack.extend(reversed(item))


def _keras3_group(owner: str) -> str:
    return "/".join(
        LAYERS_CONTAINER if part == TF_KERAS_LAYERS_CONTAINER else part for part in owner.split("/")
    )


def _parents(group: str) -> Iterator[str]:
    parts = group.split("/")
    for end in range(len(parts), 0, -1):
        if parts[end - 1] not in (LAYERS_CONTAINER, TF_KERAS_LAYERS_CONTAINER):
            yield "/".join(parts[:end])

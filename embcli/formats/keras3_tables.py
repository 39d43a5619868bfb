"""Which saved objects of a Keras 3 weights file are tables, and what they are called:
names from the `name` attributes or replayed over config.json, classes from the config,
Keras's group naming and keras-hub's attribute-held layers. `Keras3File` mixes this in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

from embcli.errors import MalformedFile
from embcli.formats import keras_rs
from embcli.formats.base import (
    EMBEDDING_SUFFIX,
    Table,
)
from embcli.formats.naming import (
    EMBEDDING_CONFIG_KEYS,
    KNOWN_SUBLAYER_CLASSES,
    LAYERS_CONTAINER,
    TF_KERAS_LAYERS_CONTAINER,
    ConfigLayer,
    class_from_auto_name,
    class_from_group,
    conventional_hub_names,
    names_an_embedding,
    serialized_layers,
)
from embcli.guarded import (
    DatasetInfo,
)

OPTIMIZER_GROUP = "optimizer"
KERAS_EMBEDDING_CLASS = "Embedding"
_CONTAINER_PARTS = {LAYERS_CONTAINER, TF_KERAS_LAYERS_CONTAINER}


@dataclass
class _Owner:
    """A saved object's group and its `vars` datasets, in order."""

    group: str
    datasets: list[str]
    saved_name: str | None


class Keras3Tables:
    """The table-discovery side of `Keras3File`."""

    _owners: dict[str, _Owner]
    _names: dict[str, ConfigLayer]
    _config: dict | None

    def _info(self, weight: str) -> DatasetInfo:
        raise NotImplementedError

    def _in_file(self, path: str) -> str:
        raise NotImplementedError

    def tables(self, all_weights: bool = False) -> list[Table]:
        found = []
        for owner in sorted(self._owners.values(), key=lambda o: o.group):
            group = self._in_file(owner.datasets[0]) if owner.datasets else ""
            if not owner.group or group.split("/")[0] == OPTIMIZER_GROUP:
                continue
            found.extend(self._owner_tables(owner, all_weights))
        return found

    def _config_layer(self, group: str) -> ConfigLayer | None:
        return self._names.get(group) or self._names.get(
            group.replace(TF_KERAS_LAYERS_CONTAINER, LAYERS_CONTAINER)
        )

    def _own_name(self, group: str) -> str | None:
        owner = self._owners.get(group)
        if owner is not None and owner.saved_name:
            return owner.saved_name
        known = self._config_layer(group)
        if known is not None:
            return known.name
        return self._conventional_names.get(group)

    @cached_property
    def _conventional_names(self) -> dict[str, str]:
        """keras-hub's names for a backbone's tables, in a file that records none."""
        if any(owner.saved_name for owner in self._owners.values()):
            return {}
        return conventional_hub_names(self._config, set(self._owners))

    def _qualified(self, group: str) -> str:
        """Names of the enclosing layers and this one, joined by `/`.

        Containers (`layers`, a list attribute) add nothing. A part with no recorded
        name (a sublayer kept as an attribute, in a file from before Keras recorded
        names) is shown by its attribute name. With no name known at all, the group path
        itself is the name.
        """
        parts = group.split("/")
        names: list[str] = []
        known = False
        for end, part in enumerate(parts, start=1):
            prefix = "/".join(parts[:end])
            own = self._own_name(prefix)
            if own is None and end < len(parts) and self._is_container(prefix):
                continue
            known = known or own is not None
            names.append(own if own is not None else part)
        return "/".join(names) if known else group

    def _layer_name(self, group: str) -> str:
        return self._own_name(group) or self._qualified(group)

    def _class_name(self, group: str) -> str | None:
        return self._class_and_config(group)[0]

    def _class_and_config(self, group: str) -> tuple[str | None, dict | None]:
        """A layer's class, and its config where the model's config holds one.

        In order: the config's layer lists; the group name Keras derived from the class
        in a container; keras-hub's known attributes; a sublayer the config serializes
        under the layer's saved name; a saved name Keras gave after the class."""
        known = self._config_layer(group)
        if known is not None:
            return known.class_name, known.config
        parts = group.split("/")
        if len(parts) >= 2 and self._is_container("/".join(parts[:-1])):
            return class_from_group(parts[-1]), None
        if len(parts) >= 2:
            parent = "/".join(parts[:-1])
            parent_class = self._class_name(parent) if parent else None
            if parent_class and (parent_class, parts[-1]) in KNOWN_SUBLAYER_CLASSES:
                return KNOWN_SUBLAYER_CLASSES[(parent_class, parts[-1])], None
        saved = self._owners.get(group)
        if saved and saved.saved_name:
            serialized = self._serialized_layers.get(saved.saved_name)
            if serialized is not None:
                return serialized
            auto = class_from_auto_name(saved.saved_name)
            if auto is not None:
                return auto, None
        return None, None

    @cached_property
    def _serialized_layers(self) -> dict[str, tuple[str, dict]]:
        listed = {id(entry.config) for entry in self._names.values()}
        return serialized_layers(self._config, listed)

    def _is_container(self, group: str) -> bool:
        """Whether a group holds a list of objects, whose names Keras derives from their
        classes: `layers`, or a list attribute of a custom layer (a group with no vars)."""
        last = group.rsplit("/", 1)[-1]
        return last in _CONTAINER_PARTS or (bool(group) and group not in self._owners)

    def _looks_like_embedding(
        self, owner: _Owner, class_name: str | None, config: dict | None, infos
    ) -> bool:
        """Whether a layer is a table: its class ends in `Embedding`, or its config is an
        Embedding's (`input_dim`, `output_dim`). A sublayer of unknown class is one only
        when its attribute or saved name says so (`token_embedding`, `table_emb`), or
        when it holds an int8 matrix with its per-row scale; a bare 2-D kernel is not."""
        if self._is_distributed_table(owner):
            return True
        if class_name is not None:
            if class_name.endswith(EMBEDDING_SUFFIX):
                return True
            return isinstance(config, dict) and all(k in config for k in EMBEDDING_CONFIG_KEYS)
        attribute = owner.group.rsplit("/", 1)[-1].lstrip("_")
        names = [attribute.lower(), (owner.saved_name or "").lower()]
        if any(names_an_embedding(name) for name in names):
            return True
        shapes = [info.shape for info in infos]
        return (
            len(shapes) == 2
            and len(shapes[0]) == 2
            and infos[0].dtype == "int8"
            and shapes[1] == (shapes[0][0],)
        )

    def _distributed(self, group: str) -> keras_rs.DistributedLayer | None:
        """The keras-rs `DistributedEmbedding` saved at `group`, from its config entry,
        or, in a weights file without a config, from the group's class name alone."""
        known = self._config_layer(group)
        if known is not None:
            return keras_rs.distributed_layer(
                known.class_name, known.config, known.registered_name, known.name
            )
        if group and self._class_name(group) == keras_rs.DISTRIBUTED_EMBEDDING_CLASS:
            return keras_rs.DistributedLayer(self._layer_name(group), (), None, True)
        return None

    def _is_distributed_table(self, owner: _Owner) -> bool:
        """Whether `owner` is a keras-rs table on the default device (an `EmbedReduce`
        in the layer's `_default_device_embedding_layers`)."""
        parts = owner.group.split("/")
        if len(parts) < 3 or parts[-2] != keras_rs.DEFAULT_DEVICE_CONTAINER:
            return False
        layer = self._distributed("/".join(parts[:-2]))
        if layer is None:
            return False
        return not layer.tables or keras_rs.is_default_device_table(
            layer, parts[-2], owner.saved_name
        )

    def _stacked_tables(
        self, owner: _Owner, layer: keras_rs.DistributedLayer, infos, all_weights: bool
    ) -> list[Table]:
        """A `DistributedEmbedding`'s own 2-D variables: SparseCore stacks, never rows."""
        matrices = [info for info in infos if len(info.shape) == 2]
        prefix = f"{owner.group}/{keras_rs.DEFAULT_DEVICE_CONTAINER}/"
        on_device = {o.saved_name for o in self._owners.values() if o.group.startswith(prefix)} - {
            None
        }
        kinds = keras_rs.stacked_variables(layer, len(matrices), on_device)  # type: ignore[arg-type]
        name = self._layer_name(owner.group)
        found = []
        for info, stacked in zip(matrices, kinds, strict=True):
            listed = stacked.role != "slot"
            if not listed and not all_weights:
                continue
            position = info.path.rsplit("/", 1)[-1]
            shown = f"{name}/{stacked.variable or 'stacked:' + position}"
            found.append(
                Table(
                    name=shown,
                    qualified=shown,
                    class_name=keras_rs.DISTRIBUTED_EMBEDDING_CLASS,
                    shape=(info.shape[0], info.shape[1]),
                    dtype=info.dtype,
                    weight=info.path,
                    is_embedding=listed,
                    owner=owner.group,
                    stacked=stacked,
                )
            )
        return found

    def _owner_tables(self, owner: _Owner, all_weights: bool) -> list[Table]:
        infos = [self._info(path) for path in owner.datasets]
        distributed = self._distributed(owner.group)
        if distributed is not None:
            return self._stacked_tables(owner, distributed, infos, all_weights)
        class_name, layer_config = self._class_and_config(owner.group)
        if class_name == KERAS_EMBEDDING_CLASS and infos and len(infos[0].shape) != 2:
            raise MalformedFile(
                f"{infos[0].path}: an Embedding table has 2 dimensions, not {len(infos[0].shape)}"
            )
        matrices = [info for info in infos if len(info.shape) == 2]
        if not matrices:
            return []
        is_embedding = self._looks_like_embedding(owner, class_name, layer_config, infos)
        name = self._layer_name(owner.group)
        qualified = self._qualified(owner.group)
        found = []
        for position, info in enumerate(matrices):
            primary = position == 0 and is_embedding
            if not primary and not all_weights:
                continue
            quantized, scale = (None, None)
            if primary:
                quantized, scale = self._quantization(owner, info, infos)
            suffix = "" if position == 0 else f":{info.path.rsplit('/', 1)[-1]}"
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
                    is_embedding=primary,
                    aliases=(owner.group,) if position == 0 else (),
                    owner=owner.group,
                )
            )
        return found

    def _quantization(self, owner: _Owner, table, infos) -> tuple[str | None, str | None]:
        if table.dtype not in ("int8", "uint8"):
            return None, None
        known = self._config_layer(owner.group)
        if known is not None and "int4" in json.dumps(known.config.get("dtype")):
            return "int4", None
        rest = [i for i in infos if i.path != table.path]
        if (
            table.dtype == "int8"
            and len(rest) == 1
            and rest[0].shape == (table.shape[0],)
            and rest[0].dtype.startswith(("float", "bfloat"))
        ):
            return "int8", rest[0].path
        return "int4", None

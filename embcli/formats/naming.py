"""Keras 3's names for saved objects, reproduced from config.json as data.

Inside `model.weights.h5`, Keras does not file a layer under its name. It walks the model:
Sequential and Functional models list their layers in a container, and each layer of a
container becomes a group named after its class in snake_case, with `_1`, `_2`, ... for
repeated classes (`layers/embedding`, `layers/embedding_1`). This module replays that walk
over the config's layer lists so each group can be given its layer's real name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

LAYERS_CONTAINER = "layers"
TF_KERAS_LAYERS_CONTAINER = "_layer_checkpoint_dependencies"


def to_snake_case(name: str) -> str:
    """The snake_case name Keras derives from a class name."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


@dataclass(frozen=True)
class ConfigLayer:
    """A layer found in a config: its name, class, enclosing names and raw config."""

    name: str
    class_name: str
    path: tuple[str, ...]
    config: dict


def _unique(name: str, used: dict[str, int]) -> str:
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name


def layer_list(config: Any) -> list | None:
    """The `layers` list of a Sequential/Functional config, or None."""
    if not isinstance(config, dict):
        return None
    inner = config.get("config")
    if isinstance(inner, dict) and isinstance(inner.get("layers"), list):
        return inner["layers"]
    return None


def groups_from_config(model_config: Any, max_layers: int = 1_000_000) -> dict[str, ConfigLayer]:
    """Map each weights-file group path (`layers/embedding_1`) to the layer it holds."""
    found: dict[str, ConfigLayer] = {}
    stack: list[tuple[Any, str, tuple[str, ...]]] = [(model_config, "", ())]
    while stack:
        config, prefix, names = stack.pop()
        layers = layer_list(config)
        if layers is None:
            continue
        used: dict[str, int] = {}
        for layer in layers:
            if len(found) >= max_layers or not isinstance(layer, dict):
                continue
            class_name = layer.get("class_name")
            inner = layer.get("config")
            if not isinstance(class_name, str) or not isinstance(inner, dict):
                continue
            group = f"{prefix}{LAYERS_CONTAINER}/{_unique(to_snake_case(class_name), used)}"
            name = inner.get("name")
            name = name if isinstance(name, str) else group
            entry = ConfigLayer(name, class_name, names + (name,), inner)
            found[group] = entry
            stack.append((layer, group + "/", entry.path))
    return found


def walk_config_layers(model_config: Any) -> list[ConfigLayer]:
    """Every layer config in a (possibly nested) model config, outermost first."""
    return sorted(groups_from_config(model_config).values(), key=lambda c: len(c.path))

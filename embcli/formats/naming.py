"""Keras 3's names for saved objects, reproduced from config.json as data.

Inside `model.weights.h5`, Keras does not file a layer under its name. It walks the model:
Sequential and Functional models list their layers in a container, and each layer of a
container becomes a group named after its class in snake_case, with `_1`, `_2`, ... for
repeated classes (`layers/embedding`, `layers/embedding_1`). This module replays that walk
over the config's layer lists so each group can be given its layer's real name.

Where the config lists no layers (a keras-hub backbone's holds constructor arguments, a
subclassed model's whatever `get_config` returns), a group's class comes from its name
in a container, from keras-hub's known attributes, or from a sublayer the config
serializes by name; never from the shapes of its weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from embcli.formats.base import snake_to_class
from embcli.guarded.parsing import holds_containers

LAYERS_CONTAINER = "layers"
TF_KERAS_LAYERS_CONTAINER = "_layer_checkpoint_dependencies"


def to_snake_case(name: str) -> str:
    """The snake_case name Keras derives from a class name."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


@dataclass(frozen=True)
class ConfigLayer:
    """A layer found in a config: its name, class, enclosing names and raw config, and
    the name its class is registered under (`keras_rs>DistributedEmbedding`), if any."""

    name: str
    class_name: str
    path: tuple[str, ...]
    config: dict
    registered_name: str | None = None


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
            registered = layer.get("registered_name")
            registered = registered if isinstance(registered, str) else None
            entry = ConfigLayer(name, class_name, names + (name,), inner, registered)
            found[group] = entry
            stack.append((layer, group + "/", entry.path))
    return found


def walk_config_layers(model_config: Any) -> list[ConfigLayer]:
    """Every layer config in a (possibly nested) model config, outermost first."""
    return sorted(groups_from_config(model_config).values(), key=lambda c: len(c.path))


# keras-hub layers that keep their tables as attributes, by (parent class, attribute); from
# keras-hub 0.32's layer sources. Backbones are Functional, so their own tables are filed
# under their class's snake_case name and need no entry here.
KNOWN_SUBLAYER_CLASSES = {
    ("TokenAndPositionEmbedding", "token_embedding"): "ReversibleEmbedding",
    ("TokenAndPositionEmbedding", "position_embedding"): "PositionEmbedding",
    ("ContentAndQueryEmbedding", "word_embed"): "Embedding",
    ("BLIP2OPTEmbeddings", "token_embedding"): "ReversibleEmbedding",
    ("BLIP2OPTEmbeddings", "position_embedding"): "Embedding",
    ("CLIPVisionEmbedding", "position_embedding"): "Embedding",
    ("Gemma3VisionEmbedding", "position_embedding"): "Embedding",
    ("Gemma3nMultimodalEmbedder", "embedding"): "Embedding",
    ("Gemma3nTextScaledWordEmbedding", "embedding"): "Embedding",
    ("MetaCLIP2VisionEmbedding", "position_embedding"): "Embedding",
    ("PaliGemmaVitEmbeddings", "position_embedding"): "Embedding",
    ("PARSeqDecoder", "token_embedding"): "Embedding",
    ("SigLIPVisionEmbedding", "position_embedding"): "Embedding",
    ("SigLIPTextEmbedding", "token_embedding"): "ReversibleEmbedding",
    ("SigLIPTextEmbedding", "position_embedding"): "ReversibleEmbedding",
    ("T5Encoder", "token_embedding"): "ReversibleEmbedding",
    ("VideoPrismEmbedding", "token_embedding"): "Embedding",
    ("VideoPrismPatchingAndEmbedding", "position_embedding"): "Embedding",
    ("VideoPrismTemporalEmbedding", "embedding"): "Embedding",
    ("ViTPatchingAndEmbedding", "position_embedding"): "Embedding",
    ("DFineInitialQueryAndReferenceGenerator", "weight_embedding"): "Embedding",
    ("SAMMaskDecoder", "iou_token"): "Embedding",
    ("SAMMaskDecoder", "mask_tokens"): "Embedding",
    ("SAMPromptEncoder", "foreground_point_embed"): "Embedding",
    ("SAMPromptEncoder", "background_point_embed"): "Embedding",
    ("SAMPromptEncoder", "top_left_corner_embed"): "Embedding",
    ("SAMPromptEncoder", "bottom_right_corner_embed"): "Embedding",
    ("SAMPromptEncoder", "not_a_point_embed"): "Embedding",
    ("SAMPromptEncoder", "no_mask_embed"): "Embedding",
    ("SAM3DetrDecoder", "query_embed"): "Embedding",
    ("SAM3DetrDecoder", "reference_points"): "Embedding",
    ("SAM3DetrDecoder", "presence_token"): "Embedding",
    ("SAM3GeometryEncoder", "label_embed"): "Embedding",
    ("SAM3GeometryEncoder", "cls_embed"): "Embedding",
}
# Classes whose snake_case group name does not give their spelling back.
_KNOWN_BY_SNAKE = {
    to_snake_case(name): name
    for name in ("MaskedLMHead", "GPT2Backbone", "T5Backbone", "XLNetBackbone")
}
# Classes whose default layer name (`embedding_3`) tells the class of a layer whose group
# does not: Keras names an unnamed layer after its class.
AUTO_NAMED_CLASSES = ("Embedding", "ReversibleEmbedding", "PositionEmbedding")
_AUTO_NAME = re.compile(r"^([a-z_]+?)(_\d+)?$")
# A name that says "embedding": the only evidence taken for a sublayer of unknown class.
_EMBEDDING_WORD = re.compile(r"(^|_)(emb|embed|embeds|embedding|embeddings)(_|\d|$)")
# The keys of an Embedding layer's config, found for a sublayer a config serializes.
EMBEDDING_CONFIG_KEYS = ("input_dim", "output_dim")


def class_from_group(group: str) -> str:
    """The class a container group is named after, spelt as the class is where embcli
    knows it (`masked_lm_head` is `MaskedLMHead`, not `MaskedLmHead`)."""
    derived = snake_to_class(group)
    base = re.sub(r"_\d+$", "", group)
    return _KNOWN_BY_SNAKE.get(base, derived)


def serialized_layers(config: Any, listed: set[int]) -> dict[str, tuple[str, dict]]:
    """Layers a config serializes by name (`{"class_name", "config": {"name"}}`) outside
    any layer list (`listed` holds the ids of those inner configs), e.g. in a subclassed
    model's `get_config`: name -> (class, config), for names only one of them holds."""
    found: dict[str, tuple[str, dict] | None] = {}
    stack: list = [config] if config else []
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            if holds_containers(item):
                stack.extend(value for value in item if isinstance(value, (list, dict)))
            continue
        if not isinstance(item, dict):
            continue
        stack.extend(value for value in item.values() if isinstance(value, (list, dict)))
        inner = item.get("config")
        class_name = item.get("class_name")
        if not (isinstance(inner, dict) and isinstance(class_name, str)):
            continue
        name = inner.get("name")
        if isinstance(name, str) and id(inner) not in listed:
            found[name] = None if name in found else (class_name, inner)
    return {name: entry for name, entry in found.items() if entry is not None}


def class_from_auto_name(name: str) -> str | None:
    """The class of a layer Keras named after it (`embedding_3`), among `AUTO_NAMED_CLASSES`."""
    auto = _AUTO_NAME.match(name)
    if auto is None:
        return None
    derived = snake_to_class(auto.group(1))
    return derived if derived in AUTO_NAMED_CLASSES else None


def names_an_embedding(name: str) -> bool:
    """Whether an attribute or layer name says "embedding" (`token_embedding`, `table_emb`)."""
    return bool(_EMBEDDING_WORD.search(name))


# Files from before Keras 3.6 record no layer names, and a keras-hub (or keras-nlp)
# backbone's config lists no layers. Its tables' names are then the ones keras-nlp 0.12's
# backbones give them (from its sources): each backbone's one ReversibleEmbedding is
# `token_embedding`; these backbones' one plain Embedding and one PositionEmbedding are
# `segment_embedding` and `position_embedding`.
HUB_PACKAGES = ("keras_hub", "keras_nlp")
BACKBONE_SUFFIX = "Backbone"
TASK_BACKBONE_KEY = "backbone"
_SEGMENTED = ("BertBackbone", "AlbertBackbone", "ElectraBackbone", "FNetBackbone")
_CONVENTIONAL_TABLES = (
    ("reversible_embedding", "token_embedding", None),
    ("embedding", "segment_embedding", _SEGMENTED),
    ("position_embedding", "position_embedding", (*_SEGMENTED, "GPT2Backbone")),
)


def _hub_class(config: Any) -> str | None:
    """The class a config names, when keras-hub or keras-nlp registered it."""
    if not isinstance(config, dict) or not isinstance(config.get("class_name"), str):
        return None
    module = config.get("module")
    registered = config.get("registered_name")
    from_hub = isinstance(module, str) and module.split(".")[0] in HUB_PACKAGES
    from_hub = from_hub or (
        isinstance(registered, str) and registered.split(">")[0] in HUB_PACKAGES
    )
    return config["class_name"] if from_hub else None


def conventional_hub_names(config: Any, groups: set[str]) -> dict[str, str]:
    """Group path -> layer name for the tables of a keras-hub backbone, at the root of
    `config` or as a task's `backbone`, by keras-nlp's naming (see above); only for groups
    in `groups` whose class has no second group beside them."""
    backbone, prefix = config, ""
    found: dict[str, str] = {}
    root = _hub_class(config)
    if root is None:
        return found
    if not root.endswith(BACKBONE_SUFFIX):
        inner = config.get("config")
        backbone = inner.get(TASK_BACKBONE_KEY) if isinstance(inner, dict) else None
        if _hub_class(backbone) is None:
            return found
        assert isinstance(backbone, dict)
        prefix = f"{LAYERS_CONTAINER}/{to_snake_case(backbone['class_name'])}/"
        name = backbone.get("config", {}).get("name") if isinstance(backbone, dict) else None
        if isinstance(name, str):
            found[prefix.rstrip("/")] = name
    class_name = _hub_class(backbone)
    if class_name is None or not class_name.endswith(BACKBONE_SUFFIX):
        return {}
    for group_name, name, classes in _CONVENTIONAL_TABLES:
        group = f"{prefix}{LAYERS_CONTAINER}/{group_name}"
        if group in groups and f"{group}_1" not in groups:
            if classes is None or class_name in classes:
                found[group] = name
    return found

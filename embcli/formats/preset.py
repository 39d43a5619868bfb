"""keras-hub preset folders, as `save_to_preset` writes them.

A preset holds a backbone (`config.json` with its constructor arguments, and its weights in
`model.weights.h5` or, sharded, `model.weights.json` with `model_NNNNN.weights.h5`), and
optionally a task (`task.json`, whose config nests the backbone's, and `task.weights.h5`
with the task's own layers, e.g. a `MaskedLMHead` and its output bias), a tokenizer
(`tokenizer.json` and its vocabulary under `assets/tokenizer/`), a preprocessor and
`metadata.json`; each JSON file must parse, or the preset is refused. Weights are read as
in any Keras 3 folder; the task's are shown under `task/`, so that a task layer never
takes the name of a backbone layer.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

from embcli.errors import MalformedFile, UnsafeFile, UnsupportedEdit
from embcli.formats.base import Edit, Table, WritePlan
from embcli.formats.keras3 import Keras3File, shard_names
from embcli.formats.registry import ArtifactKind, Probe
from embcli.locations import Location, json_limit, location_of

CONFIG_FILENAME = "config.json"
METADATA_FILENAME = "metadata.json"
TASK_CONFIG_FILENAME = "task.json"
TOKENIZER_CONFIG_FILENAME = "tokenizer.json"
PREPROCESSOR_CONFIG_FILENAME = "preprocessor.json"
WEIGHTS_FILENAME = "model.weights.h5"
SHARDED_WEIGHTS_FILENAME = "model.weights.json"
TASK_WEIGHTS_FILENAME = "task.weights.h5"
TASK_PREFIX = "task/"
LAYERS_GROUP = "layers"
TASK_BACKBONE_KEY = "backbone"
BACKBONE_SIZE_KEY = "vocabulary_size"
KERAS_HUB_MODULE = "keras_hub"
KERAS_HUB_REGISTERED = "keras_hub>"
HUB_VERSION_KEY = "keras_hub_version"
PROBE_LIMIT = 1 << 20


class PresetFile(Keras3File):
    """A keras-hub preset folder: backbone weights (whole or sharded) and a task's."""

    def __init__(self, path: Path) -> None:
        self._task_config: dict | None = None
        self._task_indent: int | None = None
        super().__init__(path, "preset")

    def _open_preset(self) -> None:
        folder = location_of(self.path)
        folder.check()
        if folder.is_file(CONFIG_FILENAME):
            self._config = self._parse_config(folder.read(CONFIG_FILENAME, json_limit()))
        if folder.is_file(WEIGHTS_FILENAME):
            self._sources[""] = folder.h5_source(WEIGHTS_FILENAME)
        elif folder.is_file(SHARDED_WEIGHTS_FILENAME):
            self._open_shards(folder, SHARDED_WEIGHTS_FILENAME)
        else:
            raise MalformedFile(
                f"{self.path}: the preset has neither {WEIGHTS_FILENAME} "
                f"nor {SHARDED_WEIGHTS_FILENAME}"
            )
        if folder.is_file(TASK_CONFIG_FILENAME):
            text = folder.read(TASK_CONFIG_FILENAME, json_limit())
            self._task_config = _json_object(text, folder.shown(TASK_CONFIG_FILENAME))
            self._task_indent = _indent(text)
        for name in (METADATA_FILENAME, PREPROCESSOR_CONFIG_FILENAME, TOKENIZER_CONFIG_FILENAME):
            if folder.is_file(name):
                _json_object(folder.read(name, json_limit()), folder.shown(name))
        if folder.is_link(TASK_WEIGHTS_FILENAME):
            raise UnsafeFile(
                f"{folder.shown(TASK_WEIGHTS_FILENAME)}: symbolic links in a model folder "
                "are refused"
            )
        if folder.is_file(TASK_WEIGHTS_FILENAME):
            self._sources[TASK_WEIGHTS_FILENAME] = folder.h5_source(TASK_WEIGHTS_FILENAME)
            self._prefixes[TASK_WEIGHTS_FILENAME] = TASK_PREFIX

    def _find_owners(self):
        """As in any Keras folder, less the copy of the backbone that `task.weights.h5`
        holds when keras-hub 0.20 or older (and keras-nlp) wrote it: Keras skips the
        backbone's objects when it loads task weights, so that copy is never read."""
        owners = super()._find_owners()
        copy = self._task_backbone_copy()
        if copy is None:
            return owners
        return {p: o for p, o in owners.items() if p != copy and not p.startswith(copy + "/")}

    def _task_backbone_copy(self) -> str | None:
        """The `task/layers/<group>` whose datasets are exactly the backbone's, if any."""
        task = self._sources.get(TASK_WEIGHTS_FILENAME)
        if task is None:
            return None
        backbone = {
            path
            for key, source in self._sources.items()
            if key != TASK_WEIGHTS_FILENAME
            for path in source.index.datasets
        }
        by_group: dict[str, set[str]] = {}
        for path in task.index.datasets:
            parts = path.split("/", 2)
            if len(parts) == 3 and parts[0] == LAYERS_GROUP:
                by_group.setdefault(parts[1], set()).add(parts[2])
        copies = [group for group, paths in by_group.items() if backbone and paths == backbone]
        return f"{TASK_PREFIX}{LAYERS_GROUP}/{copies[0]}" if len(copies) == 1 else None

    def mirrored_weights(self, table: Table) -> list[str]:
        """The task file's copy of a backbone table (see `_find_owners`): the keras-hub
        release that wrote it fails to load the task when the copy's shape is stale."""
        copy = self._task_backbone_copy()
        if copy is None or table.weight.startswith(TASK_PREFIX):
            return []
        mirror = f"{copy}/{table.weight.strip('/')}"
        return [mirror] if mirror in self._location else []

    def _folder_files(self) -> dict[str, Path]:
        return {key: Path(WEIGHTS_FILENAME if key == "" else key) for key in self._sources}

    def known_files(self) -> list[str]:
        """As for any Keras folder, and the preset's task, preprocessor and tokenizer
        configs and its shard index."""
        names = [TASK_CONFIG_FILENAME, PREPROCESSOR_CONFIG_FILENAME, TOKENIZER_CONFIG_FILENAME]
        if self._shard_map is not None:
            names.append(SHARDED_WEIGHTS_FILENAME)
        return list(dict.fromkeys([*super().known_files(), *names]))

    def _qualified(self, group: str) -> str:
        """Backbone layers are named through the backbone when a task holds it, as
        Keras names them in the task (`bert_backbone/token_embedding`)."""
        qualified = super()._qualified(group)
        backbone = self.backbone_name()
        if self._task_config is None or group.startswith(TASK_PREFIX) or backbone is None:
            return qualified
        return f"{backbone}/{qualified}"

    def backbone_name(self) -> str | None:
        """The backbone's layer name from `config.json`."""
        inner = self._config.get("config") if isinstance(self._config, dict) else None
        name = inner.get("name") if isinstance(inner, dict) else None
        return name if isinstance(name, str) else None

    def task_config(self) -> dict | None:
        """`task.json` as parsed JSON, when the preset holds a task."""
        return self._task_config

    def plan_edit(self, output: Path, edit: Edit, in_place: bool) -> WritePlan:
        """As for any Keras folder; and a new backbone config is written into `task.json`
        too, whose `backbone` is `config.json`'s, so that the task loads the same model.
        Where the two differ (a preset written by another release), only a changed
        `vocabulary_size` is carried over."""
        task = self._task_config
        if edit.config is not None and task is not None and edit.config != self._config:
            current = edit.files.get(TASK_CONFIG_FILENAME)
            document = copy.deepcopy(task) if current is None else json.loads(current)
            inner = document.get("config")
            backbone = inner.get(TASK_BACKBONE_KEY) if isinstance(inner, dict) else None
            if isinstance(inner, dict) and backbone is not None and backbone == self._config:
                inner[TASK_BACKBONE_KEY] = copy.deepcopy(edit.config)
            elif not _same_size_change(backbone, self._config, edit.config):
                raise UnsupportedEdit(
                    f"{self.path}: {TASK_CONFIG_FILENAME} holds another backbone than "
                    f"{CONFIG_FILENAME}, so embcli cannot keep them in step"
                )
            edit = replace(edit, files={**edit.files})
            edit.files[TASK_CONFIG_FILENAME] = self.task_config_bytes(document)
        return super().plan_edit(output, edit, in_place)

    def task_config_bytes(self, config: dict) -> bytes:
        """A new `task.json`, laid out as the old one was."""
        if self._task_indent:
            return json.dumps(config, indent=self._task_indent).encode()
        return json.dumps(config).encode()


def _same_size_change(backbone: object, old: dict | None, new: dict) -> bool:
    """Set the task's backbone `vocabulary_size` as `config.json`'s changed, when that is
    the only change and the task's agreed with the old one; whether it was done."""
    sizes = [
        value.get("config", {}).get(BACKBONE_SIZE_KEY) if isinstance(value, dict) else None
        for value in (backbone, old, new)
    ]
    if not isinstance(backbone, dict) or None in sizes or sizes[0] != sizes[1]:
        return False
    assert old is not None
    unchanged = {**new, "config": {**new["config"], BACKBONE_SIZE_KEY: sizes[1]}}
    if unchanged != old:
        return False
    backbone["config"][BACKBONE_SIZE_KEY] = sizes[2]
    return True


def _indent(text: bytes) -> int | None:
    stripped = text.split(b"\n", 2)
    if len(stripped) < 2:
        return None
    line = stripped[1]
    return len(line) - len(line.lstrip(b" ")) or None


def _json_object(text: bytes, path: str) -> dict:
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedFile(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise MalformedFile(f"{path}: not a JSON object")
    return document


def _small_json(folder: Location, name: str) -> dict | None:
    """A small JSON object file, or None when it is missing, large or unreadable."""
    try:
        if not folder.is_file(name) or folder.size(name) > PROBE_LIMIT:
            return None
        document = json.loads(folder.read(name, PROBE_LIMIT))
    except (OSError, ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


def _names_keras_hub(config: dict | None) -> bool:
    if config is None:
        return False
    module = config.get("module")
    registered = config.get("registered_name")
    return (isinstance(module, str) and module.split(".")[0] == KERAS_HUB_MODULE) or (
        isinstance(registered, str) and registered.startswith(KERAS_HUB_REGISTERED)
    )


def _is_preset(probe: Probe) -> bool:
    """A folder with backbone weights and a sign of keras-hub: a config naming a
    keras-hub class, metadata with a keras-hub version, or a task or tokenizer config."""
    if not probe.is_dir:
        return False
    if not (probe.has_file(WEIGHTS_FILENAME) or probe.has_file(SHARDED_WEIGHTS_FILENAME)):
        return False
    if probe.has_file(TASK_CONFIG_FILENAME) or probe.has_file(TOKENIZER_CONFIG_FILENAME):
        return True
    metadata = _small_json(probe.folder, METADATA_FILENAME)
    if metadata is not None and HUB_VERSION_KEY in metadata:
        return True
    return _names_keras_hub(_small_json(probe.folder, CONFIG_FILENAME))


KINDS = [ArtifactKind("keras-hub preset", 25, _is_preset, PresetFile)]

__all__ = ["KINDS", "PresetFile", "shard_names"]

"""Keras 3 weight files: `.keras` archives, unzipped model folders, `.weights.h5`, and
sharded `.weights.json` with their `_NNNNN.weights.h5` shards. `.keras` files written by
tf_keras share this layout.

Weights sit in `model.weights.h5` as datasets `vars/0`, `vars/1`, ... of one group per
saved object. A stored (uncompressed) archive member is read in place through a window
onto the archive, and edited by patching its bytes and its CRC-32.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from embcli.errors import MalformedFile, UnsafeFile, UnsupportedFormat
from embcli.formats.base import (
    EMBEDDING_SUFFIX,
    H5Source,
    ModelFile,
    Table,
    numpy_dtype,
    slots_by_shape,
    vars_index,
)
from embcli.formats.keras3_write import Keras3Writing
from embcli.formats.naming import (
    EMBEDDING_CONFIG_KEYS,
    KNOWN_SUBLAYER_CLASSES,
    LAYERS_CONTAINER,
    TF_KERAS_LAYERS_CONTAINER,
    ConfigLayer,
    class_from_auto_name,
    class_from_group,
    groups_from_config,
    names_an_embedding,
    serialized_layers,
)
from embcli.formats.registry import ArtifactKind, Probe
from embcli.formats.side_files import (
    TOKENIZER_CONFIG_FILE,
    LazyFiles,
    folder_tokenizer_files,
    is_plain_file,
    read_small,
)
from embcli.guarded import (
    ZIP_EMPTY_SIGNATURE,
    ZIP_ERRORS,
    ZIP_SIGNATURE,
    ByteRange,
    DatasetInfo,
    FileWindow,
    check_archive,
    check_directory_size,
    check_folder,
    dataset_bytes,
    file_identity,
    member_data_offset,
    parse_json,
    read_attr_text,
    read_member,
)
from embcli.tokenizer_assets import ARCHIVE, PRESET, TokenizerFiles

CONFIG_FILENAME = "config.json"
METADATA_FILENAME = "metadata.json"
WEIGHTS_FILENAME = "model.weights.h5"
NPZ_WEIGHTS_FILENAME = "model.weights.npz"
ASSETS_DIRNAME = "assets"
VARS_GROUP = "vars"
OPTIMIZER_GROUP = "optimizer"
NAME_ATTRIBUTE = "name"
SHARD_MAP_KEY = "weight_map"
MAX_UNZIPPED_WEIGHTS = 1 << 40
KERAS_EMBEDDING_CLASS = "Embedding"
FORMAT_NAMES = {
    "archive": "keras archive",
    "folder": "keras folder",
    "weights": "keras weights",
    "sharded": "keras sharded weights",
    "preset": "keras-hub preset",
}
FOLDER_KINDS = ("folder", "preset")
# Task layers whose 1-D weight is a bias over the vocabulary (keras-hub's MaskedLMHead).
OUTPUT_BIAS_CLASSES = ("MaskedLMHead",)

_CONTAINER_PARTS = {LAYERS_CONTAINER, TF_KERAS_LAYERS_CONTAINER}


@dataclass
class _Owner:
    """A saved object's group and its `vars` datasets, in order."""

    group: str
    datasets: list[str]
    saved_name: str | None


class Keras3File(Keras3Writing, ModelFile):
    """A Keras 3 (or tf_keras `.keras`) artifact of one of four kinds."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(path)
        self.kind = kind
        self.format_name = FORMAT_NAMES[kind]
        self._fd: int | None = None
        self._archive: zipfile.ZipFile | None = None
        self._member: zipfile.ZipInfo | None = None
        self._member_offset: int | None = None
        self._spill: Any = None
        self._config: dict | None = None
        self._config_indent: int | None = None
        self._shard_map: dict | None = None
        self._sources: dict[str, H5Source] = {}
        self._location: dict[str, str] = {}
        self._prefixes: dict[str, str] = {}
        try:
            getattr(self, f"_open_{kind}")()
            self._owners = self._find_owners()
            self._names: dict[str, ConfigLayer] = (
                groups_from_config(self._config) if self._config else {}
            )
        except BaseException:
            self.close()
            raise

    # Opening -------------------------------------------------------------------------

    def _open_archive(self) -> None:
        self._fd = os.open(self.path, os.O_RDONLY)
        size = os.fstat(self._fd).st_size
        check_directory_size(self._fd, size)
        try:
            self._archive = zipfile.ZipFile(open(self.path, "rb"))  # noqa: SIM115
        except ZIP_ERRORS as exc:
            raise MalformedFile(f"{self.path}: not a readable zip archive ({exc})") from None
        check_archive(self._archive, size)
        names = set(self._archive.namelist())
        if CONFIG_FILENAME in names:
            self._config = self._parse_config(read_member(self._archive, CONFIG_FILENAME))
        if WEIGHTS_FILENAME not in names:
            if NPZ_WEIGHTS_FILENAME in names:
                raise UnsupportedFormat(
                    f"{self.path}: the npz weights format stores pickled objects; "
                    "embcli never unpickles"
                )
            raise MalformedFile(f"{self.path}: the archive has no {WEIGHTS_FILENAME}")
        info = self._archive.getinfo(WEIGHTS_FILENAME)
        self._member = info
        if info.compress_type == zipfile.ZIP_STORED:
            offset = member_data_offset(self._fd, info)
            if offset + info.file_size > size:
                raise MalformedFile(f"{self.path}: {WEIGHTS_FILENAME} is truncated")
            self._member_offset = offset
            window = FileWindow(self._fd, offset, info.file_size)
            self._sources[""] = H5Source(self.path, window, info.file_size, base_offset=offset)
        else:
            self._spill = self._unzip_to_temporary(info)
            self._sources[""] = H5Source(self.path, self._spill, info.file_size)

    def _unzip_to_temporary(self, info: zipfile.ZipInfo):
        if info.file_size > MAX_UNZIPPED_WEIGHTS:
            raise UnsafeFile(f"{self.path}: {info.filename} declares {info.file_size} bytes")
        spill = tempfile.TemporaryFile(prefix="embcli-")  # noqa: SIM115
        written = 0
        try:
            with self._zip.open(info) as member:
                while chunk := member.read(1 << 20):
                    written += len(chunk)
                    if written > info.file_size:
                        raise UnsafeFile(f"{self.path}: {info.filename} is larger than declared")
                    spill.write(chunk)
        except ZIP_ERRORS as exc:
            spill.close()
            raise MalformedFile(f"{self.path}: {info.filename} cannot be read ({exc})") from None
        spill.seek(0)
        return spill

    def _open_folder(self) -> None:
        check_folder(self.path)
        config_path = self.path / CONFIG_FILENAME
        if config_path.is_file():
            self._config = self._parse_config(read_small(config_path))
        weights = self.path / WEIGHTS_FILENAME
        if weights.is_symlink() or not weights.is_file():
            raise MalformedFile(f"{self.path}: the folder has no {WEIGHTS_FILENAME}")
        self._sources[""] = H5Source(weights)

    def _open_weights(self) -> None:
        self._sources[""] = H5Source(self.path)

    def _open_sharded(self) -> None:
        self._open_shards(self.path)

    def _open_shards(self, index_path: Path) -> None:
        index = parse_json(read_small(index_path), str(index_path))
        weight_map = index.get(SHARD_MAP_KEY) if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise MalformedFile(f"{index_path}: no {SHARD_MAP_KEY} in the shard index")
        self._shard_map = index
        for shard in shard_names(weight_map):
            shard_path = index_path.parent / shard
            if shard_path.is_symlink():
                raise UnsafeFile(f"{index_path}: shard {shard} is a symbolic link")
            if not shard_path.is_file():
                raise MalformedFile(f"{index_path}: shard {shard} is missing")
            self._sources[shard] = H5Source(shard_path)

    def _parse_config(self, text: bytes) -> dict:
        self._config_indent = _indent_of(text)
        config = parse_json(text, f"{self.path}: {CONFIG_FILENAME}")
        if not isinstance(config, dict):
            raise MalformedFile(f"{self.path}: {CONFIG_FILENAME} is not a JSON object")
        return config

    # Reading -------------------------------------------------------------------------

    def _find_owners(self) -> dict[str, _Owner]:
        owners: dict[str, _Owner] = {}
        for key, source in self._sources.items():
            prefix = self._prefixes.get(key, "")
            for path in source.index.datasets:
                self._location.setdefault(prefix + path, key)
            for group in source.index.groups:
                parts = group.split("/")
                if parts[-1] != VARS_GROUP:
                    continue
                owner_path = (prefix + "/".join(parts[:-1])).rstrip("/")
                owner = owners.setdefault(owner_path, _Owner(owner_path, [], None))
                saved = read_attr_text(source.handle[group], NAME_ATTRIBUTE)
                owner.saved_name = owner.saved_name or saved
        for path in self._location:
            parts = path.split("/")
            if len(parts) >= 2 and parts[-2] == VARS_GROUP:
                owner_path = "/".join(parts[:-2])
                owners.setdefault(owner_path, _Owner(owner_path, [], None)).datasets.append(path)
        for owner in owners.values():
            owner.datasets.sort(key=lambda p: vars_index(p.rsplit("/", 1)[-1]))
        return owners

    def _source(self, weight: str) -> tuple[H5Source, str]:
        path = weight.strip("/")
        key = self._location.get(path)
        if key is None:
            raise MalformedFile(f"no weight {weight!r} in {self.path}")
        return self._sources[key], path[len(self._prefixes.get(key, "")) :]

    def _in_file(self, path: str) -> str:
        """A weight's path inside its own file (without the prefix of a second file)."""
        key = self._location.get(path.strip("/"))
        return path.strip("/")[len(self._prefixes.get(key, "")) :] if key is not None else path

    def _info(self, weight: str) -> DatasetInfo:
        """A weight's dataset info, with the weight's path as embcli shows it."""
        source, path = self._source(weight)
        info = source.info(path)
        return info if path == weight.strip("/") else replace(info, path=weight.strip("/"))

    def weight_info(self, weight: str) -> tuple[tuple[int, ...], np.dtype]:
        source, path = self._source(weight)
        info = source.info(path)
        return info.shape, numpy_dtype(info)

    def read(self, weight: str, rows: slice | np.ndarray) -> np.ndarray:
        source, path = self._source(weight)
        return source.read(path, rows)

    def stored_bytes(self, weight: str) -> ByteRange | None:
        source, path = self._source(weight)
        if self._spill is not None:
            return None  # a compressed member, read from a temporary copy
        identity = file_identity(self._fd) if self._fd is not None else None
        info = source.info(path)
        return dataset_bytes(source.handle, info, source.path, source.base_offset, identity)

    def config(self) -> dict | None:
        return self._config

    def asset(self, name: str) -> bytes | None:
        member = f"{ASSETS_DIRNAME}/{name}"
        if self._archive is not None:
            if member in self._archive.namelist():
                return read_member(self._archive, member)
            return None
        if self.kind in FOLDER_KINDS:
            path = self.path / ASSETS_DIRNAME / name
            if path.is_file() and not path.is_symlink():
                return read_small(path)
        return None

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
        return known.name if known is not None else None

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

    def _owner_tables(self, owner: _Owner, all_weights: bool) -> list[Table]:
        infos = [self._info(path) for path in owner.datasets]
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

    def optimizer_slots(self, table: Table) -> list[str]:
        slots = [
            path
            for path in self._location
            if self._in_file(path).startswith(f"{OPTIMIZER_GROUP}/")
            and self.weight_info(path)[0] == table.shape
        ]
        if not slots:
            return []
        others = [
            path
            for path in self._location
            if not self._in_file(path).startswith(f"{OPTIMIZER_GROUP}/")
            and path != table.weight
            and self.weight_info(path)[0] == table.shape
        ]
        ordered = sorted(slots, key=lambda p: vars_index(p.rsplit("/", 1)[-1]))
        return slots_by_shape(table, ordered, others)

    reshapes_weights = True

    def weights_of(self, table: Table) -> list[str]:
        owner = self._owners.get(table.owner)
        return list(owner.datasets) if owner is not None else [table.weight]

    def layer_config(self, table: Table, config: dict | None = None) -> dict | None:
        config = self._config if config is None else config
        if config is None:
            return None
        groups = groups_from_config(config)
        known = groups.get(table.owner) or groups.get(
            table.owner.replace(TF_KERAS_LAYERS_CONTAINER, LAYERS_CONTAINER)
        )
        return known.config if known is not None else None

    def tokenizer_files(self) -> TokenizerFiles | None:
        """Where this model's tokenizer vocabulary may be: a `.keras` archive's (or an
        unzipped model folder's) assets, or, for a `.weights.h5` or a shard index inside
        a keras-hub preset folder, that preset's files. Files are read only when looked up."""
        if self._archive is not None:
            archive = self._archive
            names = [n for n in archive.namelist() if n.startswith(f"{ASSETS_DIRNAME}/")]
            if CONFIG_FILENAME in archive.namelist():
                names.append(CONFIG_FILENAME)
            files = LazyFiles(names, lambda name: read_member(archive, name))
            return TokenizerFiles(files, ARCHIVE, self._config)
        folder = self.path if self.kind in FOLDER_KINDS else None
        config = self._config
        if self.kind in ("weights", "sharded") and is_plain_file(
            self.path.parent / TOKENIZER_CONFIG_FILE
        ):
            folder = self.path.parent
            config_path = folder / CONFIG_FILENAME
            if is_plain_file(config_path):
                config = self._parse_json_file(config_path)
        if folder is None:
            return None
        return TokenizerFiles(
            folder_tokenizer_files(folder),
            PRESET if is_plain_file(folder / TOKENIZER_CONFIG_FILE) else ARCHIVE,
            config,
        )

    def _parse_json_file(self, path: Path) -> dict | None:
        document = parse_json(read_small(path), str(path))
        return document if isinstance(document, dict) else None

    def output_biases(self, table: Table) -> list[str]:
        """The output biases over `table`'s rows: the 1-D weight of each task head that
        keras-hub gives one (`MaskedLMHead`), when its length is the table's rows."""
        found = []
        for owner in self._owners.values():
            if self._class_name(owner.group) not in OUTPUT_BIAS_CLASSES:
                continue
            for path in owner.datasets:
                if self.weight_info(path)[0] == (table.rows,):
                    found.append(path)
        return found

    def close(self) -> None:
        for source in self._sources.values():
            source.close()
        self._sources = {}
        if self._archive is not None:
            if self._archive.fp is not None:
                self._archive.fp.close()
            self._archive.close()
            self._archive = None
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def shard_names(weight_map: dict) -> list[str]:
    """The shard files a weight map names, in first-seen order; each must be a bare name."""
    names: list[str] = []
    for value in weight_map.values():
        for name in value if isinstance(value, list) else [value]:
            if (
                not isinstance(name, str)
                or not re.fullmatch(r"[^/\\\x00]+", name)
                or name in (".", "..")
            ):
                raise UnsafeFile(f"shard index names an unsafe file: {name!r}")
            if name not in names:
                names.append(name)
    return names


def _indent_of(text: bytes) -> int | None:
    """The indent a JSON text was written with, or None for a single line."""
    match = re.match(rb"\{\r?\n( +)", text)
    return len(match.group(1)) if match else None


def _is_archive(probe: Probe) -> bool:
    return probe.head.startswith((ZIP_SIGNATURE, ZIP_EMPTY_SIGNATURE))


def _is_folder(probe: Probe) -> bool:
    return probe.is_dir and (
        (probe.path / WEIGHTS_FILENAME).exists() or probe.has_file(CONFIG_FILENAME)
    )


def _is_weights(probe: Probe) -> bool:
    """Any HDF5 file that is not a legacy one, which is tried first."""
    return probe.is_hdf5


def _is_sharded(probe: Probe) -> bool:
    return probe.head.lstrip()[:1] == b"{"


def _opener(kind: str):
    return lambda path: Keras3File(path, kind)


KINDS = [
    ArtifactKind("keras archive", 10, _is_archive, _opener("archive"), ".keras"),
    ArtifactKind("keras folder", 30, _is_folder, _opener("folder")),
    ArtifactKind("keras weights", 41, _is_weights, _opener("weights"), ".weights.h5"),
    ArtifactKind("keras sharded weights", 50, _is_sharded, _opener("sharded"), ".weights.json"),
]

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embcli.errors import MalformedFile, UnsafeFile, UnsupportedFormat
from embcli.formats.base import (
    EMBEDDING_SUFFIX,
    H5Source,
    ModelFile,
    Table,
    numpy_dtype,
    slots_by_shape,
    snake_to_class,
    vars_index,
)
from embcli.formats.keras3_write import Keras3Writing
from embcli.formats.naming import (
    LAYERS_CONTAINER,
    TF_KERAS_LAYERS_CONTAINER,
    ConfigLayer,
    groups_from_config,
)
from embcli.formats.registry import ArtifactKind, Probe
from embcli.guarded import (
    ZIP_EMPTY_SIGNATURE,
    ZIP_ERRORS,
    ZIP_SIGNATURE,
    ByteRange,
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

# keras-hub layers that hold their tables as attributes, by (parent class, attribute).
KNOWN_SUBLAYER_CLASSES = {
    ("TokenAndPositionEmbedding", "token_embedding"): "ReversibleEmbedding",
    ("TokenAndPositionEmbedding", "position_embedding"): "PositionEmbedding",
}
_AUTO_EMBEDDING_NAME = re.compile(r"^([a-z0-9_]*embedding)(_\d+)?$")
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
        self.format_name = {
            "archive": "keras archive",
            "folder": "keras folder",
            "weights": "keras weights",
            "sharded": "keras sharded weights",
        }[kind]
        self._fd: int | None = None
        self._archive: zipfile.ZipFile | None = None
        self._member: zipfile.ZipInfo | None = None
        self._member_offset: int | None = None
        self._spill = None
        self._config: dict | None = None
        self._config_indent: int | None = None
        self._shard_map: dict | None = None
        self._sources: dict[str, H5Source] = {}
        self._location: dict[str, str] = {}
        try:
            {
                "archive": self._open_archive,
                "folder": self._open_folder,
                "weights": self._open_weights,
                "sharded": self._open_sharded,
            }[kind]()
            self._owners = self._find_owners()
            self._names = groups_from_config(self._config) if self._config else {}
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
            with self._archive.open(info) as member:
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
            self._config = self._parse_config(_read_small(config_path))
        weights = self.path / WEIGHTS_FILENAME
        if weights.is_symlink() or not weights.is_file():
            raise MalformedFile(f"{self.path}: the folder has no {WEIGHTS_FILENAME}")
        self._sources[""] = H5Source(weights)

    def _open_weights(self) -> None:
        self._sources[""] = H5Source(self.path)

    def _open_sharded(self) -> None:
        index = parse_json(_read_small(self.path), str(self.path))
        weight_map = index.get(SHARD_MAP_KEY) if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise MalformedFile(f"{self.path}: no {SHARD_MAP_KEY} in the shard index")
        self._shard_map = index
        for shard in shard_names(weight_map):
            shard_path = self.path.parent / shard
            if shard_path.is_symlink():
                raise UnsafeFile(f"{self.path}: shard {shard} is a symbolic link")
            if not shard_path.is_file():
                raise MalformedFile(f"{self.path}: shard {shard} is missing")
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
            for path in source.index.datasets:
                self._location.setdefault(path, key)
            for group in source.index.groups:
                parts = group.split("/")
                if parts[-1] != VARS_GROUP:
                    continue
                owner_path = "/".join(parts[:-1])
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
        return self._sources[key], path

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
        if self.kind == "folder":
            path = self.path / ASSETS_DIRNAME / name
            if path.is_file() and not path.is_symlink():
                return _read_small(path)
        return None

    def tables(self, all_weights: bool = False) -> list[Table]:
        found = []
        for owner in sorted(self._owners.values(), key=lambda o: o.group):
            if not owner.group or owner.group.split("/")[0] == OPTIMIZER_GROUP:
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
        known = self._config_layer(group)
        if known is not None:
            return known.class_name
        parts = group.split("/")
        if len(parts) >= 2 and self._is_container("/".join(parts[:-1])):
            return snake_to_class(parts[-1])
        if len(parts) >= 2:
            parent = "/".join(parts[:-1])
            parent_class = self._class_name(parent) if parent else None
            if parent_class and (parent_class, parts[-1]) in KNOWN_SUBLAYER_CLASSES:
                return KNOWN_SUBLAYER_CLASSES[(parent_class, parts[-1])]
        saved = self._owners.get(group)
        if saved and saved.saved_name:
            auto = _AUTO_EMBEDDING_NAME.match(saved.saved_name)
            if auto:
                return snake_to_class(auto.group(1))
        return None

    def _is_container(self, group: str) -> bool:
        """Whether a group holds a list of objects, whose names Keras derives from their
        classes: `layers`, or a list attribute of a custom layer (a group with no vars)."""
        last = group.rsplit("/", 1)[-1]
        return last in _CONTAINER_PARTS or (bool(group) and group not in self._owners)

    def _looks_like_embedding(self, owner: _Owner, class_name: str | None, infos) -> bool:
        """Whether a layer is a table. Without its class (a sublayer kept as an attribute
        of a custom layer), a layer whose only weight is one matrix, or an int8 matrix
        with its per-row scale, is taken for one, as is an attribute named *embedding."""
        if class_name is not None:
            return class_name.endswith(EMBEDDING_SUFFIX)
        attribute = owner.group.rsplit("/", 1)[-1]
        if re.search(r"(^|_)(embedding|embeddings)$", attribute):
            return True
        shapes = [info.shape for info in infos]
        if len(shapes) == 1 and len(shapes[0]) == 2:
            return True
        return (
            len(shapes) == 2
            and len(shapes[0]) == 2
            and infos[0].dtype == "int8"
            and shapes[1] == (shapes[0][0],)
        )

    def _owner_tables(self, owner: _Owner, all_weights: bool) -> list[Table]:
        infos = [self._source(path)[0].info(path) for path in owner.datasets]
        class_name = self._class_name(owner.group)
        if class_name == KERAS_EMBEDDING_CLASS and infos and len(infos[0].shape) != 2:
            raise MalformedFile(
                f"{infos[0].path}: an Embedding table has 2 dimensions, not {len(infos[0].shape)}"
            )
        matrices = [info for info in infos if len(info.shape) == 2]
        if not matrices:
            return []
        is_embedding = self._looks_like_embedding(owner, class_name, infos)
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
            if path.startswith(f"{OPTIMIZER_GROUP}/") and self.weight_info(path)[0] == table.shape
        ]
        if not slots:
            return []
        others = [
            path
            for path in self._location
            if not path.startswith(f"{OPTIMIZER_GROUP}/")
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

    def close(self) -> None:
        for source in self._sources.values():
            source.close()
        self._sources = {}
        if self._archive is not None:
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


def _read_small(path: Path, limit: int = 256 * 1024 * 1024) -> bytes:
    if path.stat().st_size > limit:
        raise UnsafeFile(f"{path} is larger than {limit} bytes")
    return path.read_bytes()


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

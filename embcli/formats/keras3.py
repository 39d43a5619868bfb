"""Keras 3 weight files: `.keras` archives, unzipped model folders, `.weights.h5`, and
sharded `.weights.json` with their `_NNNNN.weights.h5` shards. `.keras` files written by
tf_keras share this layout.

Weights sit in `model.weights.h5` as datasets `vars/0`, `vars/1`, ... of one group per
saved object. A stored (uncompressed) archive member is read in place through a window
onto the archive, and edited by patching its bytes and its CRC-32.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embcli.errors import MalformedFile, UnsafeFile, UnsupportedFormat
from embcli.formats.base import (
    H5Source,
    ModelFile,
    Table,
    numpy_dtype,
    slots_by_shape,
    vars_index,
)
from embcli.formats.keras3_tables import OPTIMIZER_GROUP, Keras3Tables, _Owner
from embcli.formats.keras3_write import Keras3Writing
from embcli.formats.naming import (
    LAYERS_CONTAINER,
    TF_KERAS_LAYERS_CONTAINER,
    ConfigLayer,
    groups_from_config,
)
from embcli.formats.registry import ArtifactKind, Probe
from embcli.formats.side_files import TOKENIZER_CONFIG_FILE, LazyFiles, folder_tokenizer_files
from embcli.guarded import (
    ZIP_EMPTY_SIGNATURE,
    ZIP_ERRORS,
    ZIP_SIGNATURE,
    ByteRange,
    DatasetInfo,
    FileWindow,
    check_archive,
    check_directory_size,
    dataset_bytes,
    file_identity,
    member_data_offset,
    parse_json,
    read_attr_text,
    read_member,
)
from embcli.locations import Location, folder_beside, json_limit, location_of
from embcli.remote import RemoteObject, remote_object_of

if TYPE_CHECKING:
    from embcli.tokenizer_assets import TokenizerFiles

CONFIG_FILENAME = "config.json"
METADATA_FILENAME = "metadata.json"
WEIGHTS_FILENAME = "model.weights.h5"
NPZ_WEIGHTS_FILENAME = "model.weights.npz"
ASSETS_DIRNAME = "assets"
VARS_GROUP = "vars"
NAME_ATTRIBUTE = "name"
SHARD_MAP_KEY = "weight_map"
MAX_UNZIPPED_WEIGHTS = 1 << 40
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


class Keras3File(Keras3Tables, Keras3Writing, ModelFile):
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
        self._folder_beside: tuple[Location, str] | None = None
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
        remote = remote_object_of(self.path)
        reader: int | RemoteObject
        if remote is None:
            self._fd = reader = os.open(self.path, os.O_RDONLY)
            size = os.fstat(self._fd).st_size
        else:
            reader, size = remote, remote.size
        check_directory_size(reader, size)
        try:
            archive_file = open(self.path, "rb") if remote is None else remote.window()  # noqa: SIM115
            self._archive = zipfile.ZipFile(archive_file)
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
            offset = member_data_offset(reader, info)
            if offset + info.file_size > size:
                raise MalformedFile(f"{self.path}: {WEIGHTS_FILENAME} is truncated")
            self._member_offset = offset
            window = (
                FileWindow(reader, offset, info.file_size)
                if isinstance(reader, int)
                else reader.window(offset, info.file_size)
            )
            self._sources[""] = H5Source(self.path, window, info.file_size, base_offset=offset)
        else:
            self._spill = self._unzip_to_temporary(info)
            self._sources[""] = H5Source(self.path, self._spill, info.file_size)

    def _unzip_to_temporary(self, info: zipfile.ZipInfo):
        if info.file_size > MAX_UNZIPPED_WEIGHTS:
            raise UnsafeFile(f"{self.path}: {info.filename} declares {info.file_size} bytes")
        import tempfile

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
        folder = location_of(self.path)
        folder.check()
        if folder.is_file(CONFIG_FILENAME):
            self._config = self._parse_config(folder.read(CONFIG_FILENAME, json_limit()))
        if not folder.is_file(WEIGHTS_FILENAME):
            raise MalformedFile(f"{self.path}: the folder has no {WEIGHTS_FILENAME}")
        self._sources[""] = folder.h5_source(WEIGHTS_FILENAME)

    def _open_weights(self) -> None:
        self._sources[""] = H5Source(self.path)

    def _open_sharded(self) -> None:
        self._open_shards(*self._beside())

    def _beside(self) -> tuple[Location, str]:
        """The folder this file sits in (kept, so that a remote one is asked once)."""
        if self._folder_beside is None:
            self._folder_beside = folder_beside(self.path)
        return self._folder_beside

    def _open_shards(self, folder: Location, index_name: str) -> None:
        """The shard index `index_name` in `folder`, and the shards it names beside it."""
        shown = folder.shown(index_name)
        index = parse_json(folder.read(index_name, json_limit()), shown)
        weight_map = index.get(SHARD_MAP_KEY) if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise MalformedFile(f"{shown}: no {SHARD_MAP_KEY} in the shard index")
        self._shard_map = index
        for shard in shard_names(weight_map):
            if folder.is_link(shard):
                raise UnsafeFile(f"{shown}: shard {shard} is a symbolic link")
            if not folder.is_file(shard):
                raise MalformedFile(f"{shown}: shard {shard} is missing")
            self._sources[shard] = folder.h5_source(shard)

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
            folder = location_of(self.path)
            if folder.is_file(member):
                return folder.read(member)
        return None

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
        from embcli.tokenizer_assets import ARCHIVE, PRESET, TokenizerFiles

        if self._archive is not None:
            archive = self._archive
            names = [n for n in archive.namelist() if n.startswith(f"{ASSETS_DIRNAME}/")]
            if CONFIG_FILENAME in archive.namelist():
                names.append(CONFIG_FILENAME)
            files = LazyFiles(names, lambda name: read_member(archive, name))
            return TokenizerFiles(files, ARCHIVE, self._config)
        folder = location_of(self.path) if self.kind in FOLDER_KINDS else None
        config = self._config
        if self.kind in ("weights", "sharded"):
            beside, _ = self._beside()
            if beside.is_file(TOKENIZER_CONFIG_FILE):
                folder = beside
                if beside.is_file(CONFIG_FILENAME):
                    config = _json_file(beside, CONFIG_FILENAME)
        if folder is None:
            return None
        return TokenizerFiles(
            folder_tokenizer_files(folder),
            PRESET if folder.is_file(TOKENIZER_CONFIG_FILE) else ARCHIVE,
            config,
        )

    def known_files(self) -> list[str]:
        """The files of this model's folder that embcli knows by name, whether or not
        each is there: what a copy of a folder that cannot be listed is made from."""
        names = [CONFIG_FILENAME, METADATA_FILENAME]
        names += [relative.as_posix() for relative in self._folder_files().values()]
        tokenizer = self.tokenizer_files()
        if tokenizer is not None:
            names += list(tokenizer.files)
        return list(dict.fromkeys(names))

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


def _json_file(folder: Location, name: str) -> dict | None:
    document = parse_json(folder.read(name, json_limit()), folder.shown(name))
    return document if isinstance(document, dict) else None


def _indent_of(text: bytes) -> int | None:
    """The indent a JSON text was written with, or None for a single line."""
    match = re.match(rb"\{\r?\n( +)", text)
    return len(match.group(1)) if match else None


def _is_archive(probe: Probe) -> bool:
    return probe.head.startswith((ZIP_SIGNATURE, ZIP_EMPTY_SIGNATURE))


def _is_folder(probe: Probe) -> bool:
    return probe.is_dir and (
        probe.folder.exists(WEIGHTS_FILENAME) or probe.has_file(CONFIG_FILENAME)
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

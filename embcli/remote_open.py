"""Telling the kind of a model at a URL, and opening it over byte ranges.

`RemoteProbe` answers the registry's questions from the object's first bytes and, for
HDF5, its root group, read through the same guarded readers as a local file. A kind
opens remotely when `REMOTE_OPENERS` names it: `.keras` archives, Keras 3 `.weights.h5`,
sharded `.weights.json` (with the shards beside it) and legacy `.h5` files. An edit of a
model at a URL plans its copy from a local download of the object (and its shards), made
when the edit asks for it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

from embcli.errors import MalformedFile, UnsafeFile, UnsupportedEdit, UnsupportedFormat
from embcli.formats.base import Edit, H5Source, ModelFile, WritePlan
from embcli.formats.keras3 import SHARD_MAP_KEY, Keras3File, shard_names
from embcli.formats.legacy_h5 import LegacyH5File
from embcli.formats.registry import HDF5_USERBLOCK_OFFSETS, ArtifactKind, Probe
from embcli.guarded import H5_ERRORS, HDF5_SIGNATURE, MAX_JSON_BYTES, parse_json
from embcli.guarded.files import SNIFF_BYTES
from embcli.remote import RemoteObject, RemotePath, TransferFailed, shown_url

ARCHIVE_KIND = "keras archive"
WEIGHTS_KIND = "keras weights"
SHARDED_KIND = "keras sharded weights"
LEGACY_KIND = "legacy h5"


class RemoteProbe(Probe):
    """A `Probe` of an object at a URL: never a folder, read by ranges."""

    def __init__(self, remote: RemoteObject) -> None:
        super().__init__(Path(PurePosixPath(remote.key).name or "object"))
        self.remote = remote

    @cached_property
    def exists(self) -> bool:
        return self.remote.exists

    @cached_property
    def is_dir(self) -> bool:
        return False

    @cached_property
    def head(self) -> bytes:
        return self.remote.pread(SNIFF_BYTES, 0) if self.exists else b""

    @cached_property
    def is_hdf5(self) -> bool:
        if not self.exists:
            return False
        return any(
            self.remote.pread(len(HDF5_SIGNATURE), offset) == HDF5_SIGNATURE
            for offset in (0, *HDF5_USERBLOCK_OFFSETS)
        )

    @cached_property
    def h5_root_names(self) -> set[str]:
        import h5py

        try:
            with h5py.File(self.remote.window(), "r", locking=False) as handle:
                return set(handle.attrs.keys()) | set(handle.keys())
        except H5_ERRORS as exc:
            raise MalformedFile(f"{self.remote.shown}: not a readable HDF5 file ({exc})") from None

    def has_file(self, name: str) -> bool:
        return False


class _EditsFromDownload:
    """For a model at a URL: an edit plans its copy from a local download of the object
    (and its shards), made the first time an edit asks, removed when the model closes."""

    path: Any
    shard_objects: dict[str, RemoteObject]
    _download: _Download | None = None

    def plan_write(self, output: Path, patches: Any, in_place: bool) -> WritePlan:
        return self._local_copy(in_place).plan_write(output, patches, in_place)

    def plan_edit(self, output: Path, edit: Edit, in_place: bool) -> WritePlan:
        return self._local_copy(in_place).plan_edit(output, edit, in_place)

    def close(self) -> None:
        try:
            super().close()  # type: ignore[misc]
        finally:
            if self._download is not None:
                self._download.close()
                self._download = None

    def _local_copy(self, in_place: bool) -> ModelFile:
        if in_place:
            raise UnsupportedEdit(refuse_in_place(self.path.remote.url))
        if self._download is None:
            files = [self.path.remote, *getattr(self, "shard_objects", {}).values()]
            self._download = _Download(files)
        return self._download.open(lambda copy: _open_local(self, copy))


class _RemoteArchive(_EditsFromDownload, Keras3File):
    """A `.keras` archive at a URL (`Keras3File` reads an archive from a remote object)."""


class _RemoteWeights(_EditsFromDownload, Keras3File):
    """A Keras 3 `.weights.h5` at a URL."""

    def _open_weights(self) -> None:
        remote = self.path.remote
        self._sources[""] = H5Source(self.path, remote.window(), remote.size)


class _RemoteSharded(_EditsFromDownload, Keras3File):
    """A sharded Keras 3 `.weights.json` at a URL, its shards beside it. Each shard's
    metadata is read when it opens; its data only when a table in it is read."""

    def _open_sharded(self) -> None:
        remote = self.path.remote
        if remote.size > MAX_JSON_BYTES:
            raise UnsafeFile(f"{self.path} is larger than {MAX_JSON_BYTES} bytes")
        index = parse_json(remote.pread(remote.size, 0), str(self.path))
        weight_map = index.get(SHARD_MAP_KEY) if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise MalformedFile(f"{self.path}: no {SHARD_MAP_KEY} in the shard index")
        self._shard_map = index
        self.shard_objects = {}
        for shard in shard_names(weight_map):
            shard_remote = RemoteObject(sibling_url(remote.url, shard), remote.limits)
            if not shard_remote.exists:
                raise MalformedFile(f"{self.path}: shard {shard} is missing")
            self.shard_objects[shard] = shard_remote
            self._sources[shard] = H5Source(
                RemotePath(shard_remote),  # type: ignore[arg-type]
                shard_remote.window(),
                shard_remote.size,
            )


class _RemoteLegacy(_EditsFromDownload, LegacyH5File):
    """A legacy Keras `.h5` at a URL."""

    def __init__(self, path: RemotePath) -> None:
        ModelFile.__init__(self, path)  # type: ignore[arg-type]
        remote = path.remote
        self._source = H5Source(path, remote.window(), remote.size)  # type: ignore[arg-type]
        try:
            self._read_layout()
        except BaseException:
            self._source.close()
            raise


def sibling_url(url: str, name: str) -> str:
    """The URL of the file `name` in the same folder as `url`."""
    return url.rsplit("/", 1)[0] + "/" + name


REMOTE_OPENERS: dict[str, Callable[[RemotePath], ModelFile]] = {
    ARCHIVE_KIND: lambda path: _RemoteArchive(path, "archive"),  # type: ignore[arg-type]
    WEIGHTS_KIND: lambda path: _RemoteWeights(path, "weights"),  # type: ignore[arg-type]
    SHARDED_KIND: lambda path: _RemoteSharded(path, "sharded"),  # type: ignore[arg-type]
    LEGACY_KIND: _RemoteLegacy,
}


def open_remote(url: str, kind_of: Callable[[Probe], ArtifactKind]) -> ModelFile:
    """Open the model at `url` read-only, its kind told by `kind_of` from a probe."""
    remote = RemoteObject(url)
    kind = kind_of(RemoteProbe(remote))
    opener = REMOTE_OPENERS.get(kind.name)
    if opener is None:
        raise UnsupportedFormat(f"{remote.shown}: a {kind.name} cannot be read from a URL")
    model = opener(RemotePath(remote))
    model.artifact_kind = kind
    return model


def refuse_in_place(url: str) -> str:
    """Why a model at a URL is not edited in place."""
    shown = shown_url(url)
    return f"{shown}: a model at a URL cannot be edited in place; write the copy to a local path"


class _Download:
    """Local copies of remote files, side by side in a temporary folder."""

    def __init__(self, files: list[RemoteObject]) -> None:
        self.files = files
        self._folder: tempfile.TemporaryDirectory | None = None
        self._model: ModelFile | None = None

    def open(self, opener: Callable[[Path], ModelFile]) -> ModelFile:
        """The first file's local copy, opened by `opener` (once)."""
        if self._model is None:
            self._folder = tempfile.TemporaryDirectory(prefix="embcli-remote-")
            copies = [
                Path(self._folder.name) / (PurePosixPath(remote.key).name or "model")
                for remote in self.files
            ]
            for remote, copy in zip(self.files, copies, strict=True):
                with open(copy, "wb") as handle:
                    remote.download(handle)
            self._model = opener(copies[0])
        return self._model

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None


def _open_local(model: _EditsFromDownload, copy: Path) -> ModelFile:
    if isinstance(model, Keras3File):
        return Keras3File(copy, model.kind)
    if isinstance(model, LegacyH5File):
        return LegacyH5File(copy)
    raise TransferFailed(f"{copy}: no local reader for {type(model).__name__}")

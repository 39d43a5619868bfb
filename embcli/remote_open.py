"""Telling the kind of a model at a URL, and opening it over byte ranges.

`RemoteProbe` answers the registry's questions from the object's first bytes and, for
HDF5, its root group, read through the same guarded readers as a local file. A URL names
a folder (a `RemoteFolder`) when no object is there, or its path ends with `/`, and the
folder holds `config.json`; a folder's files are asked for by name only. A kind opens
remotely when `REMOTE_OPENERS` names it: `.keras` archives, Keras 3 `.weights.h5`,
sharded `.weights.json` (with the shards beside it), legacy `.h5` files, unzipped Keras
model folders and keras-hub presets. An edit of a model at a URL plans its copy from a
local download of the object (and its shards), or of the folder's known files, made when
the edit asks for it.
"""

from __future__ import annotations

import tempfile
import urllib.parse
from collections.abc import Callable
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any, cast

from embcli.errors import MalformedFile, UnsafeFile, UnsupportedEdit, UnsupportedFormat
from embcli.formats.base import Edit, H5Source, ModelFile, WritePlan
from embcli.formats.keras3 import Keras3File
from embcli.formats.legacy_h5 import LegacyH5File
from embcli.formats.preset import PresetFile
from embcli.formats.registry import HDF5_USERBLOCK_OFFSETS, ArtifactKind, Probe
from embcli.guarded import H5_ERRORS, HDF5_SIGNATURE
from embcli.guarded.files import SNIFF_BYTES
from embcli.locations import (
    FOLDER_MARKER,
    SMALL_FILE_LIMIT,
    RemoteFolder,
    RemoteFolderPath,
    names_folder,
)
from embcli.remote import RemoteObject, RemotePath, TransferFailed, shown_url

ARCHIVE_KIND = "keras archive"
WEIGHTS_KIND = "keras weights"
SHARDED_KIND = "keras sharded weights"
LEGACY_KIND = "legacy h5"
FOLDER_KIND = "keras folder"
PRESET_KIND = "keras-hub preset"
H5_SUFFIX = ".h5"


class RemoteProbe(Probe):
    """A `Probe` of a URL: an object read by ranges, or a folder (a prefix that holds
    `config.json`) whose files are asked for by name."""

    def __init__(self, remote: RemoteObject) -> None:
        super().__init__(Path(PurePosixPath(remote.key.rstrip("/")).name or "object"))
        self.remote = remote

    @cached_property
    def exists(self) -> bool:
        return not names_folder(self.remote.url) and self.remote.exists

    @cached_property
    def folder(self) -> RemoteFolder:
        return RemoteFolder(self.remote.url, self.remote.limits)

    @cached_property
    def is_dir(self) -> bool:
        return not self.exists and self.folder.is_file(FOLDER_MARKER)

    def has_sibling(self, suffix: str) -> bool:
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


class _EditsFromDownload:
    """For a model at a URL: an edit plans its copy from a local download of the object
    (and its shards), or of a folder's known files, made the first time an edit asks,
    removed when the model closes."""

    path: Any
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

    def _downloads(self) -> tuple[dict[str, RemoteObject], str]:
        """The files to download, by their names in the download's folder, and the name
        of the one to open there ("" for the folder itself)."""
        name = _file_name(self.path.remote.url)
        return {name: self.path.remote}, name

    def _local_copy(self, in_place: bool) -> ModelFile:
        if in_place:
            raise UnsupportedEdit(refuse_in_place(self.path.remote.url))
        if self._download is None:
            self._download = _Download(*self._downloads())
        return self._download.open(lambda copy: _open_local(self, copy))


class _RemoteArchive(_EditsFromDownload, Keras3File):
    """A `.keras` archive at a URL (`Keras3File` reads an archive from a remote object)."""


class _RemoteWeights(_EditsFromDownload, Keras3File):
    """A Keras 3 `.weights.h5` at a URL."""

    def _open_weights(self) -> None:
        remote = self.path.remote
        self._sources[""] = H5Source(self.path, remote.window(), remote.size)


class _RemoteSharded(_EditsFromDownload, Keras3File):
    """A sharded Keras 3 `.weights.json` at a URL, its shards beside it (read through
    the `RemoteFolder` it sits in). Each shard's metadata is read when it opens; its data
    only when a table in it is read."""

    def _downloads(self) -> tuple[dict[str, RemoteObject], str]:
        beside, index = self._beside()
        folder = cast(RemoteFolder, beside)
        return {name: folder.object(name) for name in (index, *self._sources)}, index


class _RemoteFolders(_EditsFromDownload):
    """A model folder at a URL: for an edit, the files its kind knows by name
    (`known_files`) that are there are downloaded, bounded as when they are read, and,
    where the store can list the folder (not over HTTP), every other file in it too."""

    known_files: Callable[[], list[str]]

    def _downloads(self) -> tuple[dict[str, RemoteObject], str]:
        folder: RemoteFolder = self.path.location
        known = [name for name in self.known_files() if folder.exists(name)]
        known += [name for name in folder.found() if name not in known]
        for name in known:
            if not name.endswith(H5_SUFFIX) and folder.size(name) > SMALL_FILE_LIMIT:
                raise UnsafeFile(f"{folder.shown(name)} is larger than {SMALL_FILE_LIMIT} bytes")
        # Where the store can list the folder, every other file is copied too, unread.
        listed = folder.listed() or []
        names = known + [name for name in listed if name not in known]
        return {name: folder.object(name) for name in names}, ""


class _RemoteFolder(_RemoteFolders, Keras3File):
    """An unzipped Keras 3 model folder at a URL."""


class _RemotePreset(_RemoteFolders, PresetFile):
    """A keras-hub preset folder at a URL."""


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


REMOTE_OPENERS: dict[str, Callable[[RemotePath], ModelFile]] = {
    ARCHIVE_KIND: lambda path: _RemoteArchive(path, "archive"),  # type: ignore[arg-type]
    WEIGHTS_KIND: lambda path: _RemoteWeights(path, "weights"),  # type: ignore[arg-type]
    SHARDED_KIND: lambda path: _RemoteSharded(path, "sharded"),  # type: ignore[arg-type]
    LEGACY_KIND: _RemoteLegacy,
    FOLDER_KIND: lambda path: _RemoteFolder(path, "folder"),  # type: ignore[arg-type]
    PRESET_KIND: _RemotePreset,  # type: ignore[dict-item]
}


def open_remote(url: str, kind_of: Callable[[Probe], ArtifactKind]) -> ModelFile:
    """Open the model at `url` read-only, its kind told by `kind_of` from a probe."""
    remote = RemoteObject(url)
    probe = RemoteProbe(remote)
    kind = kind_of(probe)
    opener = REMOTE_OPENERS.get(kind.name)
    if opener is None:
        raise UnsupportedFormat(f"{remote.shown}: a {kind.name} cannot be read from a URL")
    path = RemoteFolderPath(remote, probe.folder) if probe.is_dir else RemotePath(remote)
    model = opener(path)
    model.artifact_kind = kind
    return model


def refuse_in_place(url: str) -> str:
    """Why a model at a URL is not edited in place."""
    shown = shown_url(url)
    return f"{shown}: a model at a URL cannot be edited in place; write the copy to a local path"


class _Download:
    """Local copies of remote files, side by side (or, for a folder, at their places
    under it) in a temporary folder."""

    def __init__(self, files: dict[str, RemoteObject], main: str) -> None:
        self.files = files
        self.main = main
        self._folder: tempfile.TemporaryDirectory | None = None
        self._model: ModelFile | None = None

    def open(self, opener: Callable[[Path], ModelFile]) -> ModelFile:
        """The local copy of `main` (the folder itself, for ""), opened by `opener` once."""
        if self._model is None:
            self._folder = tempfile.TemporaryDirectory(prefix="embcli-remote-")
            root = Path(self._folder.name) / "model"
            root.mkdir()
            for name, remote in self.files.items():
                copy = root.joinpath(*PurePosixPath(name).parts)
                copy.parent.mkdir(parents=True, exist_ok=True)
                with open(copy, "wb") as handle:
                    remote.download(handle)
            self._model = opener(root / self.main if self.main else root)
        return self._model

    def close(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None


def _file_name(url: str) -> str:
    return PurePosixPath(urllib.parse.urlsplit(url).path).name or "model"


def _open_local(model: _EditsFromDownload, copy: Path) -> ModelFile:
    if isinstance(model, PresetFile):
        return PresetFile(copy)
    if isinstance(model, Keras3File):
        return Keras3File(copy, model.kind)
    if isinstance(model, LegacyH5File):
        return LegacyH5File(copy)
    raise TransferFailed(f"{copy}: no local reader for {type(model).__name__}")

"""Where a model folder's files are: a local folder, or a prefix at a URL.

The folder kinds (an unzipped Keras model, a keras-hub preset), a sharded index's shards
and the readers of side files (tokenizer configs and assets) ask a `Location` for files
by their names relative to the folder, and never look at paths or URLs themselves.

A `LocalFolder` is checked whole before it is read (no symbolic links, only files and
folders) and can list itself. A `RemoteFolder` is a prefix at a URL: it cannot be listed
(HTTP has no listing, and a store's would fetch more than a model needs), so only files
known by name are ever asked for; each is one `RemoteObject`, its weights read by byte
ranges and its small files whole, within a size bound given by the caller.

In both, a member name that could leave the folder (`..`, an absolute name, a backslash)
is refused before anything is read.
"""

from __future__ import annotations

import urllib.parse
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import Any, cast

from embcli.errors import UnsafeFile
from embcli.formats.base import H5Source
from embcli.remote import (
    RemoteLimits,
    RemoteObject,
    RemotePath,
    TransferFailed,
    remote_object_of,
    shown_url,
)

# A prefix at a URL is taken for a model folder when it holds this file: every Keras 3
# model folder and keras-hub preset has one.
FOLDER_MARKER = "config.json"
SMALL_FILE_LIMIT = 256 * 1024 * 1024


def json_limit() -> int:
    """The bound on a JSON file's size (`embcli.guarded.parsing.MAX_JSON_BYTES`, read
    when asked, so that tests can lower it)."""
    from embcli.guarded import parsing

    return parsing.MAX_JSON_BYTES


class Location(ABC):
    """A folder of model files, local or at a URL, read-only."""

    @abstractmethod
    def shown(self, name: str = "") -> str:
        """The folder, or the file `name` in it, as messages name it."""

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether anything is there under `name`."""

    @abstractmethod
    def is_file(self, name: str) -> bool:
        """Whether `name` is a regular file (a symbolic link does not count)."""

    def is_link(self, name: str) -> bool:
        """Whether `name` is a symbolic link (never, at a URL)."""
        return False

    @abstractmethod
    def size(self, name: str) -> int:
        """The size in bytes of the file `name`."""

    @abstractmethod
    def read(self, name: str, limit: int = SMALL_FILE_LIMIT) -> bytes:
        """The bytes of the file `name`, refused without being read when it is larger
        than `limit`."""

    @abstractmethod
    def h5_source(self, name: str) -> H5Source:
        """The HDF5 file `name`, opened and checked read-only."""

    def files_under(self, directory: str) -> list[str] | None:
        """The regular files anywhere under `directory`, by their names relative to the
        folder, or None where the folder cannot be listed."""
        return None

    def check(self) -> None:
        """Refuse a folder that holds what a model folder must not (local folders)."""

    def local_path(self) -> Path | None:
        """The folder on the local disk, if it is there."""
        return None

    def _member(self, name: str) -> str:
        parts = name.split("/")
        if (
            not name
            or "\\" in name
            or "\x00" in name
            or any(part in ("", ".", "..") for part in parts)
        ):
            raise UnsafeFile(f"{self.shown()}: {name!r} names a file outside the folder")
        return name

    def _too_large(self, name: str, limit: int) -> UnsafeFile:
        return UnsafeFile(f"{self.shown(name)} is larger than {limit} bytes")


class LocalFolder(Location):
    """A folder on the local disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _path(self, name: str) -> Path:
        return self.path / self._member(name)

    def shown(self, name: str = "") -> str:
        return str(self._path(name)) if name else str(self.path)

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def is_file(self, name: str) -> bool:
        path = self._path(name)
        return path.is_file() and not path.is_symlink()

    def is_link(self, name: str) -> bool:
        return self._path(name).is_symlink()

    def size(self, name: str) -> int:
        return self._path(name).stat().st_size

    def read(self, name: str, limit: int = SMALL_FILE_LIMIT) -> bytes:
        if self.size(name) > limit:
            raise self._too_large(name, limit)
        return self._path(name).read_bytes()

    def h5_source(self, name: str) -> H5Source:
        return H5Source(self._path(name))

    def files_under(self, directory: str) -> list[str] | None:
        top = self._path(directory)
        if not top.is_dir() or top.is_symlink():
            return []
        names = []
        for item in sorted(top.rglob("*")):
            relative = item.relative_to(self.path)
            linked = any(
                (self.path / Path(*relative.parts[:end])).is_symlink()
                for end in range(1, len(relative.parts))
            )
            if item.is_file() and not item.is_symlink() and not linked:
                names.append(relative.as_posix())
        return names

    def check(self) -> None:
        from embcli.guarded import check_folder

        check_folder(self.path)

    def local_path(self) -> Path | None:
        return self.path


class RemoteFolder(Location):
    """A prefix at a URL (`s3://bucket/prefix`, `https://host/path/`), read by name.

    Each file is one `RemoteObject`, made on first use and kept, so that what telling the
    model's kind fetched (a file's first block) serves its reading too. Whether a file
    exists is asked once.
    """

    def __init__(self, url: str, limits: RemoteLimits | None = None) -> None:
        self.url = url
        self.limits = limits
        self._objects: dict[str, RemoteObject] = {}
        self._found: dict[str, bool] = {}

    def member_url(self, name: str) -> str:
        """The URL of the file `name` in the folder (the folder's query kept)."""
        parts = urllib.parse.urlsplit(self.url)
        path = parts.path.rstrip("/") + "/" + self._member(name)
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))

    def object(self, name: str) -> RemoteObject:
        """The remote object of the file `name`."""
        found = self._objects.get(name)
        if found is None:
            found = self._objects[name] = RemoteObject(self.member_url(name), self.limits)
        return found

    def adopt(self, name: str, remote: RemoteObject) -> None:
        """Use an object already open (and perhaps read) as the file `name`."""
        self._objects[self._member(name)] = remote

    def shown(self, name: str = "") -> str:
        return shown_url(self.member_url(name) if name else self.url)

    def exists(self, name: str) -> bool:
        if name not in self._found:
            self._found[name] = self.object(name).exists
        return self._found[name]

    def is_file(self, name: str) -> bool:
        return self.exists(name)

    def size(self, name: str) -> int:
        return self.object(name).size

    def read(self, name: str, limit: int = SMALL_FILE_LIMIT) -> bytes:
        remote = self.object(name)
        if remote.size > limit:
            raise self._too_large(name, limit)
        return remote.pread(remote.size, 0)

    def h5_source(self, name: str) -> H5Source:
        remote = self.object(name)
        return H5Source(RemotePath(remote), remote.window(), remote.size)  # type: ignore[arg-type]

    def listed(self) -> list[str] | None:
        """Every file under the folder where its store can list it (S3, GCS, the Hub), by
        name; None over HTTP. Names that would leave the folder are refused."""
        from embcli.remote import list_store_prefix

        names = list_store_prefix(self.url)
        return None if names is None else [self._member(name) for name in names]

    def found(self) -> dict[str, RemoteObject]:
        """The files known to exist so far, by name."""
        return {name: self._objects[name] for name, there in self._found.items() if there}


class RemoteFolderPath(RemotePath):
    """A folder at a URL as a format module's `path`: prints as the URL, and carries the
    `RemoteFolder` its files are read from."""

    location: RemoteFolder

    def __new__(cls, remote: RemoteObject, location: RemoteFolder) -> RemoteFolderPath:
        made = cast("RemoteFolderPath", super().__new__(cls, remote))
        made.location = location
        return made

    @property
    def name(self) -> str:
        return PurePosixPath(urllib.parse.urlsplit(self.url).path.rstrip("/")).name


def names_folder(url: str) -> bool:
    """Whether a URL can only name a folder: its path ends with `/`."""
    return urllib.parse.urlsplit(url).path.endswith("/")


def location_of(path: Any) -> Location:
    """The folder a format module's `path` names: the remote folder a URL's path
    carries, or the local folder."""
    found = getattr(path, "location", None)
    return found if isinstance(found, Location) else LocalFolder(Path(path))


def folder_beside(path: Any) -> tuple[Location, str]:
    """The folder that holds the file a format module's `path` names, and the file's name
    in it (for a file at a URL: the prefix it sits in, with the file's open object
    adopted)."""
    remote = remote_object_of(path)
    if remote is None:
        return LocalFolder(Path(path).parent), Path(path).name
    parts = urllib.parse.urlsplit(remote.url)
    parent, _, name = parts.path.rpartition("/")
    if not name:
        raise TransferFailed(f"{remote.shown}: names a folder, not a file")
    folder = RemoteFolder(
        urllib.parse.urlunsplit((parts.scheme, parts.netloc, parent + "/", parts.query, "")),
        remote.limits,
    )
    folder.adopt(name, remote)
    return folder, name

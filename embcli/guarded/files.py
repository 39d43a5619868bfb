"""Opening files: regular files only, never a FIFO, device or socket, bounded in size;
model folders of plain files and folders only; archive members read in place."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from embcli.errors import EmbcliError, UnsafeFile, UnsupportedFormat

MAX_FOLDER_ENTRIES = 100_000
SNIFF_BYTES = 8

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def refuse_special_file(path: str | os.PathLike) -> None:
    """Refuse a FIFO, device or socket before anything opens it (and could block on it).
    Folders, regular files and paths that do not exist pass."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise UnsafeFile(f"{path}: {_kind(mode)}, not a regular file")


def open_regular(
    path: str | os.PathLike,
    *,
    max_bytes: int | None = None,
    follow_symlinks: bool = True,
    error: type[EmbcliError] = UnsafeFile,
) -> BinaryIO:
    """Open a regular file for reading in binary, refusing anything else before it can block.

    A FIFO, device or socket is refused from `stat` before it is opened; the file is then
    opened without blocking and checked again through its descriptor, so that a path
    swapped for a FIFO in between is refused too. Every file embcli reads goes through
    here.

    Args:
        path: the file.
        max_bytes: refuse a larger file.
        follow_symlinks: with False, a symbolic link is refused (as inside a model folder).
        error: the EmbcliError class to raise, so that each caller reports in its terms.

    Returns:
        A binary file object, positioned at the start; the caller closes it.
    """
    try:
        before = os.stat(path, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(before.st_mode):
        raise error(f"{path}: {_kind(before.st_mode)}, not a regular file")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"{path}: cannot be opened ({exc.strerror or exc})") from None
    try:
        after = os.fstat(fd)
        if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (
            before.st_dev,
            before.st_ino,
        ):
            raise error(f"{path}: changed while it was being opened")
        if max_bytes is not None and after.st_size > max_bytes:
            raise error(f"{path} is larger than {max_bytes} bytes")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, limit: int, **options: Any) -> bytes:
    """A whole regular file of at most `limit` bytes (see `open_regular`)."""
    with open_regular(path, max_bytes=limit, **options) as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(min(limit, size) + 1)
        if len(data) == size + 1 and size < limit:
            data += handle.read(limit - len(data) + 1)
    if len(data) > limit:
        raise options.get("error", UnsafeFile)(f"{path} is larger than {limit} bytes")
    return data


def sniff(path: Path) -> bytes:
    """The first 8 bytes of a file (empty for a folder). Refuses FIFOs, devices and sockets."""
    if path.is_dir():
        return b""
    with open_regular(path, error=UnsupportedFormat) as handle:
        return handle.read(SNIFF_BYTES)


class Window(io.RawIOBase):
    """A read-only file object over bytes [offset, offset + size) of something that
    reads at positions; subclasses say how (`_read_at`). h5py and zipfile read archive
    members through it in place, with no copy."""

    read_only_message = "embcli opens model files read-only"

    def __init__(self, offset: int, size: int) -> None:
        super().__init__()
        self._offset = offset
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + pos < 0:
            raise OSError("seek before the start of the window")
        self._pos = base + pos
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._size - self._pos))
        done = self._read_at(view[:count], self._offset + self._pos)
        self._pos += done
        return done

    def _read_at(self, view: memoryview, position: int) -> int:
        """Fill `view` from `position` (fewer bytes only at the end); bytes read."""
        raise NotImplementedError

    def read_span(self, position: int, length: int) -> bytes:
        """Exactly `length` bytes from `position` of the window (fewer only at its end),
        read as one span, whatever the file position."""
        count = max(0, min(length, self._size - position))
        buffer = bytearray(count)
        done = self._read_at(memoryview(buffer), self._offset + position)
        return bytes(buffer[:done])

    def write(self, data: Any) -> int:
        raise io.UnsupportedOperation(self.read_only_message)


class FileWindow(Window):
    """A window onto an open file descriptor, read with `preadv`."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        super().__init__(offset, size)
        self._fd = fd

    def _read_at(self, view: memoryview, position: int) -> int:
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], position + done)
            if got <= 0:
                break
            done += got
        return done


def check_folder(folder: Path) -> None:
    """Refuse a model folder holding symbolic links or anything but files and folders."""
    count = 0
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            count += 1
            if count > MAX_FOLDER_ENTRIES:
                raise UnsafeFile(f"{folder} holds more than {MAX_FOLDER_ENTRIES} entries")
            path = os.path.join(parent, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise UnsafeFile(f"{path}: symbolic links in a model folder are refused")
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UnsafeFile(f"{path}: not a regular file")

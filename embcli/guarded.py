"""The only way embcli opens model files: read-only, bounded, and refusing anything that
points outside the file.

Model files are untrusted. Nothing here imports, instantiates or calls what a file names;
JSON is parsed as data; HDF5 links other than hard links, external storage, virtual
datasets, filters and shape bombs are refused before any data is read; zip members are
checked for traversal, duplicates, symlinks and bombs.
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np

from embcli.errors import MalformedFile, UnsafeFile, UnsupportedFormat

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
ZIP_EMPTY_SIGNATURE = b"PK\x05\x06"

MAX_H5_OBJECTS = 1_000_000
MAX_H5_DEPTH = 64
MAX_ZIP_MEMBERS = 100_000
MAX_FOLDER_ENTRIES = 100_000
MAX_JSON_BYTES = 256 * 1024 * 1024
MAX_DEFLATE_RATIO = 1100
MAX_INFLATED_BYTES = 4 * 1024**3
SHAPE_BOMB_FLOOR = 1024 * 1024
MAX_DIMS = 8

MAX_CENTRAL_DIRECTORY = 16 * 1024 * 1024

ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,
)
H5_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError, OverflowError)

READABLE_ATTRIBUTE_CLASSES = (h5py.h5t.STRING, h5py.h5t.INTEGER, h5py.h5t.FLOAT)

HEAP_SCAN_BLOCK = 16 * 1024 * 1024
MAX_GLOBAL_HEAP = 1024 * 1024 * 1024

_GLOBAL_HEAP = b"GCOL\x01"
_LOCAL_HEADER_SIZE = 30
_END_RECORD = b"PK\x05\x06"
_END_RECORD_SIZE = 22
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_LOCATOR_SIZE = 20
_ZIP64_END_RECORD = b"PK\x06\x06"


def sniff(path: Path) -> bytes:
    """The first 8 bytes of a file (empty for a folder)."""
    if path.is_dir():
        return b""
    with open(path, "rb") as fh:
        return fh.read(8)


class FileWindow(io.RawIOBase):
    """A read-only file object over bytes [offset, offset + size) of an open file.

    h5py reads an uncompressed archive member through it in place, with no copy.
    """

    def __init__(self, fd: int, offset: int, size: int) -> None:
        super().__init__()
        self._fd = fd
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
        if whence == io.SEEK_SET:
            self._pos = pos
        elif whence == io.SEEK_CUR:
            self._pos += pos
        else:
            self._pos = self._size + pos
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._size - self._pos))
        done = 0
        while done < count:
            got = os.preadv(self._fd, [view[done:count]], self._offset + self._pos + done)
            if got <= 0:
                break
            done += got
        self._pos += done
        return done

    def write(self, data: Any) -> int:
        raise io.UnsupportedOperation("embcli opens model files read-only")


@dataclass(frozen=True)
class DatasetInfo:
    """What embcli needs to know of one HDF5 dataset."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    is_bfloat16: bool
    offset: int | None
    contiguous: bool


@dataclass
class H5Index:
    """Every group and dataset of a checked HDF5 file, by path without a leading slash."""

    groups: list[str] = field(default_factory=list)
    datasets: dict[str, DatasetInfo] = field(default_factory=dict)


def stored_dtype_name(dtype: np.dtype, is_bfloat16: bool) -> str:
    if is_bfloat16:
        return "bfloat16"
    return np.dtype(dtype).name


def _check_dataset(path: str, ds: h5py.Dataset, file_size: int) -> DatasetInfo:
    if ds.is_virtual:
        raise UnsafeFile(f"{path}: virtual datasets are refused (they read other files)")
    plist = ds.id.get_create_plist()
    if plist.get_external_count():
        raise UnsafeFile(f"{path}: external storage is refused (it reads other files)")
    if plist.get_nfilters():
        raise UnsupportedFormat(f"{path}: compressed or filtered HDF5 datasets are not supported")
    shape = tuple(int(n) for n in ds.shape) if ds.shape is not None else ()
    if len(shape) > MAX_DIMS:
        raise MalformedFile(f"{path}: {len(shape)} dimensions")
    dtype = ds.dtype
    is_bfloat16 = False
    declared = int(np.prod(shape, dtype=np.float64) * dtype.itemsize) if shape else dtype.itemsize
    stored = ds.id.get_storage_size()
    if declared > SHAPE_BOMB_FLOOR and declared > 2 * stored:
        raise UnsafeFile(
            f"{path}: declares {declared} bytes but stores {stored}; refusing a shape bomb"
        )
    layout = plist.get_layout()
    offset = ds.id.get_offset() if layout == h5py.h5d.CONTIGUOUS else None
    if offset is not None and offset + stored > file_size:
        raise MalformedFile(f"{path}: data lies beyond the end of the file (truncated?)")
    return DatasetInfo(
        path=path,
        shape=shape,
        dtype=stored_dtype_name(dtype, is_bfloat16),
        is_bfloat16=is_bfloat16,
        offset=offset,
        contiguous=layout == h5py.h5d.CONTIGUOUS,
    )


def _is_bfloat16(ds: h5py.Dataset) -> bool:
    """Keras stores bfloat16 as 2-byte opaque values marked by a `dtype` attribute."""
    dtype = ds.dtype
    if dtype.kind != "V" or dtype.itemsize != 2 or dtype.fields is not None:
        return False
    return read_attr_text(ds, "dtype") == "bfloat16" if "dtype" in ds.attrs else False


def check_global_heaps(
    read: Callable[[int, int], bytes], file_size: int, data: list[tuple[int, int]], length_size: int
) -> None:
    """Refuse global heap collections whose objects the HDF5 library would walk forever.

    HDF5 walks a collection object by object, each object's header giving the next one's
    place; an object that does not move it on (free space of size 0, or a size that wraps
    around) makes that walk never end. Collections live in the file's metadata, so only the
    bytes outside contiguous dataset data (`data`) are scanned for them.
    """
    header_size = 8 + length_size
    position = 0
    for start, end in [*sorted(data), (file_size, file_size)]:
        at = position
        while at < start:
            block = read(at, min(HEAP_SCAN_BLOCK, start - at) + len(_GLOBAL_HEAP) - 1)
            found = block.find(_GLOBAL_HEAP)
            while 0 <= found < HEAP_SCAN_BLOCK:
                _check_heap(read, at + found, file_size, header_size, length_size)
                found = block.find(_GLOBAL_HEAP, found + 1)
            at += HEAP_SCAN_BLOCK
        position = max(position, end)


def _check_heap(
    read: Callable[[int, int], bytes],
    address: int,
    file_size: int,
    header_size: int,
    length_size: int,
) -> None:
    head = read(address, 8 + length_size)
    size = int.from_bytes(head[8:], "little")
    if len(head) < 8 + length_size or size < 8 + length_size or address + size > file_size:
        return
    if size > MAX_GLOBAL_HEAP:
        raise UnsafeFile(f"HDF5 global heap at {address} holds {size} bytes")
    heap = read(address, size)
    position = 8 + length_size
    while position + header_size <= size:
        index = int.from_bytes(heap[position : position + 2], "little")
        length = int.from_bytes(heap[position + 8 : position + header_size], "little")
        step = header_size + -(-length // 8) * 8 if index else length
        if step == 0 or step > size - position:
            raise MalformedFile(f"damaged HDF5 global heap at {address}")
        position += step


def _reader(source: str | os.PathLike | BinaryIO) -> Callable[[int, int], bytes]:
    if isinstance(source, (str, os.PathLike)):

        def read(offset: int, length: int) -> bytes:
            with open(source, "rb") as handle:
                return os.pread(handle.fileno(), length, offset)

        return read

    def read_window(offset: int, length: int) -> bytes:
        source.seek(offset)
        return source.read(length) or b""

    return read_window


def index_h5(
    handle: h5py.File, file_size: int, read: Callable[[int, int], bytes] | None = None
) -> H5Index:
    """Walk a whole HDF5 file, refusing links, external data and bombs anywhere in it.
    With `read`, the file's global heaps are checked before any attribute is read."""
    index = H5Index()
    seen: set[int] = set()
    stack: list[tuple[str, h5py.Group, int]] = [("", handle, 0)]
    count = 0
    while stack:
        prefix, group, depth = stack.pop()
        if depth > MAX_H5_DEPTH:
            raise MalformedFile("HDF5 groups nest too deeply")
        for name in group:
            count += 1
            if count > MAX_H5_OBJECTS:
                raise MalformedFile("HDF5 file holds too many objects")
            path = f"{prefix}/{name}" if prefix else name
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise UnsafeFile(f"{path}: HDF5 external links are refused")
            if not isinstance(link, h5py.HardLink):
                raise UnsafeFile(f"{path}: HDF5 soft links are refused")
            obj = group[name]
            address = h5py.h5o.get_info(obj.id).addr
            if address in seen:
                raise UnsafeFile(f"{path}: an HDF5 object linked twice is refused")
            seen.add(address)
            if isinstance(obj, h5py.Dataset):
                index.datasets[path] = _check_dataset(path, obj, file_size)
            elif isinstance(obj, h5py.Group):
                index.groups.append(path)
                stack.append((path, obj, depth + 1))
    if read is not None:
        data = [
            (info.offset, info.offset + handle[path].id.get_storage_size())
            for path, info in index.datasets.items()
            if info.offset is not None
        ]
        length_size = handle.id.get_create_plist().get_sizes()[1]
        check_global_heaps(read, file_size, data, length_size)
    for path, info in index.datasets.items():
        if _is_bfloat16(handle[path]):
            index.datasets[path] = replace(info, dtype="bfloat16", is_bfloat16=True)
    return index


def open_h5(source: str | os.PathLike | BinaryIO, file_size: int) -> tuple[h5py.File, H5Index]:
    """Open an HDF5 file read-only and check all of it. Raises before any weight is read."""
    try:
        handle = h5py.File(source, "r", locking=False)
    except H5_ERRORS as exc:
        raise MalformedFile(f"not a readable HDF5 file ({exc})") from None
    try:
        return handle, index_h5(handle, file_size, _reader(source))
    except H5_ERRORS as exc:
        handle.close()
        raise MalformedFile(f"damaged HDF5 file ({exc})") from None
    except BaseException:
        handle.close()
        raise


def h5_root_names(path: str | os.PathLike) -> set[str]:
    """The names of an HDF5 file's root attributes and members, to tell its kind."""
    try:
        with h5py.File(path, "r", locking=False) as handle:
            return set(handle.attrs.keys()) | set(handle.keys())
    except H5_ERRORS as exc:
        raise MalformedFile(f"{path}: not a readable HDF5 file ({exc})") from None


def read_attr_text(obj: h5py.HLObject, name: str) -> str | None:
    """A string attribute, decoded; None when absent."""
    try:
        return _attr_text(obj, name)
    except H5_ERRORS as exc:
        raise MalformedFile(f"attribute {name!r} cannot be read ({exc})") from None


def _check_attribute_type(obj: h5py.HLObject, name: str) -> None:
    """Refuse to read an attribute that is not text or numbers: HDF5 mishandles some
    damaged variable-length types badly enough to crash the process."""
    kind = h5py.h5a.open(obj.id, name.encode()).get_type().get_class()
    if kind not in READABLE_ATTRIBUTE_CLASSES:
        raise MalformedFile(f"attribute {name!r} holds neither text nor numbers")


def _attr_text(obj: h5py.HLObject, name: str) -> str | None:
    if name not in obj.attrs:
        return None
    _check_attribute_type(obj, name)
    value = obj.attrs[name]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) and value.shape == ():
        return read_value_text(value.item())
    raise MalformedFile(f"attribute {name!r} is not text")


def read_value_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read_attr_list(obj: h5py.HLObject, name: str) -> list[str] | None:
    """A list-of-strings attribute, joining Keras's split `name0`, `name1`, ... chunks."""
    try:
        return _attr_list(obj, name)
    except H5_ERRORS as exc:
        raise MalformedFile(f"attribute {name!r} cannot be read ({exc})") from None


def _attr_list(obj: h5py.HLObject, name: str) -> list[str] | None:
    if name in obj.attrs:
        _check_attribute_type(obj, name)
        values = list(np.atleast_1d(obj.attrs[name]))
    elif f"{name}0" in obj.attrs:
        values = []
        chunk = 0
        while f"{name}{chunk}" in obj.attrs:
            _check_attribute_type(obj, f"{name}{chunk}")
            values.extend(np.atleast_1d(obj.attrs[f"{name}{chunk}"]))
            chunk += 1
    else:
        return None
    return [read_value_text(v) for v in values]


def parse_json(text: bytes | str, what: str) -> Any:
    """Parse JSON as data only, with a readable error."""
    if len(text) > MAX_JSON_BYTES:
        raise UnsafeFile(f"{what} is larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise MalformedFile(f"{what} is not valid JSON ({exc})") from None


def _is_safe_member_name(name: str) -> bool:
    if not name or "\\" in name or "\x00" in name or name.startswith("/"):
        return False
    if len(name) > 1 and name[1] == ":":
        return False
    return ".." not in name.split("/")


def check_directory_size(fd: int, archive_size: int) -> None:
    """Refuse an archive whose end record declares too many members or too large a central
    directory, before `zipfile` parses (and builds an object for) every entry."""
    tail_start = max(0, archive_size - _END_RECORD_SIZE - 0xFFFF)
    tail = os.pread(fd, archive_size - tail_start, tail_start)
    at = tail.rfind(_END_RECORD)
    if at < 0 or len(tail) - at < _END_RECORD_SIZE:
        return
    entries, directory_size = struct.unpack_from("<HI", tail, at + 10)
    locator = at - _ZIP64_LOCATOR_SIZE
    if locator >= 0 and tail[locator : locator + 4] == _ZIP64_LOCATOR:
        (record_offset,) = struct.unpack_from("<Q", tail, locator + 8)
        record = os.pread(fd, 56, record_offset) if record_offset < archive_size else b""
        if len(record) == 56 and record[:4] == _ZIP64_END_RECORD:
            entries, directory_size = struct.unpack_from("<QQ", record, 32)
    if entries > MAX_ZIP_MEMBERS:
        raise UnsafeFile(f"archive has {entries} members")
    if directory_size > MAX_CENTRAL_DIRECTORY:
        raise UnsafeFile(
            f"archive's central directory is larger than {MAX_CENTRAL_DIRECTORY} bytes"
        )


def check_archive(archive: zipfile.ZipFile, archive_size: int) -> None:
    """Refuse archives with unsafe, duplicate or impossible members."""
    members = archive.infolist()
    if len(members) > MAX_ZIP_MEMBERS:
        raise UnsafeFile(f"archive has {len(members)} members")
    names: set[str] = set()
    inflated = 0
    for info in members:
        name = info.filename
        if not _is_safe_member_name(name):
            raise UnsafeFile(f"archive member has an unsafe name: {name!r}")
        if name in names:
            raise UnsafeFile(f"archive has two members named {name!r}")
        names.add(name)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeFile(f"archive member {name!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise UnsupportedFormat(f"archive member {name!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise UnsupportedFormat(f"archive member {name!r} uses an unsupported compression")
        if info.header_offset + info.compress_size > archive_size:
            raise MalformedFile(f"archive member {name!r} lies beyond the end of the archive")
        if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
            raise MalformedFile(f"archive member {name!r} has inconsistent sizes")
        if info.file_size > MAX_DEFLATE_RATIO * max(info.compress_size, 1):
            raise UnsafeFile(f"archive member {name!r} declares an impossible size (zip bomb)")
        if info.compress_type != zipfile.ZIP_STORED:
            inflated += info.file_size
            if inflated > MAX_INFLATED_BYTES:
                raise UnsafeFile(
                    f"archive members inflate to more than {MAX_INFLATED_BYTES} bytes (zip bomb)"
                )


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


def member_data_offset(fd: int, info: zipfile.ZipInfo) -> int:
    """Where a member's bytes begin, from its local header (checked against the directory)."""
    header = os.pread(fd, _LOCAL_HEADER_SIZE, info.header_offset)
    if len(header) != _LOCAL_HEADER_SIZE or header[:4] != ZIP_SIGNATURE:
        raise MalformedFile(f"archive member {info.filename!r} has a bad local header")
    name_length = int.from_bytes(header[26:28], "little")
    extra_length = int.from_bytes(header[28:30], "little")
    local_name = os.pread(fd, name_length, info.header_offset + _LOCAL_HEADER_SIZE)
    if local_name.decode(
        "utf-8", "replace"
    ) != info.filename and local_name != info.orig_filename.encode("cp437", "replace"):
        raise UnsafeFile(f"archive member {info.filename!r}: local and central names differ")
    return info.header_offset + _LOCAL_HEADER_SIZE + name_length + extra_length


def read_member(archive: zipfile.ZipFile, name: str, limit: int = MAX_JSON_BYTES) -> bytes:
    """A small member's bytes, refusing more than `limit`."""
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise UnsafeFile(f"archive member {name!r} is larger than {limit} bytes")
    try:
        with archive.open(info) as fh:
            data = fh.read(limit + 1)
    except ZIP_ERRORS as exc:
        raise MalformedFile(f"archive member {name!r} cannot be read ({exc})") from None
    if len(data) > limit:
        raise UnsafeFile(f"archive member {name!r} is larger than {limit} bytes")
    return data

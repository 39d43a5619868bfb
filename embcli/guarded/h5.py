"""HDF5 guards: a whole file is walked and checked before any weight is read.

Links other than hard links, external storage, virtual datasets, filters, shape bombs and
global heaps that the HDF5 library would walk forever are refused; attributes are read
only when they hold text or numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import h5py
import numpy as np

from embcli.errors import MalformedFile, UnsafeFile, UnsupportedFormat
from embcli.guarded.files import open_regular

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MAX_H5_OBJECTS = 1_000_000
MAX_H5_DEPTH = 64
SHAPE_BOMB_FLOOR = 1024 * 1024
MAX_DIMS = 8
H5_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError, IndexError, OverflowError)
READABLE_ATTRIBUTE_CLASSES = (h5py.h5t.STRING, h5py.h5t.INTEGER, h5py.h5t.FLOAT)
HEAP_SCAN_BLOCK = 16 * 1024 * 1024
MAX_GLOBAL_HEAP = 1024 * 1024 * 1024

_GLOBAL_HEAP = b"GCOL\x01"


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


@dataclass(frozen=True)
class ByteRange:
    """Where a weight's stored values lie, whole and in row order: `size` bytes of the
    file at `path` from `offset`, each value in `dtype` (with its byte order). `identity`
    is the `(st_dev, st_ino)` of the file the model has open, so that a copy can tell
    that `path` still names that file."""

    path: Path
    offset: int
    size: int
    dtype: np.dtype
    identity: tuple[int, int]


def file_identity(fd: int) -> tuple[int, int]:
    """`(st_dev, st_ino)` of an open file."""
    status = os.fstat(fd)
    return status.st_dev, status.st_ino


def dataset_bytes(
    handle: h5py.File,
    info: DatasetInfo,
    path: Path,
    base_offset: int = 0,
    identity: tuple[int, int] | None = None,
) -> ByteRange | None:
    """Where a checked dataset's bytes lie in `path` (the HDF5 file, or the archive it is a
    stored member of, starting at `base_offset`); None unless they lie there whole and
    plain: contiguous, every byte written, not bfloat16 marked by an attribute.

    `identity` is that of the file the bytes are read from; by default that of the file
    HDF5 itself has open, which only a handle opened by name has."""
    if not info.contiguous or info.offset is None or info.is_bfloat16:
        return None
    try:
        if identity is None:
            if handle.driver != "sec2":
                return None
            identity = file_identity(handle.id.get_vfd_handle())
        dataset = handle[info.path]
        dtype = dataset.dtype
        stored = dataset.id.get_storage_size()
    except H5_ERRORS:
        return None
    size = int(np.prod(info.shape, dtype=np.int64)) * dtype.itemsize
    if stored != size or dtype.fields is not None or dtype.subdtype is not None:
        return None
    return ByteRange(path, base_offset + info.offset, size, dtype, identity)


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
            with open_regular(source) as handle:
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
    if isinstance(source, (str, os.PathLike)):
        _check_regular(source)
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
    _check_regular(path)
    try:
        with h5py.File(path, "r", locking=False) as handle:
            return set(handle.attrs.keys()) | set(handle.keys())
    except H5_ERRORS as exc:
        raise MalformedFile(f"{path}: not a readable HDF5 file ({exc})") from None


def _check_regular(path: str | os.PathLike) -> None:
    """Refuse a FIFO, device or socket before the HDF5 library opens it by name (and would
    block on it, or read a device without end)."""
    with open_regular(path):
        pass


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

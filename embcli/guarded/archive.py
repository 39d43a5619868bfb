"""Zip guards: archive members are checked for traversal, duplicates, symbolic links,
encryption and bombs before any is read, and the central directory is bounded before
`zipfile` parses it."""

from __future__ import annotations

import os
import stat
import struct
import zipfile
import zlib

from embcli.errors import MalformedFile, UnsafeFile, UnsupportedFormat
from embcli.guarded.parsing import MAX_JSON_BYTES

ZIP_SIGNATURE = b"PK\x03\x04"
ZIP_EMPTY_SIGNATURE = b"PK\x05\x06"
MAX_ZIP_MEMBERS = 100_000
MAX_DEFLATE_RATIO = 1100
MAX_INFLATED_BYTES = 4 * 1024**3
MAX_CENTRAL_DIRECTORY = 16 * 1024 * 1024
MAX_MEMBER_BYTES = 256 * 1024 * 1024
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,
)

_LOCAL_HEADER_SIZE = 30
_END_RECORD = b"PK\x05\x06"
_END_RECORD_SIZE = 22
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_LOCATOR_SIZE = 20
_ZIP64_END_RECORD = b"PK\x06\x06"


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


def read_member(archive: zipfile.ZipFile, name: str, limit: int | None = None) -> bytes:
    """A small member's bytes, refusing more than `limit`: by default `MAX_JSON_BYTES` for
    a `.json` member (a config, say) and `MAX_MEMBER_BYTES` for others (an asset)."""
    if limit is None:
        limit = MAX_JSON_BYTES if name.lower().endswith(".json") else MAX_MEMBER_BYTES
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

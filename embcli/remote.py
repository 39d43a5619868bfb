"""Models at a URL (`s3://`, `gs://`, `hf://`, `http(s)://`), read by byte ranges.

A `RemoteObject` is a read-only, random-access view of one object in a store. Small reads
(HDF5 metadata, zip headers) go through a cache of fixed-size blocks, so that the many
small reads an HDF5 file asks for cost a few requests; large reads (rows) are fetched as
exactly the range asked for. Every request is counted (`transfer_stats`) and bounded
(`RemoteLimits`): bytes in all, seconds in all, seconds a request, redirects.

HTTP(S) is read with the standard library; the object stores go through fsspec and its
store packages (the `remote` extra), with endpoints and credentials from each store's
standard environment. Nothing here stores or prints a credential.
"""

from __future__ import annotations

import contextlib
import gc
import io
import re
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from embcli.errors import EmbcliError, MissingDependency
from embcli.guarded.files import Window

URL_SCHEMES = ("s3", "gs", "hf", "http", "https")
STORE_PACKAGES = {"s3": "s3fs", "gs": "gcsfs", "hf": "huggingface_hub"}
# Options for a store's `cat_file`, where its defaults fetch more than the range asked
# for: HfFileSystem reads a range through a buffered file that reads ahead a whole block
# (5 MiB) past it, once for every range. Blocks are cached here instead.
STORE_READ_OPTIONS: dict[str, dict[str, Any]] = {"hf": {"cache_type": "none"}}
INSTALL_HINT = "pip install 'embcli[remote]'"
BLOCK_BYTES = 64 * 1024
CACHED_BLOCKS = 256
DIRECT_READ_BYTES = 1024 * 1024
REQUEST_ATTEMPTS = 2

_URL = re.compile(r"^(s3|gs|hf|https?)://[^/]", re.IGNORECASE)
# `pathlib.Path("s3://bucket/key")` collapses the double slash; such a path still means
# the URL.
_COLLAPSED_URL = re.compile(r"^(s3|gs|hf|https?):/([^/].*)$", re.IGNORECASE)


class TransferFailed(EmbcliError):
    "Reading a model from a URL failed or went beyond a limit"


@dataclass
class RemoteLimits:
    """Bounds on reading from URLs.

    Attributes:
        max_bytes: bytes fetched in all, by every remote read of the process.
        max_seconds: seconds one model may spend fetching in all.
        request_seconds: seconds one request may wait for the server.
        max_redirects: HTTP redirects followed per request.
    """

    max_bytes: int = 64 * 1024**3
    max_seconds: float = 6 * 3600.0
    request_seconds: float = 60.0
    max_redirects: int = 5


LIMITS = RemoteLimits()


@dataclass
class TransferStats:
    """Bytes fetched and requests made."""

    bytes: int = 0
    requests: int = 0


_totals = TransferStats()


def transfer_stats() -> TransferStats:
    """Bytes fetched and requests made by every remote read of this process so far."""
    return TransferStats(_totals.bytes, _totals.requests)


def reset_transfer_stats() -> None:
    """Start counting `transfer_stats` from zero."""
    _totals.bytes = 0
    _totals.requests = 0


def transfer_summary(stats: TransferStats | None = None) -> str | None:
    """One line on the traffic of remote reads (`transfer_stats()` by default), or None
    when nothing was fetched from a URL."""
    stats = transfer_stats() if stats is None else stats
    if not stats.requests:
        return None
    plural = "" if stats.requests == 1 else "s"
    return f"fetched {stats.bytes} bytes in {stats.requests} request{plural}"


def url_of(path: Any) -> str | None:
    """The URL `path` names (a `str`, or a `Path` made from one), or None for a local path."""
    if isinstance(path, RemotePath):
        return path.url
    text = str(path) if isinstance(path, (str, PurePosixPath, Path)) else None
    if text is None:
        return None
    if _URL.match(text):
        return text
    collapsed = _COLLAPSED_URL.match(text) if not isinstance(path, str) else None
    return f"{collapsed.group(1)}://{collapsed.group(2)}" if collapsed else None


def shown_url(url: str) -> str:
    """A URL as messages show it: without a user name, password, query or fragment, which
    may hold credentials (a signed URL's signature, say)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    hidden = "?..." if parts.query or parts.fragment else ""
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", "")) + hidden


def is_url(path: Any) -> bool:
    """Whether `path` names a model at a URL rather than on the local disk."""
    return url_of(path) is not None


class RemotePath(str):
    """A URL as a format module's `path`: prints as the URL (without any credentials or
    query it holds), and carries its open object. It is a `str`, not an `os.PathLike`,
    so nothing can mistake it for a local file.
    """

    remote: RemoteObject

    def __new__(cls, remote: RemoteObject) -> RemotePath:
        made = super().__new__(cls, remote.shown)
        made.remote = remote
        return made

    @property
    def url(self) -> str:
        return self.remote.url

    @property
    def name(self) -> str:
        return PurePosixPath(self.remote.key).name


def remote_object_of(path: Any) -> RemoteObject | None:
    """The open remote object a format module's `path` carries, if it is a URL."""
    return path.remote if isinstance(path, RemotePath) else None


class _HttpTransport:
    """Byte ranges over HTTP(S), with the standard library."""

    def __init__(self, url: str, limits: RemoteLimits) -> None:
        import urllib.request

        self.url = url
        self.shown = shown_url(url)
        self.limits = limits
        self._opener = urllib.request.build_opener(_limited_redirects(limits.max_redirects))

    def fetch(self, start: int, length: int) -> tuple[bytes, int | None]:
        """`length` bytes from `start` (fewer at the end), and the object's size if told.
        A request that times out is made once more, on a new connection."""
        for attempt in range(REQUEST_ATTEMPTS):
            try:
                return self._fetch_once(start, length, last=attempt == REQUEST_ATTEMPTS - 1)
            except TimeoutError:
                continue
        raise AssertionError("unreachable")

    def _fetch_once(self, start: int, length: int, last: bool) -> tuple[bytes, int | None]:
        import http.client
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            self.url, headers={"Range": f"bytes={start}-{start + length - 1}"}
        )
        try:
            with self._opener.open(request, timeout=self.limits.request_seconds) as response:
                status = response.status
                total = _total_from_content_range(response.headers.get("Content-Range"))
                if status == 200:
                    if start != 0:
                        raise TransferFailed(f"{self.shown}: the server does not serve byte ranges")
                    declared = response.headers.get("Content-Length")
                    total = int(declared) if declared and declared.isdigit() else None
                data = response.read(length)
        except urllib.error.HTTPError as exc:
            if exc.code == 416:
                return b"", _total_from_content_range(exc.headers.get("Content-Range"))
            if exc.code == 404:
                raise FileNotFoundError(self.shown) from None
            raise TransferFailed(f"{self.shown}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            if isinstance(reason, TimeoutError) and not last:
                raise TimeoutError from None
            raise TransferFailed(f"{self.shown}: transfer failed ({reason})") from None
        return data, total

    def size_and_head(self, length: int) -> tuple[int, bytes]:
        """The object's size, and its first `length` bytes, in one request."""
        data, total = self.fetch(0, length)
        if total is None:
            raise TransferFailed(f"{self.shown}: the server does not tell the object's size")
        return total, data


def _limited_redirects(limit: int) -> Any:
    import urllib.request

    class LimitedRedirects(urllib.request.HTTPRedirectHandler):
        max_redirections = limit

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if not re.match(r"^https?://", newurl, re.IGNORECASE):
                raise TransferFailed(f"{req.full_url}: redirected away from HTTP(S)")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return LimitedRedirects()


def _total_from_content_range(value: str | None) -> int | None:
    match = re.match(r"^bytes (?:\d+-\d+|\*)/(\d+)$", (value or "").strip())
    return int(match.group(1)) if match else None


class _StoreTransport:
    """Byte ranges from an object store, through fsspec."""

    def __init__(self, url: str, scheme: str) -> None:
        self.url = url
        self.shown = shown_url(url)
        try:
            import fsspec

            self._fs, self._key = fsspec.core.url_to_fs(url)
            self._read_options = STORE_READ_OPTIONS.get(scheme, {})
        except ImportError:
            package = STORE_PACKAGES.get(scheme, "fsspec")
            raise MissingDependency(
                f"reading {scheme}:// URLs needs {package}: {INSTALL_HINT}"
            ) from None
        except Exception as exc:  # the store's own errors are many and undocumented
            if "install" in str(exc).lower():
                raise MissingDependency(
                    f"reading {scheme}:// URLs needs its store package: {INSTALL_HINT}"
                ) from None
            raise TransferFailed(f"{self.shown}: {_first_line(exc)}") from None

    def fetch(self, start: int, length: int) -> tuple[bytes, int | None]:
        try:
            data = self._fs.cat_file(
                self._key, start=start, end=start + length, **self._read_options
            )
            return data, None
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise TransferFailed(f"{self.shown}: transfer failed ({_first_line(exc)})") from None

    def size_and_head(self, length: int) -> tuple[int, bytes]:
        """The object's size (its first bytes come with later reads). fsspec keeps one
        filesystem per store and its listings for the life of the process: the listing is
        dropped first, so that a model opened again sees the object as it is now."""
        try:
            self._fs.invalidate_cache(self._key)
            info = self._fs.info(self._key)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise TransferFailed(f"{self.shown}: {_first_line(exc)}") from None
        if info.get("type") == "directory":
            raise IsADirectoryError(self.shown)
        size = info.get("size")
        if not isinstance(size, int):
            raise TransferFailed(f"{self.shown}: the store does not tell the object's size")
        return size, b""


MAX_LISTED_FILES = 10_000


def list_store_prefix(url: str) -> list[str] | None:
    """The names (relative to the prefix, `/`-separated) of every object under a folder
    URL of an object store, or None for a URL that cannot be listed (HTTP). Refuses a
    prefix holding more than `MAX_LISTED_FILES` objects."""
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        return None
    transport = _StoreTransport(url.rstrip("/"), scheme)
    fs, prefix = transport._fs, transport._key.rstrip("/")
    try:
        fs.invalidate_cache(prefix)
        found = fs.find(prefix, withdirs=False)
    except Exception as exc:
        raise TransferFailed(f"{transport.shown}: cannot list ({_first_line(exc)})") from None
    if len(found) > MAX_LISTED_FILES:
        raise TransferFailed(f"{transport.shown}: holds more than {MAX_LISTED_FILES} files")
    start = len(prefix) + 1
    return sorted(str(key)[start:] for key in found if str(key).startswith(prefix + "/"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class RemoteObject:
    """A read-only, random-access view of one object at a URL.

    Reads below `DIRECT_READ_BYTES` are served from `BLOCK_BYTES` blocks, the missing
    ones of a read fetched in one request and kept (the last `CACHED_BLOCKS` of them);
    larger reads are fetched as they are. `stats` counts this object's traffic; the
    process's totals are `transfer_stats()`.
    """

    def __init__(self, url: str, limits: RemoteLimits | None = None) -> None:
        self.url = url
        self.shown = shown_url(url)
        self.limits = limits or LIMITS
        scheme = url.split(":", 1)[0].lower()
        self.key = url.split("://", 1)[1]
        self.stats = TransferStats()
        self._spent = 0.0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()
        self._transport: Any = (
            _HttpTransport(url, self.limits)
            if scheme in ("http", "https")
            else _StoreTransport(url, scheme)
        )
        self._size: int | None = None

    @property
    def exists(self) -> bool:
        """Whether the URL names an object (a missing one or a folder does not count)."""
        try:
            self._look_up()
        except (FileNotFoundError, IsADirectoryError):
            return False
        return True

    @property
    def size(self) -> int:
        try:
            return self._look_up()
        except (FileNotFoundError, IsADirectoryError):
            raise TransferFailed(f"{self.shown}: no such object") from None

    def _look_up(self) -> int:
        if self._size is None:
            size, head = self._timed(lambda: self._transport.size_and_head(BLOCK_BYTES))
            self._count(len(head))
            if head and len(head) == min(BLOCK_BYTES, size):
                self._keep(0, head)
            self._size = size
        return self._size

    def pread(self, length: int, offset: int) -> bytes:
        """Up to `length` bytes from `offset`; fewer only at the object's end."""
        end = min(offset + max(0, length), self.size)
        if end <= offset:
            return b""
        if end - offset >= DIRECT_READ_BYTES:
            return self._fetch(offset, end - offset)
        first, last = offset // BLOCK_BYTES, (end - 1) // BLOCK_BYTES
        missing = [b for b in range(first, last + 1) if b not in self._blocks]
        if missing:
            start = missing[0] * BLOCK_BYTES
            data = self._fetch(start, (missing[-1] + 1) * BLOCK_BYTES - start)
            for block in range(missing[0], missing[-1] + 1):
                at = (block - missing[0]) * BLOCK_BYTES
                self._keep(block, data[at : at + BLOCK_BYTES])
        parts = []
        for block in range(first, last + 1):
            self._blocks.move_to_end(block)
            parts.append(self._blocks[block])
        joined = b"".join(parts)
        skip = offset - first * BLOCK_BYTES
        return joined[skip : skip + end - offset]

    def fetch_exact(self, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length): from the block cache when it holds them all,
        otherwise in one request of exactly them, which the cache does not keep."""
        length = min(length, max(0, self.size - offset))
        if not length:
            return b""
        first, last = offset // BLOCK_BYTES, (offset + length - 1) // BLOCK_BYTES
        if all(block in self._blocks for block in range(first, last + 1)):
            return self.pread(length, offset)
        return self._fetch(offset, length)

    def window(self, offset: int = 0, size: int | None = None) -> RemoteWindow:
        """A file object over bytes [offset, offset + size) of the object."""
        return RemoteWindow(self, offset, self.size - offset if size is None else size)

    def download(self, target: io.BufferedIOBase, block_bytes: int = 16 * 1024 * 1024) -> None:
        """Copy the whole object into a writable binary file."""
        for offset in range(0, self.size, block_bytes):
            target.write(self._fetch(offset, min(block_bytes, self.size - offset)))

    def close(self) -> None:
        self._blocks.clear()

    def _keep(self, block: int, data: bytes) -> None:
        self._blocks[block] = data
        while len(self._blocks) > CACHED_BLOCKS:
            self._blocks.popitem(last=False)

    def _fetch(self, start: int, length: int) -> bytes:
        if _totals.bytes + length > self.limits.max_bytes:
            raise TransferFailed(
                f"{self.shown}: reading it would fetch more than {self.limits.max_bytes} bytes"
            )
        try:
            data, _ = self._timed(lambda: self._transport.fetch(start, length))
        except FileNotFoundError:
            raise TransferFailed(
                f"{self.shown}: the object disappeared while it was read"
            ) from None
        expected = min(length, max(0, self.size - start))
        if len(data) != expected:
            raise TransferFailed(
                f"{self.shown}: the transfer was cut short ({len(data)} of {expected} bytes "
                f"at offset {start}); the object may have changed"
            )
        self._count(len(data))
        return data

    def _count(self, fetched: int) -> None:
        for stats in (self.stats, _totals):
            stats.bytes += fetched

    def _timed(self, call: Any) -> Any:
        if self._spent > self.limits.max_seconds:
            raise TransferFailed(f"{self.shown}: reading took over {self.limits.max_seconds} s")
        began = time.monotonic()
        try:
            with _collector_paused():
                return call()
        finally:
            self._spent += time.monotonic() - began
            self.stats.requests += 1
            _totals.requests += 1


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a request is under way.

    h5py reads through `RemoteWindow` while it holds its global lock. If the collector
    ran in the thread doing the transfer (fsspec's event loop, say) and freed an h5py
    object, that object's finalizer would wait for the lock, and this thread for the
    transfer: a deadlock. Nothing is collected while the transfer runs, so none can start.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class RemoteWindow(Window):
    """A window onto part of a `RemoteObject`, for zipfile and h5py."""

    read_only_message = "embcli opens models at URLs read-only"

    def __init__(self, remote: RemoteObject, offset: int, size: int) -> None:
        super().__init__(offset, size)
        self._remote = remote

    def _read_at(self, view: memoryview, position: int) -> int:
        data = self._remote.pread(len(view), position)
        view[: len(data)] = data
        return len(data)

    def read_span(self, position: int, length: int) -> bytes:
        """The bytes asked for, in one ranged request of exactly them: rows, not metadata,
        so they are neither rounded out to blocks nor cached."""
        count = max(0, min(length, self._size - position))
        return self._remote.fetch_exact(self._offset + position, count) if count else b""

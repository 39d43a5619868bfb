"""Small file-system helpers for writes that must survive a crash."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PAUSE_VARIABLE = "EMBCLI_TEST_PAUSE_AT"
PAUSE_READY_VARIABLE = "EMBCLI_TEST_PAUSE_READY"
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs (or may run, when it is not ours to signal)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _renameat2(source: Path, target: Path, flags: int) -> bool:
    """`renameat2(2)` with `flags`; False where the system or file system lacks it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    if call(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(target))


def rename_no_replace(source: Path, target: Path) -> None:
    """Rename `source` to `target`, failing with `FileExistsError` if anything (a dangling
    symbolic link too) is at `target`, however late it appeared."""
    if _renameat2(source, target, _RENAME_NOREPLACE):
        return
    if not source.is_dir() or source.is_symlink():
        os.link(source, target, follow_symlinks=False)
        os.unlink(source)
        return
    os.mkdir(target)
    os.rename(source, target)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step; False where that is not supported."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def pause_point(step: str) -> None:
    """For crash tests only: when `EMBCLI_TEST_PAUSE_AT` names `step`, say so by writing
    this process's id to the file `EMBCLI_TEST_PAUSE_READY` names, then wait (to be
    killed) until a file of that name plus `.go` appears."""
    if os.environ.get(PAUSE_VARIABLE) != step:
        return
    ready = os.environ.get(PAUSE_READY_VARIABLE)
    if not ready:
        return
    announce = Path(f"{ready}.{os.getpid()}")
    announce.write_text(f"{os.getpid()}\n")
    os.replace(announce, ready)
    go = Path(ready + ".go")
    deadline = time.monotonic() + 600.0
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C while writing, so cleanup runs."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until a sequence that must not be cut short is done, then
    act on them. (Blocking the signals is not enough: any thread that a library started
    may take them, and Python would raise in the main thread all the same.)"""
    caught: list[int] = []
    previous: dict[int, Any] = {}
    try:
        for held in (signal.SIGINT, signal.SIGTERM):
            previous[held] = signal.signal(held, lambda number, frame: caught.append(number))
    except ValueError:
        for number, handler in previous.items():
            signal.signal(number, handler)
        with _blocked():
            yield
        return
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if caught:
        handler = previous.get(caught[0])
        if callable(handler):
            handler(caught[0], None)
        elif handler != signal.SIG_IGN:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _blocked() -> Iterator[None]:
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def unheld_lock(path: Path, exclusive: bool) -> Iterator[int | None]:
    """`path` opened read-only (links not followed) and locked without waiting: its
    descriptor, or None when it cannot be opened or another process holds its lock
    (its writer is still at work)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)

"""Locks that keep a reader from seeing a write half done and two writers from mixing.

As SQLite does, embcli locks the model itself rather than a lock file beside it: readers
take a shared `flock` on the model's file or folder, writers an exclusive one. Nothing is
created, so reading works in a folder the reader cannot write, and no lock file is left
behind. A write that replaces the model by a rename leaves waiters holding the old inode;
they notice (the path now names another inode) and lock the new one.

A process holds one lock per inode. When it already reads a model it is about to write,
its shared lock is upgraded, and the write is refused if another process changed the
model in between. Who holds a lock is looked up in `/proc/locks`, for the message only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embcli.durable import pause_point
from embcli.errors import EmbcliError

DEFAULT_TIMEOUT = 5.0
TIMEOUT_VARIABLE = "EMBCLI_LOCK_TIMEOUT"
CHECKPOINT_INDEX_SUFFIX = ".index"
POLL_SECONDS = 0.02
_UNLOCKABLE = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class ModelBusy(EmbcliError):
    "Another process is writing the model, or reading the model that is to be written"


class ModelChanged(EmbcliError):
    "Another process changed the model after it was read and before it could be written"


def default_timeout() -> float:
    """Seconds a lock is waited for: `EMBCLI_LOCK_TIMEOUT`, or 5."""
    try:
        return max(0.0, float(os.environ.get(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT)))
    except ValueError:
        return DEFAULT_TIMEOUT


def lock_target(path: Path) -> Path:
    """The file or folder whose inode stands for the model at `path`.

    Symbolic links are resolved, so a model reached by two names has one lock. A
    TensorFlow checkpoint prefix, which is no file itself, is locked by its index.
    """
    resolved = Path(os.path.realpath(path))
    if not resolved.exists():
        index = resolved.with_name(resolved.name + CHECKPOINT_INDEX_SUFFIX)
        if index.is_file():
            return index
    return resolved


@dataclass
class _Held:
    """The one lock this process holds on an inode."""

    fd: int
    path: Path
    exclusive: bool
    users: int
    seen: tuple[int, int, int]
    locked: bool = True


_held: dict[tuple[int, int], _Held] = {}
_guard = threading.RLock()


def _fingerprint(status: os.stat_result) -> tuple[int, int, int]:
    return (status.st_ino, status.st_size, status.st_mtime_ns)


def holders(path: Path) -> list[tuple[int, str]]:
    """`(pid, "READ" | "WRITE")` of the other processes that hold a lock on `path`."""
    try:
        status = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    device = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == device:
            if fields[4].isdigit() and int(fields[4]) != os.getpid():
                found.append((int(fields[4]), fields[3]))
    return found


def _busy(shown: Path, target: Path) -> ModelBusy:
    others = holders(target)
    writers = [pid for pid, kind in others if kind == "WRITE"]
    if writers:
        doing = f"being written by another process (pid {writers[0]})"
    elif others:
        pids = ", ".join(str(pid) for pid, _ in others[:3])
        doing = f"being read by another process (pid {pids})"
    else:
        doing = "in use by another process"
    return ModelBusy(f"{shown} is {doing}; try again once that process has finished")


def _wait_for_flock(fd: int, exclusive: bool, deadline: float) -> bool:
    """Take the lock before `deadline`; False when the wait ran out. A lock the file
    system does not support counts as taken."""
    operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
    waited = False
    while True:
        try:
            fcntl.flock(fd, operation)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            if not waited:
                waited = True
                pause_point("lock-wait")
            time.sleep(POLL_SECONDS)
        except OSError as exc:
            if exc.errno in _UNLOCKABLE:
                return True
            raise


def _open_for_lock(target: Path) -> int:
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    return os.open(target, flags)


def _acquire(path: Path, exclusive: bool, timeout: float | None, unchanged: bool) -> Any:
    """Lock the model at `path`; returns the registry key, or None when there is no model
    there yet (a new output)."""
    shown = Path(path)
    deadline = time.monotonic() + (default_timeout() if timeout is None else timeout)
    while True:
        target = lock_target(shown)
        try:
            status = os.stat(target)
        except FileNotFoundError:
            return None
        key = (status.st_dev, status.st_ino)
        with _guard:
            if exclusive:
                _refuse_if_replaced(shown, target, key)
            held = _held.get(key)
            if held is not None:
                if exclusive and not held.exclusive:
                    _upgrade(held, shown, deadline, unchanged)
                held.users += 1
                return key
            fd = _open_for_lock(target)
            try:
                if not _wait_for_flock(fd, exclusive, deadline):
                    raise _busy(shown, target)
                now = os.fstat(fd)
                try:
                    current = os.stat(target)
                except FileNotFoundError:
                    current = None
                if current is None or (current.st_dev, current.st_ino) != key:
                    os.close(fd)
                    continue
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            _held[key] = _Held(fd, target, exclusive, 1, _fingerprint(now))
            return key


def _changed(shown: Path) -> ModelChanged:
    return ModelChanged(
        f"{shown} was changed by another process after it was read; "
        "nothing was written, so the edit can simply be made again"
    )


def _refuse_if_replaced(shown: Path, target: Path, key: tuple[int, int]) -> None:
    """A model this process reads, which another process has since replaced by a rename,
    may not be written from what was read."""
    for held_key, held in _held.items():
        if held.path == target and held_key != key and not held.exclusive:
            raise _changed(shown)


def _upgrade(held: _Held, shown: Path, deadline: float, unchanged: bool) -> None:
    """Turn this process's shared lock into an exclusive one. Linux drops the shared lock
    while it waits, so the model must then be checked to be the one that was read."""
    if not _wait_for_flock(held.fd, True, deadline):
        held.locked = _wait_for_flock(held.fd, False, time.monotonic())
        raise _busy(shown, held.path)
    held.exclusive = True
    held.locked = True
    now = os.fstat(held.fd)
    try:
        replaced = os.stat(held.path).st_ino != now.st_ino or now.st_nlink == 0
    except FileNotFoundError:
        replaced = True
    changed = _fingerprint(now) != held.seen if unchanged else now.st_size != held.seen[1]
    if replaced or changed:
        _downgrade(held)
        raise _changed(shown)


def _downgrade(held: _Held) -> None:
    held.exclusive = False
    held.locked = _wait_for_flock(held.fd, False, time.monotonic())
    with contextlib.suppress(OSError):
        held.seen = _fingerprint(os.fstat(held.fd))


def _release(key: Any, was_upgrade: bool) -> None:
    if key is None:
        return
    with _guard:
        held = _held.get(key)
        if held is None:
            return
        held.users -= 1
        if held.users <= 0:
            del _held[key]
            with contextlib.suppress(OSError):
                os.close(held.fd)
        elif was_upgrade:
            _downgrade(held)


def is_held(path: Path) -> bool:
    """Whether this process holds a lock on the model at `path` (reading or writing)."""
    try:
        status = os.stat(lock_target(path))
    except OSError:
        return False
    with _guard:
        return (status.st_dev, status.st_ino) in _held


def _is_shared_in_this_process(path: Path) -> bool:
    try:
        status = os.stat(lock_target(path))
    except OSError:
        return False
    with _guard:
        held = _held.get((status.st_dev, status.st_ino))
        return held is not None and not held.exclusive


@contextlib.contextmanager
def shared(path: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold a shared (reading) lock on the model at `path`.

    Raises:
        ModelBusy: a writer held it for longer than `timeout` seconds.
    """
    key = _acquire(Path(path), False, timeout, unchanged=True)
    try:
        yield
    finally:
        _release(key, was_upgrade=False)


@contextlib.contextmanager
def exclusive(
    path: Path, timeout: float | None = None, *, patches_only: bool = False
) -> Iterator[None]:
    """Hold an exclusive (writing) lock on the model at `path`, if it exists.

    When this process is reading the model, its lock is upgraded. With `patches_only`
    the write rewrites bytes where they lie, so another process's edit in between does no
    harm as long as the file keeps its inode and size; otherwise any change refuses it.

    Raises:
        ModelBusy: another process held the model for longer than `timeout` seconds.
        ModelChanged: another process wrote the model after this one read it.
    """
    pause_point("write-start")
    upgrade = _is_shared_in_this_process(Path(path))
    key = _acquire(Path(path), True, timeout, unchanged=not patches_only)
    try:
        yield
    finally:
        _release(key, was_upgrade=upgrade)


@contextlib.contextmanager
def exclusive_all(
    paths: list[Path], timeout: float | None = None, *, patches_only: bool = False
) -> Iterator[None]:
    """`exclusive` on several models at once, in a fixed order (so two writers that
    need the same models cannot wait for each other forever)."""
    ordered = sorted({str(lock_target(p)): p for p in paths}.items())
    with contextlib.ExitStack() as stack:
        for _, path in ordered:
            stack.enter_context(exclusive(path, timeout, patches_only=patches_only))
        yield


class ReadLock:
    """A shared lock held while a model is open; `close()` releases it (once)."""

    def __init__(self, path: Path, timeout: float | None = None) -> None:
        self._key = _acquire(Path(path), False, timeout, unchanged=True)
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release(self._key, was_upgrade=False)

    def bind(self, model: Any) -> Any:
        """Release this lock when `model` is closed (or collected); returns `model`."""
        close_model = model.close

        def close() -> None:
            try:
                close_model()
            finally:
                self.close()

        model.close = close
        weakref.finalize(model, self.close)
        return model


def reading(path: Path, timeout: float | None = None) -> ReadLock:
    """Take the shared lock a reader of the model at `path` holds until it closes it.

    Raises:
        ModelBusy: a writer held the model for longer than `timeout` seconds.
    """
    return ReadLock(Path(path), timeout)


def write_lock_paths(output: Path, over_itself: bool) -> list[Path]:
    """The models a write must hold exclusively: its output, and for an edit of a model
    over itself, the enclosing folder when that folder is itself a model (a checkpoint's
    folder, say, which readers may name instead of the checkpoint)."""
    paths = [Path(output).absolute()]
    if over_itself:
        enclosing = _enclosing_model(paths[0])
        if enclosing is not None:
            paths.append(enclosing)
    return paths


def _enclosing_model(path: Path) -> Path | None:
    from embcli.formats.registry import detect

    folder = path.parent
    try:
        detect(folder)
    except (EmbcliError, OSError):
        return None
    return folder

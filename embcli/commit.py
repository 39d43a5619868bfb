"""Committing several staged files (or a folder) at once: afterwards a reader finds the
old state or the new one, never a mix, even when the process is killed halfway.

The protocol, as a database's redo log works:

1. Everything new is staged under temporary names in a temporary folder beside the
   targets (`.embcli-tmp-*`) and fsynced.
2. A commit record (`commit-record` inside the temporary folder) that lists every step
   (each staged path, its target, and the inode it has) is written and fsynced. From
   here on the write has happened: it is only finished, never undone.
3. The steps are carried out (with Ctrl-C and SIGTERM held), the folders fsynced.
4. The record and then the temporary folder are removed.

A process killed in step 3 leaves its record. `finish` (run by `embcli recover` and by
the next write in that folder) redoes the steps: each one that is done already (its
target has the staged inode) is skipped. Readers refuse a model that a record names until
then. A record is acted on only when its writer is gone (it no longer holds the record's
lock), when it is owned by the user running embcli or by the owner of the folder, and
only within its own folder and its own temporary folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from embcli.durable import exchange, fsync_path, pause_point, rename_no_replace, unheld_lock
from embcli.errors import EmbcliError, OutputExists

RECORD_NAME = "commit-record"
TEMP_PREFIX = ".embcli-tmp-"
PREVIOUS_NAME = ".previous"
_MAGIC = "EMBCLI-COMMIT-1"
_MAX_RECORD_BYTES = 16 * 1024 * 1024


class UnfinishedCommit(EmbcliError):
    "A commit record cannot be finished because its files are not as it says"


@dataclass
class Step:
    """One rename of a commit, or a removal.

    Attributes:
        target: the final path, inside the commit's folder.
        staged: the staged file or folder inside the temporary folder; None to remove
            `target`.
        replace: whether whatever is at `target` may be replaced.
        inode: the staged file's inode, which tells a finished step from an unfinished one.
    """

    target: Path
    staged: Path | None = None
    replace: bool = True
    inode: int = 0


def record_path(root: Path, temp: Path) -> Path:
    """Where the commit record of the temporary folder `temp` in `root` lives."""
    return root / temp.name / RECORD_NAME


def _relative(path: Path, base: Path) -> str:
    relative = os.path.relpath(path, base)
    if relative.startswith("..") or os.path.isabs(relative):
        raise ValueError(f"{path} is not inside {base}")
    return relative


def commit(root: Path, temp: Path, steps: list[Step]) -> None:
    """Carry out `steps` as one commit; `temp` is the temporary folder in `root`.

    Raises:
        OutputExists: a target that must not be replaced appeared before its rename;
            the steps done until then are undone.
    """
    for step in steps:
        if step.staged is not None:
            step.inode = os.lstat(step.staged).st_ino
    record = record_path(root, temp)
    body = {
        "magic": _MAGIC,
        "temp": temp.name,
        "steps": [
            {
                "target": _relative(step.target, root),
                "staged": None if step.staged is None else _relative(step.staged, temp),
                "replace": step.replace,
                "inode": step.inode,
            }
            for step in steps
        ],
    }
    fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            _write_all(fd, json.dumps(body).encode())
            os.fsync(fd)
            fsync_path(root)
        except BaseException:
            os.unlink(record)
            raise
        pause_point("commit-recorded")
        try:
            _carry_out(root, steps)
        except _Conflict as conflict:
            _undo(root, steps[: conflict.done])
            os.unlink(record)
            raise OutputExists(f"{conflict.target} exists", remedy="force") from None
        pause_point("commit-renamed")
        os.unlink(record)
        fsync_path(temp)
        shutil.rmtree(temp, ignore_errors=True)
        fsync_path(root)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Conflict(Exception):
    def __init__(self, target: Path, done: int) -> None:
        super().__init__(str(target))
        self.target = target
        self.done = done


def _done(step: Step) -> bool:
    try:
        return os.lstat(step.target).st_ino == step.inode
    except FileNotFoundError:
        return False


def _carry_out(root: Path, steps: list[Step]) -> None:
    parents = {root}
    for number, step in enumerate(steps):
        parents.add(step.target.parent)
        if step.staged is None:
            if os.path.lexists(step.target) and not os.path.isdir(step.target):
                os.unlink(step.target)
            continue
        if _done(step):
            continue
        if not os.path.lexists(step.staged):
            raise UnfinishedCommit(f"a file staged for {step.target} is missing")
        if not step.replace:
            try:
                rename_no_replace(step.staged, step.target)
            except FileExistsError:
                raise _Conflict(step.target, number) from None
        elif os.path.isdir(step.staged) and os.path.isdir(step.target):
            _replace_folder(step)
        else:
            os.replace(step.staged, step.target)
        if number == 0:
            pause_point("commit-half")
    for parent in parents:
        with contextlib.suppress(OSError):
            fsync_path(parent)


def _replace_folder(step: Step) -> None:
    """Swap a folder in: atomically where the system can, else by two renames (the
    commit record finishes them if the process dies in between)."""
    assert step.staged is not None
    if exchange(step.staged, step.target):
        return
    retired = step.staged.parent / PREVIOUS_NAME
    if os.path.lexists(retired):
        shutil.rmtree(retired, ignore_errors=True)
    os.replace(step.target, retired)
    os.replace(step.staged, step.target)


def _undo(root: Path, steps: list[Step]) -> None:
    """Put back the renames of a commit that could not complete (new outputs only)."""
    for step in reversed(steps):
        if step.staged is not None and not step.replace and _done(step):
            os.rename(step.target, step.staged)


def _trusted(status: os.stat_result, temp: Path, root: Path) -> bool:
    """A record is trusted when it and its temporary folder belong to the user running
    embcli, or to the owner of the folder it writes into, and no one else may write them."""
    if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
        return False
    try:
        folder = os.lstat(temp)
        owner = os.stat(root).st_uid
    except OSError:
        return False
    if not stat.S_ISDIR(folder.st_mode) or folder.st_uid != status.st_uid:
        return False
    writable_by_others = stat.S_IWGRP | stat.S_IWOTH
    if status.st_mode & writable_by_others or folder.st_mode & writable_by_others:
        return False
    return status.st_uid in (os.geteuid(), owner)


@dataclass
class PendingCommit:
    """A commit that a killed process left unfinished."""

    record: Path
    root: Path
    temp: Path
    steps: list[Step]

    def touches(self, path: Path) -> bool:
        """Whether the commit writes `path` or something inside it."""
        path = Path(os.path.realpath(path))
        for step in self.steps:
            target = Path(os.path.realpath(step.target.parent)) / step.target.name
            if target == path or path in target.parents or target in path.parents:
                return True
        return False


def _load(record: Path, fd: int) -> PendingCommit | None:
    temp = record.parent
    root = temp.parent
    status = os.fstat(fd)
    if not _trusted(status, temp, root) or status.st_size > _MAX_RECORD_BYTES:
        return None
    try:
        body = json.loads(os.pread(fd, status.st_size, 0))
        if body.get("magic") != _MAGIC:
            return None
        if body["temp"] != temp.name:
            return None
        steps = [_step(root, temp, entry) for entry in body["steps"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if any(step is None for step in steps):
        return None
    return PendingCommit(record, root, temp, [s for s in steps if s is not None])


def _inside(base: Path, relative: object) -> Path | None:
    if not isinstance(relative, str) or not relative or os.path.isabs(relative):
        return None
    parts = Path(relative).parts
    if ".." in parts or "\x00" in relative:
        return None
    return base.joinpath(*parts)


def _step(root: Path, temp: Path, entry: dict) -> Step | None:
    target = _inside(root, entry["target"])
    staged = None if entry["staged"] is None else _inside(temp, entry["staged"])
    if target is None or (entry["staged"] is not None and staged is None):
        return None
    if not isinstance(entry["inode"], int) or not isinstance(entry["replace"], bool):
        return None
    return Step(target, staged, entry["replace"], entry["inode"])


def records(folder: Path) -> list[Path]:
    """The commit records in the temporary folders of `folder`."""
    try:
        temps = [p for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]
    except OSError:
        return []
    found = []
    for temp in sorted(temps):
        record = temp / RECORD_NAME
        if not temp.is_symlink() and os.path.lexists(record):
            found.append(record)
    return found


@contextlib.contextmanager
def _opened(record: Path, exclusive: bool):
    """A record whose writer is gone, opened and locked, or None."""
    with unheld_lock(record, exclusive) as fd:
        yield None if fd is None else _load(record, fd)


def pending(folder: Path) -> list[PendingCommit]:
    """The unfinished commits of dead processes in `folder`. Only reads."""
    found = []
    for record in records(folder):
        with _opened(record, exclusive=False) as loaded:
            if loaded is not None:
                found.append(loaded)
    return found


def finish(folder: Path, only: Path | None = None) -> list[str]:
    """Finish the commits that killed processes left in `folder` (those that write
    `only`, if given); returns the names of the targets finished.

    Raises:
        UnfinishedCommit: a record's staged files are missing or a target it must not
            replace exists; the record is left for a person to look at.
    """
    finished: list[str] = []
    for record in records(folder):
        with _opened(record, exclusive=True) as loaded:
            if loaded is None or (only is not None and not loaded.touches(only)):
                continue
            try:
                _carry_out(loaded.root, loaded.steps)
            except _Conflict as conflict:
                raise UnfinishedCommit(
                    f"cannot finish an interrupted write: {conflict.target} appeared meanwhile"
                ) from None
            os.unlink(record)
            shutil.rmtree(loaded.temp, ignore_errors=True)
            fsync_path(loaded.root)
            finished.extend(s.target.name for s in loaded.steps if s.staged is not None)
    return finished

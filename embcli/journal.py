"""An undo journal for editing a file where it lies.

Before `assign --in-place` patches a file, it writes the bytes it will overwrite to
`.embcli-journal-<pid>-<file name>` beside it and fsyncs that. If the process dies while
patching, the journal stays behind: commands that only read refuse the half-edited file,
and `embcli recover` or the next `assign --in-place` in that folder puts the old bytes
back, so the file is once more exactly what it was.

A journal is acted on only when it proves it belongs to the file: it records the file's
device, inode and size, which a file planted in a downloaded folder cannot know. Reading
never writes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from embcli.durable import fsync_path, process_alive

JOURNAL_PREFIX = ".embcli-journal-"
_MAGIC = b"EMBCLI-JOURNAL-1\n"


def journal_path(target: Path) -> Path:
    return target.parent / f"{JOURNAL_PREFIX}{os.getpid()}-{target.name}"


def write_journal(target: Path, changes: list[tuple[int, bytes, bytes]]) -> Path:
    """Record `(offset, old, new)` changes' old bytes, durably, before they are made."""
    blob = b"".join(old for _, old, _ in changes)
    status = target.stat()
    header = {
        "file": target.name,
        "device": status.st_dev,
        "inode": status.st_ino,
        "size": status.st_size,
        "entries": [[offset, len(old)] for offset, old, _ in changes],
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    path = journal_path(target)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, _MAGIC + json.dumps(header).encode() + b"\n")
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_path(target.parent)
    return path


def discard(journal: Path) -> None:
    journal.unlink(missing_ok=True)
    fsync_path(journal.parent)


def _read(journal: Path) -> tuple[dict, bytes] | None:
    """A journal's header and saved bytes, or None when it is incomplete or not one."""
    try:
        data = journal.read_bytes()
        header_line, _, blob = data[len(_MAGIC) :].partition(b"\n")
        header = json.loads(header_line)
        if data.startswith(_MAGIC) and hashlib.sha256(blob).hexdigest() == header["sha256"]:
            return header, blob
    except (ValueError, KeyError, TypeError, OSError):
        pass
    return None


def _target(journal: Path, header: dict) -> Path | None:
    """The file a journal was written for, if it is still that very file."""
    name = header.get("file")
    if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
        return None
    target = journal.parent / name
    try:
        status = target.lstat()
    except OSError:
        return None
    same = (status.st_dev, status.st_ino, status.st_size) == (
        header.get("device"),
        header.get("inode"),
        header.get("size"),
    )
    return target if same and target.is_file() and not target.is_symlink() else None


def _left_by_dead_process(journal: Path) -> bool:
    pid_text = journal.name[len(JOURNAL_PREFIX) :].split("-", 1)[0]
    if not pid_text.isdigit() or journal.is_symlink() or not journal.is_file():
        return False
    return int(pid_text) != os.getpid() and not process_alive(int(pid_text))


def _journals(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.name.startswith(JOURNAL_PREFIX))
    except OSError:
        return []


def pending(folder: Path) -> list[tuple[Path, Path]]:
    """`(journal, file)` for each edit in `folder` that a killed process left half done."""
    found = []
    for journal in _journals(folder):
        if not _left_by_dead_process(journal):
            continue
        read = _read(journal)
        target = _target(journal, read[0]) if read else None
        if target is not None:
            found.append((journal, target))
    return found


def roll_back(journal: Path) -> bool:
    """Put back the bytes a journal saved, if it belongs to its file; True when it did.

    A journal that is incomplete (patching never began) or no longer matches its file
    is removed without touching anything else.
    """
    read = _read(journal)
    target = _target(journal, read[0]) if read else None
    if target is None:
        discard(journal)
        return False
    header, blob = read
    fd = os.open(target, os.O_WRONLY)
    try:
        position = 0
        for offset, length in header["entries"]:
            os.pwrite(fd, blob[position : position + length], offset)
            position += length
        os.fsync(fd)
    finally:
        os.close(fd)
    discard(journal)
    return True


def recover(folder: Path) -> list[str]:
    """Roll back every half-done edit in `folder`; returns the files restored.

    Incomplete journals of dead processes, whose patching never began, are removed.
    """
    for journal in _journals(folder):
        if _left_by_dead_process(journal) and _read(journal) is None:
            discard(journal)
    return [target.name for journal, target in pending(folder) if roll_back(journal)]

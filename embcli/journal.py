"""An undo journal for editing a file where it lies.

Before `assign --in-place` patches a file, it writes the bytes it will overwrite to
`.embcli-journal-<pid>-<file name>` beside it and fsyncs that. If the process dies while
patching, the next embcli command that opens anything in that folder puts the old bytes
back, so the file is once more exactly what it was. A journal that was not completely
written means patching never began, and is simply removed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

JOURNAL_PREFIX = ".embcli-journal-"
_MAGIC = b"EMBCLI-JOURNAL-1\n"


def journal_path(target: Path) -> Path:
    return target.parent / f"{JOURNAL_PREFIX}{os.getpid()}-{target.name}"


def write_journal(target: Path, changes: list[tuple[int, bytes, bytes]]) -> Path:
    """Record `(offset, old, new)` changes' old bytes, durably, before they are made."""
    blob = b"".join(old for _, old, _ in changes)
    header = {
        "file": target.name,
        "size": target.stat().st_size,
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
    _fsync_dir(target.parent)
    return path


def discard(journal: Path) -> None:
    journal.unlink(missing_ok=True)
    _fsync_dir(journal.parent)


def roll_back(journal: Path) -> bool:
    """Put back the bytes a journal saved; True when it changed the file."""
    try:
        data = journal.read_bytes()
        header_line, _, blob = data[len(_MAGIC) :].partition(b"\n")
        header = json.loads(header_line)
        complete = data.startswith(_MAGIC) and hashlib.sha256(blob).hexdigest() == header["sha256"]
    except (ValueError, KeyError, OSError):
        complete = False
    if not complete:
        discard(journal)
        return False
    target = journal.parent / header["file"]
    if target.name != Path(header["file"]).name or not target.is_file():
        discard(journal)
        return False
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
    """Roll back every edit in `folder` that a dead embcli process left unfinished."""
    restored = []
    try:
        entries = [p for p in folder.iterdir() if p.name.startswith(JOURNAL_PREFIX)]
    except OSError:
        return restored
    for journal in entries:
        pid_text = journal.name[len(JOURNAL_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or journal.is_symlink() or not journal.is_file():
            continue
        if int(pid_text) == os.getpid() or _alive(int(pid_text)):
            continue
        if roll_back(journal):
            restored.append(journal.name.split("-", 3)[-1])
    return restored


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""An undo journal for editing a file where it lies.

Before an in-place edit patches a file, it writes every byte run it will change, old and
new bytes both, to `.embcli-journal-<hash of the file's name>` beside the file (symbolic
links resolved first) and fsyncs it. While editing, the writing process holds a lock on
the journal. If it dies, the journal stays behind and nobody holds its lock: commands that
only read refuse the half-edited model, and `embcli recover` or the next in-place edit
puts the old bytes back, so the file is once more exactly what it was.

A journal proves itself before it is acted on:

- its writer is gone (its lock can be taken; no process id is trusted);
- it is a plain file, not a link, writable by its owner alone, and owned by the user
  running embcli or by the owner of the file it names;
- it is complete (a checksum covers all of it) and names a file in its own folder,
  whose size is the one recorded;
- at every changed offset, each byte of the file equals the old byte or the new one.

A journal that fails a check is ignored; embcli removes only its own user's journals.
Reading never writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embcli.durable import fsync_path, rename_no_replace, unheld_lock
from embcli.errors import EmbcliError

JOURNAL_PREFIX = ".embcli-journal-"
PARTIAL_SUFFIX = ".part"
_MAGIC = b"EMBCLI-JOURNAL-2\n"


class JournalWriteFailed(EmbcliError):
    "The undo journal for an in-place edit could not be written"


def _name_hash(name: str) -> str:
    import hashlib  # not at the top: a reader that finds no journal never needs it

    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def journal_path(target: Path) -> Path:
    """Where the journal for editing `target` lives: beside the file it resolves to."""
    real = resolved(target)
    return real.parent / f"{JOURNAL_PREFIX}{_name_hash(real.name)}"


@dataclass
class Journal:
    """A journal being written or held by this process; `close()` lets go of its lock."""

    path: Path
    fd: int

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_journal(
    target: Path, changes: list[tuple[int, bytes, bytes]], model: Path | None = None
) -> Journal:
    """Record `(offset, old, new)` changes durably before they are made.

    `model` is the model the file belongs to (a sharded index, a model folder), so that
    reads of that model find the journal. The journal is written under a temporary name
    and renamed into place once complete; whatever fails, no partial journal is left.

    Raises:
        JournalWriteFailed: the journal could not be written (a full disk, say).
    """
    import hashlib

    real = resolved(target)
    final = journal_path(real)
    blob = b"".join(old for _, old, _ in changes) + b"".join(new for _, _, new in changes)
    header = {
        "file": real.name,
        "model": os.path.relpath(resolved(model), real.parent) if model is not None else None,
        "size": real.stat().st_size,
        "entries": [[offset, len(old)] for offset, old, _ in changes],
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    partial = final.with_name(f"{final.name}.{os.urandom(4).hex()}{PARTIAL_SUFFIX}")
    fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            _write_all(fd, _MAGIC + json.dumps(header).encode() + b"\n" + blob)
            os.fsync(fd)
            rename_no_replace(partial, final)
            fsync_path(final.parent)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            if isinstance(exc, OSError):
                raise JournalWriteFailed(
                    f"cannot write the undo journal for {target} in {real.parent}: "
                    f"{exc.strerror or exc}; nothing was changed"
                ) from None
            raise
    except BaseException:
        os.close(fd)
        raise
    return Journal(final, fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def discard(journal: Journal | Path) -> None:
    """Remove a journal once its edit is complete or undone."""
    path = journal.path if isinstance(journal, Journal) else journal
    path.unlink(missing_ok=True)
    fsync_path(path.parent)
    if isinstance(journal, Journal):
        journal.close()


@dataclass
class _Loaded:
    journal: Path
    target: Path
    model: Path | None
    entries: list[tuple[int, bytes, bytes]]
    applied: bool


def _parse(fd: int) -> tuple[dict, bytes] | None:
    """A journal's header and saved bytes, or None when it is incomplete or not one."""
    import hashlib

    data = os.pread(fd, os.fstat(fd).st_size, 0)
    if not data.startswith(_MAGIC):
        return None
    header_line, _, blob = data[len(_MAGIC) :].partition(b"\n")
    try:
        header = json.loads(header_line)
        if not isinstance(header, dict) or hashlib.sha256(blob).hexdigest() != header["sha256"]:
            return None
    except (ValueError, KeyError, TypeError):
        return None
    return header, blob


def _member(folder: Path, name: object) -> Path | None:
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        return None
    return folder / name


def _check(journal: Path, fd: int) -> _Loaded | None:
    """The journal's edit, if the journal proves it belongs to its file."""
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
        return None
    if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return None
    parsed = _parse(fd)
    if parsed is None:
        return None
    header, blob = parsed
    target = _member(journal.parent, header.get("file"))
    if target is None or journal.name != f"{JOURNAL_PREFIX}{_name_hash(target.name)}":
        return None
    try:
        target_status = os.lstat(target)
    except OSError:
        return None
    if not stat.S_ISREG(target_status.st_mode):
        return None
    if status.st_uid not in (os.geteuid(), target_status.st_uid):
        return None
    if target_status.st_size != header.get("size"):
        return None
    try:
        spans = [(int(offset), int(length)) for offset, length in header["entries"]]
    except (KeyError, TypeError, ValueError):
        return None
    if sum(length for _, length in spans) * 2 != len(blob):
        return None
    half = len(blob) // 2
    entries, position = [], 0
    for offset, length in spans:
        old = blob[position : position + length]
        new = blob[half + position : half + position + length]
        entries.append((offset, old, new))
        position += length
    applied = _match(target, entries)
    if applied is None:
        return None
    model = header.get("model")
    model_path = None
    if isinstance(model, str) and (model == "." or _member(journal.parent, model) is not None):
        model_path = journal.parent if model == "." else journal.parent / model
    return _Loaded(journal, target, model_path, entries, applied)


def _match(target: Path, entries: list[tuple[int, bytes, bytes]]) -> bool | None:
    """True when some patched byte is in the file, False when none is; None when some
    byte is neither the old nor the new one (the journal is not about this file)."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    applied = False
    try:
        for offset, old, new in entries:
            current = os.pread(fd, len(old), offset)
            if current == old:
                continue
            if current == new:
                applied = True
                continue
            if len(current) != len(old):
                return None
            now = np.frombuffer(current, np.uint8)
            before = np.frombuffer(old, np.uint8)
            after = np.frombuffer(new, np.uint8)
            if not np.all((now == before) | (now == after)):
                return None
            applied = True
    finally:
        os.close(fd)
    return applied


@contextlib.contextmanager
def _orphan(journal: Path, exclusive: bool) -> Iterator[tuple[int, _Loaded | None] | None]:
    """A journal whose writer is gone, opened and locked: `(fd, checked edit or None)`;
    None when it is in use or cannot be opened."""
    with unheld_lock(journal, exclusive) as fd:
        yield None if fd is None else (fd, _check(journal, fd))


def _journals(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.name.startswith(JOURNAL_PREFIX))
    except OSError:
        return []


def pending(folder: Path) -> list[tuple[Path, Path]]:
    """`(journal or commit record, file)` for each edit or commit in `folder` (or of
    `folder`) that a killed process left half done. Only reads."""
    from embcli import commit

    folder = resolved(folder)
    found = []
    for place in {folder, folder.parent}:
        for unfinished in commit.pending(place):
            if place == folder or unfinished.touches(folder):
                target = next(s.target for s in unfinished.steps if s.staged is not None)
                found.append((unfinished.record, target))
    for journal in _journals(folder):
        if journal.name.endswith(PARTIAL_SUFFIX):
            continue
        with _orphan(journal, exclusive=False) as opened:
            if opened is not None and opened[1] is not None and opened[1].applied:
                found.append((journal, opened[1].target))
    return found


def _belongs(loaded: _Loaded, model: Path) -> bool:
    if model.is_dir():
        return loaded.journal.parent == model
    return model in (loaded.target, loaded.model)


def pending_for(model: Path) -> list[tuple[Path, Path]]:
    """`(journal or commit record, file)` for each half-done write of the model at
    `model` (symbolic links resolved) that a killed process left. Only reads; other
    models in the same folder are not looked at beyond their journals' headers."""
    from embcli import commit

    named = real = resolved(model)
    if not real.exists() and resolved(Path(f"{model}.index")).exists():
        real = resolved(Path(f"{model}.index"))
    folder = real if real.is_dir() else real.parent
    found = []
    for journal in _journals(folder):
        if journal.name.endswith(PARTIAL_SUFFIX):
            continue
        with _orphan(journal, exclusive=False) as opened:
            loaded = None if opened is None else opened[1]
            if loaded is not None and loaded.applied and _belongs(loaded, real):
                found.append((journal, loaded.target))
    for place in {folder, real.parent}:
        for unfinished in commit.pending(place):
            if unfinished.touches(real) or unfinished.touches(named):
                found.append((unfinished.record, real))
    return found


def roll_back(journal: Path | Journal) -> bool:
    """Put back the bytes a journal saved, if it proves it belongs to its file; True when
    it did. A journal of this user that is incomplete or does not match its file is
    removed without touching anything else."""
    return _roll_back(journal) is not None


def _roll_back(journal: Path | Journal) -> Path | None:
    path = journal.path if isinstance(journal, Journal) else journal
    if isinstance(journal, Journal):
        journal.close()
    with _orphan(path, exclusive=True) as opened:
        if opened is None:
            return None
        fd, loaded = opened
        if loaded is None:
            if os.fstat(fd).st_uid == os.geteuid():
                _unlink_if_same(path, fd)
            return None
        if loaded.applied:
            _restore(loaded)
        _unlink_if_same(path, fd)
        return loaded.target if loaded.applied else None


def _unlink_if_same(path: Path, fd: int) -> None:
    """Remove `path` if it is still the file open as `fd` (not a newer journal)."""
    try:
        same = os.lstat(path).st_ino == os.fstat(fd).st_ino
    except OSError:
        return
    if same:
        path.unlink(missing_ok=True)
        fsync_path(path.parent)


def _restore(loaded: _Loaded) -> None:
    fd = os.open(loaded.target, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        for offset, old, _ in loaded.entries:
            os.pwrite(fd, old, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_partials(folder: Path) -> None:
    for journal in _journals(folder):
        if not journal.name.endswith(PARTIAL_SUFFIX):
            continue
        with _orphan(journal, exclusive=True) as opened:
            if opened is not None and os.fstat(opened[0]).st_uid == os.geteuid():
                _unlink_if_same(journal, opened[0])


def recover(folder: Path, only: list[Path] | None = None) -> list[str]:
    """Undo every half-done in-place edit in `folder` (of the files `only` names, if
    given) and finish every half-done commit; returns the names of the files restored.

    Journals of this user whose patching never began, or that prove nothing, are removed.
    """
    from embcli import commit

    folder = resolved(folder)
    _remove_partials(folder)
    wanted = None if only is None else {resolved(p) for p in only}
    restored = []
    for journal in _journals(folder):
        if journal.name.endswith(PARTIAL_SUFFIX):
            continue
        if wanted is not None:
            with _orphan(journal, exclusive=False) as opened:
                loaded = None if opened is None else opened[1]
                if loaded is None or loaded.target not in wanted:
                    continue
        target = _roll_back(journal)
        if target is not None:
            restored.append(target.name)
    restored += commit.finish(folder)
    if folder.parent != folder:
        restored += commit.finish(folder.parent, only=folder)
    return restored


def recover_model(model: Path) -> list[str]:
    """`recover` for the folder of the model at `model`, symbolic links resolved (the
    journal lies beside the real file); returns the names of the files restored."""
    real = resolved(model)
    return recover(real if real.is_dir() else real.parent)

"""Copy-on-write output: everything is written into a temporary folder beside the target,
flushed, verified, and only then renamed into place.

The temporary folder is named `.embcli-tmp-<pid>-<random>`, so whatever an interrupted run
leaves behind is plainly embcli's and is never taken for the output. Later writes into the
same folder remove such leftovers whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from embcli.durable import fsync_path, process_alive
from embcli.errors import OutputExists, VerificationFailed
from embcli.formats.base import FilePlan, WritePlan

TEMP_PREFIX = ".embcli-tmp-"
COPY_CHUNK = 8 * 1024 * 1024


def remove_stale_temporaries(folder: Path) -> None:
    """Remove temporary folders left in `folder` by embcli processes that no longer run."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX) or entry.is_symlink() or not entry.is_dir():
            continue
        pid_text = entry.name[len(TEMP_PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and not process_alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def temporary_folder(parent: Path) -> Iterator[Path]:
    """A fresh temporary folder in `parent`, removed on exit whatever happens."""
    remove_stale_temporaries(parent)
    folder = parent / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    with _terminate_as_interrupt():
        try:
            folder.mkdir()
            yield folder
        finally:
            with signals_deferred():
                shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
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
    """Hold Ctrl-C and SIGTERM until cleanup that must not be cut short is done."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def check_output(output: Path, force: bool) -> None:
    """Refuse to overwrite an existing output unless forced."""
    if output.exists() and not force:
        raise OutputExists(f"{output} exists", remedy="force")
    if not output.parent.is_dir():
        raise OutputExists(f"{output.parent} is not a folder")


def write_new_file(output: Path, force: bool, write: Callable[[Path], None]) -> None:
    """Write a single file atomically: `write(temp_path)`, fsync, rename over `output`."""
    check_output(output, force)
    output = output.absolute()
    with temporary_folder(output.parent) as folder:
        temp = folder / output.name
        write(temp)
        fsync_path(temp)
        os.replace(temp, output)
        fsync_path(output.parent)


def execute(plan: WritePlan, verify: Callable[[Path, list], None]) -> None:
    """Carry out a write plan.

    Each file is built in a temporary folder beside its target: copied from its source
    (or written whole), patched, and fsynced. `verify(path, checks)` reads each patched
    file back. Only then are the files renamed into place, the plan's last file last.
    """
    root = (plan.folder.parent if plan.folder else _common_parent(plan)).absolute()
    with temporary_folder(root) as folder:
        staged: list[tuple[Path, Path]] = []
        for item in plan.files:
            target = item.target.absolute()
            temp = folder / target.relative_to(root)
            temp.parent.mkdir(parents=True, exist_ok=True)
            _build(item, temp)
            if item.checks:
                verify(temp, item.checks)
            staged.append((temp, target))
        if plan.folder is not None:
            _replace_folder(
                folder / plan.folder.absolute().relative_to(root), plan.folder.absolute(), folder
            )
        else:
            for temp, target in staged:
                os.replace(temp, target)
            for path in plan.remove:
                path.unlink(missing_ok=True)
            for parent in {target.parent for _, target in staged}:
                fsync_path(parent)


def _common_parent(plan: WritePlan) -> Path:
    parents = {item.target.absolute().parent for item in plan.files}
    return Path(os.path.commonpath([str(p) for p in parents]))


def _replace_folder(built: Path, target: Path, scratch: Path) -> None:
    for path in [built, *built.rglob("*")]:
        if path.is_dir():
            fsync_path(path)
    if target.exists():
        retired = scratch / ".previous"
        os.replace(target, retired)
        try:
            os.replace(built, target)
        except BaseException:
            os.replace(retired, target)
            raise
    else:
        os.replace(built, target)
    fsync_path(target.parent)


def _build(item: FilePlan, temp: Path) -> None:
    if item.rebuild is not None:
        item.rebuild(temp)
    elif item.content is not None:
        temp.write_bytes(item.content)
    else:
        shutil.copyfile(item.source, temp)
        shutil.copymode(item.source, temp)
        if item.patches:
            _patch(item, temp)
    if item.source is not None and item.rebuild is not None:
        shutil.copymode(item.source, temp)
    fsync_path(temp)


def _patch(item: FilePlan, temp: Path) -> None:
    fd = os.open(temp, os.O_RDWR)
    try:
        _apply(fd, file_changes(fd, item, temp.name))
        os.fsync(fd)
    finally:
        os.close(fd)


def _apply(fd: int, changes: list[tuple[int, bytes, bytes]]) -> None:
    for offset, _, new in changes:
        os.pwrite(fd, new, offset)


def file_changes(fd: int, item: FilePlan, name: str) -> list[tuple[int, bytes, bytes]]:
    """`(offset, old, new)` for every byte run a plan's patches change in a file,
    the archive member's CRC-32 fields included."""
    from embcli.crc import patched_crc32

    changes = []
    for offset, data in item.patches:
        old = os.pread(fd, len(data), offset)
        if len(old) != len(data):
            raise VerificationFailed(f"{name}: a patch falls beyond the end of the file")
        if old != data:
            changes.append((offset, old, data))
    member = item.zip_member
    if member is None or not changes:
        return changes
    inside = []
    end = member.data_offset + member.size
    for offset, old, new in changes:
        if offset < member.data_offset or offset + len(new) > end:
            raise VerificationFailed("a patch falls outside the archive member it edits")
        inside.append((offset - member.data_offset, old, new))
    old_crc = member.crc.to_bytes(4, "little")
    crc = patched_crc32(member.crc, member.size, inside).to_bytes(4, "little")
    for position in member.crc_offsets:
        if os.pread(fd, 4, position) != old_crc:
            raise VerificationFailed("the archive's checksum is not where it should be")
        changes.append((position, old_crc, crc))
    return changes


def can_patch_in_place(plan: WritePlan) -> bool:
    return plan.folder is None and all(
        item.source is not None
        and item.rebuild is None
        and item.content is None
        and item.source.absolute() == item.target.absolute()
        for item in plan.files
    )


def patch_in_place(plan: WritePlan, verify: Callable[[Path, list], None]) -> None:
    """Edit files where they lie, at a cost that follows the bytes changed.

    The old bytes go to an fsynced journal first; a failed check rolls them back at once,
    and a killed process's journal is rolled back by the next embcli run (`journal`).
    """
    from embcli import journal

    for folder in {item.target.absolute().parent for item in plan.files}:
        journal.recover(folder)
    opened = []
    try:
        for item in plan.files:
            fd = os.open(item.target, os.O_RDWR)
            opened.append((item, fd, file_changes(fd, item, item.target.name)))
        journals: list[Path] = []
        with _terminate_as_interrupt():
            try:
                for item, _, changes in opened:
                    target = item.target.absolute()
                    try:
                        journals.append(journal.write_journal(target, changes))
                    except KeyboardInterrupt:
                        journal.journal_path(target).unlink(missing_ok=True)
                        raise
                for _, fd, changes in opened:
                    _apply(fd, changes)
                    os.fsync(fd)
                for item, _, _ in opened:
                    if item.checks:
                        verify(item.target, item.checks)
            except BaseException:
                with signals_deferred():
                    for path in journals:
                        journal.roll_back(path)
                raise
            with signals_deferred():
                for path in journals:
                    journal.discard(path)
    finally:
        for _, fd, _ in opened:
            os.close(fd)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit for bit (so NaN equals the same NaN)."""
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    return (
        a.shape == b.shape
        and a.dtype.itemsize == b.dtype.itemsize
        and bytes(a.view(np.uint8)) == bytes(b.view(np.uint8))
    )

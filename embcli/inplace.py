"""Editing files where they lie, behind an undo journal (`embcli.journal`), under an
exclusive lock on the model (`embcli.locking`): the cost follows the bytes changed, and
the files keep their inode, owner and mode."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from embcli import locking
from embcli.durable import pause_point, signals_deferred, terminate_as_interrupt
from embcli.errors import EmbcliError, VerificationFailed
from embcli.formats.base import FilePlan, WritePlan


class NotWritable(EmbcliError):
    "An in-place edit would change a file its user may not change, or its owner"


def apply_changes(fd: int, changes: list[tuple[int, bytes, bytes]]) -> None:
    for offset, _, new in changes:
        os.pwrite(fd, new, offset)


def file_changes(fd: int, item: FilePlan, name: str) -> list[tuple[int, bytes, bytes]]:
    """`(offset, old, new)` for every byte run a plan's patches change in a file,
    the archive member's CRC-32 fields included.

    The member's CRC is read from the file as it is now, so that an edit another writer
    made since the plan was drawn up is kept in it."""
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
    recorded = {os.pread(fd, 4, position) for position in member.crc_offsets}
    if len(recorded) != 1 or len(next(iter(recorded))) != 4:
        raise VerificationFailed("the archive's checksum is not where it should be")
    old_crc = recorded.pop()
    current = int.from_bytes(old_crc, "little")
    crc = patched_crc32(current, member.size, inside).to_bytes(4, "little")
    for position in member.crc_offsets:
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

    Under an exclusive lock on the model, the old and new bytes go to an fsynced journal
    first; a failed check rolls them back at once, and a killed process's journal is
    rolled back by the next embcli run (`journal`). The files keep inode, owner and mode.

    Raises:
        NotWritable: the user may not write a file of the model.
        ModelBusy: another process holds the model.
        JournalWriteFailed: no room for the journal; nothing was changed.
    """
    from embcli import journal

    targets = [item.target.absolute() for item in plan.files]
    with locking.exclusive_all(locking.write_lock_paths(plan.output, True), patches_only=True):
        pause_point("locked")
        for folder in sorted({journal.resolved(t).parent for t in targets}):
            journal.recover(folder, only=targets)
        opened: list[tuple[FilePlan, int, list[tuple[int, bytes, bytes]]]] = []
        try:
            for item in plan.files:
                try:
                    fd = os.open(item.target, os.O_RDWR)
                except PermissionError:
                    raise NotWritable(
                        f"{item.target} is not writable; it was left unchanged"
                    ) from None
                opened.append((item, fd, []))
                opened[-1] = (item, fd, file_changes(fd, item, item.target.name))
            _patch_journaled(plan, opened, verify)
        finally:
            for _, fd, _ in opened:
                os.close(fd)


def _patch_journaled(
    plan: WritePlan,
    opened: list[tuple[FilePlan, int, list[tuple[int, bytes, bytes]]]],
    verify: Callable[[Path, list], None],
) -> None:
    from embcli import journal

    journals: list[journal.Journal] = []
    with terminate_as_interrupt():
        try:
            for item, _, changes in opened:
                with signals_deferred():
                    journals.append(
                        journal.write_journal(item.target.absolute(), changes, plan.output)
                    )
            pause_point("journaled")
            for number, (_, fd, changes) in enumerate(opened):
                first, rest = _halves(changes)
                apply_changes(fd, first)
                if number == 0:
                    pause_point("half-patched")
                apply_changes(fd, rest)
                os.fsync(fd)
            pause_point("patched")
            for item, _, _ in opened:
                if item.checks:
                    verify(item.target, item.checks)
        except BaseException:
            with signals_deferred():
                for written in journals:
                    journal.roll_back(written)
            raise
        with signals_deferred():
            for written in journals:
                journal.discard(written)


def _halves(changes: list[tuple[int, bytes, bytes]]) -> tuple[list, list]:
    """The changes split where half their bytes are written (an entry may be cut)."""
    half = sum(len(new) for _, _, new in changes) // 2
    first: list[tuple[int, bytes, bytes]] = []
    for number, (offset, old, new) in enumerate(changes):
        if len(new) <= half:
            first.append((offset, old, new))
            half -= len(new)
            continue
        rest = changes[number + 1 :]
        if half:
            first.append((offset, old[:half], new[:half]))
        return first, [(offset + half, old[half:], new[half:]), *rest]
    return first, []

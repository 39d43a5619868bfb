"""Copy-on-write output: everything is written into a temporary folder beside the target,
flushed, verified, and only then committed into place (`embcli.commit`), under an
exclusive lock on the model (`embcli.locking`).

The temporary folder is named `.embcli-tmp-<pid>-<random>`, so whatever an interrupted run
leaves behind is plainly embcli's and is never taken for the output. Its writer holds a
lock on it; later writes into the same folder remove those whose lock nobody holds.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from embcli import locking
from embcli.commit import TEMP_PREFIX, Step, commit, finish, record_path
from embcli.durable import (
    fsync_path,
    pause_point,
    signals_deferred,
    terminate_as_interrupt,
)
from embcli.errors import EmbcliError, OutputExists
from embcli.formats.base import FilePlan, WritePlan
from embcli.inplace import (
    NotWritable,
    apply_changes,
    can_patch_in_place,
    file_changes,
    patch_in_place,
)

__all__ = [
    "NotWritable",
    "WriteFailed",
    "can_patch_in_place",
    "check_output",
    "execute",
    "file_changes",
    "patch_in_place",
    "same_bits",
    "signals_deferred",
    "write_new_file",
]

_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class WriteFailed(EmbcliError):
    "The output could not be written; nothing was changed"


def remove_stale_temporaries(folder: Path) -> None:
    """Remove temporary folders left in `folder` by embcli processes that are gone (no
    one holds their lock), unless an unfinished commit still needs them."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX) or entry.is_symlink() or not entry.is_dir():
            continue
        if os.path.lexists(record_path(folder, entry)) or _locked(entry):
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_uid == os.geteuid():
                shutil.rmtree(entry, ignore_errors=True)


def _locked(folder: Path) -> bool:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def temporary_folder(parent: Path) -> Iterator[Path]:
    """A fresh temporary folder in `parent`, locked while in use, removed on exit
    whatever happens (unless a commit record still needs it)."""
    remove_stale_temporaries(parent)
    folder = parent / f"{TEMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"  # as secrets.token_hex
    with terminate_as_interrupt():
        folder.mkdir(mode=0o700)
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield folder
        finally:
            with signals_deferred():
                if not record_path(parent, folder).exists():
                    shutil.rmtree(folder, ignore_errors=True)
                os.close(fd)


def check_output(output: Path, force: bool) -> None:
    """Refuse to overwrite an existing output (a dangling link counts) unless forced."""
    if os.path.lexists(output) and not force:
        raise OutputExists(f"{output} exists", remedy="force")
    if not Path(output).parent.is_dir():
        raise OutputExists(f"{Path(output).parent} is not a folder")


@contextlib.contextmanager
def _reported_as(output: Path, sources: Sequence[Path] = ()) -> Iterator[None]:
    """Turn an OSError into a message that names the output (or the input that could
    not be read), never a temporary path."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        filename = Path(exc.filename) if isinstance(exc.filename, str) else None
        if exc.errno not in _DISK_ERRORS and filename is not None and filename in sources:
            raise WriteFailed(f"cannot read {filename}: {reason}") from None
        raise WriteFailed(f"cannot write {output}: {reason}; nothing was changed") from None


def write_new_file(
    output: Path,
    force: bool,
    write: Callable[[Path], None],
    *,
    also: Sequence[tuple[Path, Callable[[Path], None]]] = (),
) -> None:
    """Write a file atomically: `write(temp_path)`, fsync, then move it to `output`.

    Without `force` the move fails if anything appeared at `output` meanwhile. Files
    `also` names (`(path, write)`, in the same folder) are committed with it: all or none.

    Raises:
        OutputExists: `output` exists and `force` is false.
        WriteFailed: the output could not be written.
    """
    outputs = [(Path(output), write), *((Path(p), w) for p, w in also)]
    for path, _ in outputs:
        check_output(path, force)
    root = Path(output).absolute().parent
    finish(root)
    with _reported_as(Path(output)), temporary_folder(root) as folder:
        steps = []
        for path, writer in outputs:
            temp = folder / path.name
            writer(temp)
            fsync_path(temp)
            target = path.absolute()
            steps.append(Step(target, temp, replace=force))
        with locking.exclusive_all([p for p, _ in outputs if force]), signals_deferred():
            commit(root, folder, steps)


def execute(
    plan: WritePlan, verify: Callable[[Path, list], None], *, force: bool | None = None
) -> None:
    """Carry out a write plan.

    Each file is built in a temporary folder beside its target: copied from its source
    (or written whole), patched, and fsynced. `verify(path, checks)` reads each patched
    file back. Only then are the files committed into place, all or none, the plan's last
    file last, under an exclusive lock on the model (readers wait).

    `force=False` refuses to replace anything at a target; `True` replaces; `None` (the
    default) replaces what existed when the write began and refuses what appears since.
    Commits that killed processes left in the folder are finished first.

    Raises:
        OutputExists: a target exists that may not be replaced.
        NotWritable: an edit of a model over itself that its user may not make.
        WriteFailed: the output could not be written; nothing was changed.
        ModelBusy, ModelChanged: another process holds or changed the model.
    """
    root = (plan.folder.parent if plan.folder else _common_parent(plan)).absolute()
    outputs = [plan.folder.absolute()] if plan.folder else [i.target.absolute() for i in plan.files]
    existing = {path for path in outputs if os.path.lexists(path)}
    if force is False and existing:
        raise OutputExists(f"{sorted(existing)[0]} exists", remedy="force")
    finish(root)
    rewrites_itself = any(_rewrites_itself(item) for item in plan.files)
    if rewrites_itself:
        _check_writable(plan, existing)
    locked = locking.write_lock_paths(plan.output, rewrites_itself)
    sources = [item.source.absolute() for item in plan.files if item.source is not None]
    whole = rewrites_itself and not all(locking.is_held(p) for p in locked)
    with contextlib.ExitStack() as stack:
        if whole:
            stack.enter_context(locking.exclusive_all(locked))
        stack.enter_context(_reported_as(plan.output, sources))
        folder = stack.enter_context(temporary_folder(root))
        staged: list[tuple[Path, Path]] = []
        for item in plan.files:
            target = item.target.absolute()
            temp = folder / target.relative_to(root)
            temp.parent.mkdir(parents=True, exist_ok=True)
            _build(item, temp)
            if item.checks:
                verify(temp, item.checks)
            staged.append((temp, target))
        pause_point("staged")
        built = None
        if plan.folder is not None:
            built = folder / plan.folder.absolute().relative_to(root)
            _fsync_tree(built)
            if plan.folder.absolute() in existing:
                _keep_identity(plan.folder.absolute(), built, rewrites_itself)
            steps = [Step(plan.folder.absolute(), built, replace=bool(existing))]
        else:
            steps = []
            for temp, target in staged:
                if target in existing and _rewrites_itself_at(plan, target):
                    _keep_identity(target, temp, True)
                steps.append(Step(target, temp, replace=target in existing))
            steps += [Step(path.absolute()) for path in plan.remove]
            for parent in {temp.parent for temp, _ in staged}:
                fsync_path(parent)
        if not whole:
            stack.enter_context(locking.exclusive_all(locked))
        pause_point("locked")
        with _new_model_locked(plan, staged, built), signals_deferred():
            commit(root, folder, steps)


def _rewrites_itself(item: FilePlan) -> bool:
    return item.source is not None and item.source.absolute() == item.target.absolute()


def _rewrites_itself_at(plan: WritePlan, target: Path) -> bool:
    return any(_rewrites_itself(item) and item.target.absolute() == target for item in plan.files)


@contextlib.contextmanager
def _new_model_locked(plan: WritePlan, staged: list[tuple[Path, Path]], built: Path | None):
    """Lock the staged file or folder that becomes the model's lock, so that a reader
    who finds it renamed in waits until the rest of the commit is done too."""
    output = Path(os.path.realpath(plan.output))
    index = output.with_name(output.name + locking.CHECKPOINT_INDEX_SUFFIX)
    finals = {Path(os.path.realpath(target)): temp for temp, target in staged}
    if built is not None and plan.folder is not None:
        finals[Path(os.path.realpath(plan.folder))] = built
    candidate = finals.get(output, finals.get(index))
    fd = None
    try:
        if candidate is not None:
            fd = os.open(candidate, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _check_writable(plan: WritePlan, existing: set[Path]) -> None:
    """An edit over itself that must rewrite files may do so only where the user could
    write them in place."""
    for item in plan.files:
        if not _rewrites_itself(item):
            continue
        target = item.target.absolute()
        try:
            os.close(os.open(target, os.O_WRONLY))
        except PermissionError:
            raise NotWritable(f"{target} is not writable; it was left unchanged") from None
        except OSError:
            continue
    if plan.folder is not None and plan.folder.absolute() in existing:
        if not os.access(plan.folder.absolute(), os.W_OK):
            raise NotWritable(f"{plan.folder} is not writable; it was left unchanged")


def _keep_identity(original: Path, replacement: Path, same_owner: bool) -> None:
    """Give `replacement` the mode (and, for an edit over itself, the owner and group)
    of the file or folder it replaces."""
    status = os.lstat(original)
    os.chmod(replacement, stat.S_IMODE(status.st_mode))
    if not same_owner:
        return
    now = os.lstat(replacement)
    if (now.st_uid, now.st_gid) == (status.st_uid, status.st_gid):
        return
    try:
        os.chown(replacement, status.st_uid, status.st_gid)
    except PermissionError:
        raise NotWritable(
            f"{original} belongs to another user or group, which a rewrite cannot keep; "
            "it was left unchanged"
        ) from None


def _fsync_tree(built: Path) -> None:
    for path in [built, *built.rglob("*")]:
        if path.is_dir():
            fsync_path(path)


def _common_parent(plan: WritePlan) -> Path:
    parents = {item.target.absolute().parent for item in plan.files}
    return Path(os.path.commonpath([str(p) for p in parents]))


def _build(item: FilePlan, temp: Path) -> None:
    if item.rebuild is not None:
        item.rebuild(temp)
    elif item.content is not None:
        temp.write_bytes(item.content)
    else:
        assert item.source is not None
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
        apply_changes(fd, file_changes(fd, item, temp.name))
        os.fsync(fd)
    finally:
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

"""Run embcli commands in this process and report everything they touched.

    python tests/corpus/driver.py RUNS.json RESULTS.json

RUNS.json holds `{"root": ..., "watch": [folders], "timeout": seconds, "runs": [{"id",
"args", "folder"}]}`. Each run's `args` go to `embcli.cli.cli` through Click's test
runner. For each run the results record the exit code, stdout, stderr, any exception that
escaped, and what happened while it ran:

- `opened`: every path opened from Python (the `open` audit event, which builtins.open,
  io.open and os.open raise) or handed to h5py's file open;
- `inotify`: every file the kernel saw opened in the watched folders, whoever opened it
  (the HDF5 library following a link or a virtual dataset included);
- `events`: audit events that mean code ran or a process, socket or import was started:
  exec and marshal.loads outside the import system, pickle.find_class, os.system,
  subprocess, socket, imports, deletions and renames;
- `before`/`after`: the run's folder, file by file, with SHA-256 digests.

Audit hooks cannot be removed, which is why this runs in its own process. A run that
hangs makes faulthandler dump every thread's stack and end the process.
"""

from __future__ import annotations

import ctypes
import faulthandler
import hashlib
import json
import os
import struct
import sys
import time
import traceback
from pathlib import Path

IN_OPEN = 0x20
IN_NONBLOCK = os.O_NONBLOCK
WATCHED_EVENTS = {
    "exec",
    "marshal.loads",
    "marshal.load",
    "pickle.find_class",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "os.forkpty",
    "subprocess.Popen",
    "socket.connect",
    "socket.getaddrinfo",
    "urllib.Request",
    "ctypes.dlopen",
    "import",
    "os.remove",
    "os.rmdir",
    "shutil.rmtree",
    "os.rename",
    "builtins.input",
}
CODE_EVENTS = {"exec", "marshal.loads", "marshal.load"}
FROM_IMPORT_SYSTEM = ("<frozen importlib", "importlib/")


class Recorder:
    """Collects audit events while `active`."""

    def __init__(self) -> None:
        self.active = False
        self.opened: list[list] = []
        self.events: list[list] = []

    def hook(self, event: str, args: tuple) -> None:
        if not self.active:
            return
        if event == "open":
            path = args[0]
            if isinstance(path, (str, bytes, os.PathLike)):
                self.opened.append([os.path.abspath(os.fsdecode(path)), str(args[1])])
        elif event in WATCHED_EVENTS:
            if event in CODE_EVENTS and _from_import_system():
                return
            self.events.append([event, _describe(event, args)])


def _from_import_system() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(FROM_IMPORT_SYSTEM) or (
            "/importlib/" in frame.f_code.co_filename
        ):
            return True
        frame = frame.f_back
    return False


def _describe(event: str, args: tuple) -> str:
    if event == "import":
        return str(args[0])
    return repr(args)[:300]


class Inotify:
    """Files opened in some folders, as the kernel reports them."""

    def __init__(self, folders: list[str]) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(IN_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.folders: dict[int, str] = {}
        for folder in folders:
            wd = self.libc.inotify_add_watch(self.fd, os.fsencode(folder), IN_OPEN)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
            self.folders[wd] = folder

    def drain(self) -> list[str]:
        opened = []
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return opened
            at = 0
            while at < len(data):
                wd, _mask, _cookie, length = struct.unpack_from("iIII", data, at)
                name = data[at + 16 : at + 16 + length].rstrip(b"\0").decode()
                folder = self.folders.get(wd)
                if folder is not None:
                    opened.append(os.path.join(folder, name) if name else folder)
                at += 16 + length


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under `folder`, symbolic links not followed: a digest, `dir` or `->`."""
    entries: dict[str, str] = {}
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(parent) / name
            key = path.relative_to(folder).as_posix()
            if path.is_symlink():
                entries[key] = "-> " + os.readlink(path)
            elif path.is_dir():
                entries[key] = "dir"
            else:
                digest = hashlib.sha256()
                with open(path, "rb") as handle:
                    while chunk := handle.read(1 << 20):
                        digest.update(chunk)
                entries[key] = digest.hexdigest()
    return entries


def main(spec_path: str, results_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import h5py
    from click.testing import CliRunner

    import embcli.atomic  # noqa: F401
    import embcli.commands.assign  # noqa: F401
    import embcli.commands.read  # noqa: F401
    import embcli.edit  # noqa: F401
    import embcli.export  # noqa: F401
    import embcli.formats.keras3  # noqa: F401
    import embcli.formats.legacy_h5  # noqa: F401
    import embcli.model  # noqa: F401
    import embcli.rowspec  # noqa: F401
    import embcli.vectors  # noqa: F401
    from embcli.cli import cli

    runner = CliRunner()
    for warmup in spec.get("warmup", []):
        runner.invoke(cli, warmup)

    recorder = Recorder()
    real_h5f_open = h5py.h5f.open

    def h5f_open(name, *args, **kwargs):
        if recorder.active and isinstance(name, (str, bytes)):
            shown = os.fsdecode(name)
            if not (shown.startswith("<") and shown.endswith(">")):
                recorder.opened.append([os.path.abspath(shown), "h5py"])
        return real_h5f_open(name, *args, **kwargs)

    h5py.h5f.open = h5f_open
    h5py._hl.files.h5f.open = h5f_open
    sys.addaudithook(recorder.hook)
    watcher = Inotify(spec["watch"])
    cwd = Path(spec["cwd"])
    os.chdir(cwd)

    results = []
    for run in spec["runs"]:
        folder = Path(run["folder"])
        before = snapshot(folder)
        watcher.drain()
        recorder.opened, recorder.events = [], []
        faulthandler.dump_traceback_later(spec["timeout"], exit=True, file=sys.__stderr__)
        started = time.monotonic()
        recorder.active = True
        try:
            result = runner.invoke(cli, run["args"], catch_exceptions=True)
        finally:
            recorder.active = False
            faulthandler.cancel_dump_traceback_later()
        elapsed = time.monotonic() - started
        escaped = None
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            escaped = "".join(traceback.format_exception(*result.exc_info))
        results.append(
            {
                "id": run["id"],
                "args": run["args"],
                "exit_code": result.exit_code,
                "stdout": result.stdout,
                "stderr": result.stderr,
                "escaped": escaped,
                "seconds": elapsed,
                "opened": recorder.opened,
                "events": recorder.events,
                "inotify": watcher.drain(),
                "before": before,
                "after": snapshot(folder),
                "cwd_after": sorted(os.listdir(cwd)),
            }
        )
    Path(results_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
